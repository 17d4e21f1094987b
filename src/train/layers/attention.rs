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

use super::dot;
use super::gemm::{for_each_task, gemm_serial, with_scratch, SharedMut, Strided};
use super::group_norm::{self, GroupNorm, GroupNormGrads};
use super::linear::{self, Linear, LinearGrads};
use super::vmath;

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

/// `dst[p * n + j] = src[j * c + p]` for `p < d`, `j < n`: one head's `[n, d]` slice (row
/// stride `c`) transposed to a row-major `[d, n]`.
fn transpose_head(src: &[f32], n: usize, d: usize, c: usize, dst: &mut [f32]) {
    for j in 0..n {
        for (p, x) in src[j * c..j * c + d].iter().enumerate() {
            dst[p * n + j] = *x;
        }
    }
}

/// `out = softmax(Q K^T / sqrt(d)) V` per head; `probs` receives `P` (`[batch, heads, n, n]`).
/// Both products run on the gemm (`K^T` staged in a thread-local buffer); samples are
/// independent tasks ([`for_each_task`]).
pub fn core_forward(a: Heads, q: &[f32], k: &[f32], v: &[f32], probs: &mut [f32], out: &mut [f32]) {
    let (n, c, d) = (a.tokens, a.channels, a.dim());
    if n == 0 || d == 0 {
        return;
    }
    let (pn, on) = (a.heads * n * n, n * c);
    let (sp, so) = (
        SharedMut::new(&mut probs[..a.batch * pn]),
        SharedMut::new(&mut out[..a.batch * on]),
    );
    for_each_task(a.batch, &|b| {
        // SAFETY: task `b` takes sample `b`'s probabilities only, disjoint between tasks.
        let pb = unsafe { sp.slice(b * pn, pn) };
        // SAFETY: as above, for sample `b`'s output rows.
        let ob = unsafe { so.slice(b * on, on) };
        let r = b * on..(b + 1) * on;
        let (qb, kb, vb) = (&q[r.clone()], &k[r.clone()], &v[r]);
        with_scratch(d * n, |kt| sample_forward(a, qb, kb, vb, pb, ob, kt));
    });
}

/// [`core_forward`] for one sample (`q`, `k`, `v`, `out`: `[n, c]`; `probs`: `[heads, n, n]`).
fn sample_forward(
    a: Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &mut [f32],
    out: &mut [f32],
    kt: &mut [f32],
) {
    let (n, c, d, scale) = (a.tokens, a.channels, a.dim(), a.scale());
    for h in 0..a.heads {
        let off = h * d;
        let pb = &mut probs[h * n * n..(h + 1) * n * n];
        transpose_head(&k[off..], n, d, c, kt);
        let qs = Strided {
            data: &q[off..],
            rs: c,
            cs: 1,
        };
        gemm_serial(n, n, d, qs, kt, n, pb, n, false);
        for p in pb.chunks_exact_mut(n) {
            let mut max = f32::NEG_INFINITY;
            for s in p.iter_mut() {
                *s *= scale;
                max = max.max(*s);
            }
            let inv = 1.0 / vmath::exp_shifted_sum(p, max);
            for s in p.iter_mut() {
                *s *= inv;
            }
        }
        let ps = Strided {
            data: pb,
            rs: n,
            cs: 1,
        };
        gemm_serial(n, d, n, ps, &v[off..], c, &mut out[off..], c, false);
    }
}

/// Accumulates `dq`, `dk`, `dv` from `d_out`; `row` is `tokens` floats of scratch (unused: the
/// products stage their operands in a thread-local buffer). Samples are independent tasks.
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
    _row: &mut [f32],
) {
    let (n, c, d) = (a.tokens, a.channels, a.dim());
    if n == 0 || d == 0 {
        return;
    }
    let (pn, on) = (a.heads * n * n, n * c);
    let len = a.batch * on;
    let (sq, sk, sv) = (
        SharedMut::new(&mut dq[..len]),
        SharedMut::new(&mut dk[..len]),
        SharedMut::new(&mut dv[..len]),
    );
    for_each_task(a.batch, &|b| {
        // SAFETY (the three): task `b` takes sample `b`'s gradient rows only, disjoint
        // between tasks.
        let (dqb, dkb, dvb) = unsafe {
            (
                sq.slice(b * on, on),
                sk.slice(b * on, on),
                sv.slice(b * on, on),
            )
        };
        let r = b * on..(b + 1) * on;
        let (qb, kb, vb, dob) = (&q[r.clone()], &k[r.clone()], &v[r.clone()], &d_out[r]);
        let pb = &probs[b * pn..(b + 1) * pn];
        with_scratch(d * n + n * n, |buf| {
            sample_backward(a, qb, kb, vb, pb, dob, dqb, dkb, dvb, buf)
        });
    });
}

/// [`core_backward`] for one sample; `buf` holds `d * n + n * n` floats of scratch.
#[allow(clippy::too_many_arguments)]
fn sample_backward(
    a: Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    d_out: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    buf: &mut [f32],
) {
    let (n, c, d, scale) = (a.tokens, a.channels, a.dim(), a.scale());
    let (vt, ds) = buf.split_at_mut(d * n);
    for h in 0..a.heads {
        let off = h * d;
        let p = &probs[h * n * n..(h + 1) * n * n];
        let dos = Strided {
            data: &d_out[off..],
            rs: c,
            cs: 1,
        };
        // dP = dO V^T (into `ds`), dV += P^T dO.
        transpose_head(&v[off..], n, d, c, vt);
        gemm_serial(n, n, d, dos, vt, n, ds, n, false);
        let pt = Strided {
            data: p,
            rs: 1,
            cs: n,
        };
        gemm_serial(n, d, n, pt, &d_out[off..], c, &mut dv[off..], c, true);
        // dS = P (dP - rowsum(P dP)) / sqrt(d), in place.
        for (dsr, pr) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
            let weighted = dot(pr, dsr);
            for (x, pj) in dsr.iter_mut().zip(pr) {
                *x = pj * (*x - weighted) * scale;
            }
        }
        // dQ += dS K, dK += dS^T Q.
        let dss = Strided {
            data: ds,
            rs: n,
            cs: 1,
        };
        gemm_serial(n, d, n, dss, &k[off..], c, &mut dq[off..], c, true);
        let dst = Strided {
            data: ds,
            rs: 1,
            cs: n,
        };
        gemm_serial(n, d, n, dst, &q[off..], c, &mut dk[off..], c, true);
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
