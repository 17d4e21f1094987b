//! Linear layer with optional residual and output scale:
//! `y[r] = (x[r] · W^T + b + residual[r]) / out_scale`, `W` is `[out, in]` (diffusers layout).
//!
//! Backward, with `dz = dy / out_scale`:
//! `dW[o] += sum_r dz[r,o] x[r]`, `db[o] += sum_r dz[r,o]`, `dx[r] += sum_o dz[r,o] W[o]`,
//! `d_residual += dz`.
//!
//! All three products run on [`super::gemm`] (`W^T` staged in a thread-local buffer for the
//! forward; the backward reads `dz^T` through strides).

use super::axpy;
use super::gemm::{gemm, with_scratch, Strided};

/// The inputs of one linear layer (f32 weights).
pub struct Linear<'a> {
    pub rows: usize,
    pub in_f: usize,
    pub out_f: usize,
    pub input: &'a [f32],
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    /// Empty or `[rows, out_f]`.
    pub residual: &'a [f32],
    pub out_scale: f32,
}

/// Gradients to accumulate into; empty slices are skipped.
pub struct LinearGrads<'a> {
    pub input: &'a mut [f32],
    pub weight: &'a mut [f32],
    pub bias: &'a mut [f32],
    pub residual: &'a mut [f32],
}

pub fn forward(a: &Linear<'_>, out: &mut [f32]) {
    let (rows, fi, fo) = (a.rows, a.in_f, a.out_f);
    if rows == 0 || fo == 0 {
        return;
    }
    // Bias and residual first; the product accumulates on top.
    for (r, y) in out[..rows * fo].chunks_exact_mut(fo).enumerate() {
        y.copy_from_slice(&a.bias[..fo]);
        if !a.residual.is_empty() {
            axpy(y, 1.0, &a.residual[r * fo..(r + 1) * fo]);
        }
    }
    // y += x · W^T, with W^T ([in, out]) staged row-major.
    with_scratch(fi * fo, |wt| {
        for o in 0..fo {
            for i in 0..fi {
                wt[i * fo + o] = a.weight[o * fi + i];
            }
        }
        let x = Strided {
            data: a.input,
            rs: fi,
            cs: 1,
        };
        gemm(rows, fo, fi, x, wt, fo, out, fo, true);
    });
    if a.out_scale != 1.0 {
        for y in out[..rows * fo].iter_mut() {
            *y /= a.out_scale;
        }
    }
}

pub fn backward(a: &Linear<'_>, d_out: &[f32], g: LinearGrads<'_>) {
    let (rows, fi, fo) = (a.rows, a.in_f, a.out_f);
    if rows == 0 || fo == 0 {
        return;
    }
    let inv = 1.0 / a.out_scale;
    let run = |dz: &[f32], g: LinearGrads<'_>| {
        if !g.bias.is_empty() {
            for dzr in dz.chunks_exact(fo) {
                axpy(g.bias, 1.0, dzr);
            }
        }
        if !g.residual.is_empty() {
            axpy(&mut g.residual[..rows * fo], 1.0, dz);
        }
        if !g.weight.is_empty() && fi > 0 {
            // dW[out, in] += dz^T · x.
            let dzt = Strided {
                data: dz,
                rs: 1,
                cs: fo,
            };
            gemm(fo, fi, rows, dzt, a.input, fi, g.weight, fi, true);
        }
        if !g.input.is_empty() && fi > 0 {
            // dx[rows, in] += dz · W.
            let dzs = Strided {
                data: dz,
                rs: fo,
                cs: 1,
            };
            gemm(rows, fi, fo, dzs, a.weight, fi, g.input, fi, true);
        }
    };
    if inv == 1.0 {
        run(&d_out[..rows * fo], g);
    } else {
        with_scratch(rows * fo, |dz| {
            for (z, d) in dz.iter_mut().zip(d_out) {
                *z = d * inv;
            }
            run(dz, g);
        });
    }
}
