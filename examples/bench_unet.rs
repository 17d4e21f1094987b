//! Whole-forward benchmark of the CIFAR-10 DDPM UNet (google/ddpm-cifar10-32's architecture,
//! seeded random f16 weights): `cargo run --release --example bench_unet [-- --threads N]
//! [--kernels PATH] [--runs N]`.
//!
//! Prints, for batch 1 and 8: the median ms per forward over repeated runs, GFLOP/s, and the
//! fraction of this machine's f32 FMA peak, measured in this binary with an FMA loop on the
//! same number of threads; for the direct convolution and for Winograd F(4x4, 3x3) (the
//! default), in the same run (`--algo direct|winograd|both`, default both). GFLOP/s counts the
//! direct convolution's FLOPs, so Winograd's figure is an *effective* rate and may pass 100%
//! of the FMA peak: it does fewer multiplies for the same result.

use std::time::Instant;

use tinydiffusion::kernels::{fma_probe, KernelPath};
use tinydiffusion::testing::{random_model, CIFAR10_CONFIG};

/// CPU time of this process so far (user + system, from /proc; 10 ms ticks), seconds. With
/// other jobs on the machine, wall time overstates our cost; CPU time does not.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// FMA peak in GFLOP/s with `threads` threads running the probe at once (best of 5).
fn fma_peak(path: KernelPath, threads: usize) -> (f64, f64) {
    let iters = 20_000_000 / (path_lanes(path) / 4).max(1);
    let (mut best, mut flops_total, c0) = (0.0f64, 0.0f64, cpu_seconds());
    for _ in 0..5 {
        let t0 = Instant::now();
        let flops: f64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || fma_probe(path, iters).unwrap()))
                .collect();
            hs.into_iter()
                .map(|h| std::hint::black_box(h.join().unwrap()).0)
                .sum()
        });
        flops_total += flops;
        best = best.max(flops / t0.elapsed().as_secs_f64() / 1e9);
    }
    // Per CPU-second of one thread, times the threads: what the threads would reach alone.
    let per_cpu = flops_total / (cpu_seconds() - c0).max(1e-9) / 1e9 * threads as f64;
    (best, per_cpu)
}

fn path_lanes(path: KernelPath) -> usize {
    match path {
        KernelPath::Avx512 => 16,
        KernelPath::Avx2 => 8,
        _ => 4,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut model = random_model(CIFAR10_CONFIG, 42).expect("build the CIFAR-10 model");
    if let Some(t) = flag("--threads") {
        model.set_threads(t.parse().expect("--threads N")).unwrap();
    }
    if let Some(k) = flag("--kernels") {
        model
            .set_kernels(KernelPath::from_name(&k).unwrap())
            .unwrap();
    }
    let algos: Vec<bool> = match flag("--algo").as_deref() {
        None | Some("both") => vec![false, true],
        Some("direct") => vec![false],
        Some("winograd") => vec![true],
        Some(other) => panic!("--algo {other}: expected direct, winograd or both"),
    };
    let runs: usize = flag("--runs").map(|r| r.parse().unwrap()).unwrap_or(0);
    let threads = model.threads();
    let path = model.kernels();
    let peak_path = if path == KernelPath::Scalar {
        KernelPath::detect()
    } else {
        path
    };
    let (peak, peak_cpu) = fma_peak(peak_path, threads);
    let flops = model.flops_per_sample() as f64;
    println!(
        "CIFAR-10 DDPM UNet: {:.1}M parameters, {:.2} GFLOP per sample; kernels {}, {} threads",
        model.parameters() as f64 / 1e6,
        flops / 1e9,
        model.kernels_name(),
        threads
    );
    println!(
        "f32 FMA peak ({} threads, {} loop): {:.0} GFLOP/s wall, {:.0} GFLOP/s per {} CPU-seconds",
        threads,
        peak_path.name(),
        peak,
        peak_cpu,
        threads
    );
    println!(
        "{:>9} {:>6} {:>12} {:>12} {:>10} {:>10} {:>14} {:>12}",
        "conv",
        "batch",
        "ms/forward",
        "ms/image",
        "GFLOP/s",
        "of peak",
        "CPU-ms/forward",
        "of CPU peak"
    );
    let (c, h, w) = model.input_shape();
    let mut medians = Vec::new();
    for (algo, batch) in algos.iter().flat_map(|&a| [1usize, 8].map(move |b| (a, b))) {
        model.set_winograd(algo);
        let x: Vec<f32> = (0..batch * c * h * w)
            .map(|i| ((i * 7919 % 2000) as f32 / 1000.0) - 1.0)
            .collect();
        let t: Vec<f32> = (0..batch).map(|b| (37 + 100 * b) as f32).collect();
        let mut out = vec![0.0f32; x.len()];
        let mut ws = vec![0.0f32; model.workspace_len(batch)];
        let reps = if runs > 0 {
            runs
        } else if batch == 1 {
            30
        } else {
            8
        };
        for _ in 0..2 {
            model.forward(&mut ws, &x, &t, None, &mut out).unwrap();
        }
        let c0 = cpu_seconds();
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                model.forward(&mut ws, &x, &t, None, &mut out).unwrap();
                t0.elapsed().as_secs_f64()
            })
            .collect();
        // CPU time per forward, spread over the threads: the wall time it would take alone.
        let cpu = (cpu_seconds() - c0) / reps as f64 / threads as f64;
        let m = median(&mut times);
        let gflops = flops * batch as f64 / m / 1e9;
        let gflops_cpu = flops * batch as f64 / cpu / 1e9;
        medians.push((algo, batch, m));
        println!(
            "{:>9} {:>6} {:>12.2} {:>12.2} {:>10.1} {:>9.1}% {:>14.2} {:>11.1}%",
            if algo { "winograd" } else { "direct" },
            batch,
            m * 1e3,
            m * 1e3 / batch as f64,
            gflops,
            100.0 * gflops / peak,
            cpu * 1e3,
            100.0 * gflops_cpu / peak_cpu
        );
        assert!(out.iter().all(|v| v.is_finite()), "non-finite output");
    }
    for batch in [1usize, 8] {
        let get = |a: bool| {
            medians
                .iter()
                .find(|&&(x, b, _)| x == a && b == batch)
                .map(|m| m.2)
        };
        if let (Some(d), Some(w)) = (get(false), get(true)) {
            println!("batch {batch}: winograd {:.2}x faster than direct", d / w);
        }
    }
}
