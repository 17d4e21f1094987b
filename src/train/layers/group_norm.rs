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

use super::activation::{silu, silu_grad};

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
    #[inline]
    fn at(&self, b: usize, p: usize, ch: usize) -> f32 {
        let pix = b * self.pixels + p;
        if ch < self.in_ca {
            self.in_a[pix * self.in_ca + ch]
        } else {
            self.in_b[pix * self.in_cb + ch - self.in_ca]
        }
    }
}

/// Floats of saved statistics per sample: `(mean, rstd)` per group.
pub fn saved_len(groups: usize) -> usize {
    2 * groups
}

/// `out = [silu](GroupNorm(x))`; `saved` receives `[batch, groups, (mean, rstd)]`.
pub fn forward(a: &GroupNorm<'_>, out: &mut [f32], saved: &mut [f32]) {
    let c = a.channels();
    let cpg = c / a.groups;
    let count = (a.pixels * cpg) as f64;
    for b in 0..a.batch {
        for g in 0..a.groups {
            let chans = g * cpg..(g + 1) * cpg;
            let mut sum = 0.0f64;
            for p in 0..a.pixels {
                for ch in chans.clone() {
                    sum += a.at(b, p, ch) as f64;
                }
            }
            let mean = sum / count;
            let mut var = 0.0f64;
            for p in 0..a.pixels {
                for ch in chans.clone() {
                    let d = a.at(b, p, ch) as f64 - mean;
                    var += d * d;
                }
            }
            let rstd = 1.0 / libm::sqrt(var / count + a.eps as f64);
            let (mean, rstd) = (mean as f32, rstd as f32);
            saved[(b * a.groups + g) * 2] = mean;
            saved[(b * a.groups + g) * 2 + 1] = rstd;
            for p in 0..a.pixels {
                for ch in chans.clone() {
                    let y = (a.at(b, p, ch) - mean) * (rstd * a.gamma[ch]) + a.beta[ch];
                    out[(b * a.pixels + p) * c + ch] = if a.silu { silu(y) } else { y };
                }
            }
        }
    }
}

/// Backward. `d_out` is consumed: pass 1 overwrites it with the gradient of the
/// pre-activation `y` (so SiLU's derivative is evaluated once per element).
pub fn backward(a: &GroupNorm<'_>, saved: &[f32], d_out: &mut [f32], g: GroupNormGrads<'_>) {
    let c = a.channels();
    let cpg = c / a.groups;
    let count = (a.pixels * cpg) as f64;
    let (ca, cb) = (a.in_ca, a.in_cb);
    for b in 0..a.batch {
        for grp in 0..a.groups {
            let chans = grp * cpg..(grp + 1) * cpg;
            let (mean, rstd) = (
                saved[(b * a.groups + grp) * 2],
                saved[(b * a.groups + grp) * 2 + 1],
            );
            let xhat_at = |p: usize, ch: usize| (a.at(b, p, ch) - mean) * rstd;
            // Pass 1: dy = d(pre-activation), kept in `d_out`; parameter gradients; the two
            // group means of the backward.
            let (mut sum_dxhat, mut sum_dxhat_xhat) = (0.0f64, 0.0f64);
            for p in 0..a.pixels {
                for ch in chans.clone() {
                    let xhat = xhat_at(p, ch);
                    let slot = &mut d_out[(b * a.pixels + p) * c + ch];
                    if a.silu {
                        *slot *= silu_grad(xhat * a.gamma[ch] + a.beta[ch]);
                    }
                    let dy = *slot;
                    if !g.gamma.is_empty() {
                        g.gamma[ch] += dy * xhat;
                    }
                    if !g.beta.is_empty() {
                        g.beta[ch] += dy;
                    }
                    let dxhat = (dy * a.gamma[ch]) as f64;
                    sum_dxhat += dxhat;
                    sum_dxhat_xhat += dxhat * xhat as f64;
                }
            }
            let (m1, m2) = ((sum_dxhat / count) as f32, (sum_dxhat_xhat / count) as f32);
            // Pass 2: input gradient.
            for p in 0..a.pixels {
                let pix = b * a.pixels + p;
                for ch in chans.clone() {
                    let (dy, xhat) = (d_out[pix * c + ch], xhat_at(p, ch));
                    let dx = rstd * (dy * a.gamma[ch] - m1 - xhat * m2);
                    let slot = if ch < ca {
                        g.in_a.get_mut(pix * ca + ch)
                    } else {
                        g.in_b.get_mut(pix * cb + ch - ca)
                    };
                    if let Some(d) = slot {
                        *d += dx;
                    }
                }
            }
        }
    }
}
