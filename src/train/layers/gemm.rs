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
            let mut acc = [[0.0f32; NR]; MR];
            let bcols = &b[j..];
            if a.cs == 1 {
                // A row-major: four contiguous rows.
                let rows: [&[f32]; MR] =
                    core::array::from_fn(|r| &a.data[(i + r) * a.rs..(i + r) * a.rs + k]);
                for p in 0..k {
                    let brow: [f32; NR] =
                        bcols[p * ldb..p * ldb + NR].try_into().unwrap_or([0.0; NR]);
                    for (r, row) in acc.iter_mut().enumerate() {
                        let av = rows[r][p];
                        for l in 0..NR {
                            row[l] += av * brow[l];
                        }
                    }
                }
            } else if a.rs == 1 {
                // A transposed: the four values of one step are contiguous.
                for p in 0..k {
                    let brow: [f32; NR] =
                        bcols[p * ldb..p * ldb + NR].try_into().unwrap_or([0.0; NR]);
                    let av: [f32; MR] = a.data[p * a.cs + i..p * a.cs + i + MR]
                        .try_into()
                        .unwrap_or([0.0; MR]);
                    for (r, row) in acc.iter_mut().enumerate() {
                        for l in 0..NR {
                            row[l] += av[r] * brow[l];
                        }
                    }
                }
            } else {
                for p in 0..k {
                    let brow: [f32; NR] =
                        bcols[p * ldb..p * ldb + NR].try_into().unwrap_or([0.0; NR]);
                    for (r, row) in acc.iter_mut().enumerate() {
                        let av = a.data[(i + r) * a.rs + p * a.cs];
                        for l in 0..NR {
                            row[l] += av * brow[l];
                        }
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                let dst = &mut c[(i + r) * ldc + j..(i + r) * ldc + j + NR];
                if accumulate {
                    for l in 0..NR {
                        dst[l] += row[l];
                    }
                } else {
                    dst.copy_from_slice(row);
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
