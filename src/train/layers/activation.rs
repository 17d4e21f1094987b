//! SiLU, `y = x * sigmoid(x)`.
//!
//! Backward: `dy/dx = s + x * s * (1 - s) = s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
//! SiLU never stands alone in the op list: GroupNorm+SiLU and the time-embedding MLP call these.

/// Forward, as [`crate::kernels::silu`] computes it.
#[inline]
pub fn silu(x: f32) -> f32 {
    crate::kernels::silu(x)
}

/// Derivative of SiLU at `x` (the pre-activation).
#[inline]
pub fn silu_grad(x: f32) -> f32 {
    let s = 1.0 / (1.0 + libm::expf(-x));
    s * (1.0 + x * (1.0 - s))
}

/// `out = silu(x)` elementwise.
pub fn forward(x: &[f32], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = silu(*v);
    }
}

/// `d_x += d_out * silu'(x)`.
pub fn backward(x: &[f32], d_out: &[f32], d_x: &mut [f32]) {
    for ((d, v), g) in d_x.iter_mut().zip(x).zip(d_out) {
        *d += g * silu_grad(*v);
    }
}
