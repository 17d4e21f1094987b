//! SiLU, `y = x * sigmoid(x)`.
//!
//! Backward: `dy/dx = s + x * s * (1 - s) = s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
//! SiLU never stands alone in the op list: GroupNorm+SiLU and the time-embedding MLP call these.

/// Forward, as [`crate::kernels::silu`] computes it.
#[inline]
pub fn silu(x: f32) -> f32 {
    crate::kernels::silu(x)
}

/// `out = silu(x)` elementwise (vectorised, [`super::vmath::silu`]).
pub fn forward(x: &[f32], out: &mut [f32]) {
    super::vmath::silu(x, out);
}

/// `d_x += d_out * silu'(x)` (vectorised, [`super::vmath::mul_silu_grad`]).
pub fn backward(x: &[f32], d_out: &[f32], d_x: &mut [f32]) {
    const CHUNK: usize = 256;
    let mut buf = [0.0f32; CHUNK];
    for ((xs, gs), ds) in x
        .chunks(CHUNK)
        .zip(d_out.chunks(CHUNK))
        .zip(d_x.chunks_mut(CHUNK))
    {
        let n = xs.len().min(gs.len()).min(ds.len());
        buf[..n].copy_from_slice(&gs[..n]);
        super::vmath::mul_silu_grad(&xs[..n], &mut buf[..n]);
        for (d, g) in ds[..n].iter_mut().zip(&buf[..n]) {
            *d += g;
        }
    }
}
