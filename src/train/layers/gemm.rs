//! The one matrix-multiply the convolutions are built on:
//! `C[m, n] (+)= A[m, k] · B[k, n]`, `B` and `C` row-major, `A` read through two strides so
//! that `A` or `A^T` of a row-major buffer can be passed without a copy.
//!
//! A 4x8 register-tile micro-kernel (fixed-size arrays LLVM keeps in vector registers) with a
//! plain loop for the edges. This is where an explicit SIMD kernel (AVX2 6x16, NEON 8x8) would
//! plug in later; every conv pass goes through here.

/// `A[i, p] = a[i * rs + p * cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

const MR: usize = 4;
const NR: usize = 8;

/// `acc += a * b`, eight lanes.
#[inline(always)]
fn fma8(acc: &mut [f32; NR], a: f32, b: &[f32; NR]) {
    for l in 0..NR {
        acc[l] += a * b[l];
    }
}

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
    let (m4, n8) = (m - m % MR, n - n % NR);
    for i in (0..m4).step_by(MR) {
        for j in (0..n8).step_by(NR) {
            // Four named 8-wide accumulators: kept in vector registers at any opt-level.
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
                    fma8(&mut c0, a0, brow);
                    fma8(&mut c1, a1, brow);
                    fma8(&mut c2, a2, brow);
                    fma8(&mut c3, a3, brow);
                }
            } else if a.rs == 1 {
                // A transposed: the four values of one step are contiguous.
                for (bchunk, achunk) in b_rows.zip(a.data[i..].chunks(a.cs)) {
                    let brow: &[f32; NR] = bchunk[..NR].try_into().unwrap_or(&[0.0; NR]);
                    let av: &[f32; MR] = achunk[..MR].try_into().unwrap_or(&[0.0; MR]);
                    fma8(&mut c0, av[0], brow);
                    fma8(&mut c1, av[1], brow);
                    fma8(&mut c2, av[2], brow);
                    fma8(&mut c3, av[3], brow);
                }
            } else {
                for (p, bchunk) in b_rows.enumerate() {
                    let brow: &[f32; NR] = bchunk[..NR].try_into().unwrap_or(&[0.0; NR]);
                    let at = |r: usize| a.data[(i + r) * a.rs + p * a.cs];
                    fma8(&mut c0, at(0), brow);
                    fma8(&mut c1, at(1), brow);
                    fma8(&mut c2, at(2), brow);
                    fma8(&mut c3, at(3), brow);
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
    // Edges: the last n % 8 columns of the first m4 rows, then the last m % 4 rows.
    let edge = |i: usize, j: usize, c: &mut [f32]| {
        let mut s = 0.0f32;
        for p in 0..k {
            s += a.data[i * a.rs + p * a.cs] * b[p * ldb + j];
        }
        let d = &mut c[i * ldc + j];
        if accumulate {
            *d += s;
        } else {
            *d = s;
        }
    };
    for i in 0..m4 {
        for j in n8..n {
            edge(i, j, c);
        }
    }
    for i in m4..m {
        for j in 0..n {
            edge(i, j, c);
        }
    }
}
