//! GroupNorm (+ SiLU).

use half::f16;

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

/// LayerNorm of whole rows of `dim` floats, as [`crate::kernels::scalar::layer_norm`]: the
/// mean and the centred sum of squares are summed in four vector accumulators (a different
/// order than the scalar reference, within a few ulps), then `(x - mean) * inv * gamma + beta`
/// with the f16 affine widened a vector at a time. Rows past the shorter of `input` and `out`
/// are left alone.
///
/// # Safety
/// CPU features of `S` only: every access is inside the slices (see the block's argument).
#[inline(always)]
pub(crate) unsafe fn layer_norm_rows<S: Simd>(
    input: &[f32],
    dim: usize,
    eps: f32,
    gamma: &[f16],
    beta: &[f16],
    out: &mut [f32],
) {
    if dim == 0 {
        return;
    }
    assert!(
        gamma.len() >= dim && beta.len() >= dim,
        "layer_norm: gamma and beta need dim values"
    );
    let l = S::LANES;
    let full = dim / l * l;
    let (gp, bp) = (gamma.as_ptr(), beta.as_ptr());
    for (x, o) in input.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let (xp, op) = (x.as_ptr(), o.as_mut_ptr());
        // SAFETY: `x` holds `dim >= full` floats.
        let s = unsafe { row_sum::<S>(xp, full, |v| v) } + x[full..].iter().sum::<f32>();
        let mean = s / dim as f32;
        // SAFETY: register arithmetic.
        let mv = unsafe { S::splat(mean) };
        let centred = |v: S::V| {
            // SAFETY: register arithmetic.
            unsafe {
                let d = S::sub(v, mv);
                S::mul(d, d)
            }
        };
        let tail: f32 = x[full..].iter().map(|v| (v - mean) * (v - mean)).sum();
        // SAFETY: as for the first sum.
        let q = unsafe { row_sum::<S>(xp, full, centred) } + tail;
        let inv = 1.0 / libm::sqrtf(q / dim as f32 + eps);
        // SAFETY: vector accesses at `j + LANES <= full <= dim`: inside the rows `x` and `o`
        // (`dim` floats each) and inside `gamma` / `beta` (asserted to hold `dim`).
        unsafe {
            let iv = S::splat(inv);
            let mut j = 0;
            while j < full {
                let n = S::mul(S::sub(S::load(xp.add(j)), mv), iv);
                let y = S::add(S::mul(n, S::load_f16(gp.add(j))), S::load_f16(bp.add(j)));
                S::store(op.add(j), y);
                j += l;
            }
        }
        for j in full..dim {
            o[j] = (x[j] - mean) * inv * gamma[j].to_f32() + beta[j].to_f32();
        }
    }
}

/// The sum of `f(v)` over the vectors of `x[..full]` (`full` a multiple of `LANES`), in four
/// vector accumulators.
///
/// # Safety
/// CPU features of `S`; `x` is readable for `full` floats.
#[inline(always)]
unsafe fn row_sum<S: Simd>(x: *const f32, full: usize, f: impl Fn(S::V) -> S::V) -> f32 {
    let l = S::LANES;
    // SAFETY: loads at `j + LANES <= full`, readable by the contract.
    unsafe {
        let mut acc = [S::zero(); 4];
        let mut j = 0;
        while j + 4 * l <= full {
            for (u, a) in acc.iter_mut().enumerate() {
                *a = S::add(*a, f(S::load(x.add(j + u * l))));
            }
            j += 4 * l;
        }
        while j < full {
            acc[0] = S::add(acc[0], f(S::load(x.add(j))));
            j += l;
        }
        S::hsum(S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3])))
    }
}

/// `erf` as [`crate::kernels::scalar::erf`], the same operations in the same order (a
/// multiply and an add per Horner step, not an FMA: near the clamp the polynomials cancel, and
/// an FMA there moved GELU's tail by 1e-6), so results equal the scalar reference bit for bit.
///
/// # Safety
/// CPU features of `S` only (register arithmetic).
#[inline(always)]
unsafe fn erf<S: Simd>(x: S::V) -> S::V {
    // SAFETY: register arithmetic.
    unsafe {
        let x = S::min(S::max(x, S::splat(-4.0)), S::splat(4.0));
        let x2 = S::mul(x, x);
        let horner = |c: &[f32]| {
            let mut p = S::splat(c[0]);
            for &k in &c[1..] {
                p = S::add(S::mul(x2, p), S::splat(k));
            }
            p
        };
        let p = horner(&[
            -2.726_142_3e-10,
            2.770_681_4e-8,
            -2.101_024e-6,
            -5.692_506_4e-5,
            -7.349_906e-4,
            -2.954_6e-3,
            -1.609_603_3e-2,
        ]);
        let q = horner(&[
            -1.456_607_2e-5,
            -2.133_740_6e-4,
            -1.682_827e-3,
            -7.373_329e-3,
            -1.426_474e-2,
        ]);
        S::div(S::mul(x, p), q)
    }
}

/// GEGLU of whole rows, as [`crate::kernels::scalar::geglu`]: rows of `2 * dim` floats
/// `[hidden, gate]` in, `hidden * gelu(gate)` (exact GELU through [`erf`]) out. Rows past the
/// shorter of `input` and `out` are left alone.
///
/// # Safety
/// CPU features of `S` only: every access is inside the slices (see the block's argument).
#[inline(always)]
pub(crate) unsafe fn geglu_rows<S: Simd>(input: &[f32], dim: usize, out: &mut [f32]) {
    if dim == 0 {
        return;
    }
    let l = S::LANES;
    let full = dim / l * l;
    for (x, o) in input.chunks_exact(2 * dim).zip(out.chunks_exact_mut(dim)) {
        let (hidden, gate) = x.split_at(dim);
        // SAFETY: vector accesses at `j + LANES <= full <= dim`, inside `hidden`, `gate` and
        // `o` (`dim` floats each).
        unsafe {
            let (half, rs2) = (S::splat(0.5), S::splat(core::f32::consts::FRAC_1_SQRT_2));
            let one = S::splat(1.0);
            let mut j = 0;
            while j < full {
                let g = S::load(gate.as_ptr().add(j));
                let gelu = S::mul(S::mul(half, g), S::add(one, erf::<S>(S::mul(g, rs2))));
                S::store(
                    o.as_mut_ptr().add(j),
                    S::mul(S::load(hidden.as_ptr().add(j)), gelu),
                );
                j += l;
            }
        }
        for j in full..dim {
            o[j] = hidden[j] * crate::kernels::scalar::gelu(gate[j]);
        }
    }
}
