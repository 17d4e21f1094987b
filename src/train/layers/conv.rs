//! 2-D convolution over NHWC input, covering every conv of the UNet in one loop nest:
//! 3x3 and 1x1 kernels, stride 2 with diffusers' asymmetric padding (downsampler), a nearest-2x
//! upsample folded into the read (upsampler), an input split in two channel ranges (the skip
//! concatenation, never materialised), a per-channel add (the resnet's time-embedding
//! projection), a residual (the resnet's shortcut) and an output scale:
//!
//! `y[b,p,o] = (sum_{tap,i} x[b, src(p,tap), i] W[tap,i,o] + bias[o] + chan[b,o] + res[b,p,o]) / s`
//!
//! where `src(p, tap)` is the stored input pixel that the (virtually upsampled, zero-padded)
//! input has under kernel tap `tap` of output pixel `p` (none in the padding).
//!
//! Backward, with `dz = dy / s`:
//! - `dW[tap,i,o] += sum_{b,p} x[b, src(p,tap), i] dz[b,p,o]`, `dbias[o] += sum_{b,p} dz[b,p,o]`;
//! - `dchan[b,o] += sum_p dz[b,p,o]`, `dres += dz`;
//! - `dx[b, src(p,tap), i] += sum_o W[tap,i,o] dz[b,p,o]`: each output pixel scatters back into
//!   the input pixels it read. With the upsample, the four virtual pixels that share a stored
//!   pixel all add into it (the backward of nearest upsampling is a 2x2 sum); with the concat,
//!   channels `< in_ca` go to the first part's gradient and the rest to the second's.
//!
//! Weights are HWIO (`[kh][kw][in][out]`), so every inner loop runs over contiguous output
//! channels.

use super::{axpy, dot};
use crate::kernels::ConvShape;

/// One convolution's inputs (f32, HWIO weights). Optional inputs are empty slices.
pub struct Conv<'a> {
    pub shape: ConvShape,
    pub in_a: &'a [f32],
    pub in_b: &'a [f32],
    /// `[k, k, in_c, out_c]`.
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    /// `[batch, out_c]`.
    pub channel_add: &'a [f32],
    /// `[batch, out_h, out_w, out_c]`.
    pub residual: &'a [f32],
    pub out_scale: f32,
}

/// Gradients to accumulate into; empty slices are skipped.
pub struct ConvGrads<'a> {
    pub in_a: &'a mut [f32],
    pub in_b: &'a mut [f32],
    pub weight: &'a mut [f32],
    pub bias: &'a mut [f32],
    pub channel_add: &'a mut [f32],
    pub residual: &'a mut [f32],
}

/// Calls `f(tap, stored_input_pixel)` for every kernel tap of output pixel `(b, oy, ox)` that
/// lands inside the input (padding taps contribute nothing).
#[inline]
fn for_each_tap(s: &ConvShape, b: usize, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
    let (vh, vw) = s.virtual_in();
    let up = s.upsample as usize;
    for ky in 0..s.kernel {
        let iy = (oy * s.stride + ky) as isize - s.pad_top as isize;
        if iy < 0 || iy >= vh as isize {
            continue;
        }
        for kx in 0..s.kernel {
            let ix = (ox * s.stride + kx) as isize - s.pad_left as isize;
            if ix < 0 || ix >= vw as isize {
                continue;
            }
            let src = (b * s.in_h + (iy as usize >> up)) * s.in_w + (ix as usize >> up);
            f(ky * s.kernel + kx, src);
        }
    }
}

pub fn forward(a: &Conv<'_>, out: &mut [f32]) {
    let s = &a.shape;
    let (ca, cb, cin, co) = (s.in_ca, s.in_cb, s.in_c(), s.out_c);
    for b in 0..s.batch {
        for oy in 0..s.out_h {
            for ox in 0..s.out_w {
                let pixel = (b * s.out_h + oy) * s.out_w + ox;
                let acc = &mut out[pixel * co..(pixel + 1) * co];
                acc.copy_from_slice(&a.bias[..co]);
                for_each_tap(s, b, oy, ox, |tap, src| {
                    let w = &a.weight[tap * cin * co..(tap + 1) * cin * co];
                    let xa = &a.in_a[src * ca..(src + 1) * ca];
                    let xb = &a.in_b[src * cb..(src + 1) * cb];
                    for (i, &x) in xa.iter().chain(xb).enumerate() {
                        axpy(acc, x, &w[i * co..(i + 1) * co]);
                    }
                });
                if !a.channel_add.is_empty() {
                    axpy(acc, 1.0, &a.channel_add[b * co..(b + 1) * co]);
                }
                if !a.residual.is_empty() {
                    axpy(acc, 1.0, &a.residual[pixel * co..(pixel + 1) * co]);
                }
                if a.out_scale != 1.0 {
                    for o in acc.iter_mut() {
                        *o /= a.out_scale;
                    }
                }
            }
        }
    }
}

pub fn backward(a: &Conv<'_>, d_out: &[f32], g: ConvGrads<'_>) {
    let s = &a.shape;
    let (ca, cb, cin, co) = (s.in_ca, s.in_cb, s.in_c(), s.out_c);
    let inv = 1.0 / a.out_scale;
    let ConvGrads {
        in_a: da,
        in_b: db,
        weight: dw,
        bias: dbias,
        channel_add: dchan,
        residual: dres,
    } = g;
    for b in 0..s.batch {
        for oy in 0..s.out_h {
            for ox in 0..s.out_w {
                let pixel = (b * s.out_h + oy) * s.out_w + ox;
                let dy = &d_out[pixel * co..(pixel + 1) * co];
                if !dbias.is_empty() {
                    axpy(dbias, inv, dy);
                }
                if !dchan.is_empty() {
                    axpy(&mut dchan[b * co..(b + 1) * co], inv, dy);
                }
                if !dres.is_empty() {
                    axpy(&mut dres[pixel * co..(pixel + 1) * co], inv, dy);
                }
                for_each_tap(s, b, oy, ox, |tap, src| {
                    let w = &a.weight[tap * cin * co..(tap + 1) * cin * co];
                    for i in 0..cin {
                        let x = if i < ca {
                            a.in_a[src * ca + i]
                        } else {
                            a.in_b[src * cb + i - ca]
                        };
                        if !dw.is_empty() {
                            axpy(
                                &mut dw[(tap * cin + i) * co..(tap * cin + i + 1) * co],
                                x * inv,
                                dy,
                            );
                        }
                        let dx = if i < ca {
                            da.get_mut(src * ca + i)
                        } else {
                            db.get_mut(src * cb + i - ca)
                        };
                        if let Some(dx) = dx {
                            *dx += inv * dot(dy, &w[i * co..(i + 1) * co]);
                        }
                    }
                });
            }
        }
    }
}

/// diffusers' `[out, in, kh, kw]` → HWIO `[kh, kw, in, out]`.
pub fn oihw_to_hwio(src: &[f32], out_c: usize, in_c: usize, k: usize, dst: &mut [f32]) {
    for o in 0..out_c {
        for i in 0..in_c {
            for t in 0..k * k {
                dst[(t * in_c + i) * out_c + o] = src[(o * in_c + i) * k * k + t];
            }
        }
    }
}

/// HWIO `[kh, kw, in, out]` → diffusers' `[out, in, kh, kw]`.
pub fn hwio_to_oihw(src: &[f32], out_c: usize, in_c: usize, k: usize, dst: &mut [f32]) {
    for o in 0..out_c {
        for i in 0..in_c {
            for t in 0..k * k {
                dst[(o * in_c + i) * k * k + t] = src[(t * in_c + i) * out_c + o];
            }
        }
    }
}
