//! Training-step speed: median time of one full step (data, forward, loss, backward, clipping,
//! AdamW, EMA), single thread, on the fixtures' tiny-rgb16 model and on the default MNIST model
//! (`weights/config.json`, batch 32); `benches/torch_train_step.py` times the same in PyTorch.
//! Reports wall time and the thread's CPU time (Linux `/proc/thread-self/schedstat`), which
//! stays meaningful on a shared, loaded machine.
//!
//! `cargo bench --features train --bench train_step [-- [STEPS] [--threads N]]` (default 1
//! thread; `--threads N` installs the trainer's team as `train --threads N` does).

use std::time::Instant;

use tinydiffusion::train::data::Dataset;
use tinydiffusion::train::rng::{Purpose, Stream};
use tinydiffusion::train::trainer::{Init, TrainOptions, Trainer};

/// CPU time of this thread in seconds (0 where unavailable).
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |ns| ns * 1e-9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn bench(
    name: &str,
    config: &str,
    (c, s): (usize, usize),
    labels: bool,
    batch: usize,
    steps: usize,
) {
    // `TRAIN_BENCH_ONLY=mnist` (or `tiny-rgb16`): one model only (e.g. under a profiler).
    if std::env::var("TRAIN_BENCH_ONLY").is_ok_and(|only| only != name) {
        return;
    }
    let mut r = Stream::new(1, Purpose::Noise, 0);
    let n = 64;
    let images = (0..n * c * s * s)
        .map(|_| (r.uniform() * 2.0 - 1.0) as f32)
        .collect();
    let labels = labels.then(|| (0..n as i64).map(|i| i % 10).collect());
    let data = Dataset {
        channels: c,
        height: s,
        width: s,
        images,
        labels,
    };
    let opts = TrainOptions {
        batch,
        ..Default::default()
    };
    let mut tr = Trainer::new(config, Init::Seeded(0), data, opts).unwrap();
    tr.train_step().unwrap(); // warm-up
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let (t, c0) = (Instant::now(), thread_cpu());
        tr.train_step().unwrap();
        wall.push(t.elapsed().as_secs_f64());
        cpu.push(thread_cpu() - c0);
    }
    let (w, c) = (median(wall), median(cpu));
    // Forward multiply-adds x 3 (forward, input gradient, weight gradient).
    let flops = tinydiffusion::model::describe_config(&tr.config)
        .expect("the run's config")
        .flops_per_sample();
    let gflop = 3.0 * flops as f64 * batch as f64 * 1e-9;
    println!(
        "{name:<11} batch {batch:>3}: median {:>8.1} ms/step wall, {:>8.1} ms CPU ({:.2} steps/s by CPU time, ~{:.1} GFLOP/s); {} params, {:.1} MiB training memory",
        w * 1e3,
        c * 1e3,
        1.0 / c.max(1e-9),
        gflop / c.max(1e-9),
        tr.graph.params.count(),
        tr.memory_bytes() as f64 / 1048576.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut steps = 9;
    let mut threads = 1;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--threads" {
            threads = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1);
            i += 1;
        } else if let Ok(v) = args[i].parse() {
            steps = v;
        }
        i += 1;
    }
    tinydiffusion::train::layers::gemm::set_threads(threads).expect("thread team");
    println!("{threads} thread(s)");
    let rgb16 = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-rgb16/config.json"
    ))
    .unwrap();
    for batch in [2, 16] {
        bench("tiny-rgb16", &rgb16, (3, 16), false, batch, steps);
    }
    // The default model of `sample` (weights/), at its training batch.
    let mnist =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/weights/config.json"))
            .expect("weights/config.json (the default MNIST model)");
    bench("mnist", &mnist, (1, 32), true, 32, steps.min(5));
}
