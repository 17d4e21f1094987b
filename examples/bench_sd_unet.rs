//! One UNet step at Stable Diffusion 1.5's shape: `cargo run --release --example bench_sd_unet
//! -- [DIR] [--threads N] [--runs N] [--batch B] [--inputs FILE] [--save FILE]` (DIR: a
//! `unet/` folder, default /work/sd15/unet from `tests/tools/make_sd15_like.py`; 2 threads,
//! batch 2 (guidance: cond and uncond), 64x64 latents, 77 x 768 text states).
//!
//! Prints the median seconds of one `forward_conditional` over `--runs` runs (after one
//! warm-up), and the workspace. `--inputs`: little-endian f32 sample `[B, 4, 64, 64]`, the
//! timestep, then the text states `[B, 77, 768]` (as `benches/sd_reference.py` writes them),
//! else a seeded pattern; `--save`: the last output, f32 little-endian. `--profile`: after the
//! timed runs, one more step timed op by op (wall clock), summed per op kind and shape.

use std::time::Instant;

use tinydiffusion::memory::Reuse;
use tinydiffusion::model::{Model, Op};
use tinydiffusion::weights::LoadOptions;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number =
        |name: &str, default: usize| value(name).map_or(default, |v| v.parse().expect("a number"));
    let dir = std::path::PathBuf::from(
        args.first()
            .filter(|a| !a.starts_with("--"))
            .map_or("/work/sd15/unet", |s| s.as_str()),
    );
    let (threads, runs, batch) = (
        number("--threads", 2),
        number("--runs", 5),
        number("--batch", 2),
    );
    let text = std::fs::read_to_string(dir.join("config.json")).expect("unet/config.json");
    let mut config = tinydiffusion::config::UNetConfig::from_json(&text).expect("config");
    config.sample_size = (64, 64);
    let weights =
        tinydiffusion::model::load::map_file(&dir.join("diffusion_pytorch_model.safetensors"))
            .expect("weights");
    let mut model =
        Model::new(config, weights, LoadOptions::default(), Reuse::Shared).expect("model");
    model.set_threads(threads).expect("threads");
    let (c, h, w) = model.input_shape();
    let (tokens, dim) = (77, 768);
    let sample_len = batch * c * h * w;
    let states_len = batch * tokens * dim;
    let (x, t, states) = match value("--inputs") {
        Some(path) => {
            let bytes = std::fs::read(path).expect("inputs");
            let f: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(f.len(), sample_len + 1 + states_len, "inputs length");
            (
                f[..sample_len].to_vec(),
                f[sample_len],
                f[sample_len + 1..].to_vec(),
            )
        }
        None => {
            let pattern = |n: usize, k: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i * k) % 2000) as f32 / 1000.0 - 1.0)
                    .collect()
            };
            (
                pattern(sample_len, 7919),
                981.0,
                pattern(states_len, 104729),
            )
        }
    };
    let mut out = vec![0.0f32; sample_len];
    let ws_len = model.workspace_len(batch);
    let mut ws = vec![0.0f32; ws_len];
    let step = |ws: &mut [f32], out: &mut [f32]| {
        let t0 = Instant::now();
        model
            .forward_conditional(ws, &x, &[t], &states, out)
            .expect("forward");
        t0.elapsed().as_secs_f64()
    };
    step(&mut ws, &mut out);
    let mut times: Vec<f64> = (0..runs).map(|_| step(&mut ws, &mut out)).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "tinydiffusion UNet step: batch {batch}, {h}x{w} latents, {threads} threads, kernels {}, \
         median {median:.3} s of {runs} (min {:.3}, max {:.3}), {:.1} GFLOP, workspace {:.1} MiB",
        model.kernels_name(),
        times[0],
        times[times.len() - 1],
        model.flops_per_sample() as f64 * batch as f64 / 1e9,
        ws_len as f64 * 4.0 / (1024.0 * 1024.0)
    );
    if args.iter().any(|a| a == "--profile") {
        profile(&model, &mut ws, &x, t, &states, &mut out, batch);
    }
    if let Some(path) = value("--save") {
        let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes).expect("save");
    }
}

/// One step timed op by op, printed per op kind and shape, largest first.
fn profile(
    model: &Model,
    ws: &mut [f32],
    x: &[f32],
    t: f32,
    states: &[f32],
    out: &mut [f32],
    batch: usize,
) {
    let mut times = vec![0.0f64; model.ops().len()];
    let start = Instant::now();
    let clock = move || start.elapsed().as_secs_f64();
    model
        .forward_conditional_profiled(ws, x, &[t], states, out, &mut times, &clock)
        .expect("forward");
    let mut rows: std::collections::BTreeMap<String, (f64, f64, usize)> = Default::default();
    for (op, secs) in model.ops().iter().zip(&times) {
        let key = match op {
            Op::Conv(c) => format!(
                "conv{}x{} s{} {}x{} {}+{}->{}",
                c.shape.kernel,
                c.shape.kernel,
                c.shape.stride,
                c.shape.out_h,
                c.shape.out_w,
                c.shape.in_ca,
                c.shape.in_cb,
                c.shape.out_c
            ),
            Op::Attention(a) => format!(
                "attention {} tok x {} kv, {} ch, {} heads",
                a.tokens, a.kv_tokens, a.channels, a.heads
            ),
            Op::Linear(l) => format!("linear {}x{}->{}", l.rows, l.in_f, l.out_f),
            Op::GroupNorm(g) => format!("group_norm {} px {} ch", g.pixels, g.in_ca + g.in_cb),
            other => other.kind().into(),
        };
        let row = rows.entry(key).or_default();
        row.0 += secs;
        row.1 += op.flops_per_sample() as f64 * batch as f64;
        row.2 += 1;
    }
    let total: f64 = times.iter().sum();
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    println!("profile: {total:.2} s in ops");
    for (key, (secs, flops, n)) in rows.iter().take(60) {
        println!(
            "{secs:>8.2} s {:>5.1}% {:>6.1} GFLOP/s x{n:<3} {key}",
            100.0 * secs / total,
            flops / secs / 1e9
        );
    }
}
