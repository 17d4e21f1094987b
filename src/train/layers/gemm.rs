//! The one matrix-multiply the convolutions are built on:
//! `C[m, n] (+)= A[m, k] · B[k, n]`, `B` and `C` row-major, `A` read through two strides so
//! that `A` or `A^T` of a row-major buffer can be passed without a copy.
//!
//! A 4x16 register-tile micro-kernel (fixed-size arrays LLVM keeps in vector registers) with a
//! plain loop for the edges. On x86-64 with AVX2+FMA (detected at run time) the same source is
//! compiled a second time with those features and fused multiply-adds; elsewhere the portable
//! copy runs.
//!
//! Threads: [`set_threads`] installs a process-wide team; a large product is then split into
//! bands of rows of `C`, one task each. Every element of `C` is still summed by one thread in
//! the same order, so the result does not depend on the thread count (bit for bit).

use std::sync::OnceLock;

use crate::kernels::threads::ThreadPool;
use crate::kernels::Parallel;

/// `A[i, p] = a[i * rs + p * cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

const MR: usize = 4;
const NR: usize = 16;

static TEAM: OnceLock<ThreadPool> = OnceLock::new();

/// Uses `threads` threads (the caller plus `threads - 1` workers) for every large product from
/// now on. Only the first call with `threads > 1` takes effect (the team lives for the process).
pub fn set_threads(threads: usize) -> std::io::Result<()> {
    if threads > 1 && TEAM.get().is_none() {
        let team = ThreadPool::new(threads)?;
        let _ = TEAM.set(team);
    }
    Ok(())
}

/// Below this many multiply-adds a product runs on the calling thread: waking the team costs
/// more than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// `C = A · B` (or `C += A · B` when `accumulate`), with `ldb`, `ldc` the row strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let team = TEAM
        .get()
        .filter(|_| m * n * k >= PARALLEL_MIN_MACS && m >= 2 * MR);
    let Some(team) = team else {
        return gemm_rows(m, n, k, a, b, ldb, c, ldc, accumulate);
    };
    // Bands of whole micro-tiles, a few per thread so an unlucky thread does not hold up the rest.
    let tasks = (team.threads() * 2).min(m / MR);
    let band = (m / tasks).next_multiple_of(MR);
    let tasks = m.div_ceil(band);
    assert!(c.len() >= (m - 1) * ldc + n, "C too short");
    let c_base = c.as_mut_ptr() as usize;
    team.run(tasks, &|t, _| {
        let (i0, i1) = (t * band, ((t + 1) * band).min(m));
        let rows = i1 - i0;
        let len = (rows - 1) * ldc + n;
        // SAFETY: `c` holds at least `(m - 1) * ldc + n` floats (asserted above) and is
        // mutably borrowed for the whole `run`, which returns only when every task is done.
        // Task `t` touches rows `i0..i1` only, elements `[i0 * ldc, (i1 - 1) * ldc + n)`;
        // since `n <= ldc` these ranges of different tasks are disjoint.
        let c_band =
            unsafe { std::slice::from_raw_parts_mut((c_base as *mut f32).add(i0 * ldc), len) };
        let a_band = Strided {
            data: &a.data[i0 * a.rs..],
            ..a
        };
        gemm_rows(rows, n, k, a_band, b, ldb, c_band, ldc, accumulate);
    });
}

#[allow(clippy::too_many_arguments)]
fn gemm_rows(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { gemm_avx2_fma(m, n, k, a, b, ldb, c, ldc, accumulate) };
    }
    gemm_kernel::<false>(m, n, k, a, b, ldb, c, ldc, accumulate)
}

/// The portable kernel compiled with AVX2 and FMA enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx2_fma(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    gemm_kernel::<true>(m, n, k, a, b, ldb, c, ldc, accumulate)
}

/// `acc += a * b`, sixteen lanes; fused where the caller was compiled with FMA.
#[inline(always)]
fn fma16<const FUSED: bool>(acc: &mut [f32; NR], a: f32, b: &[f32; NR]) {
    for l in 0..NR {
        acc[l] = if FUSED {
            a.mul_add(b[l], acc[l])
        } else {
            acc[l] + a * b[l]
        };
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_kernel<const FUSED: bool>(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let (m4, n16) = (m - m % MR, n - n % NR);
    for i in (0..m4).step_by(MR) {
        for j in (0..n16).step_by(NR) {
            // Four named 16-wide accumulators: kept in vector registers at any opt-level.
            let (mut c0, mut c1, mut c2, mut c3) =
                ([0.0f32; NR], [0.0f32; NR], [0.0f32; NR], [0.0f32; NR]);
            // Rows of B walked by iterator: no index arithmetic (nor overflow checks) inside.
            let b_rows = b[j..].chunks(ldb).take(k);
            if a.cs == 1 {
                // A row-major: four contiguous rows.
                let row = |r: usize| &a.data[(i + r) * a.rs..(i + r) * a.rs + k];
                let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                for ((((bchunk, &a0), &a1), &a2), &a3) in b_rows.zip(r0).zip(r1).zip(r2).zip(r3) {
                    let brow: &[f32; NR] = bchunk[..NR].try_into().unwrap_or(&[0.0; NR]);
                    fma16::<FUSED>(&mut c0, a0, brow);
                    fma16::<FUSED>(&mut c1, a1, brow);
                    fma16::<FUSED>(&mut c2, a2, brow);
                    fma16::<FUSED>(&mut c3, a3, brow);
                }
            } else if a.rs == 1 {
                // A transposed: the four values of one step are contiguous.
                for (bchunk, achunk) in b_rows.zip(a.data[i..].chunks(a.cs)) {
                    let brow: &[f32; NR] = bchunk[..NR].try_into().unwrap_or(&[0.0; NR]);
                    let av: &[f32; MR] = achunk[..MR].try_into().unwrap_or(&[0.0; MR]);
                    fma16::<FUSED>(&mut c0, av[0], brow);
                    fma16::<FUSED>(&mut c1, av[1], brow);
                    fma16::<FUSED>(&mut c2, av[2], brow);
                    fma16::<FUSED>(&mut c3, av[3], brow);
                }
            } else {
                for (p, bchunk) in b_rows.enumerate() {
                    let brow: &[f32; NR] = bchunk[..NR].try_into().unwrap_or(&[0.0; NR]);
                    let at = |r: usize| a.data[(i + r) * a.rs + p * a.cs];
                    fma16::<FUSED>(&mut c0, at(0), brow);
                    fma16::<FUSED>(&mut c1, at(1), brow);
                    fma16::<FUSED>(&mut c2, at(2), brow);
                    fma16::<FUSED>(&mut c3, at(3), brow);
                }
            }
            for (r, acc) in [c0, c1, c2, c3].iter().enumerate() {
                let dst = &mut c[(i + r) * ldc + j..(i + r) * ldc + j + NR];
                if accumulate {
                    for l in 0..NR {
                        dst[l] += acc[l];
                    }
                } else {
                    dst.copy_from_slice(acc);
                }
            }
        }
    }
    // Edges: the last n % 16 columns of the first m4 rows, then the last m % 4 rows.
    let edge = |i: usize, j: usize, c: &mut [f32]| {
        let mut s = 0.0f32;
        for p in 0..k {
            let (x, y) = (a.data[i * a.rs + p * a.cs], b[p * ldb + j]);
            s = if FUSED { x.mul_add(y, s) } else { s + x * y };
        }
        let d = &mut c[i * ldc + j];
        if accumulate {
            *d += s;
        } else {
            *d = s;
        }
    };
    for i in 0..m4 {
        for j in n16..n {
            edge(i, j, c);
        }
    }
    for i in m4..m {
        for j in 0..n {
            edge(i, j, c);
        }
    }
}
