//! Winograd F(4x4, 3x3) and F(2x2, 3x3) convolutions for the SIMD paths (Lavin & Gray 2016).
//!
//! A 3x3 stride-1 "same" convolution computes each 4x4 output tile from a 6x6 input patch
//! with 36 multiplies per (input, output) channel pair instead of 144:
//! `Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A`. Summed over input channels, the elementwise product
//! becomes 36 independent GEMMs (one per position ξ of the 6x6 transformed tile):
//! `M_ξ[tile, o] = Σ_c V_ξ[tile, c] U_ξ[c, o]`, which run on the same register-tiled
//! microkernel as the direct convolution ([`super::simd::micro`]). Maps too small for four
//! 4x4 tiles (the UNet's 4x4 level at batch 1) use F(2x2, 3x3): 2x2 tiles from 4x4 patches,
//! 16 GEMMs; the code is the same, generic over the tile edge.
//!
//! Why it is here: the CIFAR-10 UNet spends 88% of its FLOPs in 3x3 convolutions, and the
//! direct implicit GEMM already runs near this machine's FMA peak; only fewer multiplies make
//! it faster. The transforms cost about 10% of the GEMM work at 128-512 channels.
//!
//! Numerics: the transforms' constants (up to 8 in `A`, 5 in `B`, 1/24 in `G`) amplify f32
//! rounding: on random data one conv lands about 3e-6 relative L2 from the exact result (the
//! direct f32 conv: 4e-7). The transformed weights stay f32 (f16 would cost 5e-4). Whole-model
//! parity with the fixtures stays well inside 1e-4; [`crate::Model::set_winograd`] turns it off
//! where bit-level agreement with the direct kernel matters.
//!
//! Memory: the f16 weights stay mapped (zero-copy); every call transforms them again, a chunk
//! of [`KW`] input channels of one 32-output-channel block at a time, into the task's own
//! scratch (L2-sized), and runs the chunk over all of the task's tiles at once; they never make
//! a round trip through memory. At 16 tiles and up that costs a few percent of the GEMM work.
//!
//! Work split, chosen by the number of 4x4 tiles:
//! - *weight-major* (at most [`WM_MAX_TILES`] tiles, as at batch 1): phase 1 transforms the
//!   inputs of all tiles into a shared region of the kernel scratch; phase 2 has one task per
//!   output block, which runs its weights over every tile, then the output transform with the
//!   epilogue (bias, channel add, residual, scale).
//! - *tile-major* (more tiles: batch 8): no phase 1; each task takes a block of up to
//!   [`ROWS_TARGET`] tiles (fewer for many input channels: [`V_BUDGET_FLOATS`]) and a group
//!   of output blocks, transforms its tiles' inputs into its own scratch once, then for each
//!   output block runs the weight chunks over them and does the output transform.
//!
//! Every output element goes through the same operations whatever the thread count.

use super::simd::{micro, Shared, Simd};
use super::{ConvArgs, ConvShape, PACK_OC};

/// Positions of a transformed tile of F(`f` x `f`, 3x3): `(f + 2)^2`, the number of GEMMs.
const fn positions(f: usize) -> usize {
    (f + 2) * (f + 2)
}
/// Fewer tiles than this (an 8x8 map at batch 1 has 4 of 4x4) and the direct kernel is faster:
/// the weight transform, `O(C_in * C_out)`, is not amortised.
const MIN_TILES: usize = 4;
/// Up to this many tiles a conv runs weight-major (see the module docs).
const WM_MAX_TILES: usize = 72;
/// Input channels per weight chunk in weight-major mode (`36 * KW * 32` floats: 288 KiB).
const KW: usize = 64;
/// Floats of padding after each position's block of transformed weights or inputs. Without it
/// the 36 blocks often sit a multiple of 4 KiB apart (`KW * 32` floats is 8 KiB), so the 36
/// stores a transform makes per vector all land in one L1 set and alias each other: the
/// weight-major convs ran 1.5 to 2.5x slower for that alone.
const UPAD: usize = 16;
/// A `V` buffer larger than this is prefetched a microkernel call ahead ([`gemm_block`]).
const V_PREFETCH_BYTES: usize = 8 << 20;
/// Most tiles one tile-major task covers (its transformed inputs, `36 * tiles * C_in`
/// floats, are reused by every output block's weights). Blocks are balanced and rounded up to
/// whole microkernel tiles.
const ROWS_TARGET: usize = 72;
/// Most floats of transformed inputs one tile-major task keeps (8 MiB: fewer tiles for more
/// input channels): every output block streams them again, so they should stay in L3. SD's
/// 32x32 1920 -> 640 up-block conv, 72 tiles a task: 36 x 72 x 1920 floats (20 MiB) each,
/// streamed from DRAM, 380-490 GFLOP/s (`bench_conv3x3`, Zen 4); 6 blocks of 22 tiles:
/// 460-580 (a 12 MiB budget, 4 blocks of 32: no better than 72).
const V_BUDGET_FLOATS: usize = 2 << 20;

/// Whether a convolution can take the Winograd path: 3x3, stride 1, one pixel of padding all
/// round (output as large as the, possibly upsampled, input) or a band of rows of such a conv
/// (`pad_top` 0 or 1 and up to two input rows more than output rows: the decoder's banded
/// `norm_conv`, whose rows past the band are its halo), channel counts in whole 16-blocks (the
/// packed GEMM operand's granule), and a map of at least 2x2. Whether it does, and with which
/// tile, depends on the batch ([`mode_of`]). Rows outside the input read as zeros, as in the
/// direct kernel.
pub(crate) fn applies(s: &ConvShape) -> bool {
    let (vh, vw) = s.virtual_in();
    let rows_fit = match s.pad_top {
        1 => vh == s.out_h || (!s.upsample && vh == s.out_h + 1),
        0 => !s.upsample && (vh == s.out_h + 1 || vh == s.out_h + 2),
        _ => false,
    };
    s.kernel == 3
        && s.stride == 1
        && rows_fit
        && s.pad_left == 1
        && s.out_w == vw
        && s.out_h >= 2
        && s.out_w >= 2
        && s.in_ca.is_multiple_of(16)
        && s.in_cb.is_multiple_of(16)
        && s.in_c() >= 16
        && s.out_c.is_multiple_of(16)
        && s.out_c > 0
}

/// Most microkernel tiles per tile-major task for a path whose microkernel covers `mr` rows.
fn micro_tiles_max(mr: usize) -> usize {
    ROWS_TARGET.div_ceil(mr)
}

/// Floats of one weight chunk `[ξ][KW][32]` (padded) and of one output block's `M`
/// (`[ξ][rows][32]`) for `rows` rows.
fn chunk_and_m(rows: usize, pos: usize) -> usize {
    pos * (KW * PACK_OC + UPAD) + pos * rows * PACK_OC + 64
}

/// Rows (tiles rounded up to whole microkernel tiles) of the largest weight-major conv.
fn wm_rows_max(mr: usize) -> usize {
    WM_MAX_TILES.div_ceil(mr) * mr
}

/// How the rows of a `V` buffer (one per tile, padded) split into microkernel tiles: `full`
/// tiles of `mr` rows, then `short` tiles of `hs` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowSplit {
    pub mr: usize,
    pub full: usize,
    pub hs: usize,
    pub short: usize,
}

/// The other height a short microkernel tile may have, besides the path's smaller kernel
/// (`mrs`): 4 rows, so that 4 tiles (an 8x8 map at batch 1) take 4 rows on every path.
const SHORT_MIN: usize = 4;

impl RowSplit {
    /// `tiles` microkernel tiles of `mr` rows.
    fn uniform(mr: usize, tiles: usize) -> RowSplit {
        RowSplit {
            mr,
            full: tiles,
            hs: mr,
            short: 0,
        }
    }

    /// The fewest rows covering `n` tiles with tiles of `mr` rows and short ones of `mrs` or
    /// [`SHORT_MIN`] rows (ties: fewer microkernel calls). Batch-1 maps have 4, 16 or 64 tiles,
    /// which AVX-512's 14-row kernel alone would pad to 14, 28 and 70 rows; this gives 4
    /// (4), 16 (8 + 8) and 64 (4 x 14 + 8); AVX2's 6 and 4 give 4, 6 + 6 + 4 and 10 x 6 + 4.
    fn cover(n: usize, mr: usize, mrs: usize) -> RowSplit {
        let mut best = RowSplit::uniform(mr, n.div_ceil(mr));
        for hs in [mrs, SHORT_MIN] {
            if hs == 0 || hs >= mr {
                continue;
            }
            for short in 1..=n.div_ceil(hs) {
                let full = n.saturating_sub(short * hs).div_ceil(mr);
                let c = RowSplit {
                    mr,
                    full,
                    hs,
                    short,
                };
                if (c.rows(), c.tiles()) < (best.rows(), best.tiles()) {
                    best = c;
                }
            }
        }
        best
    }

    /// Rows in all.
    pub fn rows(&self) -> usize {
        self.full * self.mr + self.short * self.hs
    }

    /// Microkernel tiles in all.
    pub fn tiles(&self) -> usize {
        self.full + self.short
    }

    /// (first row, height) of microkernel tile `mt`.
    #[inline(always)]
    fn tile(&self, mt: usize) -> (usize, usize) {
        if mt < self.full {
            (mt * self.mr, self.mr)
        } else {
            (self.full * self.mr + (mt - self.full) * self.hs, self.hs)
        }
    }

    /// (first row, height) of the microkernel tile holding row `r`.
    #[inline(always)]
    fn tile_of_row(&self, r: usize) -> (usize, usize) {
        let split = self.full * self.mr;
        if r < split {
            (r / self.mr * self.mr, self.mr)
        } else {
            (split + (r - split) / self.hs * self.hs, self.hs)
        }
    }
}

/// Tiles of edge `f` covering the conv's output, every sample.
fn tiles_of(s: &ConvShape, f: usize) -> usize {
    s.batch
        .saturating_mul(s.out_h.div_ceil(f))
        .saturating_mul(s.out_w.div_ceil(f))
}

/// The output tile edge and mode a conv of this shape (at its `batch`) runs with, or `None`
/// for the direct kernel. F(4x4, 3x3) wherever the map has [`MIN_TILES`] 4x4 tiles (36
/// multiplies per 16 outputs); otherwise F(2x2, 3x3) if it has that many 2x2 tiles (16 per
/// 4): a 4x4 map at batch 1 is one 4x4 tile but four 2x2 ones, and its weight transform
/// (16 values per channel pair, not 36) is then cheap enough to pay.
fn mode_of(s: &ConvShape) -> Option<(usize, Mode)> {
    if !applies(s) {
        return None;
    }
    let f = if s.out_h >= 4 && s.out_w >= 4 && tiles_of(s, 4) >= MIN_TILES {
        4
    } else if tiles_of(s, 2) >= MIN_TILES {
        2
    } else {
        return None;
    };
    let mode = if tiles_of(s, f) <= WM_MAX_TILES {
        Mode::WeightMajor
    } else {
        Mode::TileMajor
    };
    Some((f, mode))
}

/// Kernel scratch a conv of this shape (at its `batch`) needs for the Winograd path, as
/// (f32 per thread, f32 shared), or `None` when it runs the direct kernel. Exact for the mode
/// the batch selects, so a batch-1 model never reserves the tile-major weight region.
pub(crate) fn scratch_need(s: &ConvShape, mr: usize) -> Option<(usize, usize)> {
    let (f, mode) = mode_of(s)?;
    Some(mode_scratch(s, positions(f), mode, mr))
}

/// [`scratch_need`] for a conv whose tile (`pos` positions) and mode are known.
fn mode_scratch(s: &ConvShape, pos: usize, mode: Mode, mr: usize) -> (usize, usize) {
    let cin = s.in_c();
    match mode {
        Mode::TileMajor => {
            let rows = mr * micro_tiles_max(mr);
            (pos * (rows * cin + UPAD) + chunk_and_m(rows, pos), 0)
        }
        Mode::WeightMajor => {
            let rows = wm_rows_max(mr);
            (chunk_and_m(rows, pos), pos * (rows * cin + UPAD))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    TileMajor,
    WeightMajor,
}

/// One Winograd conv call's geometry and task split.
pub(crate) struct WinogradPlan<'a> {
    pub args: &'a ConvArgs<'a>,
    pub out: Shared<f32>,
    /// Output tile edge: 4 (F(4x4, 3x3)) or 2 (F(2x2, 3x3)).
    pub tile: usize,
    pub mode: Mode,
    /// The shared region (weight-major only): the transformed inputs of all tiles (`V` layout,
    /// see [`v_index`]).
    pub shared: Shared<f32>,
    pub cin: usize,
    pub n_ob: usize,
    pub tiles_y: usize,
    pub tiles_x: usize,
    pub n_tiles: usize,
    /// Microkernel tiles of a task's `V`: tile-major, per task (`mr` rows each); weight-major,
    /// every tile of the conv ([`RowSplit::cover`]: the last ones may be shorter).
    pub split: RowSplit,
    pub obw: usize,
    pub ob_groups: usize,
    pub blocks: usize,
}

// SAFETY: `out` and `shared` are written only by tasks, at disjoint places (documented at each
// write); everything else is read-only.
unsafe impl Sync for WinogradPlan<'_> {}

impl<'a> WinogradPlan<'a> {
    /// The plan, or `None` if the conv does not take this path or the scratch is too small.
    pub fn new(
        args: &'a ConvArgs<'a>,
        out: &mut [f32],
        mr: usize,
        mrs: usize,
        threads: usize,
        per_thread: usize,
        shared: &mut [f32],
    ) -> Option<WinogradPlan<'a>> {
        let s = &args.shape;
        let (f, mode) = mode_of(s)?;
        let (need_thread, need_shared) = mode_scratch(s, positions(f), mode, mr);
        if per_thread < need_thread || shared.len() < need_shared {
            return None;
        }
        args.check(out);
        let tiles_y = s.out_h.div_ceil(f);
        let tiles_x = s.out_w.div_ceil(f);
        let n_tiles = s.batch * tiles_y * tiles_x;
        let n_ob = s.out_c.div_ceil(PACK_OC);
        let split = RowSplit::cover(n_tiles, mr, mrs);
        let mut plan = WinogradPlan {
            args,
            out: Shared(out.as_mut_ptr()),
            tile: f,
            mode: Mode::WeightMajor,
            shared: Shared(shared.as_mut_ptr()),
            cin: s.in_c(),
            n_ob,
            tiles_y,
            tiles_x,
            n_tiles,
            split,
            obw: 1,
            ob_groups: n_ob,
            blocks: 1,
        };
        if mode == Mode::TileMajor {
            let target = (V_BUDGET_FLOATS / (positions(f) * s.in_c())).clamp(mr, ROWS_TARGET);
            // A whole number of blocks per thread (9 blocks on 2 threads: one waits 11%).
            let blocks = n_tiles
                .div_ceil(target)
                .next_multiple_of(threads.max(1))
                .min(n_tiles);
            let tiles_per_block = n_tiles.div_ceil(blocks);
            let wg = tiles_per_block.div_ceil(mr).clamp(1, micro_tiles_max(mr));
            let rows = mr * wg;
            let blocks = n_tiles.div_ceil(rows);
            // As many output blocks per task as balance allows: each task transforms its tiles'
            // inputs once for all of its blocks.
            let want = if threads <= 1 { 1 } else { 3 * threads };
            let mut obw = n_ob;
            while obw > 1 && n_ob.div_ceil(obw) * blocks < want {
                obw = obw.div_ceil(2);
            }
            plan.mode = Mode::TileMajor;
            plan.split = RowSplit::uniform(mr, wg);
            plan.obw = obw;
            plan.ob_groups = n_ob.div_ceil(obw);
            plan.blocks = blocks;
        }
        Some(plan)
    }

    /// Phase 1 tasks: none (tile-major), or one per microkernel tile (weight-major).
    pub fn phase1_tasks(&self) -> usize {
        match self.mode {
            Mode::TileMajor => 0,
            Mode::WeightMajor => self.split.tiles(),
        }
    }

    /// Phase 2 tasks: tile blocks x output-block groups (tile-major), output blocks
    /// (weight-major).
    pub fn phase2_tasks(&self) -> usize {
        self.blocks * self.ob_groups
    }

    /// (sample, tile row, tile column) of tile `t`.
    #[inline(always)]
    fn tile(&self, t: usize) -> (usize, usize, usize) {
        let per_sample = self.tiles_y * self.tiles_x;
        let i = t % per_sample;
        (t / per_sample, i / self.tiles_x, i % self.tiles_x)
    }
}

/// Index in a `V` buffer whose rows split as `split` (`[ξ][micro tile][c / 16][h][16]`, the
/// microkernel's packed `A` for each ξ, `h` the tile's height) of position `xi`, row `r`,
/// channel `c`. Positions are [`UPAD`] floats further apart than their data, for the reason
/// given there.
#[inline(always)]
fn v_index(split: &RowSplit, cin: usize, xi: usize, r: usize, c: usize) -> usize {
    let (start, h) = split.tile_of_row(r);
    xi * (split.rows() * cin + UPAD) + start * cin + ((c / 16) * h + r - start) * 16 + c % 16
}

/// `G' g` along one axis for F(`F` x `F`, 3x3): 3 taps to `F + 2` transformed values (the
/// rest of the array is unused), with `G' = diag(DG) G`: Lavin's `G` with its rows scaled to
/// integers, `[1 0 0; 1 1 1; 1 -1 1; 1 2 4; 1 -2 4; 0 0 1]` for F = 4 and
/// `[1 0 0; 1 1 1; 1 -1 1; 0 0 1]` for F = 2. The weight transform runs once per (input,
/// output) channel pair, far more often than the output transform at batch 1, so the weight
/// side has no multiplies and the output side undoes the scaling ([`a_1d`] multiplies by
/// `1 / DG`).
///
/// # Safety
/// CPU features of `S` only.
#[inline(always)]
unsafe fn g_1d<S: Simd, const F: usize>(g: [S::V; 3]) -> [S::V; 6] {
    // SAFETY: arithmetic only.
    unsafe {
        let s = S::add(g[0], g[2]);
        if F == 2 {
            let z = S::zero();
            return [g[0], S::add(s, g[1]), S::sub(s, g[1]), g[2], z, z];
        }
        let p = S::fma(S::splat(4.0), g[2], g[0]);
        [
            g[0],
            S::add(s, g[1]),
            S::sub(s, g[1]),
            S::fma(S::splat(2.0), g[1], p),
            S::fma(S::splat(-2.0), g[1], p),
            g[2],
        ]
    }
}

/// Row scales of `G'` against Lavin's `G` (see [`g_1d`]) for F(`f` x `f`, 3x3).
const fn dg(f: usize) -> [f32; 6] {
    if f == 2 {
        [1.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    } else {
        [4.0, -6.0, -6.0, 24.0, 24.0, 1.0]
    }
}

/// `B^T d` along one axis: `F + 2` input values to `F + 2` transformed values.
///
/// # Safety
/// CPU features of `S` only.
#[inline(always)]
unsafe fn b_1d<S: Simd, const F: usize>(d: [S::V; 6]) -> [S::V; 6] {
    // SAFETY: arithmetic only.
    unsafe {
        if F == 2 {
            let z = S::zero();
            return [
                S::sub(d[0], d[2]),
                S::add(d[1], d[2]),
                S::sub(d[2], d[1]),
                S::sub(d[1], d[3]),
                z,
                z,
            ];
        }
        let (four, five, two) = (S::splat(4.0), S::splat(5.0), S::splat(2.0));
        let neg4 = S::splat(-4.0);
        let d42 = S::sub(d[4], d[2]);
        [
            S::fma(four, d[0], S::fma(S::splat(-5.0), d[2], d[4])),
            S::fma(neg4, S::add(d[1], d[2]), S::add(d[3], d[4])),
            S::fma(four, S::sub(d[1], d[2]), S::sub(d[4], d[3])),
            S::fma(two, S::sub(d[3], d[1]), d42),
            S::fma(two, S::sub(d[1], d[3]), d42),
            S::fma(four, d[1], S::sub(d[5], S::mul(five, d[3]))),
        ]
    }
}

/// `A^T diag(1 / DG) m` along one axis: `F + 2` transformed values to `F` outputs (the
/// `1 / DG` undoes the weight side's scaling, see [`g_1d`]).
///
/// # Safety
/// CPU features of `S` only.
#[inline(always)]
unsafe fn a_1d<S: Simd, const F: usize>(m: [S::V; 6]) -> [S::V; 4] {
    let dg = const { dg(F) };
    // SAFETY: arithmetic only.
    unsafe {
        if F == 2 {
            let m1 = S::mul(m[1], S::splat(1.0 / dg[1]));
            let m2 = S::mul(m[2], S::splat(1.0 / dg[2]));
            let z = S::zero();
            return [
                S::add(S::add(m[0], m1), m2),
                S::sub(S::sub(m1, m2), m[3]),
                z,
                z,
            ];
        }
        let m = [
            S::mul(m[0], S::splat(1.0 / dg[0])),
            S::mul(m[1], S::splat(1.0 / dg[1])),
            S::mul(m[2], S::splat(1.0 / dg[2])),
            S::mul(m[3], S::splat(1.0 / dg[3])),
            S::mul(m[4], S::splat(1.0 / dg[4])),
            m[5],
        ];
        let s12 = S::add(m[1], m[2]);
        let d12 = S::sub(m[1], m[2]);
        let s34 = S::add(m[3], m[4]);
        let d34 = S::sub(m[3], m[4]);
        [
            S::add(S::add(m[0], s12), s34),
            S::fma(S::splat(2.0), d34, d12),
            S::fma(S::splat(4.0), s34, s12),
            S::add(S::fma(S::splat(8.0), d34, d12), m[5]),
        ]
    }
}

/// Transforms the input patch of tile `t` (all channels) into row `r` of a `V` buffer split as
/// `split`; a `t` past the last tile gives a zero row (so the microkernel's spare rows stay
/// finite).
///
/// # Safety
/// CPU features of `S`; `p` built by [`WinogradPlan::new`]; `v` is valid for writes of
/// `positions(F) * (split.rows() * cin + UPAD)` floats, `r < split.rows()`, and row `r` of it
/// is written by no other running task.
#[inline(always)]
unsafe fn input_transform<S: Simd, const F: usize>(
    p: &WinogradPlan<'_>,
    v: *mut f32,
    split: &RowSplit,
    r: usize,
    t: usize,
) {
    let a = p.args;
    let s = &a.shape;
    let l = S::LANES;
    let cin = p.cin;
    let alpha = F + 2;
    let vi = |xi: usize, c: usize| v_index(split, cin, xi, r, c);
    // SAFETY (whole body): `vi(..) + l <= positions(F) * (rows * cin + UPAD)` for r < rows,
    // c + l <= cin
    // (l divides 16); input reads are bounds-checked slices.
    unsafe {
        if t >= p.n_tiles {
            for xi in 0..positions(F) {
                for c in (0..cin).step_by(l) {
                    S::store(v.add(vi(xi, c)), S::zero());
                }
            }
            return;
        }
        let (vh, vw) = s.virtual_in();
        let up = s.upsample as usize;
        let (b, ty, tx) = p.tile(t);
        let mut c = 0;
        while c < cin {
            // A vector never straddles the two parts (both are whole 16-blocks).
            let (part, pc, c_off) = if c < s.in_ca {
                (a.in_a, s.in_ca, c)
            } else {
                (a.in_b, s.in_cb, c - s.in_ca)
            };
            let mut d = [[S::zero(); 6]; 6];
            for (dy, row) in d.iter_mut().enumerate().take(alpha) {
                let iy = (ty * F + dy) as isize - s.pad_top as isize;
                if iy < 0 || iy as usize >= vh {
                    continue;
                }
                for (dx, x) in row.iter_mut().enumerate().take(alpha) {
                    let ix = (tx * F + dx) as isize - 1;
                    if ix < 0 || ix as usize >= vw {
                        continue;
                    }
                    let px = (b * s.in_h + (iy as usize >> up)) * s.in_w + (ix as usize >> up);
                    *x = S::load(part[px * pc + c_off..px * pc + c_off + l].as_ptr());
                }
            }
            let mut t = [[S::zero(); 6]; 6];
            for dx in 0..alpha {
                let col =
                    b_1d::<S, F>([d[0][dx], d[1][dx], d[2][dx], d[3][dx], d[4][dx], d[5][dx]]);
                for (ai, x) in col.iter().enumerate().take(alpha) {
                    t[ai][dx] = *x;
                }
            }
            for (ai, trow) in t.iter().enumerate().take(alpha) {
                let vrow = b_1d::<S, F>(*trow);
                for (bi, x) in vrow.iter().enumerate().take(alpha) {
                    S::store(v.add(vi(ai * alpha + bi, c)), *x);
                }
            }
            c += l;
        }
    }
}

/// Transforms the weights of output block `ob`, input channels `c0..c1`, into a weight chunk
/// `u` laid out `[ξ][c1 - c0][32]`, positions [`UPAD`] floats apart.
///
/// # Safety
/// CPU features of `S`; `p` built by [`WinogradPlan::new`] (weight length checked);
/// `ob < p.n_ob`, `c1 - c0 <= KW`; `u` is this thread's and writable for
/// `positions(F) * (KW * 32 + UPAD)` floats.
#[inline(always)]
unsafe fn weight_transform<S: Simd, const F: usize>(
    p: &WinogradPlan<'_>,
    ob: usize,
    c0: usize,
    c1: usize,
    u: *mut f32,
) {
    let l = S::LANES;
    let cin = p.cin;
    let alpha = F + 2;
    // Packed f16 weight: [ob][tap][c][32] (length checked by `ConvArgs::check`).
    let w_ob = &p.args.weight[ob * 9 * cin * PACK_OC..(ob + 1) * 9 * cin * PACK_OC];
    let stride = (c1 - c0) * PACK_OC + UPAD;
    // SAFETY (whole body): reads stay inside `w_ob` (tap < 9, c < cin, j + l <= 32); writes at
    // `xi * stride + (c - c0) * 32 + j + l <= positions(F) * (KW * 32 + UPAD)`, as the caller guarantees.
    unsafe {
        for c in c0..c1 {
            let mut j = 0;
            while j < PACK_OC {
                let mut g = [[S::zero(); 3]; 3];
                for (ky, row) in g.iter_mut().enumerate() {
                    for (kx, x) in row.iter_mut().enumerate() {
                        let tap = ky * 3 + kx;
                        *x = S::load_f16(w_ob.as_ptr().add((tap * cin + c) * PACK_OC + j));
                    }
                }
                // Along ky for each kx, then along kx.
                let mut cols = [[S::zero(); 6]; 3];
                for (kx, col) in cols.iter_mut().enumerate() {
                    *col = g_1d::<S, F>([g[0][kx], g[1][kx], g[2][kx]]);
                }
                for ai in 0..alpha {
                    let [k0, k1, k2] = &cols;
                    let row = g_1d::<S, F>([k0[ai], k1[ai], k2[ai]]);
                    for (bi, x) in row.iter().enumerate().take(alpha) {
                        let xi = ai * alpha + bi;
                        S::store(u.add(xi * stride + (c - c0) * PACK_OC + j), *x);
                    }
                }
                j += l;
            }
        }
    }
}

/// Output transform and epilogue of output block `ob` for tiles `t0..t0 + nt` (rows `0..nt`
/// of `m`, the block's GEMM outputs laid out `[ξ][rows][32]`).
///
/// # Safety
/// CPU features of `S`; `p` built by [`WinogradPlan::new`]; `nt <= rows`; `m` is readable for
/// `positions(F) * rows * 32` floats; no other running task writes these tiles x channels of the output.
#[inline(always)]
unsafe fn output_transform<S: Simd, const F: usize>(
    p: &WinogradPlan<'_>,
    m: *const f32,
    rows: usize,
    t0: usize,
    nt: usize,
    ob: usize,
) {
    let a = p.args;
    let s = &a.shape;
    let l = S::LANES;
    let oc = s.out_c;
    let alpha = F + 2;
    let out_len = s.batch * s.out_h * s.out_w * oc;
    let (col0, col1) = (ob * PACK_OC, ((ob + 1) * PACK_OC).min(oc));
    // SAFETY (whole body): `m` reads as the caller guarantees (r < nt <= rows, column
    // `col - col0 + l <= 32`); output writes are asserted in bounds and are this task's alone.
    unsafe {
        for r in 0..nt {
            let (b, ty, tx) = p.tile(t0 + r);
            let mut col = col0;
            while col < col1 {
                let mc = col - col0;
                let mut mv = [[S::zero(); 6]; 6];
                for (ai, row) in mv.iter_mut().enumerate().take(alpha) {
                    for (bi, x) in row.iter_mut().enumerate().take(alpha) {
                        *x = S::load(m.add(((ai * alpha + bi) * rows + r) * PACK_OC + mc));
                    }
                }
                let mut z = [[S::zero(); 6]; 4];
                for bi in 0..alpha {
                    let y = a_1d::<S, F>([
                        mv[0][bi], mv[1][bi], mv[2][bi], mv[3][bi], mv[4][bi], mv[5][bi],
                    ]);
                    for (k, x) in y.iter().enumerate().take(F) {
                        z[k][bi] = *x;
                    }
                }
                // bias + channel_add, as the direct kernel starts its accumulators.
                let mut init = [0.0f32; 16];
                for (j, x) in init[..l].iter_mut().enumerate() {
                    *x = a.bias[col + j].to_f32();
                    if !a.channel_add.is_empty() {
                        *x += a.channel_add[b * oc + col + j];
                    }
                }
                let init = S::load(init.as_ptr());
                let scale = S::splat(a.out_scale);
                for (k, zrow) in z.iter().enumerate().take(F) {
                    let oy = ty * F + k;
                    if oy >= s.out_h {
                        break;
                    }
                    let y = a_1d::<S, F>(*zrow);
                    for (j, x) in y.iter().enumerate().take(F) {
                        let ox = tx * F + j;
                        if ox >= s.out_w {
                            break;
                        }
                        let o = ((b * s.out_h + oy) * s.out_w + ox) * oc + col;
                        assert!(o + l <= out_len);
                        let mut v = S::add(init, *x);
                        if !a.residual.is_empty() {
                            v = S::add(v, S::load(a.residual[o..o + l].as_ptr()));
                        }
                        if a.out_scale != 1.0 {
                            v = S::div(v, scale);
                        }
                        S::store(p.out.get().add(o), v);
                    }
                }
                col += l;
            }
        }
    }
}

/// Phase 1 task `task` (weight-major only): the inputs of microkernel tile `task` into the
/// shared `V`.
///
/// # Safety
/// CPU features of `S`; `p` built by [`WinogradPlan::new`] (so the shared region holds
/// [`scratch_need`]'s floats); `task < p.phase1_tasks()`; each task writes only its own
/// microkernel tile's rows of the shared region.
#[inline(always)]
pub(crate) unsafe fn phase1<S: Simd>(p: &WinogradPlan<'_>, task: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        match p.tile {
            4 => phase1_tile::<S, 4>(p, task),
            _ => phase1_tile::<S, 2>(p, task),
        }
    }
}

/// [`phase1`] for F(`F` x `F`, 3x3).
///
/// # Safety
/// As [`phase1`], and `F == p.tile`.
#[inline(always)]
unsafe fn phase1_tile<S: Simd, const F: usize>(p: &WinogradPlan<'_>, task: usize) {
    if p.mode != Mode::WeightMajor {
        return;
    }
    // SAFETY: the rows of microkernel tile `task` of a `V` of `rows <= wm_rows_max` rows stay
    // below `positions(F) * (wm_rows_max * cin + UPAD)`, inside the checked shared region, and
    // are this task's alone.
    unsafe {
        let (r0, h) = p.split.tile(task);
        for r in r0..r0 + h {
            input_transform::<S, F>(p, p.shared.get(), &p.split, r, r);
        }
    }
}

/// The `(F + 2)^2` GEMMs of output block `ob` over the rows of `v` (a `V` buffer split as
/// `split`, whose tiles have `MR`, `MRS` or [`SHORT_MIN`] rows), into `m` (`[ξ][rows][32]`):
/// the block's weights are transformed a chunk of [`KW`] input channels at a time into `u`
/// (L2-sized), and every chunk sweeps all the tiles.
///
/// # Safety
/// CPU features of `S`; `p` built by [`WinogradPlan::new`]; `v` is readable for a `V` split as
/// `split`; `u` and `m` are this thread's, of [`chunk_and_m`]`(split.rows())` floats together
/// (`u` first); `zeros` holds 64 zeros.
#[inline(always)]
unsafe fn gemm_block<
    S: Simd,
    const MR: usize,
    const MRS: usize,
    const NV: usize,
    const F: usize,
>(
    p: &WinogradPlan<'_>,
    ob: usize,
    v: *const f32,
    split: &RowSplit,
    u: *mut f32,
    m: *mut f32,
    zeros: *const f32,
) {
    let cin = p.cin;
    let nr = NV * S::LANES;
    let rows = split.rows();
    // On Zen 4 (32 MiB L3, 2 threads) this helped the convs over 1280 channels and more by
    // about 10% and cost the smaller ones a few percent.
    let prefetch_v = positions(F) * rows * cin * 4 > V_PREFETCH_BYTES;
    // SAFETY (whole body): `u` indices `xi * (kw * 32 + UPAD) + c * 32 + j < positions(F) *
    // (KW * 32 + UPAD)`; `v` reads of group `c0 / 16..` of each microkernel tile stay inside
    // its `V`; `m` writes `(xi * rows + start + i) * 32 + c16 + nr <= positions(F) * rows * 32`
    // (`start + i < rows`).
    unsafe {
        let mut c0 = 0;
        while c0 < cin {
            let c1 = (c0 + KW).min(cin);
            let kw = c1 - c0;
            weight_transform::<S, F>(p, ob, c0, c1, u);
            // The first chunk starts from zero, later ones accumulate.
            let init = if c0 == 0 { zeros } else { core::ptr::null() };
            for xi in 0..positions(F) {
                let w = u.add(xi * (kw * PACK_OC + UPAD)) as *const f32;
                for mt in 0..split.tiles() {
                    let (start, h) = split.tile(mt);
                    let a_ptr = v.add(v_index(split, cin, xi, start, c0));
                    // The next call's inputs (`h * kw` contiguous floats) into L1 now, when `V`
                    // is too large to stay in L3 between output blocks: each call reads a
                    // different 4 KiB page, where the hardware prefetchers start late.
                    let (nxi, nmt) = if mt + 1 < split.tiles() {
                        (xi, mt + 1)
                    } else {
                        (xi + 1, 0)
                    };
                    if prefetch_v && nxi < positions(F) {
                        let (nstart, nh) = split.tile(nmt);
                        let next = v.wrapping_add(v_index(split, cin, nxi, nstart, c0));
                        let mut j = 0;
                        while j < nh * kw {
                            S::prefetch::<false>(next.wrapping_add(j));
                            j += 16;
                        }
                    }
                    for c16 in (0..PACK_OC).step_by(nr) {
                        let c_ptr = m.add((xi * rows + start) * PACK_OC + c16);
                        let (b_ptr, res) = (w.add(c16), core::ptr::null());
                        let g = kw / 16;
                        if h == MR {
                            micro::<S, MR, NV>(
                                g, a_ptr, b_ptr, c_ptr, PACK_OC, MR, nr, init, res, 1.0, false,
                            );
                        } else if h == MRS {
                            micro::<S, MRS, NV>(
                                g, a_ptr, b_ptr, c_ptr, PACK_OC, MRS, nr, init, res, 1.0, false,
                            );
                        } else {
                            debug_assert_eq!(h, SHORT_MIN);
                            micro::<S, SHORT_MIN, NV>(
                                g, a_ptr, b_ptr, c_ptr, PACK_OC, SHORT_MIN, nr, init, res, 1.0,
                                false,
                            );
                        }
                    }
                }
            }
            c0 = c1;
        }
    }
}

/// Phase 2 task `task`: weight-major, output block `task` over every tile (inputs from the
/// shared `V`); tile-major, one block of tiles (inputs transformed here, into this thread's
/// scratch) times a group of output blocks.
///
/// Thread scratch: tile-major, the block's `V`, then (both modes) a weight chunk, one output
/// block's `M`, and 64 zeros.
///
/// # Safety
/// CPU features of `S`; `p` built by [`WinogradPlan::new`]; phase 1 has finished (its shared
/// data is complete and now only read); `task < p.phase2_tasks()`; `scratch` is this thread's
/// and holds the per-thread floats of [`scratch_need`]; no other task writes this task's
/// output pixels x channels (the plan splits tiles and channel blocks disjointly).
#[inline(always)]
pub(crate) unsafe fn phase2<S: Simd, const MR: usize, const MRS: usize, const NV: usize>(
    p: &WinogradPlan<'_>,
    task: usize,
    scratch: &mut [f32],
) {
    // SAFETY: forwarded contract.
    unsafe {
        match p.tile {
            4 => phase2_tile::<S, MR, MRS, NV, 4>(p, task, scratch),
            _ => phase2_tile::<S, MR, MRS, NV, 2>(p, task, scratch),
        }
    }
}

/// [`phase2`] for F(`F` x `F`, 3x3).
///
/// # Safety
/// As [`phase2`], and `F == p.tile`.
#[inline(always)]
unsafe fn phase2_tile<
    S: Simd,
    const MR: usize,
    const MRS: usize,
    const NV: usize,
    const F: usize,
>(
    p: &WinogradPlan<'_>,
    task: usize,
    scratch: &mut [f32],
) {
    let pos = positions(F);
    let cin = p.cin;
    debug_assert!(p.split.mr == MR && 16 % S::LANES == 0 && PACK_OC.is_multiple_of(NV * S::LANES));
    let rows = p.split.rows();
    let (og, blk) = (task / p.blocks, task % p.blocks);
    let ob0 = og * p.obw;
    let ob1 = (ob0 + p.obw).min(p.n_ob);
    let t0 = blk * rows;
    let nt = rows.min(p.n_tiles - t0);
    let v_len = match p.mode {
        Mode::TileMajor => pos * (rows * cin + UPAD),
        Mode::WeightMajor => 0,
    };
    let (v_buf, rest) = scratch.split_at_mut(v_len);
    let (u_buf, rest) = rest.split_at_mut(pos * (KW * PACK_OC + UPAD));
    let (m_buf, rest) = rest.split_at_mut(pos * rows * PACK_OC);
    let zeros = &mut rest[..64];
    zeros.fill(0.0);
    // SAFETY: buffers are this thread's scratch, of the sizes split above (within
    // `scratch_need`'s per-thread floats); the weight-major `V` is the shared region phase 1
    // completed; outputs as the contract says.
    unsafe {
        let v: *const f32 = match p.mode {
            Mode::TileMajor => {
                for r in 0..rows {
                    input_transform::<S, F>(p, v_buf.as_mut_ptr(), &p.split, r, t0 + r);
                }
                v_buf.as_ptr()
            }
            Mode::WeightMajor => p.shared.get(),
        };
        for ob in ob0..ob1 {
            gemm_block::<S, MR, MRS, NV, F>(
                p,
                ob,
                v,
                &p.split,
                u_buf.as_mut_ptr(),
                m_buf.as_mut_ptr(),
                zeros.as_ptr(),
            );
            output_transform::<S, F>(p, m_buf.as_ptr(), rows, t0, nt, ob);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RowSplit;

    /// (full tiles, short height, short tiles) of the split `cover` picks.
    fn split(n: usize, mr: usize, mrs: usize) -> (usize, usize, usize) {
        let s = RowSplit::cover(n, mr, mrs);
        assert!(s.rows() >= n);
        (s.full, s.hs, s.short)
    }

    #[test]
    fn row_split_covers_batch_one_maps_without_padding() {
        // AVX2 and NEON: 6-row and 4-row kernels.
        assert_eq!(split(4, 6, 4), (0, 4, 1));
        assert_eq!(split(16, 6, 4), (2, 4, 1));
        assert_eq!(split(64, 6, 4), (10, 4, 1));
        assert_eq!(split(72, 6, 4), (12, 6, 0));
        // AVX-512: 14-row and 8-row kernels, and the 4-row one.
        assert_eq!(split(4, 14, 8), (0, 4, 1));
        assert_eq!(split(16, 14, 8), (0, 8, 2));
        assert_eq!(split(64, 14, 8), (4, 8, 1));
        // Odd counts pad as little as they can.
        assert_eq!(RowSplit::cover(5, 14, 8).rows(), 8);
        assert_eq!(RowSplit::cover(37, 6, 4).rows(), 38);
        // Row lookups agree with the tile list.
        let s = RowSplit::cover(64, 14, 8);
        for mt in 0..s.tiles() {
            let (start, h) = s.tile(mt);
            for r in start..start + h {
                assert_eq!(s.tile_of_row(r), (start, h));
            }
        }
    }
}
