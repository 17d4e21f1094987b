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

/// `d_x += d_out * act'(x)` for the resnets' other nonlinearities (`act_fn` mish, gelu, relu;
/// SiLU goes through [`backward`]). The forward is `crate::model::forward::activation`.
pub fn act_backward(act: crate::model::Activation, x: &[f32], d_out: &[f32], d_x: &mut [f32]) {
    use crate::model::Activation;
    if act == Activation::Silu {
        return backward(x, d_out, d_x);
    }
    // (Silu returned above; it shares the relu arm only to keep the match total.)
    let grad: fn(f32) -> f32 = match act {
        // d/dx x tanh(sp(x)) = tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x)
        Activation::Mish => |v| {
            let sp = if v > 20.0 {
                v
            } else {
                libm::log1pf(libm::expf(v))
            };
            let t = libm::tanhf(sp);
            t + v * (1.0 - t * t) / (1.0 + libm::expf(-v))
        },
        // d/dx x Phi(x) = Phi(x) + x phi(x)
        Activation::Gelu => |v| {
            let cdf = 0.5 * (1.0 + libm::erff(v * core::f32::consts::FRAC_1_SQRT_2));
            let pdf = libm::expf(-0.5 * v * v) * 0.398_942_3;
            cdf + v * pdf
        },
        // d/dx x s(a x) = s + a x s (1 - s)
        Activation::QuickGelu => |v| {
            let s = 1.0 / (1.0 + libm::expf(-1.702 * v));
            s + 1.702 * v * s * (1.0 - s)
        },
        Activation::Relu | Activation::Silu => |v| if v > 0.0 { 1.0 } else { 0.0 },
    };
    for ((d, g), v) in d_x.iter_mut().zip(d_out).zip(x) {
        *d += g * grad(*v);
    }
}
