//! Attention, vectorised across queries.
//!
//! A task takes `QV` vectors of queries (48 on AVX-512, 16 on AVX2) of one (sample, head) and
//! keeps them transposed: the query tile as `[d][queries]`, the score tile of `BK` keys as
//! `[keys][queries]` and the output accumulators as `[d][queries]`. Every lane is one query,
//! so the online softmax (running max, sum, rescale) is plain vertical vector arithmetic with
//! no horizontal reductions, keys and head sizes of any length need no padding (a key, or a
//! channel of the head, is a broadcast), and K and V are read in place.

use super::{Shared, Simd, BK, SCRATCH_FLOATS};
use crate::kernels::AttentionArgs;

/// (query vectors per task, key or head-channel rows per register block) on a 32-register
/// file: `R x QV` accumulators + `QV` loads + one broadcast must fit (8 x 3 + 4 = 28).
const TILE_32: (usize, usize) = (3, 8);
/// The same on AVX2's 16 registers: 6 x 2 + 3 = 15.
const TILE_16: (usize, usize) = (2, 6);
/// Most queries a task takes on any path (AVX-512: 3 vectors of 16).
pub(crate) const MAX_QUERIES: usize = TILE_32.0 * 16;

#[inline(always)]
const fn tile<S: Simd>() -> (usize, usize) {
    if S::REGISTERS >= 32 {
        TILE_32
    } else {
        TILE_16
    }
}

/// Queries per task.
#[inline(always)]
pub(crate) fn queries_per_task<S: Simd>() -> usize {
    tile::<S>().0 * S::LANES
}

/// Query tasks of an attention call.
#[inline(always)]
pub(crate) fn attention_tasks<S: Simd>(a: &AttentionArgs<'_>) -> usize {
    a.batch * a.heads * a.tokens.div_ceil(queries_per_task::<S>())
}

/// Keys per score tile: `BK`, or fewer when a large head leaves less scratch (the query and
/// output tiles take `2 * d * queries` floats).
#[inline(always)]
fn key_tile<S: Simd>(d: usize) -> usize {
    let qb = queries_per_task::<S>();
    let room = SCRATCH_FLOATS.saturating_sub(2 * d * qb) / qb;
    assert!(
        room >= 1,
        "attention: head size {d} too large for the scratch"
    );
    room.min(BK)
}

/// softmax(Q K^T / sqrt(d)) V for the queries of task `task` (see the module comment).
///
/// # Safety
/// CPU features of `S`; `AttentionArgs::check` passed; `scratch` holds `SCRATCH_FLOATS`; the
/// task writes only its own query rows of head `h` of `out`.
#[inline(always)]
pub(crate) unsafe fn attention_task<S: Simd>(
    a: &AttentionArgs<'_>,
    out: Shared<f32>,
    task: usize,
    scratch: &mut [f32],
) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        if S::REGISTERS >= 32 {
            task_tiles::<S, { TILE_32.0 }, { TILE_32.1 }>(a, out, task, scratch)
        } else {
            task_tiles::<S, { TILE_16.0 }, { TILE_16.1 }>(a, out, task, scratch)
        }
    }
}

/// [`attention_task`] with `QV` query vectors and `R`-row register blocks.
///
/// # Safety
/// As [`attention_task`], with `(QV, R) == tile::<S>()`.
// The per-vector loops index several `[S::V; QV]` arrays at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn task_tiles<S: Simd, const QV: usize, const R: usize>(
    a: &AttentionArgs<'_>,
    out: Shared<f32>,
    task: usize,
    scratch: &mut [f32],
) {
    let l = S::LANES;
    let qb = QV * l;
    let (n, c, m) = (a.tokens, a.channels, a.kv_tokens);
    let d = c / a.heads;
    let kb = key_tile::<S>(d);
    let qtasks = n.div_ceil(qb);
    let (bh, qt) = (task / qtasks, task % qtasks);
    let (b, h) = (bh / a.heads, bh % a.heads);
    let q0 = qt * qb;
    let nq = qb.min(n - q0);
    // Causal: no query of this task sees a key past its last row.
    let keys = if a.causal { (q0 + nq).min(m) } else { m };
    let off = b * n * c + h * d;
    let kv_off = b * m * c + h * d;
    // Scores are kept in base 2 (times log2(e)), so the softmax's exponentials are
    // `exp2_nonpositive`, a third cheaper than `exp`: softmax(s) = 2^(s log2 e - max) / sum.
    let scale = core::f32::consts::LOG2_E / libm::sqrtf(d as f32);
    let (qt_buf, rest) = scratch[..SCRATCH_FLOATS].split_at_mut(d * qb);
    let (ot, rest) = rest.split_at_mut(d * qb);
    let st = &mut rest[..kb * qb];
    // The query tile, transposed; lanes past `nq` are 0 (their scores are 0, never stored).
    for (dd, row) in qt_buf.chunks_exact_mut(qb).enumerate() {
        for (i, x) in row.iter_mut().enumerate() {
            *x = if i < nq {
                a.q[off + (q0 + i) * c + dd]
            } else {
                0.0
            };
        }
    }
    ot.fill(0.0);
    // SAFETY (whole body): K and V rows `kv_off + key * c` with key < keys <= m, plus up to `d`
    // floats, are inside `a.k` / `a.v` (AttentionArgs::check); the tiles are this thread's
    // scratch, `d * qb` and `kb * qb` floats, indexed below those lengths; output rows
    // `q0..q0 + nq` of head `h` of sample `b` belong to this task only.
    unsafe {
        let (kp, vp) = (a.k.as_ptr().add(kv_off), a.v.as_ptr().add(kv_off));
        let stp = st.as_mut_ptr();
        let otp = ot.as_mut_ptr();
        let mut mrow = [S::zero(); QV];
        let mut lrow = [S::zero(); QV];
        let mut j0 = 0;
        while j0 < keys {
            let bk = kb.min(keys - j0);
            scores::<S, QV, R>(qt_buf.as_ptr(), d, kp.add(j0 * c), c, bk, stp, scale);
            // Causal: key j0 + j is hidden from query q0 + i when j0 + j > q0 + i. Key 0 is
            // in the first tile and seen by every query, so each running max is finite.
            let masked = a.causal && j0 + bk > q0 + 1;
            let mask = |value: f32| {
                for j in (q0 + 1).saturating_sub(j0)..bk {
                    let hidden = (j0 + j - q0).min(qb);
                    for i in 0..hidden {
                        *stp.add(j * qb + i) = value;
                    }
                }
            };
            if masked {
                mask(f32::NEG_INFINITY);
            }
            let first = j0 == 0;
            let mut mnew = [S::zero(); QV];
            for v in 0..QV {
                let mut mt = S::load(stp.add(v * l));
                for j in 1..bk {
                    mt = S::max(mt, S::load(stp.add(j * qb + v * l)));
                }
                mnew[v] = if first { mt } else { S::max(mrow[v], mt) };
            }
            let mut sum = [S::zero(); QV];
            for j in 0..bk {
                for v in 0..QV {
                    let p = stp.add(j * qb + v * l);
                    let e = S::exp2_nonpositive(S::sub(S::load(p), mnew[v]));
                    S::store(p, e);
                    sum[v] = S::add(sum[v], e);
                }
            }
            if masked {
                // 2^-inf is clamped to a tiny number: make the hidden keys exactly 0 and
                // sum again.
                mask(0.0);
                sum = [S::zero(); QV];
                for j in 0..bk {
                    for v in 0..QV {
                        sum[v] = S::add(sum[v], S::load(stp.add(j * qb + v * l)));
                    }
                }
            }
            if first {
                lrow = sum;
            } else {
                let mut alpha = [S::zero(); QV];
                for v in 0..QV {
                    alpha[v] = S::exp2_nonpositive(S::sub(mrow[v], mnew[v]));
                    lrow[v] = S::fma(lrow[v], alpha[v], sum[v]);
                }
                for dd in 0..d {
                    for v in 0..QV {
                        let o = otp.add(dd * qb + v * l);
                        S::store(o, S::mul(S::load(o), alpha[v]));
                    }
                }
            }
            mrow = mnew;
            pv::<S, QV, R>(stp, bk, vp.add(j0 * c), c, d, otp);
            j0 += bk;
        }
        // Scale by 1 / sum and write the rows back, transposed.
        const { assert!(QV * S::LANES <= MAX_QUERIES) };
        let mut inv = [0.0f32; MAX_QUERIES];
        for v in 0..QV {
            S::store(inv.as_mut_ptr().add(v * l), S::div(S::splat(1.0), lrow[v]));
        }
        for (i, inv) in inv.iter().enumerate().take(nq) {
            let o = core::slice::from_raw_parts_mut(out.0.add(off + (q0 + i) * c), d);
            for (dd, x) in o.iter_mut().enumerate() {
                *x = ot[dd * qb + i] * inv;
            }
        }
    }
}

/// Score tile: `st[j][q] = scale * sum_dd qt[dd][q] * k[j * c + dd]` for `keys` keys, in
/// blocks of `R` keys (then single keys), summing the head channels in order.
///
/// # Safety
/// CPU features of `S`; `qt` holds `d * QV * LANES` floats, `k` rows `j * c` (j < keys) hold
/// `d` floats, `st` holds `keys * QV * LANES`.
#[inline(always)]
unsafe fn scores<S: Simd, const QV: usize, const R: usize>(
    qt: *const f32,
    d: usize,
    k: *const f32,
    c: usize,
    keys: usize,
    st: *mut f32,
    scale: f32,
) {
    // SAFETY: as documented above.
    unsafe {
        let mut j = 0;
        while j + R <= keys {
            score_block::<S, QV, R>(qt, d, k.add(j * c), c, st.add(j * QV * S::LANES), scale);
            j += R;
        }
        while j < keys {
            score_block::<S, QV, 1>(qt, d, k.add(j * c), c, st.add(j * QV * S::LANES), scale);
            j += 1;
        }
    }
}

/// `RK` keys of the score tile (see [`scores`]), accumulators in registers.
///
/// # Safety
/// As [`scores`] for `RK` keys.
#[inline(always)]
unsafe fn score_block<S: Simd, const QV: usize, const RK: usize>(
    qt: *const f32,
    d: usize,
    k: *const f32,
    c: usize,
    st: *mut f32,
    scale: f32,
) {
    let l = S::LANES;
    let qb = QV * l;
    // SAFETY: as documented on `scores`.
    unsafe {
        let mut acc = [[S::zero(); QV]; RK];
        for dd in 0..d {
            let q: [S::V; QV] = core::array::from_fn(|v| S::load(qt.add(dd * qb + v * l)));
            for (r, row) in acc.iter_mut().enumerate() {
                let kv = S::bcast(k.add(r * c + dd));
                for v in 0..QV {
                    row[v] = S::fma(kv, q[v], row[v]);
                }
            }
        }
        let sv = S::splat(scale);
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                S::store(st.add(r * qb + v * l), S::mul(*x, sv));
            }
        }
    }
}

/// `ot[dd][q] += sum_j st[j][q] * v[j * c + dd]` over `keys` keys in order, in blocks of `R`
/// head channels (then 4, then 1).
///
/// # Safety
/// CPU features of `S`; `st` holds `keys * QV * LANES` floats, `v` rows `j * c` (j < keys)
/// hold `d` floats, `ot` holds `d * QV * LANES`.
#[inline(always)]
unsafe fn pv<S: Simd, const QV: usize, const R: usize>(
    st: *const f32,
    keys: usize,
    v: *const f32,
    c: usize,
    d: usize,
    ot: *mut f32,
) {
    // SAFETY: as documented above.
    unsafe {
        let mut dd = 0;
        while dd + R <= d {
            pv_block::<S, QV, R>(st, keys, v.add(dd), c, ot.add(dd * QV * S::LANES));
            dd += R;
        }
        while dd + 4 <= d {
            pv_block::<S, QV, 4>(st, keys, v.add(dd), c, ot.add(dd * QV * S::LANES));
            dd += 4;
        }
        while dd < d {
            pv_block::<S, QV, 1>(st, keys, v.add(dd), c, ot.add(dd * QV * S::LANES));
            dd += 1;
        }
    }
}

/// `RD` head channels of [`pv`], accumulators in registers.
///
/// # Safety
/// As [`pv`] for channels `0..RD` of `v` and rows `0..RD` of `ot`.
#[inline(always)]
unsafe fn pv_block<S: Simd, const QV: usize, const RD: usize>(
    st: *const f32,
    keys: usize,
    v: *const f32,
    c: usize,
    ot: *mut f32,
) {
    let l = S::LANES;
    let qb = QV * l;
    // SAFETY: as documented on `pv`.
    unsafe {
        let mut acc: [[S::V; QV]; RD] =
            core::array::from_fn(|r| core::array::from_fn(|u| S::load(ot.add(r * qb + u * l))));
        for j in 0..keys {
            let p: [S::V; QV] = core::array::from_fn(|u| S::load(st.add(j * qb + u * l)));
            for (r, row) in acc.iter_mut().enumerate() {
                let vv = S::bcast(v.add(j * c + r));
                for u in 0..QV {
                    row[u] = S::fma(vv, p[u], row[u]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (u, x) in row.iter().enumerate() {
                S::store(ot.add(r * qb + u * l), *x);
            }
        }
    }
}
