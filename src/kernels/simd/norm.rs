//! GroupNorm (+ SiLU).

use super::{Shared, Simd};
use crate::kernels::GroupNormArgs;

/// Most groups one GroupNorm task handles.
pub(crate) const GN_MAX_GROUPS: usize = 64;

/// (groups per task, tasks) for a GroupNorm: about 32 channels per task.
pub(crate) fn gn_split(a: &GroupNormArgs<'_>) -> (usize, usize) {
    let c = a.in_ca + a.in_cb;
    let cpg = (c / a.groups).max(1);
    // Whole 16-channel vectors per task where possible (12 channels per group: 4 groups).
    let mut gpt = 1;
    while gpt < GN_MAX_GROUPS && (!(gpt * cpg).is_multiple_of(16) || gpt * cpg < 32) {
        gpt += 1;
    }
    if !(gpt * cpg).is_multiple_of(16) {
        gpt = (32 / cpg).max(1);
    }
    let gpt = gpt.clamp(1, GN_MAX_GROUPS).min(a.groups);
    (gpt, a.batch * a.groups.div_ceil(gpt))
}

/// A run of channels `[c0, c1)` of one part of the input (`src` row stride `stride`).
struct Seg {
    c0: usize,
    c1: usize,
    src: *const f32,
    stride: usize,
}

///
/// # Safety
/// CPU features of `S` only (pure arithmetic).
#[inline(always)]
unsafe fn sigmoid_mul<S: Simd>(y: S::V) -> S::V {
    // SAFETY: the caller runs with S's features.
    unsafe {
        let one = S::splat(1.0);
        S::div(y, S::add(one, S::exp(S::sub(S::zero(), y))))
    }
}

/// GroupNorm task: sample `b`, groups `g0..g1` (statistics in f64 from f32 block sums, two
/// passes as the scalar path, unless [`GroupNormArgs::stats`] gives them), then normalise (and
/// SiLU) their channels over [`GroupNormArgs::out_pixels`].
///
/// # Safety
/// CPU features of `S`; `GroupNormArgs::check` passed; the task writes only sample `b`, groups `g0..g1` of `out`, disjoint from every other task.
#[inline(always)]
pub(crate) unsafe fn group_norm_task<S: Simd>(
    a: &GroupNormArgs<'_>,
    out: Shared<f32>,
    task: usize,
    gpt: usize,
) {
    let l = S::LANES;
    let c = a.in_ca + a.in_cb;
    let cpg = c / a.groups;
    let gtasks = a.groups.div_ceil(gpt);
    let (b, g0) = (task / gtasks, (task % gtasks) * gpt);
    let g1 = (g0 + gpt).min(a.groups);
    let (c0, c1) = (g0 * cpg, g1 * cpg);
    let n = a.pixels;
    let count = (n * cpg) as f64;
    let px0 = b * n;
    let (p0, p1) = a.out_pixels;
    let mut segs: [Option<Seg>; 2] = [None, None];
    if c0 < a.in_ca {
        segs[0] = Some(Seg {
            c0,
            c1: c1.min(a.in_ca),
            src: a.in_a[px0 * a.in_ca..].as_ptr(),
            stride: a.in_ca,
        });
    }
    if c1 > a.in_ca {
        let s0 = c0.max(a.in_ca);
        segs[1] = Some(Seg {
            c0: s0,
            c1,
            src: a.in_b[px0 * a.in_cb..].as_ptr(),
            stride: a.in_cb,
        });
    }
    let mut sums = [0.0f64; GN_MAX_GROUPS];
    let mut mean = [0.0f32; GN_MAX_GROUPS];
    let mut inv_std = [0.0f32; GN_MAX_GROUPS];
    let mut lanes = [0.0f32; 16];
    let group_of = |ch: usize| ch / cpg - g0;

    if !a.stats.is_empty() {
        for g in g0..g1 {
            let at = (b * a.groups + g) * 2;
            mean[g - g0] = a.stats[at];
            inv_std[g - g0] = a.stats[at + 1];
        }
    }
    // Pass 1 (sums) and pass 2 (squared deviations from the group mean), unless given.
    let passes = if a.stats.is_empty() { 0..2 } else { 0..0 };
    for pass in passes {
        sums[..g1 - g0].fill(0.0);
        for seg in segs.iter().flatten() {
            let base = if seg.c0 < a.in_ca { 0 } else { a.in_ca };
            let mut ch = seg.c0;
            while ch < seg.c1 {
                let vec = ch + l <= seg.c1;
                let width = if vec { l } else { 1 };
                // Lane means (pass 2).
                for (j, m) in lanes[..width].iter_mut().enumerate() {
                    *m = mean[group_of(ch + j)];
                }
                // SAFETY: channel columns `ch..ch + width` of pixels `0..n` of this sample
                // are inside the part's slice (GroupNormArgs::check).
                unsafe {
                    let col = seg.src.add(ch - base);
                    let mv = if vec {
                        S::load(lanes.as_ptr())
                    } else {
                        S::zero()
                    };
                    let ms = lanes[0];
                    let mut p = 0;
                    while p < n {
                        let end = (p + 64).min(n);
                        if vec {
                            let mut acc = [S::zero(); 4];
                            let mut q = p;
                            while q + 4 <= end {
                                for (u, av) in acc.iter_mut().enumerate() {
                                    let x = S::load(col.add((q + u) * seg.stride));
                                    *av = if pass == 0 {
                                        S::add(*av, x)
                                    } else {
                                        let d = S::sub(x, mv);
                                        S::fma(d, d, *av)
                                    };
                                }
                                q += 4;
                            }
                            while q < end {
                                let x = S::load(col.add(q * seg.stride));
                                acc[0] = if pass == 0 {
                                    S::add(acc[0], x)
                                } else {
                                    let d = S::sub(x, mv);
                                    S::fma(d, d, acc[0])
                                };
                                q += 1;
                            }
                            let t = S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3]));
                            S::store(lanes.as_mut_ptr(), t);
                            for (j, v) in lanes[..l].iter().enumerate() {
                                sums[group_of(ch + j)] += *v as f64;
                            }
                            // Restore the lane means for the next block.
                            for (j, m) in lanes[..l].iter_mut().enumerate() {
                                *m = mean[group_of(ch + j)];
                            }
                        } else {
                            let mut acc = 0.0f32;
                            for q in p..end {
                                let x = *col.add(q * seg.stride);
                                acc += if pass == 0 { x } else { (x - ms) * (x - ms) };
                            }
                            sums[group_of(ch)] += acc as f64;
                        }
                        p = end;
                    }
                }
                ch += width;
            }
        }
        for g in 0..g1 - g0 {
            if pass == 0 {
                mean[g] = (sums[g] / count) as f32;
            } else {
                inv_std[g] = (1.0 / libm::sqrt(sums[g] / count + a.eps as f64)) as f32;
            }
        }
        // Keep the f64 mean for pass 2 as the scalar path does (f32 is enough here: the
        // deviations are computed in f32 from it).
    }

    // Pass 3: normalise.
    for seg in segs.iter().flatten() {
        let base = if seg.c0 < a.in_ca { 0 } else { a.in_ca };
        let mut ch = seg.c0;
        while ch < seg.c1 {
            let vec = ch + l <= seg.c1;
            let width = if vec { l } else { 1 };
            let mut mv = [0.0f32; 16];
            let mut sv = [0.0f32; 16];
            let mut bv = [0.0f32; 16];
            for j in 0..width {
                let g = group_of(ch + j);
                mv[j] = mean[g];
                sv[j] = inv_std[g] * a.gamma[ch + j].to_f32();
                bv[j] = a.beta[ch + j].to_f32();
            }
            // SAFETY: inputs as in pass 1, pixels `p0..p1 <= n` (check); outputs: channels
            // `ch..ch + width` of this sample's `p1 - p0` output pixels, which only this task
            // (sample `b`, groups `g0..g1`) writes.
            unsafe {
                let col = seg.src.add(ch - base).add(p0 * seg.stride);
                let dst = out.0.add(b * (p1 - p0) * c + ch);
                if vec {
                    let (m, sc, be) = (
                        S::load(mv.as_ptr()),
                        S::load(sv.as_ptr()),
                        S::load(bv.as_ptr()),
                    );
                    for q in 0..p1 - p0 {
                        let x = S::load(col.add(q * seg.stride));
                        let mut y = S::fma(S::sub(x, m), sc, be);
                        if a.silu {
                            y = sigmoid_mul::<S>(y);
                        }
                        S::store(dst.add(q * c), y);
                    }
                } else {
                    for q in 0..p1 - p0 {
                        let x = *col.add(q * seg.stride);
                        let y = (x - mv[0]) * sv[0] + bv[0];
                        *dst.add(q * c) = if a.silu { crate::kernels::silu(y) } else { y };
                    }
                }
            }
            ch += width;
        }
    }
}
