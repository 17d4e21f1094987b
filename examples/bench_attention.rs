//! `cargo run --release --example bench_attention [-- PATH]`: the SIMD attention kernel at
//! Stable Diffusion 1.5's shapes (heads 8: self-attention at 64x64, 32x32, 16x16 latents and
//! the 64x64 cross-attention over 77 text tokens), batch 1, on 1 thread and on all cores.
//! Prints the median GFLOP/s of 7 runs (4 * tokens * kv_tokens * channels FLOP per call).
//! `PATH` picks a kernel path by name (`avx512`, `avx2`, ...); the detected one by default.

use tinydiffusion::kernels::threads::ThreadPool;
use tinydiffusion::kernels::{AttentionArgs, Exec, Sequential, SCRATCH_PER_THREAD};
use tinydiffusion::testing::{kernel_path_from_args, median_secs_per_call, rand_vec};

fn main() {
    let path = kernel_path_from_args();
    let table = path.table().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = ThreadPool::new(cores).unwrap();
    let mut scratch1 = vec![0.0f32; SCRATCH_PER_THREAD];
    let mut scratch_n = vec![0.0f32; cores * SCRATCH_PER_THREAD];
    println!("path {}, {cores} cores", path.name());
    // (tokens, kv_tokens, channels, heads)
    for (n, m, ch, heads) in [
        (4096, 4096, 320, 8),
        (1024, 1024, 640, 8),
        (256, 256, 1280, 8),
        (4096, 77, 320, 8),
    ] {
        let q = rand_vec(n * ch, 1);
        let k = rand_vec(m * ch, 2);
        let v = rand_vec(m * ch, 3);
        let args = AttentionArgs {
            batch: 1,
            tokens: n,
            kv_tokens: m,
            channels: ch,
            heads,
            causal: false,
            q: &q,
            k: &k,
            v: &v,
        };
        let mut scores = vec![0.0f32; m];
        let mut out = vec![0.0f32; n * ch];
        let flop = 4.0 * (n * m * ch) as f64;
        let mut line = format!(
            "tokens {n:5} kv {m:5} ch {ch:5} heads {heads} (d {:3}):",
            ch / heads
        );
        for threads in [1, cores] {
            let ex = if threads == 1 {
                Exec::new(&Sequential, &mut scratch1)
            } else {
                Exec::new(&pool, &mut scratch_n)
            };
            let reps = ((2e9 / flop) as usize).max(1);
            let med = median_secs_per_call(reps, || {
                (table.attention)(&args, &mut scores, &mut out, &ex)
            });
            line += &format!(
                "  {threads}t {:6.1} GFLOP/s ({:7.2} ms)",
                flop / med / 1e9,
                med * 1e3
            );
        }
        println!("{line}");
    }
}
