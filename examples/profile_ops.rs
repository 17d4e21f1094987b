//! Where a forward pass of the CIFAR-10 UNet spends its time, per op kind and conv shape:
//! `cargo run --release --example profile_ops [-- --threads N --kernels PATH --batch B --direct]`
//! (`--direct`: no Winograd convolutions).

use std::collections::BTreeMap;

use tinydiffusion::kernels::KernelPath;
use tinydiffusion::model::Op;
use tinydiffusion::testing::{random_model, CIFAR10_CONFIG};

/// CPU time of the calling thread (ns precision), or of the whole process with `--wall` off and
/// several threads; `--wall` uses wall time.
fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1e-9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut model = random_model(CIFAR10_CONFIG, 42).unwrap();
    if let Some(t) = flag("--threads") {
        model.set_threads(t.parse().unwrap()).unwrap();
    }
    if let Some(k) = flag("--kernels") {
        model
            .set_kernels(KernelPath::from_name(&k).unwrap())
            .unwrap();
    }
    if args.iter().any(|a| a == "--direct") {
        model.set_winograd(false);
    }
    let batch: usize = flag("--batch").map(|b| b.parse().unwrap()).unwrap_or(1);
    let runs: usize = flag("--runs").map(|b| b.parse().unwrap()).unwrap_or(10);
    let (c, h, w) = model.input_shape();
    let x: Vec<f32> = (0..batch * c * h * w)
        .map(|i| ((i * 7919 % 2000) as f32 / 1000.0) - 1.0)
        .collect();
    let mut out = vec![0.0f32; x.len()];
    let mut ws = vec![0.0f32; model.workspace_len(batch)];
    let mut times = vec![0.0f64; model.ops().len()];
    model.forward(&mut ws, &x, &[10.0], None, &mut out).unwrap();
    let start = std::time::Instant::now();
    let wall = move || start.elapsed().as_secs_f64();
    // Wall time by default (the per-op minimum over runs filters other jobs out); `--cpu`: CPU
    // time of this thread (only meaningful with one thread; updated at scheduler ticks).
    let clock: &dyn Fn() -> f64 = if args.iter().any(|a| a == "--cpu") {
        &thread_cpu
    } else {
        &wall
    };
    // Per op, the fastest of the runs: other jobs on the machine only ever add time.
    times.fill(f64::INFINITY);
    let mut one = vec![0.0f64; times.len()];
    for _ in 0..runs {
        one.fill(0.0);
        model
            .forward_profiled(&mut ws, &x, &[10.0], None, &mut out, &mut one, clock)
            .unwrap();
        for (t, o) in times.iter_mut().zip(&one) {
            *t = t.min(*o);
        }
    }
    let mut rows: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    for (op, t) in model.ops().iter().zip(&times) {
        let key = match op {
            Op::Conv(cv) => {
                let s = cv.shape;
                format!(
                    "conv{}x{} s{} {}x{} {}+{}->{}{}",
                    s.kernel,
                    s.kernel,
                    s.stride,
                    s.out_h,
                    s.out_w,
                    s.in_ca,
                    s.in_cb,
                    s.out_c,
                    if s.upsample { " up" } else { "" }
                )
            }
            Op::GroupNorm(g) => format!("group_norm {} px {} ch", g.pixels, g.in_ca + g.in_cb),
            Op::Attention(a) => format!("attention {} tok {} ch", a.tokens, a.channels),
            Op::Linear(l) => format!("linear {}x{}->{}", l.rows, l.in_f, l.out_f),
            other => other.kind().into(),
        };
        let e = rows.entry(key).or_default();
        e.0 += t;
        e.1 += op.flops_per_sample() as f64 * batch as f64;
        e.2 += 1;
    }
    let total: f64 = times.iter().sum::<f64>();
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.partial_cmp(&a.1 .0).unwrap());
    println!(
        "{} threads, {} kernels, batch {batch}: {:.2} ms per forward",
        model.threads(),
        model.kernels_name(),
        total * 1e3
    );
    for (k, (t, f, n)) in rows {
        println!(
            "{:>8.3} ms {:>5.1}% {:>7.1} GFLOP/s  x{:<3} {}",
            t * 1e3,
            100.0 * t / total,
            f / t / 1e9,
            n,
            k
        );
    }
}
