//! Self-attention block (diffusers' `Attention` with a residual, as in `AttnDownBlock2D`, the
//! mid block and `AttnUpBlock2D`) over `[batch, tokens, channels]`:
//!
//! `h = GroupNorm(x)`, `q, k, v = h Wq^T + bq, ...`,
//! per head: `S = Q K^T / sqrt(d)`, `P = softmax_rows(S)`, `O = P V`,
//! `out = (O Wo^T + bo + x) / rescale`.
//!
//! Backward of the attention core, per head, given `dO`:
//! - `dV = P^T dO`, `dP = dO V^T`;
//! - softmax: `dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik)` (the Jacobian of a softmax row is
//!   `diag(p) - p p^T`);
//! - `dQ = dS K / sqrt(d)`, `dK = dS^T Q / sqrt(d)`.
//!
//! The projections and the norm go backward through [`super::linear`] and
//! [`super::group_norm`]; the residual adds `dz = d_out / rescale` to the input's gradient.
//! The forward saves `P` (`heads * tokens^2` per sample) and the norm statistics; `h`, `q`, `k`,
//! `v` and `O` stay in the op's scratch tensor.

use super::group_norm::{self, GroupNorm, GroupNormGrads};
use super::linear::{self, Linear, LinearGrads};
use super::{axpy, dot};

/// Multi-head attention core: `heads` contiguous channel groups of width `d = channels / heads`.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub batch: usize,
    pub tokens: usize,
    pub channels: usize,
    pub heads: usize,
}

impl Heads {
    fn dim(&self) -> usize {
        self.channels / self.heads
    }
    fn scale(&self) -> f32 {
        1.0 / libm::sqrtf(self.dim() as f32)
    }
    /// Floats of `P` for the whole batch.
    pub fn probs_len(&self) -> usize {
        self.batch * self.heads * self.tokens * self.tokens
    }
}

/// `out = softmax(Q K^T / sqrt(d)) V` per head; `probs` receives `P` (`[batch, heads, n, n]`).
pub fn core_forward(a: Heads, q: &[f32], k: &[f32], v: &[f32], probs: &mut [f32], out: &mut [f32]) {
    let (n, c, d, scale) = (a.tokens, a.channels, a.dim(), a.scale());
    for b in 0..a.batch {
        for h in 0..a.heads {
            let off = b * n * c + h * d;
            for i in 0..n {
                let p = &mut probs
                    [((b * a.heads + h) * n + i) * n..((b * a.heads + h) * n + i + 1) * n];
                let qi = &q[off + i * c..off + i * c + d];
                let mut max = f32::NEG_INFINITY;
                for (j, s) in p.iter_mut().enumerate() {
                    *s = dot(qi, &k[off + j * c..off + j * c + d]) * scale;
                    max = max.max(*s);
                }
                let mut total = 0.0f32;
                for s in p.iter_mut() {
                    *s = libm::expf(*s - max);
                    total += *s;
                }
                let inv = 1.0 / total;
                let o = &mut out[off + i * c..off + i * c + d];
                o.fill(0.0);
                for (j, s) in p.iter_mut().enumerate() {
                    *s *= inv;
                    axpy(o, *s, &v[off + j * c..off + j * c + d]);
                }
            }
        }
    }
}

/// Accumulates `dq`, `dk`, `dv` from `d_out`; `row` is `tokens` floats of scratch.
#[allow(clippy::too_many_arguments)]
pub fn core_backward(
    a: Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    d_out: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    row: &mut [f32],
) {
    let (n, c, d, scale) = (a.tokens, a.channels, a.dim(), a.scale());
    let dp = &mut row[..n];
    for b in 0..a.batch {
        for h in 0..a.heads {
            let off = b * n * c + h * d;
            for i in 0..n {
                let p =
                    &probs[((b * a.heads + h) * n + i) * n..((b * a.heads + h) * n + i + 1) * n];
                let doi = &d_out[off + i * c..off + i * c + d];
                let mut weighted = 0.0f32;
                for j in 0..n {
                    let vj = off + j * c..off + j * c + d;
                    dp[j] = dot(doi, &v[vj.clone()]);
                    axpy(&mut dv[vj], p[j], doi);
                    weighted += p[j] * dp[j];
                }
                let qi = off + i * c..off + i * c + d;
                for j in 0..n {
                    let ds = p[j] * (dp[j] - weighted) * scale;
                    let kj = off + j * c..off + j * c + d;
                    axpy(&mut dq[qi.clone()], ds, &k[kj.clone()]);
                    axpy(&mut dk[kj], ds, &q[qi.clone()]);
                }
            }
        }
    }
}

/// One attention block's inputs and weights (f32).
pub struct AttentionBlock<'a> {
    pub heads: Heads,
    pub groups: usize,
    pub eps: f32,
    pub input: &'a [f32],
    pub norm: (&'a [f32], &'a [f32]),
    pub q: (&'a [f32], &'a [f32]),
    pub k: (&'a [f32], &'a [f32]),
    pub v: (&'a [f32], &'a [f32]),
    pub o: (&'a [f32], &'a [f32]),
    pub rescale: f32,
}

/// Gradients to accumulate into (the input's, and every weight's as (weight, bias)).
pub struct AttentionGrads<'a> {
    pub input: &'a mut [f32],
    pub norm: (&'a mut [f32], &'a mut [f32]),
    pub q: (&'a mut [f32], &'a mut [f32]),
    pub k: (&'a mut [f32], &'a mut [f32]),
    pub v: (&'a mut [f32], &'a mut [f32]),
    pub o: (&'a mut [f32], &'a mut [f32]),
}

/// Floats of scratch per sample (`h`, `q`, `k`, `v`, `O`, plus a row), as the inference op's
/// scratch tensor is sized.
pub fn scratch_len(tokens: usize, channels: usize) -> usize {
    5 * tokens * channels + tokens
}

/// Floats saved per sample: norm statistics and `P`.
pub fn saved_len(tokens: usize, heads: usize, groups: usize) -> usize {
    group_norm::saved_len(groups) + heads * tokens * tokens
}

impl<'a> AttentionBlock<'a> {
    fn norm_args(&self) -> GroupNorm<'a> {
        let h = self.heads;
        GroupNorm {
            batch: h.batch,
            pixels: h.tokens,
            in_ca: h.channels,
            in_cb: 0,
            groups: self.groups,
            eps: self.eps,
            in_a: self.input,
            in_b: &[],
            gamma: self.norm.0,
            beta: self.norm.1,
            silu: false,
        }
    }
    fn proj(
        &self,
        (w, b): (&'a [f32], &'a [f32]),
        input: &'a [f32],
        residual: &'a [f32],
        scale: f32,
    ) -> Linear<'a> {
        let h = self.heads;
        Linear {
            rows: h.batch * h.tokens,
            in_f: h.channels,
            out_f: h.channels,
            input,
            weight: w,
            bias: b,
            residual,
            out_scale: scale,
        }
    }
}

/// Splits a scratch region into (h, q, k, v, O, row).
fn split5(s: &mut [f32], n: usize) -> [&mut [f32]; 6] {
    let (a, r) = s.split_at_mut(n);
    let (b, r) = r.split_at_mut(n);
    let (c, r) = r.split_at_mut(n);
    let (d, r) = r.split_at_mut(n);
    let (e, r) = r.split_at_mut(n);
    [a, b, c, d, e, r]
}

pub fn forward(blk: &AttentionBlock<'_>, scratch: &mut [f32], saved: &mut [f32], out: &mut [f32]) {
    let hd = blk.heads;
    let n = hd.batch * hd.tokens * hd.channels;
    let (stats, probs) = saved.split_at_mut(hd.batch * group_norm::saved_len(blk.groups));
    let [normed, q, k, v, attended, _] = split5(scratch, n);
    group_norm::forward(&blk.norm_args(), normed, stats);
    linear::forward(&blk.proj(blk.q, normed, &[], 1.0), q);
    linear::forward(&blk.proj(blk.k, normed, &[], 1.0), k);
    linear::forward(&blk.proj(blk.v, normed, &[], 1.0), v);
    core_forward(hd, q, k, v, &mut probs[..hd.probs_len()], attended);
    linear::forward(&blk.proj(blk.o, attended, blk.input, blk.rescale), out);
}

/// `scratch` is what the forward left; `d_scratch` (same size) is scratch for the backward.
pub fn backward(
    blk: &AttentionBlock<'_>,
    scratch: &[f32],
    saved: &[f32],
    d_out: &[f32],
    d_scratch: &mut [f32],
    g: AttentionGrads<'_>,
) {
    let hd = blk.heads;
    let n = hd.batch * hd.tokens * hd.channels;
    let (stats, probs) = saved.split_at(hd.batch * group_norm::saved_len(blk.groups));
    let (normed, rest) = scratch.split_at(n);
    let (q, rest) = rest.split_at(n);
    let (k, rest) = rest.split_at(n);
    let (v, rest) = rest.split_at(n);
    let attended = &rest[..n];
    let [d_normed, dq, dk, dv, d_attended, row] = split5(d_scratch, n);
    d_normed.fill(0.0);
    dq.fill(0.0);
    dk.fill(0.0);
    dv.fill(0.0);
    d_attended.fill(0.0);
    let AttentionGrads {
        input: d_input,
        norm: d_norm,
        q: d_q,
        k: d_k,
        v: d_v,
        o: d_o,
    } = g;
    linear::backward(
        &blk.proj(blk.o, attended, blk.input, blk.rescale),
        d_out,
        LinearGrads {
            input: d_attended,
            weight: d_o.0,
            bias: d_o.1,
            residual: &mut *d_input,
        },
    );
    core_backward(
        hd,
        q,
        k,
        v,
        &probs[..hd.probs_len()],
        d_attended,
        dq,
        dk,
        dv,
        row,
    );
    for ((w, b), dy, (dw, db)) in [(blk.q, &*dq, d_q), (blk.k, &*dk, d_k), (blk.v, &*dv, d_v)] {
        linear::backward(
            &blk.proj((w, b), normed, &[], 1.0),
            dy,
            LinearGrads {
                input: &mut *d_normed,
                weight: dw,
                bias: db,
                residual: &mut [],
            },
        );
    }
    group_norm::backward(
        &blk.norm_args(),
        stats,
        &mut *d_normed,
        GroupNormGrads {
            in_a: d_input,
            in_b: &mut [],
            gamma: d_norm.0,
            beta: d_norm.1,
        },
    );
}
