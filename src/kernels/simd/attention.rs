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

/// Most query rows one task takes (on Zen 4, 16 was slower than 32 and 64 within noise of it).
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
            // Scores S = Q K^T * scale, from K^T rows (`ktb + dd * m`) and the padded tail.
            let t = ScoreTile {
                q: q.add(off + q0 * c),
                c,
                kt: ktb.add(j0),
                m,
                kpad: kpad.as_ptr(),
                d,
                s: s.as_mut_ptr(),
                kb,
                nq,
                keys: bk,
                scale,
            };
            if S::REGISTERS >= 32 {
                scores::<S, 4, 4>(&t);
            } else {
                scores::<S, 4, 2>(&t);
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
            // O += P V, one pass per group of up to `nu` vectors of the padded rows (the
            // vectors split evenly between the passes). Every output element sums its keys in
            // order, so the tiling does not change the bits.
            let nv = dp / l;
            let passes = nv.div_ceil(nu);
            let mut col = 0;
            for pass in 0..passes {
                let w = (nv * (pass + 1)) / passes - (nv * pass) / passes;
                let t = PvTile {
                    s: s.as_ptr(),
                    kb,
                    o: obp,
                    v: vtp,
                    dp,
                    col,
                    nq,
                    keys: bk,
                };
                // Rows x vectors: accumulators + one row of V + one broadcast within the
                // register file (AVX-512 and NEON: 32, AVX2: 16).
                match (S::REGISTERS >= 32, w) {
                    (true, 1) => pv_pass::<S, 12, 1>(&t),
                    (true, 2) => pv_pass::<S, 8, 2>(&t),
                    (true, 3) => pv_pass::<S, 8, 3>(&t),
                    (true, _) => pv_pass::<S, 6, 4>(&t),
                    (false, 1) => pv_pass::<S, 8, 1>(&t),
                    (false, _) => pv_pass::<S, 4, 2>(&t),
                }
                col += w * l;
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

/// One P V pass of an attention task: output columns `col..col + W * LANES` of its `nq` rows.
struct PvTile {
    /// Probabilities, `nq` rows of `kb` (the first `keys` used).
    s: *const f32,
    kb: usize,
    /// Output rows (`dp` floats apart), read, added to and written back.
    o: *mut f32,
    /// The V tile, `keys` rows of `dp`.
    v: *const f32,
    dp: usize,
    col: usize,
    nq: usize,
    keys: usize,
}

/// `R` query rows x `W` vectors at a time, the accumulators in registers (compile-time sizes,
/// so the compiler keeps them there); rows past `nq` repeat the last one and are not stored.
///
/// # Safety
/// CPU features of `S`; the tile's pointers cover the extents documented on [`PvTile`], with
/// `col + W * LANES <= dp`.
#[inline(always)]
unsafe fn pv_pass<S: Simd, const R: usize, const W: usize>(t: &PvTile) {
    let l = S::LANES;
    let mut i = 0;
    // SAFETY: rows < nq, columns < col + W * l <= dp and keys < `keys` (see `PvTile`).
    unsafe {
        while i < t.nq {
            let rows = R.min(t.nq - i);
            let row: [usize; R] = core::array::from_fn(|r| i + r.min(rows - 1));
            let mut acc = [[S::zero(); W]; R];
            for r in 0..R {
                for u in 0..W {
                    acc[r][u] = S::load(t.o.add(row[r] * t.dp + t.col + u * l));
                }
            }
            let sp: [*const f32; R] = core::array::from_fn(|r| t.s.add(row[r] * t.kb));
            for j in 0..t.keys {
                let vp = t.v.add(j * t.dp + t.col);
                let vv: [S::V; W] = core::array::from_fn(|u| S::load(vp.add(u * l)));
                for r in 0..R {
                    let p = S::bcast(sp[r].add(j));
                    for u in 0..W {
                        acc[r][u] = S::fma(p, vv[u], acc[r][u]);
                    }
                }
            }
            for r in 0..rows {
                for u in 0..W {
                    S::store(t.o.add((i + r) * t.dp + t.col + u * l), acc[r][u]);
                }
            }
            i += rows;
        }
    }
}

/// The score tile of an attention task: `nq` query rows x `keys` keys.
struct ScoreTile {
    /// The task's first query row (rows `c` floats apart, `d` used).
    q: *const f32,
    c: usize,
    /// K^T at the tile's first key: `d` rows `m` floats apart.
    kt: *const f32,
    m: usize,
    /// The keys past the last whole vector as `[d][LANES]`, zero lanes past them.
    kpad: *const f32,
    d: usize,
    /// Scores out, `nq` rows of `kb`.
    s: *mut f32,
    kb: usize,
    nq: usize,
    keys: usize,
    scale: f32,
}

/// `R` query rows x `U` vectors of keys, accumulated over the head size, scaled.
///
/// # Safety
/// CPU features of `S`; `qr[r] + dd` readable for `dd < d`, `k + dd * stride + u * LANES`
/// readable for `LANES` floats for `dd < d`, `u < U`.
#[inline(always)]
unsafe fn score_block<S: Simd, const R: usize, const U: usize>(
    qr: &[*const f32; R],
    k: *const f32,
    stride: usize,
    d: usize,
    scale: S::V,
) -> [[S::V; U]; R] {
    let l = S::LANES;
    // SAFETY: as documented above.
    unsafe {
        let mut acc = [[S::zero(); U]; R];
        for dd in 0..d {
            let kp = k.add(dd * stride);
            let kv: [S::V; U] = core::array::from_fn(|u| S::load(kp.add(u * l)));
            for r in 0..R {
                let qv = S::bcast(qr[r].add(dd));
                for u in 0..U {
                    acc[r][u] = S::fma(qv, kv[u], acc[r][u]);
                }
            }
        }
        for row in acc.iter_mut() {
            for x in row.iter_mut() {
                *x = S::mul(*x, scale);
            }
        }
        acc
    }
}

/// Fills the score tile: `R` query rows x `U` vectors of keys per block (compile-time sizes,
/// so the accumulators stay in registers), then single vectors, then the padded tail; rows
/// past `nq` repeat the last one and are not stored.
///
/// # Safety
/// CPU features of `S`; the pointers cover the extents documented on [`ScoreTile`], with
/// `keys <= kb` and `keys` keys readable in every K^T row.
#[inline(always)]
unsafe fn scores<S: Simd, const R: usize, const U: usize>(t: &ScoreTile) {
    let l = S::LANES;
    // SAFETY: rows < nq, keys < `keys`, K^T rows < d (see `ScoreTile`).
    unsafe {
        let scale = S::splat(t.scale);
        let mut i = 0;
        while i < t.nq {
            let rows = R.min(t.nq - i);
            let qr: [*const f32; R] =
                core::array::from_fn(|r| t.q.add((i + r.min(rows - 1)) * t.c));
            let out = |r: usize, j: usize| t.s.add((i + r) * t.kb + j);
            let mut j = 0;
            while j + U * l <= t.keys {
                let acc = score_block::<S, R, U>(&qr, t.kt.add(j), t.m, t.d, scale);
                for (r, row) in acc.iter().enumerate().take(rows) {
                    for (u, x) in row.iter().enumerate() {
                        S::store(out(r, j + u * l), *x);
                    }
                }
                j += U * l;
            }
            while j + l <= t.keys {
                let acc = score_block::<S, R, 1>(&qr, t.kt.add(j), t.m, t.d, scale);
                for (r, row) in acc.iter().enumerate().take(rows) {
                    S::store(out(r, j), row[0]);
                }
                j += l;
            }
            if j < t.keys {
                let acc = score_block::<S, R, 1>(&qr, t.kpad, l, t.d, scale);
                let mut tmp = [0.0f32; 16];
                for (r, row) in acc.iter().enumerate().take(rows) {
                    S::store(tmp.as_mut_ptr(), row[0]);
                    core::ptr::copy_nonoverlapping(tmp.as_ptr(), out(r, j), t.keys - j);
                }
            }
            i += rows;
        }
    }
}
