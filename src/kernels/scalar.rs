//! The scalar reference kernels: straightforward loops, f32 accumulation, f16 weights.
//!
//! Every faster path is tested against these. They are also what a `no_std` target without SIMD
//! runs, so they avoid allocation and keep the inner loops over contiguous memory where the
//! layout allows.

//!
//! They are single-threaded: the [`Exec`] argument is accepted for the common signature only.

use super::{
    packed_index, AttentionArgs, ConvArgs, Exec, GroupNormArgs, KernelPath, KernelTable,
    LinearArgs, PACK_OC,
};

pub static TABLE: KernelTable = KernelTable {
    name: "scalar",
    path: KernelPath::Scalar,
    conv2d: |a, out, _| conv2d(a, out),
    group_norm: |a, out, _| group_norm(a, out),
    linear: |a, out, _| linear(a, out),
    attention: |a, scores, out, _: &Exec<'_>| attention(a, scores, out),
    conv_scratch: |_| None,
    layer_norm,
    geglu,
};

/// Direct convolution over NHWC input with packed f16 weights (see [`super::pack`]).
pub fn conv2d(a: &ConvArgs<'_>, out: &mut [f32]) {
    let s = &a.shape;
    let (vh, vw) = s.virtual_in();
    let (ca, cb, cin) = (s.in_ca, s.in_cb, s.in_c());
    let k = s.kernel;
    let kk = k * k;
    let up = s.upsample as usize;
    for b in 0..s.batch {
        for oy in 0..s.out_h {
            for ox in 0..s.out_w {
                let pixel = (b * s.out_h + oy) * s.out_w + ox;
                let acc = &mut out[pixel * s.out_c..(pixel + 1) * s.out_c];
                for (co, o) in acc.iter_mut().enumerate() {
                    *o = a.bias[co].to_f32();
                }
                for ky in 0..k {
                    // Virtual input row; rows outside [0, vh) are zero padding.
                    let iy = (oy * s.stride + ky) as isize - s.pad_top as isize;
                    if iy < 0 || iy >= vh as isize {
                        continue;
                    }
                    for kx in 0..k {
                        let ix = (ox * s.stride + kx) as isize - s.pad_left as isize;
                        if ix < 0 || ix >= vw as isize {
                            continue;
                        }
                        let src = (b * s.in_h + (iy as usize >> up)) * s.in_w + (ix as usize >> up);
                        let xa = &a.in_a[src * ca..(src + 1) * ca];
                        let xb = &a.in_b[src * cb..(src + 1) * cb];
                        let tap = ky * k + kx;
                        for (co, o) in acc.iter_mut().enumerate() {
                            // Weights of (co, ci = 0, tap); consecutive ci are PACK_OC apart.
                            let w = &a.weight[packed_index(co, 0, tap, cin, kk)..];
                            let mut sum = 0.0f32;
                            for (ci, x) in xa.iter().chain(xb.iter()).enumerate() {
                                sum += x * w[ci * PACK_OC].to_f32();
                            }
                            *o += sum;
                        }
                    }
                }
                finish_pixel(acc, b, pixel, a.channel_add, a.residual, a.out_scale);
            }
        }
    }
}

/// Adds the per-channel term and the residual, then applies the output scale.
#[inline]
pub(crate) fn finish_pixel(
    acc: &mut [f32],
    b: usize,
    pixel: usize,
    channel_add: &[f32],
    residual: &[f32],
    scale: f32,
) {
    let c = acc.len();
    if !channel_add.is_empty() {
        for (o, t) in acc.iter_mut().zip(&channel_add[b * c..(b + 1) * c]) {
            *o += t;
        }
    }
    if !residual.is_empty() {
        for (o, r) in acc.iter_mut().zip(&residual[pixel * c..(pixel + 1) * c]) {
            *o += r;
        }
    }
    if scale != 1.0 {
        for o in acc.iter_mut() {
            *o /= scale;
        }
    }
}

/// GroupNorm over NHWC (statistics per sample and group, over pixels and the group's channels),
/// optionally followed by SiLU. Statistics accumulate in f64: groups can span many pixels.
pub fn group_norm(a: &GroupNormArgs<'_>, out: &mut [f32]) {
    let (ca, cb) = (a.in_ca, a.in_cb);
    let c = ca + cb;
    let cpg = c / a.groups;
    let count = (a.pixels * cpg) as f64;
    let (p0, p1) = a.out_pixels;
    let at = |b: usize, p: usize, ch: usize| -> f32 {
        let pix = b * a.pixels + p;
        if ch < ca {
            a.in_a[pix * ca + ch]
        } else {
            a.in_b[pix * cb + ch - ca]
        }
    };
    for b in 0..a.batch {
        for g in 0..a.groups {
            let chans = g * cpg..(g + 1) * cpg;
            let (mean, inv_std) = if a.stats.is_empty() {
                let mut sum = 0.0f64;
                for p in 0..a.pixels {
                    for ch in chans.clone() {
                        sum += at(b, p, ch) as f64;
                    }
                }
                let mean = sum / count;
                let mut var = 0.0f64;
                for p in 0..a.pixels {
                    for ch in chans.clone() {
                        let d = at(b, p, ch) as f64 - mean;
                        var += d * d;
                    }
                }
                (
                    mean as f32,
                    (1.0 / libm::sqrt(var / count + a.eps as f64)) as f32,
                )
            } else {
                let s = (b * a.groups + g) * 2;
                (a.stats[s], a.stats[s + 1])
            };
            for p in p0..p1 {
                for ch in chans.clone() {
                    let scale = inv_std * a.gamma[ch].to_f32();
                    let y = (at(b, p, ch) - mean) * scale + a.beta[ch].to_f32();
                    out[(b * (p1 - p0) + p - p0) * c + ch] =
                        if a.silu { super::silu(y) } else { y };
                }
            }
        }
    }
}

pub fn linear(a: &LinearArgs<'_>, out: &mut [f32]) {
    for r in 0..a.rows {
        let x = &a.input[r * a.in_f..(r + 1) * a.in_f];
        for o in 0..a.out_f {
            let w = &a.weight[packed_index(o, 0, 0, a.in_f, 1)..];
            let mut sum = 0.0f32;
            for (i, xi) in x.iter().enumerate() {
                sum += xi * w[i * PACK_OC].to_f32();
            }
            let mut y = sum + a.bias[o].to_f32();
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

/// softmax(Q K^T / sqrt(d)) V per head, one query row at a time, so only `tokens` scores exist
/// at once.
pub fn attention(a: &AttentionArgs<'_>, scores: &mut [f32], out: &mut [f32]) {
    let (n, m, c) = (a.tokens, a.kv_tokens, a.channels);
    let d = c / a.heads;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let scores = &mut scores[..m];
    for b in 0..a.batch {
        for h in 0..a.heads {
            let off = b * n * c + h * d;
            let kv_off = b * m * c + h * d;
            for i in 0..n {
                let q = &a.q[off + i * c..off + i * c + d];
                let keys = if a.causal { (i + 1).min(m) } else { m };
                let scores = &mut scores[..keys];
                let mut max = f32::NEG_INFINITY;
                for (j, s) in scores.iter_mut().enumerate() {
                    let k = &a.k[kv_off + j * c..kv_off + j * c + d];
                    let dot: f32 = q.iter().zip(k).map(|(x, y)| x * y).sum();
                    *s = dot * scale;
                    max = max.max(*s);
                }
                let mut total = 0.0f32;
                for s in scores.iter_mut() {
                    *s = libm::expf(*s - max);
                    total += *s;
                }
                let o = &mut out[off + i * c..off + i * c + d];
                o.fill(0.0);
                for (j, s) in scores.iter().enumerate() {
                    let v = &a.v[kv_off + j * c..kv_off + j * c + d];
                    let p = s / total;
                    for (oe, ve) in o.iter_mut().zip(v) {
                        *oe += p * ve;
                    }
                }
            }
        }
    }
}

/// One FIR resampling ([`fir_resample`]): NHWC `input` of `batch x in_h x in_w x channels`.
pub struct FirArgs<'a> {
    pub batch: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    /// Factor-2 upsampling (`upsample_2d`), else downsampling (`downsample_2d`).
    pub up: bool,
    pub input: &'a [f32],
}

/// The input indices and weights that make output index `o` along one axis of length `n_in`,
/// for diffusers' `upfirdn2d_native` with the `[1, 3, 3, 1]` kernel (normalised to sum 1 per
/// axis, times the factor when upsampling) and its padding: downsampling reads
/// `x[2o - 1 ..= 2o + 2]` with weights `[1, 3, 3, 1] / 8`; upsampling gives
/// `out[2a] = (x[a - 1] + 3 x[a]) / 4` and `out[2a + 1] = (3 x[a] + x[a + 1]) / 4`. Taps outside
/// the input (zero padding) are left out. Returns the taps and how many are used.
pub fn fir_taps(up: bool, o: usize, n_in: usize) -> ([(usize, f32); 4], usize) {
    let mut taps = [(0usize, 0.0f32); 4];
    let mut n = 0;
    let mut push = |i: isize, w: f32| {
        if i >= 0 && (i as usize) < n_in {
            taps[n] = (i as usize, w);
            n += 1;
        }
    };
    let o = o as isize;
    if up {
        let a = o / 2;
        if o % 2 == 0 {
            push(a - 1, 0.25);
            push(a, 0.75);
        } else {
            push(a, 0.75);
            push(a + 1, 0.25);
        }
    } else {
        for (t, w) in [0.125f32, 0.375, 0.375, 0.125].into_iter().enumerate() {
            push(2 * o + t as isize - 1, w);
        }
    }
    (taps, n)
}

/// FIR up- or downsampling by 2 of every channel (see [`fir_taps`]); `out` is NHWC at the new
/// size. The weights are exact binary fractions, so the only rounding is the f32 sum.
pub fn fir_resample(a: &FirArgs<'_>, out: &mut [f32]) {
    let (h, w, c) = (a.in_h, a.in_w, a.channels);
    let (oh, ow) = if a.up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
    for b in 0..a.batch {
        let src = &a.input[b * h * w * c..(b + 1) * h * w * c];
        for oy in 0..oh {
            let (ty, ny) = fir_taps(a.up, oy, h);
            for ox in 0..ow {
                let (tx, nx) = fir_taps(a.up, ox, w);
                let o = ((b * oh + oy) * ow + ox) * c;
                let dst = &mut out[o..o + c];
                dst.fill(0.0);
                for &(iy, wy) in &ty[..ny] {
                    for &(ix, wx) in &tx[..nx] {
                        let wt = wy * wx;
                        let px = &src[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                        for (d, v) in dst.iter_mut().zip(px) {
                            *d += wt * v;
                        }
                    }
                }
            }
        }
    }
}

/// AdaGN's `out = x * (1 + scale) + shift` (then SiLU if `silu`) over NHWC `x` of `batch`
/// samples; `scale_shift` is `[batch, 2 * c]`, the scales first. Memory-bound, so every kernel
/// table uses this one loop.
pub fn scale_shift(
    x: &[f32],
    scale_shift: &[f32],
    batch: usize,
    pixels: usize,
    c: usize,
    silu: bool,
    out: &mut [f32],
) {
    for b in 0..batch {
        let ss = &scale_shift[b * 2 * c..(b + 1) * 2 * c];
        let (scale, shift) = ss.split_at(c);
        let n = pixels * c;
        let (src, dst) = (&x[b * n..(b + 1) * n], &mut out[b * n..(b + 1) * n]);
        for (xp, op) in src.chunks_exact(c).zip(dst.chunks_exact_mut(c)) {
            for (((o, v), s), t) in op.iter_mut().zip(xp).zip(scale).zip(shift) {
                let z = v * (1.0 + s) + t;
                *o = if silu { super::silu(z) } else { z };
            }
        }
    }
}

/// 2x2 average pool, stride 2, over NHWC `x` (`batch` samples of `h x w x c`, `h` and `w`
/// even).
pub fn avg_pool2(x: &[f32], batch: usize, h: usize, w: usize, c: usize, out: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    for b in 0..batch {
        for oy in 0..oh {
            for ox in 0..ow {
                let o = &mut out[((b * oh + oy) * ow + ox) * c..][..c];
                let at = |dy: usize, dx: usize| {
                    let p = (b * h + 2 * oy + dy) * w + 2 * ox + dx;
                    &x[p * c..(p + 1) * c]
                };
                let (p00, p01, p10, p11) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
                for ch in 0..c {
                    // torch sums the window in row order, then divides.
                    o[ch] = (p00[ch] + p01[ch] + p10[ch] + p11[ch]) / 4.0;
                }
            }
        }
    }
}

/// Nearest-neighbour 2x upsample over NHWC `x` (`batch` samples of `h x w x c`).
pub fn nearest2(x: &[f32], batch: usize, h: usize, w: usize, c: usize, out: &mut [f32]) {
    let (oh, ow) = (2 * h, 2 * w);
    for b in 0..batch {
        for oy in 0..oh {
            for ox in 0..ow {
                let p = (b * h + oy / 2) * w + ox / 2;
                let q = (b * oh + oy) * ow + ox;
                out[q * c..(q + 1) * c].copy_from_slice(&x[p * c..(p + 1) * c]);
            }
        }
    }
}

/// `mish(x) = x * tanh(softplus(x))`; softplus is `x` above 20, as torch's.
pub fn mish(x: f32) -> f32 {
    let softplus = if x > 20.0 {
        x
    } else {
        libm::log1pf(libm::expf(x))
    };
    x * libm::tanhf(softplus)
}

/// The exact GELU, `x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))` (torch's default).
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * core::f32::consts::FRAC_1_SQRT_2))
}

/// erf in f32 as a rational function of x (odd degree-13 numerator over an even degree-8
/// denominator, the approximation Eigen and XLA use), |x| clamped to 4 where erf is 1 in f32:
/// within 5e-7 of `libm::erff` (a few ulps of 1 where it saturates) and branch-free, so loops over it vectorise (GEGLU runs it
/// on every element of the SD UNet's widest activations).
#[inline]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

/// diffusers' `GEGLU` after its projection: rows of `2 * dim` floats `[hidden, gate]` in,
/// rows of `dim` floats `hidden * gelu(gate)` (exact GELU) out.
pub fn geglu(input: &[f32], dim: usize, out: &mut [f32]) {
    for (x, o) in input.chunks_exact(2 * dim).zip(out.chunks_exact_mut(dim)) {
        let (hidden, gate) = x.split_at(dim);
        for ((o, h), g) in o.iter_mut().zip(hidden).zip(gate) {
            *o = h * gelu(*g);
        }
    }
}

/// CLIP's `quick_gelu`, `x * sigmoid(1.702 x)`.
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-1.702 * x))
}

/// LayerNorm over rows of `dim` floats: `(x - mean) / sqrt(var + eps) * gamma + beta` with the
/// biased variance, as torch's `nn.LayerNorm`. Two passes in f32 (the centred sum of squares
/// keeps the variance accurate when the mean is large).
pub fn layer_norm(
    input: &[f32],
    dim: usize,
    eps: f32,
    gamma: &[half::f16],
    beta: &[half::f16],
    out: &mut [f32],
) {
    // The f16 affine is converted once per block of rows and channels, not per element (a
    // software conversion where the CPU has no F16C at compile time); the arithmetic per
    // element is unchanged.
    const ROWS: usize = 16;
    const CHANNELS: usize = 64;
    let dim = dim.max(1);
    for (xb, ob) in input.chunks(ROWS * dim).zip(out.chunks_mut(ROWS * dim)) {
        let rows = xb.len() / dim;
        let (mut mean, mut inv) = ([0.0f32; ROWS], [0.0f32; ROWS]);
        for (r, x) in xb.chunks_exact(dim).enumerate() {
            let m = x.iter().sum::<f32>() / dim as f32;
            let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / dim as f32;
            mean[r] = m;
            inv[r] = 1.0 / libm::sqrtf(var + eps);
        }
        let mut c0 = 0;
        while c0 < dim {
            let c1 = (c0 + CHANNELS).min(dim);
            let (mut g, mut b) = ([0.0f32; CHANNELS], [0.0f32; CHANNELS]);
            for c in c0..c1 {
                g[c - c0] = gamma[c].to_f32();
                b[c - c0] = beta[c].to_f32();
            }
            for r in 0..rows {
                let (x, o) = (
                    &xb[r * dim + c0..r * dim + c1],
                    &mut ob[r * dim + c0..r * dim + c1],
                );
                for (j, (o, v)) in o.iter_mut().zip(x).enumerate() {
                    *o = (v - mean[r]) * inv[r] * g[j] + b[j];
                }
            }
            c0 = c1;
        }
    }
}

#[cfg(test)]
mod erf_tests {
    #[test]
    fn erf_is_within_5e_7_of_libm() {
        let mut worst = (0.0f32, 0.0f32);
        let mut worst_rel = (0.0f32, 0.0f32);
        for i in -600_000..=600_000 {
            let x = i as f32 * 1e-5;
            let (ours, libm) = (super::erf(x), libm::erff(x));
            let err = (ours - libm).abs();
            if err > worst.0 {
                worst = (err, x);
            }
            if libm != 0.0 && err / libm.abs() > worst_rel.0 {
                worst_rel = (err / libm.abs(), x);
            }
        }
        // A few f32 ulps of 1 where erf saturates; relatively tight near 0 (GELU's x * erf).
        assert!(worst.0 <= 5e-7, "erf off by {} at {}", worst.0, worst.1);
        assert!(
            worst_rel.0 <= 1e-6,
            "erf off by {} relative at {}",
            worst_rel.0,
            worst_rel.1
        );
        assert!((super::erf(10.0) - 1.0).abs() <= 2e-7 && super::erf(-10.0) == -super::erf(10.0));
    }
}
