//! aarch64 NEON with FEAT_FP16 (`fp16`): the opt-in f16-arithmetic path
//! ([`crate::Precision::F16`]).
//!
//! Convolutions (3x3 and 1x1, every stride, upsample and skip concat) and linears of more than
//! [`GEMV_MAX_ROWS`] rows run an f16 implicit GEMM: the tile of input pixels is packed as for
//! the f32 path (same geometry code, [`pack_a`]) and narrowed to f16 once per reduction chunk;
//! the weights are already f16 and are copied, not widened. The microkernel keeps
//! `MR x 32` f16 accumulators (24 of the 32 vector registers, 8 lanes each) and runs
//! `fmla .8h`: 16 f16 FMAs per instruction against the f32 path's 4.
//!
//! Accuracy (about 1e-3 relative L2 per conv or linear against f32, 2.5e-3 per forward pass
//! of the fixtures, measured under `qemu-aarch64 -cpu max`, mostly the f16 accumulator's
//! rounding): f16 sums only run over blocks of [`F16_BLOCK`] reduction steps, then are widened
//! into f32 accumulators; chunks of [`KC`] are added in f32 in the output, and bias, channel
//! add, residual and scale are applied in f32. Conv/linear inputs beyond f16's range (65504)
//! overflow to infinity (not checked: diffusion UNets' normalised activations stay far below). GroupNorm (f32 statistics), attention (f32 softmax), the few-row linears
//! (the time embedding) and everything outside the kernels stay on the f32 NEON kernels;
//! activations are stored in f32 between ops.
//!
//! f16 FMAs are written with `asm!` because the `float16x8_t` intrinsics are not stable Rust;
//! registers travel as `uint16x8_t` (the raw f16 bits).

use core::arch::aarch64::*;
use core::arch::asm;

use super::neon::Neon;
use super::simd::{pack_a, ConvPlan, GEMV_MAX_ROWS, G_MAX, KC, MR_MAX, TG};
use super::{
    AttentionArgs, ConvArgs, ConvShape, Exec, GroupNormArgs, KernelPath, KernelTable, LinearArgs,
    PACK_OC,
};

/// Pixels per microkernel tile: `MR * 4` accumulators of 8 f16 lanes = 32 output channels.
const MR: usize = 6;
/// Reduction steps summed in f16 before the partial sum is widened into f32 (two packed
/// 16-step groups): an f16 sum of 32 products loses at most a few units in the 11th bit.
pub(crate) const F16_BLOCK: usize = 32;
const _: () = assert!(F16_BLOCK.is_multiple_of(16) && KC.is_multiple_of(F16_BLOCK));
// The f16 buffers fit in the f32 path's per-thread scratch: one f32 packing tile, then TG
// f16 tiles; the f16 panels in the panel region.
const _: () = assert!(MR_MAX * KC + TG * MR_MAX * KC / 2 <= TG * MR_MAX * KC);

/// Whether this CPU has NEON with f16 arithmetic (FEAT_FP16).
pub(crate) fn available() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("fp16")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "fp16")
    }
}

/// `acc + a * b` on 8 f16 lanes.
///
/// # Safety
/// The CPU has FEAT_FP16 (register arithmetic only).
#[inline(always)]
unsafe fn fmla_h(acc: uint16x8_t, a: uint16x8_t, b: uint16x8_t) -> uint16x8_t {
    let mut r = acc;
    // SAFETY: register-only instruction; the caller guarantees FEAT_FP16.
    unsafe {
        asm!(
            ".arch_extension fp16",
            "fmla {0:v}.8h, {1:v}.8h, {2:v}.8h",
            inout(vreg) r, in(vreg) a, in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    r
}

/// The low and high 4 f16 lanes of `h` widened to f32.
///
/// # Safety
/// NEON (base ARMv8; register arithmetic only).
#[inline(always)]
unsafe fn widen(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only instructions.
    unsafe {
        asm!(
            "fcvtl {0:v}.4s, {2:v}.4h",
            "fcvtl2 {1:v}.4s, {2:v}.8h",
            out(vreg) lo, out(vreg) hi, in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    (lo, hi)
}

/// 8 f32 narrowed to f16 (round to nearest even).
///
/// # Safety
/// NEON (base ARMv8; register arithmetic only).
#[inline(always)]
unsafe fn narrow(lo: float32x4_t, hi: float32x4_t) -> uint16x8_t {
    let r: uint16x8_t;
    // SAFETY: register-only instructions; `{0}` is written by `fcvtn` before `fcvtn2`
    // reads its low half.
    unsafe {
        asm!(
            "fcvtn {0:v}.4h, {1:v}.4s",
            "fcvtn2 {0:v}.8h, {2:v}.4s",
            out(vreg) r, in(vreg) lo, in(vreg) hi,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    r
}

/// `tile[i][j] = sum_k a[k][i] * w[k][j]` over `groups * 16` reduction steps, `i < MR`,
/// `j < 32`: f16 products and sums within blocks of [`F16_BLOCK`] steps, f32 across blocks.
///
/// # Safety
/// FEAT_FP16; `a` holds `groups * MR * 16` f16 (layout `[k / 16][MR][16]`), `w`
/// `groups * 16` rows of 32 f16.
#[inline(always)]
unsafe fn micro_f16(groups: usize, a: *const u16, w: *const u16, tile: &mut [[f32; 32]; MR]) {
    // SAFETY (whole function): every read is inside the sizes the caller guarantees: `a`
    // advances by MR * 16 and `w` by 16 * 32 per group, `groups` times.
    unsafe {
        let mut acc32 = [[vdupq_n_f32(0.0); 8]; MR];
        let (mut a, mut w) = (a, w);
        let mut g = 0;
        while g < groups {
            let block_groups = (F16_BLOCK / 16).min(groups - g);
            let mut acc = [[vdupq_n_u16(0); 4]; MR];
            for _ in 0..block_groups {
                for kk in 0..16 {
                    let wv = [
                        vld1q_u16(w.add(kk * PACK_OC)),
                        vld1q_u16(w.add(kk * PACK_OC + 8)),
                        vld1q_u16(w.add(kk * PACK_OC + 16)),
                        vld1q_u16(w.add(kk * PACK_OC + 24)),
                    ];
                    for (i, row) in acc.iter_mut().enumerate() {
                        let x = vld1q_dup_u16(a.add(i * 16 + kk));
                        for v in 0..4 {
                            row[v] = fmla_h(row[v], x, wv[v]);
                        }
                    }
                }
                a = a.add(MR * 16);
                w = w.add(16 * PACK_OC);
            }
            for (row32, row) in acc32.iter_mut().zip(acc.iter()) {
                for v in 0..4 {
                    let (lo, hi) = widen(row[v]);
                    row32[2 * v] = vaddq_f32(row32[2 * v], lo);
                    row32[2 * v + 1] = vaddq_f32(row32[2 * v + 1], hi);
                }
            }
            g += block_groups;
        }
        for (dst, row32) in tile.iter_mut().zip(acc32.iter()) {
            for (v, x) in row32.iter().enumerate() {
                vst1q_f32(dst.as_mut_ptr().add(4 * v), *x);
            }
        }
    }
}

/// One task of an f16 convolution: the same tiles x output blocks as the f32
/// [`super::simd::conv_task`] (so the same plan), every reduction chunk.
///
/// # Safety
/// FEAT_FP16; `p` was built from checked `ConvArgs` with `mr == MR`, `task < p.tasks`,
/// `scratch` holds [`super::simd::SCRATCH_FLOATS`] floats, and no other task writes this task's
/// output rows and channel blocks (the plan splits them disjointly).
#[target_feature(enable = "neon,fp16")]
unsafe fn conv_task_f16(p: &ConvPlan<'_>, task: usize, scratch: &mut [f32]) {
    let a = p.args;
    let s = &a.shape;
    let oc = s.out_c;
    let (og, tg) = (task / p.tile_groups, task % p.tile_groups);
    let ob0 = og * p.obs_per_task;
    let ob1 = (ob0 + p.obs_per_task).min(p.n_ob);
    let (t0, t1) = p.tile_range(tg);
    let (a_region, panel_region) = scratch.split_at_mut(TG * MR_MAX * KC);
    let (pack_f32, a16_region) = a_region.split_at_mut(MR_MAX * KC);
    let tile_len = MR * KC;
    // SAFETY: f32 storage reinterpreted as twice as many u16 (alignment 4 >= 2, no padding,
    // every bit pattern valid); the f32 slices are not used again while these live.
    let a16 = unsafe {
        core::slice::from_raw_parts_mut(a16_region.as_mut_ptr() as *mut u16, TG * tile_len)
    };
    // SAFETY: as above (G_MAX * KC * 32 u16 in a region of as many f32).
    let panels = unsafe {
        core::slice::from_raw_parts_mut(panel_region.as_mut_ptr() as *mut u16, G_MAX * KC * PACK_OC)
    };
    let weight_bits: &[u16] =
        // SAFETY: `half::f16` is `repr(transparent)` over u16.
        unsafe { core::slice::from_raw_parts(a.weight.as_ptr() as *const u16, a.weight.len()) };
    let mut tile = [[0.0f32; 32]; MR];
    let mut g0 = t0;
    while g0 < t1 {
        let g1 = (g0 + TG).min(t1);
        let mut k0 = 0;
        while k0 < p.k_total {
            let kc = KC.min(p.k_total - k0);
            let kcp = kc.div_ceil(16) * 16;
            for ob in ob0..ob1 {
                // The chunk's weight rows (f16 already), zero rows up to kcp.
                let src = &weight_bits
                    [(ob * p.k_total + k0) * PACK_OC..(ob * p.k_total + k0 + kc) * PACK_OC];
                let dst = &mut panels[(ob - ob0) * KC * PACK_OC..][..kcp * PACK_OC];
                dst[..kc * PACK_OC].copy_from_slice(src);
                dst[kc * PACK_OC..].fill(0);
            }
            for t in g0..g1 {
                let (b, px0, m) = p.tile(t);
                // SAFETY: NEON is enabled (FEAT_FP16 implies it); the plan's buffers were
                // checked by `ConvArgs::check`; `pack_f32` holds MR_MAX * KC floats.
                unsafe { pack_a::<Neon, MR>(p, b, px0, m, k0, kc, kcp, pack_f32) };
                let dst = &mut a16[(t - g0) * tile_len..][..kcp * MR];
                let mut j = 0;
                while j < kcp * MR {
                    // SAFETY: j + 8 <= kcp * MR (a multiple of 16) for both buffers.
                    unsafe {
                        let lo = vld1q_f32(pack_f32.as_ptr().add(j));
                        let hi = vld1q_f32(pack_f32.as_ptr().add(j + 4));
                        vst1q_u16(dst.as_mut_ptr().add(j), narrow(lo, hi));
                    }
                    j += 8;
                }
            }
            let (first, last) = (k0 == 0, k0 + kc == p.k_total);
            for ob in ob0..ob1 {
                let panel = panels[(ob - ob0) * KC * PACK_OC..][..kcp * PACK_OC].as_ptr();
                let col0 = ob * PACK_OC;
                let ncols = PACK_OC.min(oc - col0);
                for t in g0..g1 {
                    let (b, px0, m) = p.tile(t);
                    let abuf = a16[(t - g0) * tile_len..][..kcp * MR].as_ptr();
                    // SAFETY: FEAT_FP16 (this function's features); `abuf` holds the packed
                    // tile of kcp / 16 groups, `panel` kcp rows of 32.
                    unsafe { micro_f16(kcp / 16, abuf, panel, &mut tile) };
                    let row0 = b * p.out_hw + px0;
                    for (i, trow) in tile.iter().enumerate().take(m) {
                        let at = (row0 + i) * oc + col0;
                        // SAFETY: rows row0..row0 + m, columns col0..col0 + ncols are inside
                        // the output (checked by `ConvArgs::check`) and belong to this task
                        // alone (its tiles x its output blocks).
                        let out =
                            unsafe { core::slice::from_raw_parts_mut(p.out.get().add(at), ncols) };
                        for (j, o) in out.iter_mut().enumerate() {
                            let mut v = if first {
                                let mut x = a.bias[col0 + j].to_f32();
                                if !a.channel_add.is_empty() {
                                    x += a.channel_add[b * oc + col0 + j];
                                }
                                x
                            } else {
                                *o
                            } + trow[j];
                            if last {
                                if !a.residual.is_empty() {
                                    v += a.residual[at + j];
                                }
                                if a.out_scale != 1.0 {
                                    v /= a.out_scale;
                                }
                            }
                            *o = v;
                        }
                    }
                }
            }
            k0 += kc;
        }
        g0 = g1;
    }
}

fn conv2d(a: &ConvArgs<'_>, out: &mut [f32], ex: &Exec<'_>) {
    let plan = ConvPlan::new(a, out, MR, ex.threads());
    ex.run(plan.tasks, &|t, th| {
        // SAFETY: this table is only reachable through `KernelPath::table`, which checked
        // FEAT_FP16; the plan checked every slice and splits the output disjointly; `th` is the
        // thread running this task, whose scratch holds SCRATCH_PER_THREAD floats.
        unsafe { conv_task_f16(&plan, t, ex.scratch(th)) }
    });
}

fn linear(a: &LinearArgs<'_>, out: &mut [f32], ex: &Exec<'_>) {
    if a.rows <= GEMV_MAX_ROWS {
        // The time embedding's few rows: memory-bound, kept in f32.
        return (super::neon::TABLE.linear)(a, out, ex);
    }
    conv2d(&a.as_conv(), out, ex)
}

fn group_norm(a: &GroupNormArgs<'_>, out: &mut [f32], ex: &Exec<'_>) {
    (super::neon::TABLE.group_norm)(a, out, ex)
}

fn attention(a: &AttentionArgs<'_>, scratch: &mut [f32], out: &mut [f32], ex: &Exec<'_>) {
    (super::neon::TABLE.attention)(a, scratch, out, ex)
}

/// The f16 path runs every conv on the direct kernel (Winograd's transforms amplify f16
/// rounding), so it needs no scratch beyond the direct one.
fn conv_scratch(_: &ConvShape) -> Option<(usize, usize)> {
    None
}

pub(crate) static TABLE: KernelTable = KernelTable {
    name: "neon-fp16",
    path: KernelPath::NeonFp16,
    conv2d,
    group_norm,
    linear,
    attention,
    conv_scratch,
    layer_norm: super::neon::TABLE.layer_norm,
    geglu: super::neon::TABLE.geglu,
};
