//! Forward timing of a diffusers UNet2DModel folder, for `benches/engines_reference.py`:
//! `cargo run --release --example bench_folder -- --model DIR [--batch B] [--threads N]
//! [--runs R] [--warmup W] [--input FILE --output FILE]`.
//!
//! The input is the raw little-endian f32 sample `[B, C, H, W]` (default: a fixed pattern);
//! timestep i of the batch is `10 + 97 i`, the same as the script gives the other engines.
//! `--output` writes the first forward's `[B, C, H, W]` result the same way, so the script can
//! check it against PyTorch before the timing counts. Prints one line:
//! `batch B threads N median_ms M runs R`.

use std::time::Instant;

use tinydiffusion::Model;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_folder: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num = |name: &str, default: usize| -> Result<usize, String> {
        flag(name)
            .map(|v| v.parse().map_err(|_| format!("{name} {v}: not a count")))
            .unwrap_or(Ok(default))
    };
    let dir = flag("--model").ok_or("--model DIR is required")?;
    let mut model = Model::load(&dir).map_err(|e| format!("{dir}: {e}"))?;
    if let Some(t) = flag("--threads") {
        let n = t
            .parse()
            .map_err(|_| format!("--threads {t}: not a count"))?;
        model.set_threads(n).map_err(|e| e.to_string())?;
    }
    let batch = num("--batch", 1)?.max(1);
    let runs = num("--runs", 10)?.max(1);
    let warmup = num("--warmup", 2)?;

    let (c, h, w) = model.input_shape();
    let len = batch * c * h * w;
    let x: Vec<f32> = match flag("--input") {
        Some(path) => {
            let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
            if bytes.len() != len * 4 {
                return Err(format!(
                    "{path}: {} bytes, expected {} (f32 [{batch}, {c}, {h}, {w}])",
                    bytes.len(),
                    len * 4
                ));
            }
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        None => (0..len)
            .map(|i| ((i * 7919 % 2000) as f32 / 1000.0) - 1.0)
            .collect(),
    };
    let t: Vec<f32> = (0..batch).map(|i| (10 + 97 * i) as f32).collect();
    let mut out = vec![0.0f32; len];
    let mut ws = vec![0.0f32; model.workspace_len(batch)];

    model
        .forward(&mut ws, &x, &t, None, &mut out)
        .map_err(|e| e.to_string())?;
    if let Some(path) = flag("--output") {
        let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).map_err(|e| format!("{path}: {e}"))?;
    }
    for _ in 0..warmup {
        model
            .forward(&mut ws, &x, &t, None, &mut out)
            .map_err(|e| e.to_string())?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        model
            .forward(&mut ws, &x, &t, None, &mut out)
            .map_err(|e| e.to_string())?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = if runs % 2 == 1 {
        times[runs / 2]
    } else {
        0.5 * (times[runs / 2 - 1] + times[runs / 2])
    };
    println!(
        "batch {batch} threads {} median_ms {:.3} runs {runs}",
        model.threads(),
        median * 1e3
    );
    Ok(())
}
