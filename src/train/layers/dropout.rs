//! `nn.Dropout(p)` as diffusers' `ResnetBlock2D` applies it in training: after `norm2` and the
//! activation, before `conv2`, each value kept with probability `1 - p` and scaled by
//! `1 / (1 - p)`, else zeroed (the identity at inference).
//!
//! The mask is stored as the factor each value is multiplied by (`0` or `1 / (1 - p)`), so
//! forward and backward are the same product:
//! `y = x * m`, `dL/dx = dL/dy * m`.
//! Both run in place: the forward on the resnet's activated `norm2` output, which only `conv2`
//! reads and whose producer's backward does not read it; the backward on that tensor's gradient,
//! which `conv2`'s backward has just written (its only contribution).

use crate::train::rng::Stream;

/// The factor of a kept value: `1 / (1 - p)`; `0` for `p = 1` (PyTorch returns zeros then).
pub fn keep_scale(p: f32) -> f32 {
    if p < 1.0 {
        1.0 / (1.0 - p)
    } else {
        0.0
    }
}

/// Draws a mask: each entry `keep_scale(p)` with probability `1 - p`, else `0`.
pub fn draw(p: f32, draws: &mut Stream, mask: &mut [f32]) {
    let keep = keep_scale(p);
    for m in mask {
        *m = if draws.uniform() >= p as f64 {
            keep
        } else {
            0.0
        };
    }
}

/// The mask of caller-given keep flags (`1` keep, `0` drop).
pub fn from_flags(p: f32, flags: &[f32], mask: &mut [f32]) {
    let keep = keep_scale(p);
    for (m, &f) in mask.iter_mut().zip(flags) {
        *m = if f != 0.0 { keep } else { 0.0 };
    }
}

/// Forward, in place: `x *= mask`.
pub fn forward(mask: &[f32], x: &mut [f32]) {
    for (v, m) in x.iter_mut().zip(mask) {
        *v *= m;
    }
}

/// Backward, in place on the input's gradient: `d *= mask`.
pub fn backward(mask: &[f32], d: &mut [f32]) {
    forward(mask, d)
}
