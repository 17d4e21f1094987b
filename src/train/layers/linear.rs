//! Linear layer with optional residual and output scale:
//! `y[r] = (x[r] · W^T + b + residual[r]) / out_scale`, `W` is `[out, in]` (diffusers layout).
//!
//! Backward, with `dz = dy / out_scale`:
//! `dW[o] += sum_r dz[r,o] x[r]`, `db[o] += sum_r dz[r,o]`, `dx[r] += sum_o dz[r,o] W[o]`,
//! `d_residual += dz`.

use super::{axpy, dot};

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
    for r in 0..a.rows {
        let x = &a.input[r * a.in_f..(r + 1) * a.in_f];
        for o in 0..a.out_f {
            let mut y = dot(x, &a.weight[o * a.in_f..(o + 1) * a.in_f]) + a.bias[o];
            if !a.residual.is_empty() {
                y += a.residual[r * a.out_f + o];
            }
            out[r * a.out_f + o] = if a.out_scale != 1.0 {
                y / a.out_scale
            } else {
                y
            };
        }
    }
}

pub fn backward(a: &Linear<'_>, d_out: &[f32], g: LinearGrads<'_>) {
    let inv = 1.0 / a.out_scale;
    for r in 0..a.rows {
        let x = &a.input[r * a.in_f..(r + 1) * a.in_f];
        let dy = &d_out[r * a.out_f..(r + 1) * a.out_f];
        for (o, &dyo) in dy.iter().enumerate() {
            let dz = dyo * inv;
            if !g.bias.is_empty() {
                g.bias[o] += dz;
            }
            if !g.weight.is_empty() {
                axpy(&mut g.weight[o * a.in_f..(o + 1) * a.in_f], dz, x);
            }
            if !g.input.is_empty() {
                axpy(
                    &mut g.input[r * a.in_f..(r + 1) * a.in_f],
                    dz,
                    &a.weight[o * a.in_f..(o + 1) * a.in_f],
                );
            }
        }
        if !g.residual.is_empty() {
            axpy(&mut g.residual[r * a.out_f..(r + 1) * a.out_f], inv, dy);
        }
    }
}
