//! The SIMD kernels, written once over a small vector abstraction ([`Simd`]) and instantiated
//! per instruction set (`x86.rs`: AVX-512 and AVX2; `neon.rs`: NEON) inside
//! `#[target_feature]` functions. Every generic function here is `#[inline(always)]`, so it is
//! compiled with the features of the function that instantiates it.
//!
//! ## Convolution (and linear): an implicit GEMM
//! `out[pixel, o] = sum_k A[pixel, k] * W[k, o]` with `k = tap * in_c + channel`. Work is cut
//! into tiles of `MR` output pixels (never spanning two samples) times blocks of 32 output
//! channels, and the reduction into equal chunks of at most [`KC`]:
//! - the weight rows of a chunk, for up to [`G_MAX`] blocks, are widened from f16 to an f32
//!   *panel* once per task and reused by every tile of the task (the widening then costs
//!   nothing in the microkernel, where `vcvtph2ps` would take FMA ports);
//! - the tile's input for the chunk is copied into a packed `A` buffer laid out
//!   `[k / 16][MR][16]`: one vector copy per 16 channels of a pixel, zeros for padding taps.
//!   That is where stride 2, the asymmetric padding, the folded 2x upsample and the two-part
//!   skip concat are resolved; the microkernel only sees a dense tile;
//! - the microkernel keeps `MR x 32` (AVX-512) or `MR x 16` accumulators in registers,
//!   broadcasting one input value per pixel and reading one panel row per reduction step, all
//!   addresses at constant offsets from two pointers. Partial sums of a chunk go back to the
//!   output buffer; the first chunk starts from `bias + channel_add`, the last adds the
//!   residual and applies `out_scale`;
//! - before each microkernel call the task prefetches ([`Simd::prefetch`]) the next call's
//!   output (and residual) rows into L1, and during a tile group's last output block the rows
//!   its next packing step reads into L2: otherwise those wait on L3 or DRAM.
//!
//! Tasks partition output pixels and output channels, never the reduction, and every output
//! element is computed by the same sequence of operations whatever the thread count: results
//! are identical bit for bit with 1 or N threads.
//!
//! ## Files
//! - `mod.rs`: the [`Simd`] trait, the [`Shared`] pointer and the sizes every kernel shares;
//! - `micro.rs`: the register-tiled microkernel ([`micro`](fn@micro)), also used by `winograd.rs`;
//! - `conv.rs`: the direct convolution (plan, packing, panels, tasks);
//! - `linear.rs`: the matrix-vector product of linears with few rows;
//! - `norm.rs`: GroupNorm (+ SiLU), LayerNorm and GEGLU;
//! - `attention.rs`: the online-softmax attention, vectorised across queries;
//! - `table.rs`: the FMA throughput probe and `simd_table!`, which makes a path's
//!   [`KernelTable`](crate::kernels::KernelTable) from its [`Simd`] type.

use half::f16;

use super::PACK_OC;

mod attention;
mod conv;
mod linear;
mod micro;
mod norm;
mod table;

// `allow`: no SIMD path uses them on some targets (thumbv7em).
#[allow(unused_imports)]
pub(crate) use attention::{attention_task, attention_tasks};
#[allow(unused_imports)]
pub(crate) use conv::{conv_task, pack_a, ConvPlan};
#[allow(unused_imports)]
pub(crate) use linear::{gemv_task, GEMV_MAX_ROWS};
#[allow(unused_imports)]
pub(crate) use micro::micro;
#[allow(unused_imports)]
pub(crate) use norm::{geglu_rows, gn_split, group_norm_task, layer_norm_rows};
#[allow(unused_imports)]
pub(crate) use table::{fma_loop, simd_table};

/// Longest reduction chunk (a multiple of 32: the NEON f16 path's blocks). A conv splits its
/// reduction into the fewest chunks of at most this, of equal length ([`ConvPlan::kc`]): each
/// chunk costs a round trip of the output tile through L2. x86: 512 (on Zen 4 SD's UNet step
/// went 6.03 -> 5.83 s against 256, medians of 6 alternating runs; SD's 320-deep linears
/// +4 to 6% on one thread; 768 was no better). aarch64 keeps 256: its boards' L2 is 4x
/// smaller, and nothing here could measure a change.
#[cfg(target_arch = "x86_64")]
pub(crate) const KC: usize = 512;
/// See above.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const KC: usize = 256;
/// Largest pixel tile of any path.
pub(crate) const MR_MAX: usize = 16;
/// Output-channel blocks whose panels a task keeps (`G_MAX * kc * 32` floats: 320 KiB at a
/// 256-deep chunk): each pass over the output blocks packs the input again, so SD's 320-wide
/// linears take one pass (on Zen 4, 4 -> 10 took a 8192 x 320 -> 320 linear from 156-165 to
/// 174 GFLOP/s on 2 threads; 16 was no better).
pub(crate) const G_MAX: usize = 10;
/// Attention: keys per score tile (at most; see `attention::key_tile`).
pub(crate) const BK: usize = 128;
/// Tiles packed together (their A buffers, 228 KiB at MR 14 and a 256-deep chunk, live in L2
/// while each weight panel sweeps them; with `G_MAX` panels inside a 1 MiB L2: 16 measured
/// faster than 8 and 32 on Zen 4, with 256-deep chunks).
pub(crate) const TG: usize = 16;
pub(crate) const SCRATCH_FLOATS: usize = TG * MR_MAX * KC + G_MAX * KC * PACK_OC;

// Head sizes up to 256 get the largest attention tiles.
const _: () = assert!((2 * 256 + BK) * attention::MAX_QUERIES <= SCRATCH_FLOATS);

/// `2^f` on `[-1/2, 1/2]` for [`Simd::exp2_nonpositive`]: Taylor coefficients of
/// `e^(f ln 2)`, highest first (truncation error `(ln(2) / 2)^7 / 7! < 1.3e-7` relative).
// `allow`: no SIMD path uses them on some targets (thumbv7em).
#[allow(dead_code)]
pub(crate) const EXP2_POLY: [f32; 7] = [
    1.540_353_1e-4,
    1.333_355_8e-3,
    9.618_129e-3,
    5.550_411e-2,
    2.402_265e-1,
    6.931_472e-1,
    1.0,
];
/// Where [`Simd::exp2_nonpositive`] clamps: 2^-126 is the smallest normal f32.
#[allow(dead_code)]
pub(crate) const EXP2_LO: f32 = -126.0;

/// One vector instruction set. All methods are `unsafe`: callers must run on a CPU with the
/// implementing type's features, and pointers must be valid for `LANES` elements.
///
/// # Safety
/// Every method: the CPU has the implementing type's target features (a kernel table using it is
/// only handed out by `KernelPath::table` after run-time detection), and each pointer is valid
/// for `LANES` elements (readable for loads, writable for stores).
pub(crate) trait Simd: Copy {
    const LANES: usize;
    /// Vector registers (16 ymm for AVX2; 32 for AVX-512 and NEON): register-blocked loops
    /// size their accumulator tiles by it so they never spill.
    const REGISTERS: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `LANES` f16 values widened to f32.
    unsafe fn load_f16(p: *const f16) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    #[allow(dead_code)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, one rounding.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `e^x`, within 2 ulp for |x| < 87; underflows to 0 below about -87.
    unsafe fn exp(x: Self::V) -> Self::V;
    /// `2^x` for `x <= 0` (attention's scores less their running maximum, kept in base 2 so
    /// no `x * log2(e)` is needed), within 2 ulp down to -126; below that, `-inf` included,
    /// a tiny positive number (never NaN). Two thirds of [`Simd::exp`]'s instructions.
    unsafe fn exp2_nonpositive(x: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
    /// A hint to bring the cache line holding `p` into L1 (`L2`: into L2 only) before it is
    /// used. A prefetch never faults, so `p` may be any address (made with `wrapping_add`).
    /// No-op where the path has no prefetch instruction wired up.
    #[inline(always)]
    fn prefetch<const L2: bool>(_p: *const f32) {}

    ///
    /// # Safety
    /// the CPU has `Self`'s target features and `p` is readable.
    #[inline(always)]
    unsafe fn bcast(p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees `p` is readable.
        unsafe { Self::splat(*p) }
    }
}

/// A raw pointer that may be shared between the tasks of one kernel call. Each use states why
/// the accesses through it do not race.
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub *mut T);
// SAFETY: a plain address; every dereference site documents its disjointness argument.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The address (a method, so closures capture the `Sync` wrapper, not the raw pointer).
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }
}
// SAFETY: as above.
unsafe impl<T> Send for Shared<T> {}
