//! aarch64 Advanced SIMD path: 4 lanes, 6-pixel x 16-channel microkernel (24 of the 32
//! vector registers accumulate). f16 weights are widened with `fcvtl` (base ARMv8, through
//! `asm!` because the `float16x4_t` intrinsics are not stable Rust).

use core::arch::aarch64::*;
use core::arch::asm;
use half::f16;

use super::simd::{simd_table, Simd, EXP2_LO, EXP2_POLY};
use super::KernelPath;

pub(crate) fn available() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "neon")
    }
}

const EXP_HI: f32 = 88.3;
const EXP_LO: f32 = -87.3;
const LOG2E: f32 = core::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_1e-1,
];

#[derive(Clone, Copy)]
pub(crate) struct Neon;

// SAFETY (every method): callers run with NEON enabled (the `Simd` contract) and pass pointers
// valid for 4 elements.
impl Simd for Neon {
    const LANES: usize = 4;
    const REGISTERS: usize = 32;
    type V = float32x4_t;
    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vdupq_n_f32(0.0) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    unsafe fn bcast(p: *const f32) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vld1q_dup_f32(p) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        // SAFETY: see the impl comment.
        unsafe { vst1q_f32(p, v) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> float32x4_t {
        // SAFETY: see the impl comment (4 f16 = 8 bytes); `fcvtl` only reads and writes the
        // named registers.
        unsafe {
            let h = vld1_u16(p as *const u16);
            let r: float32x4_t;
            asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h, options(pure, nomem, nostack, preserves_flags));
            r
        }
    }
    ///
    /// # Safety
    /// NEON, which every aarch64 CPU has; pure arithmetic.
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vdivq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vminq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vmaxq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    unsafe fn exp(x: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe {
            let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXP_LO)), vdupq_n_f32(EXP_HI));
            let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));
            let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
            let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
            let mut p = vdupq_n_f32(P[0]);
            for c in &P[1..] {
                p = vfmaq_f32(vdupq_n_f32(*c), p, r);
            }
            let r2 = vmulq_f32(r, r);
            let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, r2);
            let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
            vmulq_f32(y, vreinterpretq_f32_s32(bits))
        }
    }
    #[inline(always)]
    unsafe fn exp2_nonpositive(x: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe {
            let x = vmaxq_f32(x, vdupq_n_f32(EXP2_LO));
            let n = vrndnq_f32(x);
            let f = vsubq_f32(x, n);
            let mut p = vdupq_n_f32(EXP2_POLY[0]);
            for c in &EXP2_POLY[1..] {
                p = vfmaq_f32(vdupq_n_f32(*c), p, f);
            }
            // 2^n for n in [-126, 0]: the exponent field.
            let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
            vmulq_f32(p, vreinterpretq_f32_s32(bits))
        }
    }
    ///
    /// # Safety
    /// NEON, which every aarch64 CPU has; pure arithmetic.
    #[inline(always)]
    unsafe fn hsum(v: float32x4_t) -> f32 {
        // SAFETY: see the impl comment.
        unsafe { vaddvq_f32(v) }
    }
}

simd_table!(
    TABLE,
    fma_peak,
    "neon",
    KernelPath::Neon,
    Neon,
    6,
    4,
    4,
    "neon"
);
