//! The trainer's matrix product on each x86 path, on the shapes a training step of the default
//! MNIST model runs (a conv's forward tile, its input gradient, its weight gradient), against
//! the `gemm` crate and the FMA peak, one thread, measured in the same run. Prints GFLOP/s
//! (median of 7 rounds) and the ratio of the AVX-512 path to the AVX2 one.
//!
//! `cargo bench --features train --bench train_gemm`

use std::time::Instant;

use tinydiffusion::kernels::{fma_probe, KernelPath};
use tinydiffusion::train::layers::gemm::{gemm_on, Strided};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// GFLOP/s of `f`, which does `flops` per call, called often enough for about 0.1 s a round.
fn rate(flops: f64, mut f: impl FnMut()) -> f64 {
    let reps = (1e10 / flops).ceil() as usize;
    let rounds = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64()
        })
        .collect();
    flops * reps as f64 / median(rounds) / 1e9
}

/// `dst = lhs · rhs` with the gemm crate (row-major `lhs` or, with `lhs_t`, its transpose).
#[allow(clippy::too_many_arguments)]
fn gemm_crate(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    dst: &mut [f32],
) {
    let (rs, cs) = if lhs_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    assert!(lhs.len() >= m * k && rhs.len() >= k * n && dst.len() >= m * n);
    // SAFETY: `lhs` is m x k read through (rs, cs), `rhs` k x n and `dst` m x n row-major, all
    // of those sizes (asserted above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.as_ptr(),
            cs,
            rs,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

fn main() {
    if !KernelPath::Avx2.is_available() {
        println!("no AVX2 on this CPU: the trainer runs its portable kernel; nothing to compare");
        return;
    }
    let avx512 = KernelPath::Avx512.is_available();
    let peak_path = if avx512 {
        KernelPath::Avx512
    } else {
        KernelPath::Avx2
    };
    let peak = (0..5)
        .map(|_| {
            let t = Instant::now();
            let (flops, _) = fma_probe(peak_path, 10_000_000).expect("path available");
            flops / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max);
    println!("FMA peak, 1 thread ({peak_path:?}): {peak:.1} GFLOP/s");
    println!(
        "{:<34} {:>8} {:>8} {:>10} {:>8} {:>8}",
        "shape (m x n x k)", "avx2", "avx512", "gemm crate", "512/avx2", "% peak"
    );
    // (what, m, n, k, A transposed)
    let shapes = [
        ("fwd 3x3 32->32, 64 px", 64, 32, 288, false),
        ("fwd 3x3 64->64, 64 px", 64, 64, 576, false),
        ("fwd 3x3 128->64, 64 px", 64, 64, 1152, false),
        ("dx 3x3 96<-32, 64 px", 64, 96, 288, false),
        ("dW 3x3 32->32, 64 px", 288, 32, 64, true),
        ("dW 3x3 64->64, 64 px", 576, 64, 64, true),
        ("fwd 1x1 96->32, 64 px", 64, 32, 96, false),
    ];
    for (what, m, n, k, a_t) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        let av = if a_t {
            Strided {
                data: &a,
                rs: 1,
                cs: m,
            }
        } else {
            Strided {
                data: &a,
                rs: k,
                cs: 1,
            }
        };
        let flops = 2.0 * (m * n * k) as f64;
        let mut on = |path| rate(flops, || gemm_on(path, m, n, k, av, &b, n, &mut c, n, true));
        let r2 = on(KernelPath::Avx2);
        let r512 = if avx512 {
            on(KernelPath::Avx512)
        } else {
            f64::NAN
        };
        let rc = rate(flops, || gemm_crate(m, n, k, &a, a_t, &b, &mut c));
        let best = if avx512 { r512 } else { r2 };
        println!(
            "{:<34} {r2:>8.1} {r512:>8.1} {rc:>10.1} {:>7.2}x {:>7.0}%",
            format!("{what} ({m}x{n}x{k})"),
            r512 / r2,
            100.0 * best / peak
        );
    }
}
