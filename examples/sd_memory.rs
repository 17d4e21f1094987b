//! Exact workspace of a Stable Diffusion 1.x-shaped folder at one image size, per net and in
//! total: `cargo run --release --example sd_memory -- [DIR] [--height H --width W]
//! [--threads N] [--peak]` (DIR: a `StableDiffusionPipeline` folder, default /work/sd15 from
//! `tests/tools/make_sd15_like.py`; 512x512 and 2 threads by default; `--peak`: the live
//! tensors at each net's fullest op).
//!
//! Figures are `workspace_len_for_threads`: they depend on the nets, the batch and the thread
//! count, not on this machine. The nets run one after another in one workspace (text encoder,
//! then the UNet loop, then the decoder), so the shared region is the largest of the three;
//! the loop's own buffers (text states, latents, guided outputs, the scheduler's history) sit
//! beside it. Guidance is two UNet forwards of batch 1 (cond, uncond) into two outputs.

use tinydiffusion::memory::Reuse;
use tinydiffusion::model::decoder::Decoder;
use tinydiffusion::model::{Model, Op, TextEncoder};
use tinydiffusion::weights::LoadOptions;

const MIB: f64 = 1024.0 * 1024.0;

fn mib(floats: usize) -> f64 {
    floats as f64 * 4.0 / MIB
}

/// The op where the most planned bytes are live (per sample), with those tensors' names.
fn peak(net: &Model) -> (usize, usize, Vec<(String, usize)>) {
    let n = net.tensors().len();
    let mut life = vec![(usize::MAX, 0usize); n];
    for (i, op) in net.ops().iter().enumerate() {
        for t in op.reads().into_iter().chain(op.writes()) {
            life[t] = (life[t].0.min(i), life[t].1.max(i));
        }
    }
    let mut best = (0, 0, Vec::new());
    for i in 0..net.ops().len() {
        let live: Vec<usize> = (0..n)
            .filter(|&t| life[t].0 <= i && i <= life[t].1)
            .collect();
        let total: usize = live.iter().map(|&t| net.tensors()[t].len).sum();
        if total > best.1 {
            let names = live
                .iter()
                .map(|&t| (net.tensors()[t].name.clone(), net.tensors()[t].len))
                .collect();
            best = (i, total, names);
        }
    }
    best
}

/// The largest attention scratch tensor (the scalar path's score row, per sample) and the
/// tokens x kv_tokens score matrix of that op that is never stored.
fn attention_scratch(net: &Model) -> (usize, usize) {
    net.ops()
        .iter()
        .filter_map(|op| match op {
            Op::Attention(a) => Some((net.tensors()[a.scratch].len, a.tokens * a.kv_tokens)),
            _ => None,
        })
        .max()
        .unwrap_or((0, 0))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let dir = std::path::PathBuf::from(
        args.first()
            .filter(|a| !a.starts_with("--"))
            .map_or("/work/sd15", |s| s.as_str()),
    );
    let (height, width, threads) = (
        flag("--height", 512),
        flag("--width", 512),
        flag("--threads", 2),
    );
    let latent = (height / 8, width / 8);

    let text = TextEncoder::load(dir.join("text_encoder"), 0).expect("text_encoder");
    let unet_cfg = std::fs::read_to_string(dir.join("unet/config.json")).expect("unet config");
    let config = tinydiffusion::config::UNetConfig::from_json(&unet_cfg).expect("unet config");
    let config = tinydiffusion::config::UNetConfig {
        sample_size: latent,
        ..config
    };
    let weights =
        tinydiffusion::model::load::map_file(&dir.join("unet/diffusion_pytorch_model.safetensors"))
            .expect("unet weights");
    let unet = Model::new(config, weights, LoadOptions::default(), Reuse::Shared).expect("unet");
    let vae = Decoder::load_with(
        &dir.join("vae"),
        latent,
        LoadOptions::default(),
        Reuse::Shared,
    )
    .expect("vae");

    let nets: [(&str, &Model); 3] = [
        ("text encoder (CLIP)", text.net()),
        ("UNet2DConditionModel", &unet),
        ("AutoencoderKL decoder", vae.net()),
    ];
    println!(
        "{}: {height}x{width} ({}x{} latents), {threads} threads, f32 workspace",
        dir.display(),
        latent.0,
        latent.1
    );
    println!("| net | batch 1: arena + kernel scratch = MiB | batch 2 MiB |");
    println!("|---|---|---|");
    let mut shared = 0;
    for (name, net) in nets {
        let w1 = net.workspace_len_for_threads(1, threads);
        let arena = arena_len(net, 1);
        println!(
            "| {name} | {:.1} + {:.1} = {:.1} | {:.1} |",
            mib(arena),
            mib(w1 - arena),
            mib(w1),
            mib(net.workspace_len_for_threads(2, threads))
        );
        shared = shared.max(w1);
    }
    // The loop's buffers beside the shared region: cond and uncond text states, the latents,
    // the two guided outputs and the decoder's latents, and PNDM's history (4 eps + the
    // current sample + the saved sample: 6 latents).
    let latent_len = 4 * latent.0 * latent.1;
    let loop_len = 2 * text.output_len() + latent_len * (1 + 2 + 1 + 6);
    println!(
        "| shared region (largest of the three, batch 1) | | {:.1} |",
        mib(shared)
    );
    println!(
        "| + loop buffers (2 text states, latents, 2 outputs, PNDM history) | | {:.2} |",
        mib(loop_len)
    );
    println!("| **total** | | **{:.1}** |", mib(shared + loop_len));
    let (row, scores) = attention_scratch(&unet);
    println!(
        "UNet attention scratch: largest {row} floats per sample, one score row (a stored {} x {} \
         score matrix per head would be {:.1} MiB); SIMD: 48 queries x 128 keys per thread \
         (AVX-512), inside the kernel scratch",
        (scores as f64).sqrt() as usize,
        (scores as f64).sqrt() as usize,
        mib(scores)
    );
    if args.iter().any(|a| a == "--peak") {
        for (name, net) in nets {
            let (op, total, live) = peak(net);
            println!(
                "{name}: peak {:.1} MiB per sample at op {op} ({})",
                mib(total),
                net.ops()[op].kind()
            );
            for (t, len) in live {
                println!("    {t}: {:.1} MiB", mib(len));
            }
        }
    }
}

/// The activation arena of `net` at `batch` (the workspace less its kernel scratch): the end
/// of the last planned tensor.
fn arena_len(net: &Model, batch: usize) -> usize {
    (0..net.tensors().len())
        .map(|t| {
            let (start, len) = net.tensor_region(t, batch);
            start + len
        })
        .max()
        .unwrap_or(0)
}
