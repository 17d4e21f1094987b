//! Attention.

use super::{Shared, Simd, BK, SCRATCH_FLOATS};
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

/// Most query rows one task takes (32 measured faster than 16 or 64 on Zen 4).
pub(crate) const QB_MAX: usize = 32;

/// Tiles of one attention task: (queries per task, keys per score tile). The task's scratch
/// holds the `qb x kb` scores, its `qb` output rows and one `kb`-key tile of V, both with rows
/// padded to whole vectors (`dp`): as large as fit, up to `QB_MAX x BK`, so each K^T / V tile
/// read from cache serves up to `QB_MAX` queries.
#[inline(always)]
pub(crate) fn attention_plan<S: Simd>(a: &AttentionArgs<'_>) -> (usize, usize) {
    let d = a.channels / a.heads;
    let dp = d.div_ceil(S::LANES) * S::LANES;
    let fits = |qb: usize, kb: usize| qb * kb + qb * dp + kb * dp + d * S::LANES <= SCRATCH_FLOATS;
    let mut qb = QB_MAX;
    while qb > 4 && !fits(qb, BK) {
        qb /= 2;
    }
    let mut kb = BK;
    while kb > 1 && !fits(qb, kb) {
        kb /= 2;
    }
    assert!(fits(qb, kb), "attention: head size {d} too large");
    (qb, kb)
}

/// Query tasks of an attention call.
#[inline(always)]
pub(crate) fn attention_tasks<S: Simd>(a: &AttentionArgs<'_>) -> usize {
    a.batch * a.heads * a.tokens.div_ceil(attention_plan::<S>(a).0)
}

/// softmax(Q K^T / sqrt(d)) V for `qb` queries of one (sample, head) ([`attention_plan`]): key
/// tiles of `kb` with an online softmax (running max and sum). The output rows accumulate in
/// the task's scratch, padded to whole vectors, as does a copy of each V tile, so the P V
/// product has no partial vectors (SD 1.5's head size 40 is 3 AVX-512 vectors, 5 AVX2 ones);
/// they are scaled by 1 / sum and written to `out` at the end.
///
/// # Safety
/// CPU features of `S`; `AttentionArgs::check` passed, `kt` was filled by `transpose_k`;
/// `scratch` holds `SCRATCH_FLOATS`; the task writes only its own query rows of `out`.
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
    let dp = d.div_ceil(l) * l;
    let (qb, kb) = attention_plan::<S>(a);
    let qtasks = n.div_ceil(qb);
    let (bh, qt) = (task / qtasks, task % qtasks);
    let (b, h) = (bh / a.heads, bh % a.heads);
    let q0 = qt * qb;
    let nq = qb.min(n - q0);
    let m = a.kv_tokens;
    // Causal: no query of this task sees a key past its last row.
    let keys = if a.causal { (q0 + nq).min(m) } else { m };
    let off = b * n * c + h * d;
    let kv_off = b * m * c + h * d;
    let scale = 1.0 / libm::sqrtf(d as f32);
    // Vectors per accumulator row: 4 rows x `nu` vectors + `nu` loads + 1 broadcast must fit
    // the register file (AVX2's 16 ymm: 4 x 2).
    let nu = if S::REGISTERS >= 32 { 4 } else { 2 };
    let (s, rest) = scratch[..SCRATCH_FLOATS].split_at_mut(qb * kb);
    let (ob, rest) = rest.split_at_mut(qb * dp);
    let (vt, rest) = rest.split_at_mut(kb * dp);
    let kpad = &mut rest[..d * l];
    ob.fill(0.0);
    vt.fill(0.0);
    let mut mrow = [f32::NEG_INFINITY; QB_MAX];
    let mut lrow = [0.0f32; QB_MAX];
    let (q, v) = (a.q.as_ptr(), a.v.as_ptr());
    // SAFETY: `kt` holds K^T for every (sample, head): `d x m` floats each (see `transpose_k`).
    let ktb = unsafe { kt.add((b * a.heads + h) * d * m) };
    // SAFETY (whole body): every query/output row pointer is `off + token * c` with token < n,
    // every value row `kv_off + key * c` with key < m, plus up to `d` floats
    // (AttentionArgs::check); output rows `q0..q0 + nq` of head `h` of sample `b` belong to this
    // task only; `s`, `ob`, `vt` and `kpad` are this thread's scratch, indexed below their lengths
    // (`i < qb`, `j < kb`, columns < `dp`).
    unsafe {
        let obp = ob.as_mut_ptr();
        let vtp = vt.as_mut_ptr();
        let mut j0 = 0;
        while j0 < keys {
            let bk = kb.min(keys - j0);
            // This key tile of V, rows padded to `dp` (the padding stays 0 from the fill).
            for j in 0..bk {
                let src = v.add(kv_off + (j0 + j) * c);
                core::ptr::copy_nonoverlapping(src, vtp.add(j * dp), d);
            }
            // The keys past the last whole vector (cross-attention's 77 = 4 x 16 + 13 on
            // AVX-512), as `[d][l]` with zero lanes past them, so they take a vector too.
            let jt = bk - bk % l;
            if jt < bk {
                for dd in 0..d {
                    for t in 0..l {
                        kpad[dd * l + t] = if jt + t < bk {
                            *ktb.add(dd * m + j0 + jt + t)
                        } else {
                            0.0
                        };
                    }
                }
            }
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
                                s.as_mut_ptr().add((i + r) * kb + j + u * l),
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
                            s.as_mut_ptr().add((i + r) * kb + j),
                            S::mul(*x, S::splat(scale)),
                        );
                    }
                    j += l;
                }
                if j < bk {
                    let mut acc = [S::zero(); 4];
                    for dd in 0..d {
                        let kv = S::load(kpad.as_ptr().add(dd * l));
                        for (r, x) in acc.iter_mut().enumerate() {
                            *x = S::fma(S::bcast(qr[r].add(dd)), kv, *x);
                        }
                    }
                    let mut tmp = [0.0f32; 16];
                    for (r, x) in acc.iter().enumerate().take(rows) {
                        S::store(tmp.as_mut_ptr(), S::mul(*x, S::splat(scale)));
                        s[(i + r) * kb + j..(i + r) * kb + bk].copy_from_slice(&tmp[..bk - j]);
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
                s[i * kb + seen..i * kb + bk].fill(0.0);
                if seen == 0 {
                    continue;
                }
                let srow = &mut s[i * kb..i * kb + seen];
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
                    let av = S::splat(alpha);
                    let o = obp.add(i * dp);
                    for cc in (0..dp).step_by(l) {
                        S::store(o.add(cc), S::mul(S::load(o.add(cc)), av));
                    }
                }
            }
            // O += P V: 4 query rows (past `nq`: the last one again, never stored) x up to
            // `nu` vectors of the padded rows at a time, the vectors split evenly between the
            // passes. Every output element sums its keys in order.
            let nv = dp / l;
            let passes = nv.div_ceil(nu);
            let mut i = 0;
            while i < nq {
                let rows = 4.min(nq - i);
                let ri = [0, 1, 2, 3].map(|r| i + r.min(rows - 1));
                let mut col = 0;
                for pass in 0..passes {
                    // Vectors of this pass: `nv` split as evenly as `passes` allows.
                    let w = (nv * (pass + 1)) / passes - (nv * pass) / passes;
                    let mut acc = [[S::zero(); 4]; 4];
                    for (r, ar) in acc.iter_mut().enumerate() {
                        for (u, x) in ar.iter_mut().enumerate().take(w) {
                            *x = S::load(obp.add(ri[r] * dp + col + u * l));
                        }
                    }
                    for j in 0..bk {
                        let vp = vtp.add(j * dp + col);
                        let mut vv = [S::zero(); 4];
                        for (u, x) in vv.iter_mut().enumerate().take(w) {
                            *x = S::load(vp.add(u * l));
                        }
                        for (r, ar) in acc.iter_mut().enumerate() {
                            let pv = S::bcast(s.as_ptr().add(ri[r] * kb + j));
                            for u in 0..w {
                                ar[u] = S::fma(pv, vv[u], ar[u]);
                            }
                        }
                    }
                    for (r, ar) in acc.iter().enumerate().take(rows) {
                        for (u, x) in ar.iter().enumerate().take(w) {
                            S::store(obp.add((i + r) * dp + col + u * l), *x);
                        }
                    }
                    col += w * l;
                }
                i += rows;
            }
            j0 += bk;
        }
        for (i, total) in lrow.iter().enumerate().take(nq) {
            let inv = 1.0 / total;
            let o = core::slice::from_raw_parts_mut(out.0.add(off + (q0 + i) * c), d);
            for (x, y) in o.iter_mut().zip(&ob[i * dp..i * dp + d]) {
                *x = *y * inv;
            }
        }
    }
}
