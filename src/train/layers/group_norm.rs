//! GroupNorm over NHWC, optionally followed by SiLU, over an input that may be split in two
//! channel ranges (the skip concatenation):
//!
//! `xhat = (x - mean_g) * rstd_g`, `y = gamma * xhat + beta`, `out = silu(y)` (or `y`),
//! with `mean_g`, `rstd_g = 1 / sqrt(var_g + eps)` per sample and group, over the group's
//! channels and all pixels (`N` values).
//!
//! The forward saves `(mean, rstd)` per (sample, group); the backward recomputes `xhat` and `y`
//! from them instead of keeping them. With `dy = d_out * silu'(y)` (or `d_out`) and
//! `dxhat = dy * gamma`:
//! - `dgamma[c] += sum dy * xhat`, `dbeta[c] += sum dy` (over samples and pixels);
//! - `dx = rstd * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat))`.
//!
//! Statistics accumulate in f64, as in the inference kernel.

//!
//! Layout of the loops: NHWC puts a group's channels side by side in every pixel, so each pass
//! walks the pixels once and keeps per-channel accumulators (contiguous, vectorisable), folded
//! into per-group values afterwards. Per-channel sums are f64; a parameter gradient is summed
//! in the same order as an element-by-element loop over (sample, pixel) would.

use alloc::vec;

use super::gemm::{for_each_task, SharedMut};
use super::vmath;
/// One GroupNorm's inputs.
pub struct GroupNorm<'a> {
    pub batch: usize,
    pub pixels: usize,
    pub in_ca: usize,
    pub in_cb: usize,
    pub groups: usize,
    pub eps: f32,
    pub in_a: &'a [f32],
    pub in_b: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub silu: bool,
}

/// Gradients to accumulate into; empty slices are skipped.
pub struct GroupNormGrads<'a> {
    pub in_a: &'a mut [f32],
    pub in_b: &'a mut [f32],
    pub gamma: &'a mut [f32],
    pub beta: &'a mut [f32],
}

impl GroupNorm<'_> {
    fn channels(&self) -> usize {
        self.in_ca + self.in_cb
    }
}

/// Floats of saved statistics per sample: `(mean, rstd)` per group.
pub fn saved_len(groups: usize) -> usize {
    2 * groups
}

/// Channels `[0, ca)` of pixel `pix` come from `in_a`, `[ca, ca + cb)` from `in_b`: calls
/// `f(first_channel, values)` for the two parts, limited to the first `used` channels (those
/// of the groups: with `channels % groups != 0` the last few belong to none and are left alone).
#[inline(always)]
fn parts<'s>(a: &GroupNorm<'s>, pix: usize, used: usize, mut f: impl FnMut(usize, &'s [f32])) {
    let (ca, cb) = (a.in_ca, a.in_cb);
    let na = ca.min(used);
    f(0, &a.in_a[pix * ca..pix * ca + na]);
    let nb = cb.min(used - na);
    if nb > 0 {
        f(ca, &a.in_b[pix * cb..pix * cb + nb]);
    }
}

/// Per-group sums of per-channel values, then broadcast back to the channels.
fn fold_groups(per_channel: &[f64], cpg: usize, per_group: &mut [f64]) {
    for (g, dst) in per_group.iter_mut().enumerate() {
        *dst = per_channel[g * cpg..(g + 1) * cpg].iter().sum();
    }
}

/// `out = [silu](GroupNorm(x))`; `saved` receives `[batch, groups, (mean, rstd)]`.
/// Samples are independent tasks ([`for_each_task`]).
pub fn forward(a: &GroupNorm<'_>, out: &mut [f32], saved: &mut [f32]) {
    let (on, sn) = (a.pixels * a.channels(), saved_len(a.groups));
    let (so, ss) = (
        SharedMut::new(&mut out[..a.batch * on]),
        SharedMut::new(&mut saved[..a.batch * sn]),
    );
    for_each_task(a.batch, &|b| {
        // SAFETY: task `b` takes sample `b`'s output only, disjoint between tasks.
        let ob = unsafe { so.slice(b * on, on) };
        // SAFETY: as above, for sample `b`'s statistics.
        let sb = unsafe { ss.slice(b * sn, sn) };
        forward_sample(a, b, ob, sb);
    });
}

/// [`forward`] of sample `b` (`out` and `saved` are that sample's parts).
fn forward_sample(a: &GroupNorm<'_>, b: usize, out: &mut [f32], saved: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { forward_avx2(a, b, out, saved) };
    }
    forward_body(a, b, out, saved)
}

/// # Safety
/// the CPU has AVX2 and FMA; the body is safe code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(a: &GroupNorm<'_>, b: usize, out: &mut [f32], saved: &mut [f32]) {
    forward_body(a, b, out, saved)
}

#[inline(always)]
fn forward_body(a: &GroupNorm<'_>, b: usize, out: &mut [f32], saved: &mut [f32]) {
    let c = a.channels();
    let cpg = c / a.groups;
    let cu = cpg * a.groups;
    let count = (a.pixels * cpg) as f64;
    let mut acc = vec![0.0f64; cu];
    let mut mean_c = vec![0.0f64; cu];
    let mut group = vec![0.0f64; a.groups];
    let mut mean_f = vec![0.0f32; cu];
    let mut scale = vec![0.0f32; cu];
    {
        let pixels = b * a.pixels..(b + 1) * a.pixels;
        acc.fill(0.0);
        for pix in pixels.clone() {
            parts(a, pix, cu, |c0, xs| {
                for (s, x) in acc[c0..c0 + xs.len()].iter_mut().zip(xs) {
                    *s += *x as f64;
                }
            });
        }
        fold_groups(&acc, cpg, &mut group);
        for (ch, m) in mean_c.iter_mut().enumerate() {
            *m = group[ch / cpg] / count;
        }
        acc.fill(0.0);
        for pix in pixels.clone() {
            parts(a, pix, cu, |c0, xs| {
                let r = c0..c0 + xs.len();
                for ((s, x), m) in acc[r.clone()].iter_mut().zip(xs).zip(&mean_c[r]) {
                    let d = *x as f64 - m;
                    *s += d * d;
                }
            });
        }
        fold_groups(&acc, cpg, &mut group);
        for (g, var) in group.iter().enumerate() {
            let mean = mean_c[g * cpg];
            let rstd = 1.0 / libm::sqrt(var / count + a.eps as f64);
            let (mean, rstd) = (mean as f32, rstd as f32);
            saved[g * 2] = mean;
            saved[g * 2 + 1] = rstd;
            for ch in g * cpg..(g + 1) * cpg {
                mean_f[ch] = mean;
                scale[ch] = rstd * a.gamma[ch];
            }
        }
        for pix in pixels {
            let q = pix - b * a.pixels;
            let row = &mut out[q * c..(q + 1) * c];
            parts(a, pix, cu, |c0, xs| {
                let r = c0..c0 + xs.len();
                for ((((o, x), m), sc), be) in row[r.clone()]
                    .iter_mut()
                    .zip(xs)
                    .zip(&mean_f[r.clone()])
                    .zip(&scale[r.clone()])
                    .zip(&a.beta[r])
                {
                    *o = (x - m) * sc + be;
                }
            });
        }
        if a.silu && cu == c {
            vmath::silu_in_place(&mut out[..a.pixels * c]);
        } else if a.silu {
            for pix in b * a.pixels..(b + 1) * a.pixels {
                let q = pix - b * a.pixels;
                vmath::silu_in_place(&mut out[q * c..q * c + cu]);
            }
        }
    }
}

/// Backward. `d_out` is consumed: pass 1 overwrites it with the gradient of the
/// pre-activation `y` (so SiLU's derivative is evaluated once per element). Samples are
/// independent tasks ([`for_each_task`]); each sums its own `dgamma`, `dbeta`, added to the
/// gradients afterwards in sample order (the same sums for any thread count).
pub fn backward(a: &GroupNorm<'_>, saved: &[f32], d_out: &mut [f32], g: GroupNormGrads<'_>) {
    let c = a.channels();
    let (on, sn) = (a.pixels * c, saved_len(a.groups));
    let (an, bn) = (a.pixels * a.in_ca, a.pixels * a.in_cb);
    let GroupNormGrads {
        in_a: da,
        in_b: db,
        gamma: dgamma,
        beta: dbeta,
    } = g;
    let (need_da, need_db) = (!da.is_empty() && an > 0, !db.is_empty() && bn > 0);
    let (need_g, need_b) = (!dgamma.is_empty(), !dbeta.is_empty());
    let mut partial = vec![0.0f32; a.batch * 2 * c];
    let sd = SharedMut::new(&mut d_out[..a.batch * on]);
    let sa = SharedMut::new(if need_da {
        &mut da[..a.batch * an]
    } else {
        &mut []
    });
    let sb = SharedMut::new(if need_db {
        &mut db[..a.batch * bn]
    } else {
        &mut []
    });
    let sp = SharedMut::new(&mut partial);
    for_each_task(a.batch, &|b| {
        // SAFETY (each slice below): task `b` takes sample `b`'s part only, disjoint between
        // tasks.
        let dob = unsafe { sd.slice(b * on, on) };
        // SAFETY: as above.
        let dab: &mut [f32] = if need_da {
            unsafe { sa.slice(b * an, an) }
        } else {
            &mut []
        };
        // SAFETY: as above.
        let dbb: &mut [f32] = if need_db {
            unsafe { sb.slice(b * bn, bn) }
        } else {
            &mut []
        };
        // SAFETY: as above.
        let pb = unsafe { sp.slice(b * 2 * c, 2 * c) };
        let (pg, pbeta) = pb.split_at_mut(c);
        let grads = GroupNormGrads {
            in_a: dab,
            in_b: dbb,
            gamma: if need_g { pg } else { &mut [] },
            beta: if need_b { pbeta } else { &mut [] },
        };
        backward_sample(a, b, &saved[b * sn..(b + 1) * sn], dob, grads);
    });
    for pb in partial.chunks_exact(2 * c) {
        if need_g {
            for (d, p) in dgamma[..c].iter_mut().zip(&pb[..c]) {
                *d += p;
            }
        }
        if need_b {
            for (d, p) in dbeta[..c].iter_mut().zip(&pb[c..]) {
                *d += p;
            }
        }
    }
}

/// [`backward`] of sample `b` (`saved`, `d_out` and the input gradients are that sample's).
fn backward_sample(
    a: &GroupNorm<'_>,
    b: usize,
    saved: &[f32],
    d_out: &mut [f32],
    g: GroupNormGrads<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { backward_avx2(a, b, saved, d_out, g) };
    }
    backward_body(a, b, saved, d_out, g)
}

/// # Safety
/// the CPU has AVX2 and FMA; the body is safe code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2(
    a: &GroupNorm<'_>,
    b: usize,
    saved: &[f32],
    d_out: &mut [f32],
    g: GroupNormGrads<'_>,
) {
    backward_body(a, b, saved, d_out, g)
}

#[inline(always)]
fn backward_body(
    a: &GroupNorm<'_>,
    b: usize,
    saved: &[f32],
    d_out: &mut [f32],
    g: GroupNormGrads<'_>,
) {
    let c = a.channels();
    let cpg = c / a.groups;
    let cu = cpg * a.groups;
    let count = (a.pixels * cpg) as f64;
    let (ca, cb) = (a.in_ca, a.in_cb);
    let GroupNormGrads {
        in_a: da,
        in_b: db,
        gamma: dgamma,
        beta: dbeta,
    } = g;
    let mut mean = vec![0.0f32; cu];
    let mut rstd = vec![0.0f32; cu];
    let mut xhat = vec![0.0f32; cu];
    let mut y = vec![0.0f32; cu];
    let mut s1 = vec![0.0f64; cu];
    let mut s2 = vec![0.0f64; cu];
    let mut group = vec![0.0f64; a.groups];
    let mut m1 = vec![0.0f32; cu];
    let mut m2 = vec![0.0f32; cu];
    let base = b * a.pixels;
    {
        for ch in 0..cu {
            let grp = ch / cpg;
            mean[ch] = saved[grp * 2];
            rstd[ch] = saved[grp * 2 + 1];
        }
        s1.fill(0.0);
        s2.fill(0.0);
        // Pass 1: dy = d(pre-activation), kept in `d_out`; parameter gradients; the two
        // group means of the backward.
        for pix in b * a.pixels..(b + 1) * a.pixels {
            parts(a, pix, cu, |c0, xs| {
                let r = c0..c0 + xs.len();
                for (((xh, x), m), rs) in xhat[r.clone()]
                    .iter_mut()
                    .zip(xs)
                    .zip(&mean[r.clone()])
                    .zip(&rstd[r.clone()])
                {
                    *xh = (x - m) * rs;
                }
            });
            let dy = &mut d_out[(pix - base) * c..(pix - base) * c + cu];
            if a.silu {
                for (((yv, xh), ga), be) in y.iter_mut().zip(&xhat).zip(a.gamma).zip(a.beta) {
                    *yv = xh * ga + be;
                }
                vmath::mul_silu_grad(&y, dy);
            }
            if !dgamma.is_empty() {
                for ((dg, d), xh) in dgamma[..cu].iter_mut().zip(&*dy).zip(&xhat) {
                    *dg += d * xh;
                }
            }
            if !dbeta.is_empty() {
                for (dbv, d) in dbeta[..cu].iter_mut().zip(&*dy) {
                    *dbv += d;
                }
            }
            for ((((a1, a2), d), ga), xh) in s1
                .iter_mut()
                .zip(s2.iter_mut())
                .zip(&*dy)
                .zip(a.gamma)
                .zip(&xhat)
            {
                let dxhat = (d * ga) as f64;
                *a1 += dxhat;
                *a2 += dxhat * *xh as f64;
            }
        }
        fold_groups(&s1, cpg, &mut group);
        for ch in 0..cu {
            m1[ch] = (group[ch / cpg] / count) as f32;
        }
        fold_groups(&s2, cpg, &mut group);
        for ch in 0..cu {
            m2[ch] = (group[ch / cpg] / count) as f32;
        }
        // Pass 2: input gradient.
        for pix in b * a.pixels..(b + 1) * a.pixels {
            let dy = &d_out[(pix - base) * c..(pix - base) * c + cu];
            for (c0, dst) in [(0, &mut *da), (ca, &mut *db)] {
                let n = if c0 == 0 {
                    ca.min(cu)
                } else {
                    cb.min(cu - ca.min(cu))
                };
                let ld = if c0 == 0 { ca } else { cb };
                if dst.is_empty() || n == 0 {
                    continue;
                }
                let xs = if c0 == 0 { a.in_a } else { a.in_b };
                let r = c0..c0 + n;
                for ((((((d, x), dyv), ga), m), rs), (mm1, mm2)) in dst
                    [(pix - base) * ld..(pix - base) * ld + n]
                    .iter_mut()
                    .zip(&xs[pix * ld..pix * ld + n])
                    .zip(&dy[r.clone()])
                    .zip(&a.gamma[r.clone()])
                    .zip(&mean[r.clone()])
                    .zip(&rstd[r.clone()])
                    .zip(m1[r.clone()].iter().zip(&m2[r]))
                {
                    let xh = (x - m) * rs;
                    *d += rs * (dyv * ga - mm1 - xh * mm2);
                }
            }
        }
    }
}
