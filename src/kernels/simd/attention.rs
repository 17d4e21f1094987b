//! Attention.

use super::{Shared, Simd, BK, BQ};
use crate::kernels::AttentionArgs;

/// Writes K^T for (sample, head) `task` into `kt` as `[d][kv_tokens]` at offset
/// `task * d * kv_tokens`, so the score blocks read keys as contiguous vectors.
///
/// # Safety
/// `AttentionArgs::check` passed and `kt` holds `tasks * d * kv_tokens` floats; the task writes only its own `d * kv_tokens` block.
#[inline(always)]
pub(crate) unsafe fn transpose_k(a: &AttentionArgs<'_>, kt: Shared<f32>, task: usize) {
    // Keys: `kv_tokens` of them (the text states' count in cross-attention).
    let (n, c) = (a.kv_tokens, a.channels);
    let d = c / a.heads;
    let (b, h) = (task / a.heads, task % a.heads);
    let src = &a.k[b * n * c + h * d..];
    // SAFETY: the caller gives `kt` room for batch * heads * d * n floats; this task writes only
    // its own `d * n` block.
    let dst = unsafe { core::slice::from_raw_parts_mut(kt.0.add(task * d * n), d * n) };
    let mut j0 = 0;
    while j0 < n {
        let j1 = (j0 + 16).min(n);
        for dd in 0..d {
            for j in j0..j1 {
                dst[dd * n + j] = src[j * c + dd];
            }
        }
        j0 = j1;
    }
}

/// Query tasks of an attention call.
pub(crate) fn attention_tasks(a: &AttentionArgs<'_>) -> usize {
    a.batch * a.heads * a.tokens.div_ceil(BQ)
}

/// softmax(Q K^T / sqrt(d)) V for `BQ` queries of one (sample, head): key tiles of `BK` with an
/// online softmax (running max and sum); the output rows accumulate in place in `out`. At most
/// `BQ x BK` scores exist at once.
///
/// # Safety
/// CPU features of `S`; `AttentionArgs::check` passed, `kt` was filled by `transpose_k`; the task writes only its own `BQ` query rows of `out`.
#[inline(always)]
pub(crate) unsafe fn attention_task<S: Simd>(
    a: &AttentionArgs<'_>,
    kt: *const f32,
    out: Shared<f32>,
    task: usize,
    scratch: &mut [f32],
) {
    let l = S::LANES;
    let (n, c) = (a.tokens, a.channels);
    let d = c / a.heads;
    let qtasks = n.div_ceil(BQ);
    let (bh, qt) = (task / qtasks, task % qtasks);
    let (b, h) = (bh / a.heads, bh % a.heads);
    let q0 = qt * BQ;
    let nq = BQ.min(n - q0);
    let m = a.kv_tokens;
    // Causal: no query of this task sees a key past its last row.
    let keys = if a.causal { (q0 + nq).min(m) } else { m };
    let off = b * n * c + h * d;
    let kv_off = b * m * c + h * d;
    let scale = 1.0 / libm::sqrtf(d as f32);
    // Vectors per accumulator row: 4 rows x `nu` vectors + `nu` loads + 1 broadcast must fit
    // the register file (AVX2's 16 ymm: 4 x 2).
    let nu = if S::REGISTERS >= 32 { 4 } else { 2 };
    let s = &mut scratch[..BQ * BK];
    let mut mrow = [f32::NEG_INFINITY; BQ];
    let mut lrow = [0.0f32; BQ];
    let (q, v) = (a.q.as_ptr(), a.v.as_ptr());
    // SAFETY: `kt` holds K^T for every (sample, head): `d x m` floats each (see `transpose_k`).
    let ktb = unsafe { kt.add((b * a.heads + h) * d * m) };
    // SAFETY (whole body): every query/output row pointer is `off + token * c` with token < n,
    // every value row `kv_off + key * c` with key < m, plus up to
    // `d` floats (AttentionArgs::check); output rows `q0..q0 + nq` of head `h` of sample `b`
    // belong to this task only.
    unsafe {
        let orow = |i: usize| out.0.add(off + (q0 + i) * c);
        for i in 0..nq {
            core::slice::from_raw_parts_mut(orow(i), d).fill(0.0);
        }
        let mut j0 = 0;
        while j0 < keys {
            let bk = BK.min(keys - j0);
            // Scores S = Q K^T * scale from K^T rows (`ktb + dd * m`): 4 query rows x 4 (then
            // 1) vectors of keys per block, broadcasting one query element per row.
            let mut i = 0;
            while i < nq {
                let rows = 4.min(nq - i);
                // Rows past `nq` repeat the last one (never stored), so the block stays square.
                let qr = [0, 1, 2, 3].map(|r| q.add(off + (q0 + i + r.min(rows - 1)) * c));
                let mut j = 0;
                while j + nu * l <= bk {
                    let mut acc = [[S::zero(); 4]; 4];
                    for dd in 0..d {
                        let kp = ktb.add(dd * m + j0 + j);
                        let mut kv = [S::zero(); 4];
                        for (u, x) in kv.iter_mut().enumerate().take(nu) {
                            *x = S::load(kp.add(u * l));
                        }
                        for (r, ar) in acc.iter_mut().enumerate() {
                            let qv = S::bcast(qr[r].add(dd));
                            for u in 0..nu {
                                ar[u] = S::fma(qv, kv[u], ar[u]);
                            }
                        }
                    }
                    for (r, ar) in acc.iter().enumerate().take(rows) {
                        for (u, x) in ar.iter().enumerate().take(nu) {
                            S::store(
                                s.as_mut_ptr().add((i + r) * BK + j + u * l),
                                S::mul(*x, S::splat(scale)),
                            );
                        }
                    }
                    j += nu * l;
                }
                while j + l <= bk {
                    let mut acc = [S::zero(); 4];
                    for dd in 0..d {
                        let kv = S::load(ktb.add(dd * m + j0 + j));
                        for (r, x) in acc.iter_mut().enumerate() {
                            *x = S::fma(S::bcast(qr[r].add(dd)), kv, *x);
                        }
                    }
                    for (r, x) in acc.iter().enumerate().take(rows) {
                        S::store(
                            s.as_mut_ptr().add((i + r) * BK + j),
                            S::mul(*x, S::splat(scale)),
                        );
                    }
                    j += l;
                }
                for r in 0..rows {
                    for jj in j..bk {
                        let mut dot = 0.0f32;
                        for dd in 0..d {
                            dot += *qr[r].add(dd) * *ktb.add(dd * m + j0 + jj);
                        }
                        s[(i + r) * BK + jj] = dot * scale;
                    }
                }
                i += rows;
            }
            // Online softmax over the keys row i sees (causal: keys up to q0 + i); the scores
            // of the masked keys become 0, so the P V pass below adds nothing for them.
            for i in 0..nq {
                let seen = if a.causal {
                    (q0 + i + 1).saturating_sub(j0).min(bk)
                } else {
                    bk
                };
                s[i * BK + seen..i * BK + bk].fill(0.0);
                if seen == 0 {
                    continue;
                }
                let srow = &mut s[i * BK..i * BK + seen];
                let bk = seen;
                let mut mx = mrow[i];
                let mut j = 0;
                if bk >= l {
                    let mut mv = S::splat(mx);
                    while j + l <= bk {
                        mv = S::max(mv, S::load(srow.as_ptr().add(j)));
                        j += l;
                    }
                    mx = S::hmax(mv);
                }
                for x in &srow[j..] {
                    mx = mx.max(*x);
                }
                let alpha = libm::expf(mrow[i] - mx);
                let mut total = 0.0f32;
                let mut j = 0;
                let mv = S::splat(mx);
                let mut tv = S::zero();
                while j + l <= bk {
                    let e = S::exp(S::sub(S::load(srow.as_ptr().add(j)), mv));
                    S::store(srow.as_mut_ptr().add(j), e);
                    tv = S::add(tv, e);
                    j += l;
                }
                total += S::hsum(tv);
                for x in &mut srow[j..] {
                    *x = libm::expf(*x - mx);
                    total += *x;
                }
                lrow[i] = lrow[i] * alpha + total;
                mrow[i] = mx;
                if alpha != 1.0 {
                    let o = core::slice::from_raw_parts_mut(orow(i), d);
                    for x in o.iter_mut() {
                        *x *= alpha;
                    }
                }
            }
            // O += P V: 4 query rows x up to `nu` vectors of d at a time (independent FMA
            // chains; a head size under `nu` vectors, SD 1.5's 40 on AVX-512, still gets them),
            // then the rows left over, then the columns past the last whole vector. Every output
            // element sums its keys in order, so the blocking does not change the result.
            let full = d - d % l;
            let mut i = 0;
            while i < nq {
                let rows = 4.min(nq - i);
                let mut col = 0;
                if rows == 4 {
                    while col < full {
                        let w = nu.min((full - col) / l);
                        let mut acc = [[S::zero(); 4]; 4];
                        for (r, ar) in acc.iter_mut().enumerate() {
                            for (u, x) in ar.iter_mut().enumerate().take(w) {
                                *x = S::load(orow(i + r).add(col + u * l));
                            }
                        }
                        for j in 0..bk {
                            let vp = v.add(kv_off + (j0 + j) * c + col);
                            let mut vv = [S::zero(); 4];
                            for (u, x) in vv.iter_mut().enumerate().take(w) {
                                *x = S::load(vp.add(u * l));
                            }
                            for (r, ar) in acc.iter_mut().enumerate() {
                                let pv = S::splat(s[(i + r) * BK + j]);
                                for u in 0..w {
                                    ar[u] = S::fma(pv, vv[u], ar[u]);
                                }
                            }
                        }
                        for (r, ar) in acc.iter().enumerate() {
                            for (u, x) in ar.iter().enumerate().take(w) {
                                S::store(orow(i + r).add(col + u * l), *x);
                            }
                        }
                        col += w * l;
                    }
                }
                for r in 0..rows {
                    let o = orow(i + r);
                    let mut cc = col;
                    while cc + l <= d {
                        let mut acc = S::load(o.add(cc));
                        for j in 0..bk {
                            acc = S::fma(
                                S::splat(s[(i + r) * BK + j]),
                                S::load(v.add(kv_off + (j0 + j) * c + cc)),
                                acc,
                            );
                        }
                        S::store(o.add(cc), acc);
                        cc += l;
                    }
                }
                i += rows;
            }
            // The columns past the last whole vector (`d % l`: SD 1.5's head size 40 is
            // 2 x 16 + 8 on AVX-512): this key block's V columns are copied once into
            // zero-padded vectors, then 4 query rows at a time add `p * v` lane-wise, a multiply
            // then an add, which rounds as the scalar `o += p * v` it replaces.
            let tail = d - full;
            if tail > 0 {
                let mut vt = [0.0f32; BK * 16];
                for j in 0..bk {
                    let vp = v.add(kv_off + (j0 + j) * c + full);
                    for t in 0..tail {
                        vt[j * l + t] = *vp.add(t);
                    }
                }
                let mut i = 0;
                while i < nq {
                    let rows = 4.min(nq - i);
                    let mut ob = [[0.0f32; 16]; 4];
                    let mut acc = [S::zero(); 4];
                    for r in 0..rows {
                        for (t, x) in ob[r].iter_mut().enumerate().take(tail) {
                            *x = *orow(i + r).add(full + t);
                        }
                        acc[r] = S::load(ob[r].as_ptr());
                    }
                    for j in 0..bk {
                        let vv = S::load(vt.as_ptr().add(j * l));
                        for (r, x) in acc.iter_mut().enumerate().take(rows) {
                            *x = S::add(*x, S::mul(S::splat(s[(i + r) * BK + j]), vv));
                        }
                    }
                    for r in 0..rows {
                        S::store(ob[r].as_mut_ptr(), acc[r]);
                        for (t, x) in ob[r].iter().enumerate().take(tail) {
                            *orow(i + r).add(full + t) = *x;
                        }
                    }
                    i += rows;
                }
            }
            j0 += bk;
        }
        for (i, total) in lrow.iter().enumerate().take(nq) {
            let inv = 1.0 / total;
            let o = core::slice::from_raw_parts_mut(orow(i), d);
            for x in o.iter_mut() {
                *x *= inv;
            }
        }
    }
}
