//! AdaGN's scale-and-shift and the plain 2x resamples of the `down=True` / `up=True` resnet.
//!
//! Scale-shift, `y = act(z)`, `z = x * (1 + s) + t` per sample and channel:
//! `dx = dz * (1 + s)`, `ds = sum_pixels dz * x`, `dt = sum_pixels dz` with `dz = dy * act'(z)`.
//! Average pool 2x2: each input gets a quarter of its window's output gradient. Nearest 2x:
//! each input collects the sum of the gradients of its four copies.

use crate::kernels::scalar;

pub use scalar::{avg_pool2, nearest2};

/// Forward, as the inference kernel computes it.
pub fn scale_shift_forward(
    x: &[f32],
    ss: &[f32],
    batch: usize,
    pixels: usize,
    c: usize,
    silu: bool,
    out: &mut [f32],
) {
    scalar::scale_shift(x, ss, batch, pixels, c, silu, out);
}

/// Accumulates `d_x` and `d_ss` (`[batch, 2c]`, scales first); empty slices are skipped.
#[allow(clippy::too_many_arguments)]
pub fn scale_shift_backward(
    x: &[f32],
    ss: &[f32],
    batch: usize,
    pixels: usize,
    c: usize,
    silu: bool,
    d_out: &[f32],
    d_x: &mut [f32],
    d_ss: &mut [f32],
) {
    let n = pixels * c;
    for b in 0..batch {
        let (scale, shift) = ss[b * 2 * c..(b + 1) * 2 * c].split_at(c);
        for p in 0..pixels {
            let at = b * n + p * c;
            for ch in 0..c {
                let v = x[at + ch];
                let z = v * (1.0 + scale[ch]) + shift[ch];
                let dz = if silu {
                    let s = 1.0 / (1.0 + libm::expf(-z));
                    d_out[at + ch] * s * (1.0 + z * (1.0 - s))
                } else {
                    d_out[at + ch]
                };
                if !d_x.is_empty() {
                    d_x[at + ch] += dz * (1.0 + scale[ch]);
                }
                if !d_ss.is_empty() {
                    d_ss[b * 2 * c + ch] += dz * v;
                    d_ss[b * 2 * c + c + ch] += dz;
                }
            }
        }
    }
}

/// `d_x += avg_pool2'(d_out)` over `batch` inputs of `h x w x c` (NHWC).
pub fn avg_pool2_backward(
    d_out: &[f32],
    batch: usize,
    h: usize,
    w: usize,
    c: usize,
    d_x: &mut [f32],
) {
    let (oh, ow) = (h / 2, w / 2);
    for b in 0..batch {
        for y in 0..2 * oh {
            for x in 0..2 * ow {
                let q = ((b * oh + y / 2) * ow + x / 2) * c;
                let p = ((b * h + y) * w + x) * c;
                for ch in 0..c {
                    d_x[p + ch] += 0.25 * d_out[q + ch];
                }
            }
        }
    }
}

/// `d_x += nearest2'(d_out)` over `batch` inputs of `h x w x c` (NHWC).
pub fn nearest2_backward(
    d_out: &[f32],
    batch: usize,
    h: usize,
    w: usize,
    c: usize,
    d_x: &mut [f32],
) {
    let (oh, ow) = (2 * h, 2 * w);
    for b in 0..batch {
        for y in 0..oh {
            for x in 0..ow {
                let q = ((b * oh + y) * ow + x) * c;
                let p = ((b * h + y / 2) * w + x / 2) * c;
                for ch in 0..c {
                    d_x[p + ch] += d_out[q + ch];
                }
            }
        }
    }
}
