//! The attention core (the op list's `Attention` op) over `[batch, tokens, channels]`:
//! per head, `S = Q K^T / sqrt(d)`, `P = softmax_rows(S)`, `O = P V`. The block around it
//! (GroupNorm, the Q/K/V and output projections, the residual and rescale; diffusers'
//! `Attention` as `AttnDownBlock2D`, the mid block and `AttnUpBlock2D` use it) is ops of its
//! own, with their own backwards.
//!
//! Backward of the attention core, per head, given `dO`:
//! - `dV = P^T dO`, `dP = dO V^T`;
//! - softmax: `dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik)` (the Jacobian of a softmax row is
//!   `diag(p) - p p^T`);
//! - `dQ = dS K / sqrt(d)`, `dK = dS^T Q / sqrt(d)`.
//!
//! The forward saves `P` (`heads * tokens^2` per sample, [`saved_len`]).

use super::dot;
use super::gemm::{for_each_task, gemm_serial, with_scratch, SharedMut, Strided};
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

/// Floats saved per sample for the backward: `P`, `heads * tokens^2`.
pub fn saved_len(tokens: usize, heads: usize) -> usize {
    heads * tokens * tokens
}
