//! The trainer's matrix product on every kernel path this CPU has: the AVX-512 and AVX2 paths
//! must give the same bits (so a training run's weights do not depend on the machine's vector
//! width), and every path must match an f64 reference. Shapes cover partial register tiles in
//! both dimensions, masked and padded edge columns, reductions longer than one block, the
//! three layouts of `A` and both accumulate modes.
#![cfg(feature = "train")]

use tinydiffusion::kernels::KernelPath;
use tinydiffusion::train::layers::gemm::{gemm_on, Strided};
use tinydiffusion::train::rng::{Purpose, Stream};

fn randn(seed: u64, n: usize) -> Vec<f32> {
    let mut s = Stream::new(seed, Purpose::Noise, n as u64);
    (0..n).map(|_| s.gaussian() as f32).collect()
}

/// `A` as `[m, k]` row-major, its transpose, or with both strides > 1.
#[derive(Clone, Copy, Debug)]
enum Layout {
    RowMajor,
    Transposed,
    Strided,
}

#[test]
fn every_path_matches_the_reference_and_the_x86_paths_agree_bit_for_bit() {
    let paths: Vec<KernelPath> = [KernelPath::Avx512, KernelPath::Avx2, KernelPath::Scalar]
        .into_iter()
        .filter(|p| p.is_available())
        .collect();
    let mut cases = 0;
    for (m, n, k) in [
        (1, 1, 1),
        (5, 7, 3),
        (12, 16, 64),
        (13, 17, 65),
        (64, 32, 288),
        (25, 33, 600),
        (7, 48, 1100),
        (30, 100, 40),
    ] {
        for layout in [Layout::RowMajor, Layout::Transposed, Layout::Strided] {
            for accumulate in [false, true] {
                let (rs, cs) = match layout {
                    Layout::RowMajor => (k, 1),
                    Layout::Transposed => (1, m),
                    Layout::Strided => (2 * k + 1, 2),
                };
                let a = randn(1, (m - 1) * rs + (k - 1) * cs + 1);
                let ldb = n + 3;
                let b = randn(2, k * ldb);
                let ldc = n + 5;
                let c0 = randn(3, m * ldc);
                let av = Strided { data: &a, rs, cs };
                let mut reference = vec![0.0f64; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k)
                            .map(|p| a[i * rs + p * cs] as f64 * b[p * ldb + j] as f64)
                            .sum();
                        reference[i * n + j] = s + if accumulate {
                            c0[i * ldc + j] as f64
                        } else {
                            0.0
                        };
                    }
                }
                let mut x86_result: Option<Vec<f32>> = None;
                for &path in &paths {
                    let mut c = c0.clone();
                    gemm_on(path, m, n, k, av, &b, ldb, &mut c, ldc, accumulate);
                    let what =
                        format!("{path:?} m {m} n {n} k {k} {layout:?} accumulate {accumulate}");
                    for i in 0..m {
                        // Padding columns of `C` untouched.
                        assert_eq!(
                            c[i * ldc + n..(i + 1) * ldc],
                            c0[i * ldc + n..(i + 1) * ldc],
                            "{what}"
                        );
                        for j in 0..n {
                            let (got, want) = (c[i * ldc + j] as f64, reference[i * n + j]);
                            assert!(
                                (got - want).abs() <= 1e-4 * (1.0 + want.abs()) * (k as f64).sqrt(),
                                "{what}: C[{i},{j}] {got} vs {want}"
                            );
                        }
                    }
                    if matches!(path, KernelPath::Avx512 | KernelPath::Avx2) {
                        match &x86_result {
                            None => x86_result = Some(c),
                            Some(first) => assert!(
                                first
                                    .iter()
                                    .zip(&c)
                                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                                "{what}: differs from the other x86 path"
                            ),
                        }
                    }
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 48);
}
