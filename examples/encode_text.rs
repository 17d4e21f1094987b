//! Times the CLIP text encoder on one folder: `cargo run --release --example encode_text --
//! DIR [--clip-skip K] [--runs N] [--threads N] [--save FILE]` (DIR: a `text_encoder/` folder,
//! e.g. from `tests/tools/make_clip_l_like.py`). Prints the parameters, GFLOP per prompt,
//! workspace and the median ms of one encode at batch 1 and 2 (a guided pipeline encodes the
//! prompt and the negative prompt). `--save`: the ids (u32) then the batch-1 hidden states
//! (f32), little-endian, for comparing with transformers.

use std::time::Instant;

use tinydiffusion::model::TextEncoder;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .expect("usage: encode_text DIR [--clip-skip K] [--runs N]");
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let (clip_skip, runs, threads) = (
        flag("--clip-skip", 0),
        flag("--runs", 5),
        flag("--threads", 0),
    );
    let mut enc = TextEncoder::load(dir, clip_skip).unwrap();
    enc.net_mut().set_threads(threads).unwrap();
    let cfg = &enc.config;
    println!(
        "{}: {} layers, hidden {}, {:.1} M parameters, {:.2} GFLOP per prompt, kernels {}, {} threads",
        dir,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        enc.parameters() as f64 / 1e6,
        enc.net().flops_per_sample() as f64 / 1e9,
        enc.net().kernels_name(),
        enc.net().threads()
    );
    let n = enc.tokens();
    let bos = cfg.bos_token_id.unwrap_or(0);
    let eos = cfg.eos_token_id.unwrap_or(0);
    let pad = cfg.pad_token_id.unwrap_or(eos);
    let vocab = cfg.vocab_size as u32;
    let mut prompt: Vec<u32> = vec![bos];
    prompt.extend((0..12u32).map(|i| (1000 + 37 * i) % vocab));
    prompt.push(eos);
    prompt.resize(n, pad);
    for batch in [1usize, 2] {
        let ids: Vec<u32> = prompt.iter().copied().cycle().take(batch * n).collect();
        let mut ws = vec![0.0f32; enc.workspace_len(batch)];
        let mut out = vec![0.0f32; batch * enc.output_len()];
        enc.encode(0, &mut ws, &ids, &mut out).unwrap();
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let t0 = Instant::now();
                enc.encode(0, &mut ws, &ids, &mut out).unwrap();
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if let (1, Some(i)) = (batch, args.iter().position(|a| a == "--save")) {
            let mut bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
            bytes.extend(out.iter().flat_map(|v| v.to_le_bytes()));
            std::fs::write(&args[i + 1], bytes).unwrap();
        }
        println!(
            "batch {batch}: {:.1} ms median of {runs}, workspace {:.1} MB",
            times[runs / 2],
            enc.workspace_bytes(batch) as f64 / 1e6
        );
    }
}
