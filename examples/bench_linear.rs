//! `cargo run --release --example bench_linear [-- PATH]`: the SIMD linear (f16 weights, f32
//! activations) at Stable Diffusion 1.5's UNet shapes, on 1 thread and on all cores. Prints the
//! median GFLOP/s of 7 runs (2 * rows * in * out FLOP per call). `PATH` picks a kernel path by
//! name (`avx512`, `avx2`, ...); the detected one by default.

use std::time::Instant;

use half::f16;
use tinydiffusion::kernels::threads::ThreadPool;
use tinydiffusion::kernels::{Exec, LinearArgs, Sequential, SCRATCH_PER_THREAD};
use tinydiffusion::testing::{kernel_path_from_args, median_secs_per_call, rand_vec};

fn main() {
    let path = kernel_path_from_args();
    let table = path.table().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = ThreadPool::new(cores).unwrap();
    let mut scratch1 = vec![0.0f32; SCRATCH_PER_THREAD];
    let mut scratch_n = vec![0.0f32; cores * SCRATCH_PER_THREAD];
    // The FMA loop's rate on one thread: the ceiling for the 1-thread figures.
    let t = Instant::now();
    let (flops, keep) = tinydiffusion::kernels::fma_probe(path, 20_000_000).unwrap();
    let peak = flops / t.elapsed().as_secs_f64() / 1e9;
    println!(
        "path {}, {cores} cores, FMA peak {peak:.1} GFLOP/s per thread ({keep:.0})",
        path.name()
    );
    // (rows, in, out): batch 2 at 64x64, 32x32 and 16x16 latents.
    for (rows, in_f, out_f) in [
        (8192usize, 320usize, 320usize),
        (8192, 320, 2560),
        (8192, 1280, 320),
        (2048, 640, 640),
        (2048, 640, 5120),
        (512, 1280, 1280),
    ] {
        let input = rand_vec(rows * in_f, 1);
        let weight: Vec<f16> = rand_vec(out_f.div_ceil(32) * 32 * in_f, 2)
            .into_iter()
            .map(|x| f16::from_f32(x * 0.05))
            .collect();
        let bias = vec![f16::from_f32(0.1); out_f];
        let args = LinearArgs {
            rows,
            in_f,
            out_f,
            input: &input,
            weight: &weight,
            bias: &bias,
            residual: &[],
            out_scale: 1.0,
        };
        let mut out = vec![0.0f32; rows * out_f];
        let flop = 2.0 * (rows * in_f * out_f) as f64;
        let mut line = format!("rows {rows:5} {in_f:5} -> {out_f:5}:");
        for threads in [1, cores] {
            let ex = if threads == 1 {
                Exec::new(&Sequential, &mut scratch1)
            } else {
                Exec::new(&pool, &mut scratch_n)
            };
            let reps = ((4e9 / flop) as usize).max(1);
            let med = median_secs_per_call(reps, || (table.linear)(&args, &mut out, &ex));
            line += &format!(
                "  {threads}t {:6.1} GFLOP/s ({:7.2} ms)",
                flop / med / 1e9,
                med * 1e3
            );
        }
        println!("{line}");
    }
}
