//! The SIMD kernels, written once over a small vector abstraction ([`Simd`]) and instantiated
//! per instruction set (`x86.rs`: AVX-512 and AVX2; `neon.rs`: NEON) inside
//! `#[target_feature]` functions. Every generic function here is `#[inline(always)]`, so it is
//! compiled with the features of the function that instantiates it.
//!
//! ## Convolution (and linear): an implicit GEMM
//! `out[pixel, o] = sum_k A[pixel, k] * W[k, o]` with `k = tap * in_c + channel`. Work is cut
//! into tiles of `MR` output pixels (never spanning two samples) times blocks of 32 output
//! channels, and the reduction into chunks of [`KC`]:
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
//!   residual and applies `out_scale`.
//!
//! Tasks partition output pixels and output channels, never the reduction, and every output
//! element is computed by the same sequence of operations whatever the thread count: results
//! are identical bit for bit with 1 or N threads.

use half::f16;

use super::{AttentionArgs, ConvArgs, GroupNormArgs, LinearArgs, PACK_OC};

/// Reduction chunk (a multiple of 16).
pub(crate) const KC: usize = 256;
/// Largest pixel tile of any path.
pub(crate) const MR_MAX: usize = 16;
/// Output-channel blocks whose panels a task keeps (`G_MAX * KC * 32` floats).
pub(crate) const G_MAX: usize = 4;
/// Attention tiles: queries per task, keys per score tile.
pub(crate) const BQ: usize = 16;
pub(crate) const BK: usize = 64;
/// Tiles packed together (their A buffers live in L2 while each weight panel sweeps them).
pub(crate) const TG: usize = 8;
pub(crate) const SCRATCH_FLOATS: usize = TG * MR_MAX * KC + G_MAX * KC * PACK_OC;

const _: () = assert!(BQ * BK <= SCRATCH_FLOATS);

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
    /// `a * b + c`, one rounding.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `e^x`, within 2 ulp for |x| < 87; underflows to 0 below about -87.
    unsafe fn exp(x: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
    unsafe fn hmax(v: Self::V) -> f32;

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

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

/// Everything a conv task needs, computed once per call.
pub(crate) struct ConvPlan<'a> {
    pub args: &'a ConvArgs<'a>,
    pub out: Shared<f32>,
    pub cin: usize,
    pub k_total: usize,
    pub out_hw: usize,
    pub mr: usize,
    pub tiles_per_sample: usize,
    pub n_ob: usize,
    pub obs_per_task: usize,
    pub tiles_per_task: usize,
    pub tile_groups: usize,
    pub tasks: usize,
}

// SAFETY: `out` is written only inside `conv_task`, and tasks write disjoint regions (their own
// tiles x output-channel blocks); every other field is read-only.
unsafe impl Sync for ConvPlan<'_> {}

impl<'a> ConvPlan<'a> {
    pub fn new(args: &'a ConvArgs<'a>, out: &mut [f32], mr: usize, threads: usize) -> ConvPlan<'a> {
        args.check(out);
        let s = &args.shape;
        let cin = s.in_c();
        let taps = s.kernel * s.kernel;
        let out_hw = s.out_h * s.out_w;
        let tiles_per_sample = out_hw.div_ceil(mr);
        let n_tiles = s.batch * tiles_per_sample;
        let n_ob = s.out_c.div_ceil(PACK_OC);
        // Enough tasks to balance `threads` threads, each as large as possible so panels are
        // widened few times: split output channels first (each split costs nothing extra),
        // then tiles.
        let want = if threads <= 1 { 1 } else { 3 * threads };
        let mut obs_per_task = n_ob.min(G_MAX);
        while obs_per_task > 1 && n_ob.div_ceil(obs_per_task) * n_tiles < want {
            obs_per_task = obs_per_task.div_ceil(2);
        }
        let ob_groups = n_ob.div_ceil(obs_per_task);
        let tile_groups = want.div_ceil(ob_groups).clamp(1, n_tiles.max(1));
        let tiles_per_task = n_tiles.div_ceil(tile_groups).max(1);
        let tile_groups = n_tiles.div_ceil(tiles_per_task);
        ConvPlan {
            args,
            out: Shared(out.as_mut_ptr()),
            cin,
            k_total: taps * cin,
            out_hw,
            mr,
            tiles_per_sample,
            n_ob,
            obs_per_task,
            tiles_per_task,
            tile_groups,
            tasks: if s.out_c == 0 || n_tiles == 0 || cin == 0 {
                0
            } else {
                ob_groups * tile_groups
            },
        }
    }

    /// (sample, first pixel, pixels) of tile `t`; tiles of a sample differ by at most one pixel.
    #[inline(always)]
    fn tile(&self, t: usize) -> (usize, usize, usize) {
        let (b, i) = (t / self.tiles_per_sample, t % self.tiles_per_sample);
        let start = i * self.out_hw / self.tiles_per_sample;
        let end = (i + 1) * self.out_hw / self.tiles_per_sample;
        (b, start, end - start)
    }
}

/// Copies `len <= 16` floats (or zeros when `src` is null) to `dst`.
///
/// # Safety
/// CPU features of `S`; `dst` is writable for `len` floats, `src` is null or readable for `len` floats, `len <= 16`.
#[inline(always)]
unsafe fn copy_run<S: Simd>(dst: *mut f32, src: *const f32, len: usize) {
    // SAFETY (whole function): the caller guarantees `dst` is writable and `src` (if not null)
    // readable for `len` floats.
    unsafe {
        if len == 16 && 16 % S::LANES == 0 {
            let mut j = 0;
            while j < 16 {
                let v = if src.is_null() {
                    S::zero()
                } else {
                    S::load(src.add(j))
                };
                S::store(dst.add(j), v);
                j += S::LANES;
            }
        } else if src.is_null() {
            for j in 0..len {
                *dst.add(j) = 0.0;
            }
        } else {
            for j in 0..len {
                *dst.add(j) = *src.add(j);
            }
        }
    }
}

/// Packs the input of tile (`b`, pixels `p0..p0 + m`) for reduction indices `k0..k0 + kc` into
/// `dst` as `[kcp / 16][MR][16]`, zero-filling padding taps, rows `m..MR` and `kc..kcp`.
///
/// The reduction range is walked in runs that stay within one tap and one input part; for each
/// run every pixel copies its channels (whole 16-float blocks with vector moves when the run is
/// aligned, which is the case whenever channel counts are multiples of 16).
///
/// # Safety
/// CPU features of `S`; `a_buf` holds `MR * kc` floats and the conv's inputs match `p.shape` (checked by `ConvArgs::check` before any task runs).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_a<S: Simd, const MR: usize>(
    p: &ConvPlan<'_>,
    b: usize,
    p0: usize,
    m: usize,
    k0: usize,
    kc: usize,
    kcp: usize,
    dst: &mut [f32],
) {
    let a = p.args;
    let s = &a.shape;
    let (ca, cin) = (s.in_ca, p.cin);
    let (vh, vw) = s.virtual_in();
    let up = s.upsample as usize;
    let groups = kcp / 16;
    assert!(dst.len() >= groups * MR * 16 && m <= MR);
    let d = dst.as_mut_ptr();
    let row = |q: usize, i: usize| (q / 16) * MR * 16 + i * 16 + q % 16;
    // SAFETY (whole body): every destination index is `row(q, i) + len` with q + len <= kcp
    // inside one 16-block and i < MR, so below groups * MR * 16 (asserted); every source run
    // lies inside the input part's slice (see below).
    unsafe {
        for i in m..MR {
            for g in 0..groups {
                copy_run::<S>(d.add(g * MR * 16 + i * 16), core::ptr::null(), 16);
            }
        }
        let mut oy = [0usize; MR_MAX];
        let mut ox = [0usize; MR_MAX];
        for i in 0..m {
            oy[i] = (p0 + i) / s.out_w;
            ox[i] = (p0 + i) % s.out_w;
        }
        let mut kk = k0;
        while kk < k0 + kc {
            let tap = kk / cin;
            let c = kk % cin;
            let (ky, kx) = (tap / s.kernel, tap % s.kernel);
            // The run's part: its slice, channels per pixel, and first channel.
            let (part, pc, c_off, avail) = if c < ca {
                (a.in_a, ca, c, ca - c)
            } else {
                (a.in_b, cin - ca, c - ca, cin - c)
            };
            let run = avail.min(k0 + kc - kk);
            let q0 = kk - k0;
            let aligned = q0 % 16 == 0 && run % 16 == 0;
            for i in 0..m {
                let iy = (oy[i] * s.stride + ky) as isize - s.pad_top as isize;
                let ix = (ox[i] * s.stride + kx) as isize - s.pad_left as isize;
                let src: *const f32 =
                    if iy >= 0 && (iy as usize) < vh && ix >= 0 && (ix as usize) < vw {
                        let sp = (b * s.in_h + (iy as usize >> up)) * s.in_w + (ix as usize >> up);
                        // Bounds-checked: channels c_off..c_off + run of input pixel `sp`.
                        part[sp * pc + c_off..sp * pc + c_off + run].as_ptr()
                    } else {
                        core::ptr::null()
                    };
                if aligned {
                    let mut blk = 0;
                    while blk < run {
                        let sp = if src.is_null() { src } else { src.add(blk) };
                        copy_run::<S>(d.add(row(q0 + blk, i)), sp, 16);
                        blk += 16;
                    }
                } else {
                    let mut done = 0;
                    while done < run {
                        let q = q0 + done;
                        let piece = (16 - q % 16).min(run - done);
                        let sp = if src.is_null() { src } else { src.add(done) };
                        copy_run::<S>(d.add(row(q, i)), sp, piece);
                        done += piece;
                    }
                }
            }
            kk += run;
        }
        for i in 0..m {
            let mut q = kc;
            while q < kcp {
                let piece = 16 - q % 16;
                copy_run::<S>(d.add(row(q, i)), core::ptr::null(), piece);
                q += piece;
            }
        }
    }
}

/// Widens reduction rows `k0..k0 + kc` of output block `ob` into a `[kcp][32]` f32 panel.
///
/// # Safety
/// CPU features of `S`; the packed weight has `ConvShape::weight_len` elements (checked at load and by `ConvArgs::check`), `dst` holds `kcp * 32` floats.
#[inline(always)]
unsafe fn widen_panel<S: Simd>(
    p: &ConvPlan<'_>,
    ob: usize,
    k0: usize,
    kc: usize,
    kcp: usize,
    dst: &mut [f32],
) {
    let w = &p.args.weight[(ob * p.k_total + k0) * PACK_OC..(ob * p.k_total + k0 + kc) * PACK_OC];
    let dst = &mut dst[..kcp * PACK_OC];
    let mut j = 0;
    while j < kc * PACK_OC {
        // SAFETY: j + LANES <= kc * 32 (32 is a multiple of LANES) for both slices.
        unsafe { S::store(dst.as_mut_ptr().add(j), S::load_f16(w.as_ptr().add(j))) };
        j += S::LANES;
    }
    dst[kc * PACK_OC..].fill(0.0);
}

/// `MR x (NV * LANES)` accumulators over `groups * 16` reduction steps, then the epilogue.
/// `c` points at row 0, column 0 of the tile in the output (row stride `ldc`); only `m` rows and
/// `ncols` columns are read or written. `init` (first chunk) gives the starting value of each
/// column, otherwise the partial sums are read from `c`. With `last`, `res` (row stride `ldc`)
/// is added and the result divided by `scale`.
///
/// # Safety
/// CPU features of `S`; `c` (and `res` when `last`) is valid for `m` rows of `ncols` floats at row stride `ldc`, `a` holds `kc * MR` and `b` `kc * NV * LANES` floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro<S: Simd, const MR: usize, const NV: usize>(
    groups: usize,
    a: *const f32,
    w: *const f32,
    c: *mut f32,
    ldc: usize,
    m: usize,
    ncols: usize,
    init: *const f32,
    res: *const f32,
    scale: f32,
    last: bool,
) {
    // SAFETY (whole function): the caller guarantees `a` holds `groups * MR * 16` floats, `w`
    // `groups * 16` rows of stride 32 with `NV * LANES` readable columns, `init` (if not null)
    // `NV * LANES` floats, and `c` / `res` `m` rows of `ncols` floats at stride `ldc`.
    unsafe {
        let l = S::LANES;
        let nr = NV * l;
        let full = ncols >= nr;
        // Partial tiles (fewer than `nr` valid columns) go through a zeroed staging row; it
        // is made only in those branches, so full tiles pay no memset per call.
        let mut acc = [[S::zero(); NV]; MR];
        if !init.is_null() {
            let mut iv = [S::zero(); NV];
            for (v, x) in iv.iter_mut().enumerate() {
                *x = S::load(init.add(v * l));
            }
            for row in acc.iter_mut() {
                *row = iv;
            }
        } else {
            for (i, row) in acc.iter_mut().enumerate().take(m) {
                let src = c.add(i * ldc);
                if full {
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = S::load(src.add(v * l));
                    }
                } else {
                    let mut tmp = [0.0f32; 64];
                    tmp[..ncols].copy_from_slice(core::slice::from_raw_parts(src, ncols));
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = S::load(tmp.as_ptr().add(v * l));
                    }
                }
            }
        }
        let mut a = a;
        let mut w = w;
        for _ in 0..groups {
            for kk in 0..16 {
                let mut wv = [S::zero(); NV];
                for (v, x) in wv.iter_mut().enumerate() {
                    *x = S::load(w.add(kk * PACK_OC + v * l));
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let x = S::bcast(a.add(i * 16 + kk));
                    for v in 0..NV {
                        row[v] = S::fma(x, wv[v], row[v]);
                    }
                }
            }
            a = a.add(MR * 16);
            w = w.add(16 * PACK_OC);
        }
        if last && !res.is_null() {
            for (i, row) in acc.iter_mut().enumerate().take(m) {
                let r = res.add(i * ldc);
                if full {
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = S::add(*x, S::load(r.add(v * l)));
                    }
                } else {
                    let mut tmp = [0.0f32; 64];
                    tmp[..ncols].copy_from_slice(core::slice::from_raw_parts(r, ncols));
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = S::add(*x, S::load(tmp.as_ptr().add(v * l)));
                    }
                }
            }
        }
        if last && scale != 1.0 {
            let sv = S::splat(scale);
            for row in acc.iter_mut() {
                for x in row.iter_mut() {
                    *x = S::div(*x, sv);
                }
            }
        }
        for (i, row) in acc.iter().enumerate().take(m) {
            let dst = c.add(i * ldc);
            if full {
                for (v, x) in row.iter().enumerate() {
                    S::store(dst.add(v * l), *x);
                }
            } else {
                let mut tmp = [0.0f32; 64];
                for (v, x) in row.iter().enumerate() {
                    S::store(tmp.as_mut_ptr().add(v * l), *x);
                }
                core::slice::from_raw_parts_mut(dst, ncols).copy_from_slice(&tmp[..ncols]);
            }
        }
    }
}

/// One packed tile (`m` pixels from `px0` of sample `b`, in `a_buf`) times output block `ob`
/// (panel `ob - ob0` of `panels`) for reduction chunk `k0..k0 + kc`.
///
/// # Safety
/// CPU features of `S`; the plan's buffers were checked by `ConvArgs::check`, `a_buf` is the packed tile of `m` pixels, `ob` indexes `panels`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_ob<S: Simd, const MR: usize, const NV: usize>(
    p: &ConvPlan<'_>,
    b: usize,
    px0: usize,
    m: usize,
    k0: usize,
    kc: usize,
    ob: usize,
    ob0: usize,
    a_buf: &[f32],
    panels: &[f32],
) {
    let a = p.args;
    let oc = a.shape.out_c;
    let nr = NV * S::LANES;
    let kcp = kc.div_ceil(16) * 16;
    let (first, last) = (k0 == 0, k0 + kc == p.k_total);
    let mut init = [0.0f32; 64];
    let row0 = b * p.out_hw + px0;
    {
        let mut col0 = ob * PACK_OC;
        while col0 < (ob + 1) * PACK_OC && col0 < oc {
            let ncols = nr.min(oc - col0);
            let init_ptr = if first {
                for (j, v) in init[..nr].iter_mut().enumerate() {
                    *v = if j < ncols {
                        let mut x = a.bias[col0 + j].to_f32();
                        if !a.channel_add.is_empty() {
                            x += a.channel_add[b * oc + col0 + j];
                        }
                        x
                    } else {
                        0.0
                    };
                }
                init.as_ptr()
            } else {
                core::ptr::null()
            };
            let res = if last && !a.residual.is_empty() {
                a.residual[row0 * oc + col0..(row0 + m - 1) * oc + col0 + ncols].as_ptr()
            } else {
                core::ptr::null()
            };
            let panel = panels[(ob - ob0) * KC * PACK_OC + (col0 - ob * PACK_OC)..].as_ptr();
            // SAFETY: `a_buf` holds kcp/16 groups of the packed tile; the panel rows
            // have stride 32 with `nr` columns from `col0 - ob * 32`; the output rows
            // `row0..row0 + m`, columns `col0..col0 + ncols` are in bounds (checked by
            // `ConvArgs::check`) and belong to this task alone (tiles `t0..t1` x blocks
            // `ob0..ob1`), so no other task touches them.
            let c = p.out.get().wrapping_add(row0 * oc + col0);
            // SAFETY: as stated above; a block of at most one vector of valid columns (conv_out's
            // 3 channels) runs the one-vector-wide microkernel.
            unsafe {
                if NV > 1 && ncols <= S::LANES {
                    micro::<S, MR, 1>(
                        kcp / 16,
                        a_buf.as_ptr(),
                        panel,
                        c,
                        oc,
                        m,
                        ncols,
                        init_ptr,
                        res,
                        a.out_scale,
                        last,
                    )
                } else {
                    micro::<S, MR, NV>(
                        kcp / 16,
                        a_buf.as_ptr(),
                        panel,
                        c,
                        oc,
                        m,
                        ncols,
                        init_ptr,
                        res,
                        a.out_scale,
                        last,
                    )
                }
            };
            col0 += nr;
        }
    }
}

/// One task of a convolution: its tiles times its output-channel blocks, every reduction chunk.
///
/// # Safety
/// CPU features of `S`; `p` was built from checked `ConvArgs`, `task < p.tasks()`, and no other task writes the output rows and channel blocks of this one (the plan splits them disjointly).
#[inline(always)]
pub(crate) unsafe fn conv_task<S: Simd, const MR: usize, const MRS: usize, const NV: usize>(
    p: &ConvPlan<'_>,
    task: usize,
    scratch: &mut [f32],
) {
    let a = p.args;
    let s = &a.shape;
    debug_assert!(p.mr == MR && MRS <= MR && PACK_OC % (NV * S::LANES) == 0 && NV * S::LANES <= 64);
    let (og, tg) = (task / p.tile_groups, task % p.tile_groups);
    let ob0 = og * p.obs_per_task;
    let ob1 = (ob0 + p.obs_per_task).min(p.n_ob);
    let n_tiles = s.batch * p.tiles_per_sample;
    let t0 = tg * p.tiles_per_task;
    let t1 = (t0 + p.tiles_per_task).min(n_tiles);
    let (a_bufs, panels) = scratch.split_at_mut(TG * MR_MAX * KC);
    // BLIS order: for a group of up to TG tiles (whose output rows stay in L2 across the
    // reduction chunks), chunk by chunk: widen the chunk's weight panels, pack the tiles (L2),
    // then run every output block's panel (kept in L1) over them. A tile of at most MRS pixels
    // uses the narrower microkernel (fewer wasted rows).
    let mut g0 = t0;
    while g0 < t1 {
        let g1 = (g0 + TG).min(t1);
        let mut k0 = 0;
        while k0 < p.k_total {
            let kc = KC.min(p.k_total - k0);
            let kcp = kc.div_ceil(16) * 16;
            for ob in ob0..ob1 {
                // SAFETY: the target features of `S` are enabled (our caller's contract).
                unsafe {
                    widen_panel::<S>(p, ob, k0, kc, kcp, &mut panels[(ob - ob0) * KC * PACK_OC..])
                };
            }
            for t in g0..g1 {
                let (b, px0, m) = p.tile(t);
                let buf = &mut a_bufs[(t - g0) * MR_MAX * KC..(t - g0 + 1) * MR_MAX * KC];
                // SAFETY: as above.
                unsafe {
                    if m <= MRS {
                        pack_a::<S, MRS>(p, b, px0, m, k0, kc, kcp, buf)
                    } else {
                        pack_a::<S, MR>(p, b, px0, m, k0, kc, kcp, buf)
                    }
                }
            }
            for ob in ob0..ob1 {
                for t in g0..g1 {
                    let (b, px0, m) = p.tile(t);
                    let buf = &a_bufs[(t - g0) * MR_MAX * KC..(t - g0 + 1) * MR_MAX * KC];
                    // SAFETY: as above; `buf` was packed for this tile and chunk just now.
                    unsafe {
                        if m <= MRS {
                            tile_ob::<S, MRS, NV>(p, b, px0, m, k0, kc, ob, ob0, buf, panels)
                        } else {
                            tile_ob::<S, MR, NV>(p, b, px0, m, k0, kc, ob, ob0, buf, panels)
                        }
                    }
                }
            }
            k0 += kc;
        }
        g0 = g1;
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix-vector products (linears of one or two rows)
// ---------------------------------------------------------------------------------------------

/// Linears with at most this many rows (the timestep-embedding projections at batch 1 and 2)
/// skip the conv path: one row cannot fill a microkernel tile, and widening the f16 weight
/// panels to f32 first would write and re-read every weight. [`gemv_task`] reads each f16
/// weight once per row, straight into the multiply.
pub(crate) const GEMV_MAX_ROWS: usize = 2;

/// Output block `ob` (32 columns) of a linear with at most [`GEMV_MAX_ROWS`] rows: for each
/// row, 8 vector accumulators (independent chains over interleaved input features, enough to
/// cover the FMA latency), summed once at the end, then bias, residual and `out_scale`.
///
/// # Safety
/// CPU features of `S`; `a.as_conv().check` passed for `out`; `ob < ceil(out_f / 32)`; the task
/// writes only columns `32 * ob..` of each row, which no other task writes.
#[inline(always)]
pub(crate) unsafe fn gemv_task<S: Simd>(a: &LinearArgs<'_>, out: Shared<f32>, ob: usize) {
    let l = S::LANES;
    // Vectors per 32-column block, and chains so that chains x vectors = 8 accumulators.
    let nv = PACK_OC / l;
    let chains = (8 / nv).max(1);
    let (in_f, out_f) = (a.in_f, a.out_f);
    let cols = PACK_OC.min(out_f - ob * PACK_OC);
    let w = &a.weight[ob * in_f * PACK_OC..(ob + 1) * in_f * PACK_OC];
    // SAFETY (whole body): weight reads `(k * 32 + v * l) + l <= in_f * 32` inside `w`; input
    // reads are slices; output writes go through `tmp` or stay below `out_f` in row `r`.
    unsafe {
        for r in 0..a.rows {
            let x = &a.input[r * in_f..(r + 1) * in_f];
            let mut acc = [[S::zero(); 8]; 4];
            let mut k = 0;
            while k + chains <= in_f {
                for (ch, row) in acc.iter_mut().enumerate().take(chains) {
                    let xv = S::splat(x[k + ch]);
                    let wk = w.as_ptr().add((k + ch) * PACK_OC);
                    for (v, y) in row.iter_mut().enumerate().take(nv) {
                        *y = S::fma(xv, S::load_f16(wk.add(v * l)), *y);
                    }
                }
                k += chains;
            }
            while k < in_f {
                let xv = S::splat(x[k]);
                let wk = w.as_ptr().add(k * PACK_OC);
                for (v, y) in acc[0].iter_mut().enumerate().take(nv) {
                    *y = S::fma(xv, S::load_f16(wk.add(v * l)), *y);
                }
                k += 1;
            }
            let mut tmp = [0.0f32; PACK_OC];
            for v in 0..nv {
                let mut y = acc[0][v];
                for row in acc.iter().take(chains).skip(1) {
                    y = S::add(y, row[v]);
                }
                S::store(tmp.as_mut_ptr().add(v * l), y);
            }
            let dst = out.0.add(r * out_f + ob * PACK_OC);
            for (j, y) in tmp.iter().enumerate().take(cols) {
                let col = ob * PACK_OC + j;
                let mut z = y + a.bias[col].to_f32();
                if !a.residual.is_empty() {
                    z += a.residual[r * out_f + col];
                }
                *dst.add(j) = if a.out_scale != 1.0 {
                    z / a.out_scale
                } else {
                    z
                };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GroupNorm (+ SiLU)
// ---------------------------------------------------------------------------------------------

/// Most groups one GroupNorm task handles.
pub(crate) const GN_MAX_GROUPS: usize = 64;

/// (groups per task, tasks) for a GroupNorm: about 32 channels per task.
pub(crate) fn gn_split(a: &GroupNormArgs<'_>) -> (usize, usize) {
    let c = a.in_ca + a.in_cb;
    let cpg = (c / a.groups).max(1);
    // Whole 16-channel vectors per task where possible (12 channels per group: 4 groups).
    let mut gpt = 1;
    while gpt < GN_MAX_GROUPS && ((gpt * cpg) % 16 != 0 || gpt * cpg < 32) {
        gpt += 1;
    }
    if (gpt * cpg) % 16 != 0 {
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
/// passes as the scalar path), then normalise (and SiLU) their channels.
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

    // Pass 1 (sums) and pass 2 (squared deviations from the group mean).
    for pass in 0..2 {
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
            // SAFETY: inputs as in pass 1; outputs: channels `ch..ch + width` of this
            // sample's pixels, which only this task (sample `b`, groups `g0..g1`) writes.
            unsafe {
                let col = seg.src.add(ch - base);
                let dst = out.0.add(px0 * c + ch);
                if vec {
                    let (m, sc, be) = (
                        S::load(mv.as_ptr()),
                        S::load(sv.as_ptr()),
                        S::load(bv.as_ptr()),
                    );
                    for q in 0..n {
                        let x = S::load(col.add(q * seg.stride));
                        let mut y = S::fma(S::sub(x, m), sc, be);
                        if a.silu {
                            y = sigmoid_mul::<S>(y);
                        }
                        S::store(dst.add(q * c), y);
                    }
                } else {
                    for q in 0..n {
                        let x = *col.add(q * seg.stride);
                        let y = (x - mv[0]) * sv[0] + bv[0];
                        *dst.add(q * c) = if a.silu { super::silu(y) } else { y };
                    }
                }
            }
            ch += width;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

/// Writes K^T for (sample, head) `task` into `kt` as `[d][tokens]` at offset
/// `task * d * tokens`, so the score blocks read keys as contiguous vectors.
///
/// # Safety
/// `AttentionArgs::check` passed and `kt` holds `tasks * d * tokens` floats; the task writes only its own `d * tokens` block.
#[inline(always)]
pub(crate) unsafe fn transpose_k(a: &AttentionArgs<'_>, kt: Shared<f32>, task: usize) {
    let (n, c) = (a.tokens, a.channels);
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
    let off = b * n * c + h * d;
    let scale = 1.0 / libm::sqrtf(d as f32);
    // Vectors per accumulator row: 4 rows x `nu` vectors + `nu` loads + 1 broadcast must fit
    // the register file (AVX2's 16 ymm: 4 x 2).
    let nu = if S::REGISTERS >= 32 { 4 } else { 2 };
    let s = &mut scratch[..BQ * BK];
    let mut mrow = [f32::NEG_INFINITY; BQ];
    let mut lrow = [0.0f32; BQ];
    let (q, v) = (a.q.as_ptr(), a.v.as_ptr());
    // SAFETY: `kt` holds K^T for every (sample, head): `d x n` floats each (see `transpose_k`).
    let ktb = unsafe { kt.add((b * a.heads + h) * d * n) };
    // SAFETY (whole body): every row pointer is `off + token * c` with token < n plus up to
    // `d` floats (AttentionArgs::check); output rows `q0..q0 + nq` of head `h` of sample `b`
    // belong to this task only.
    unsafe {
        let orow = |i: usize| out.0.add(off + (q0 + i) * c);
        for i in 0..nq {
            core::slice::from_raw_parts_mut(orow(i), d).fill(0.0);
        }
        let mut j0 = 0;
        while j0 < n {
            let bk = BK.min(n - j0);
            // Scores S = Q K^T * scale from K^T rows (`ktb + dd * n`): 4 query rows x 4 (then
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
                        let kp = ktb.add(dd * n + j0 + j);
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
                        let kv = S::load(ktb.add(dd * n + j0 + j));
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
                            dot += *qr[r].add(dd) * *ktb.add(dd * n + j0 + jj);
                        }
                        s[(i + r) * BK + jj] = dot * scale;
                    }
                }
                i += rows;
            }
            // Online softmax.
            for i in 0..nq {
                let srow = &mut s[i * BK..i * BK + bk];
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
            // O += P V: 4 query rows x 4 vectors of d at a time.
            let mut i = 0;
            while i < nq {
                let rows = 4.min(nq - i);
                let mut col = 0;
                if rows == 4 {
                    while col + nu * l <= d {
                        let mut acc = [[S::zero(); 4]; 4];
                        for (r, ar) in acc.iter_mut().enumerate() {
                            for (u, x) in ar.iter_mut().enumerate().take(nu) {
                                *x = S::load(orow(i + r).add(col + u * l));
                            }
                        }
                        for j in 0..bk {
                            let vp = v.add(off + (j0 + j) * c + col);
                            let mut vv = [S::zero(); 4];
                            for (u, x) in vv.iter_mut().enumerate().take(nu) {
                                *x = S::load(vp.add(u * l));
                            }
                            for (r, ar) in acc.iter_mut().enumerate() {
                                let pv = S::splat(s[(i + r) * BK + j]);
                                for u in 0..nu {
                                    ar[u] = S::fma(pv, vv[u], ar[u]);
                                }
                            }
                        }
                        for (r, ar) in acc.iter().enumerate() {
                            for (u, x) in ar.iter().enumerate().take(nu) {
                                S::store(orow(i + r).add(col + u * l), *x);
                            }
                        }
                        col += nu * l;
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
                                S::load(v.add(off + (j0 + j) * c + cc)),
                                acc,
                            );
                        }
                        S::store(o.add(cc), acc);
                        cc += l;
                    }
                    while cc < d {
                        let mut acc = *o.add(cc);
                        for j in 0..bk {
                            acc += s[(i + r) * BK + j] * *v.add(off + (j0 + j) * c + cc);
                        }
                        *o.add(cc) = acc;
                        cc += 1;
                    }
                }
                i += rows;
            }
            j0 += bk;
        }
        for i in 0..nq {
            let inv = 1.0 / lrow[i];
            let o = core::slice::from_raw_parts_mut(orow(i), d);
            for x in o.iter_mut() {
                *x *= inv;
            }
        }
    }
}

/// `iters` rounds of 24 independent vector FMAs (enough to fill two FMA pipes); returns a
/// value depending on all of them so nothing is optimised away. Peak-throughput probe.
///
/// # Safety
/// CPU features of `S` only (register arithmetic).
#[inline(always)]
pub(crate) unsafe fn fma_loop<S: Simd>(iters: usize) -> f32 {
    // SAFETY: the caller runs with S's features.
    unsafe {
        let mut acc = [S::zero(); 24];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = S::splat(i as f32 * 1e-3);
        }
        let (x, y) = (S::splat(0.999_999), S::splat(1e-7));
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = S::fma(*a, x, y);
            }
        }
        let mut t = S::zero();
        for a in acc {
            t = S::add(t, a);
        }
        S::hsum(t)
    }
}

/// Generates a path's kernel table from its [`Simd`] type: entry points (plain Rust, checking
/// arguments and splitting tasks) and per-task functions compiled with the path's features.
#[allow(unused_macros)] // no SIMD path on some targets (thumbv7em)
macro_rules! simd_table {
    ($table:ident, $peak:ident, $name:literal, $path:expr, $S:ty, $mr:literal, $mrs:literal, $nv:literal, $features:literal) => {
        /// FMA throughput probe: (flops done, result).
        pub(crate) fn $peak(iters: usize) -> (f64, f32) {
            ///
            /// # Safety
            /// the CPU has `$features` (the table is only handed out by `KernelPath::table` after detection).
            #[target_feature(enable = $features)]
            unsafe fn run(iters: usize) -> f32 {
                // SAFETY: forwarded contract.
                unsafe { $crate::kernels::simd::fma_loop::<$S>(iters) }
            }
            assert!($path.is_available());
            // SAFETY: the features were checked just above.
            let r = unsafe { run(iters) };
            (
                (iters * 24 * 2 * <$S as $crate::kernels::simd::Simd>::LANES) as f64,
                r,
            )
        }

        pub(crate) static $table: $crate::kernels::KernelTable = {
            use $crate::kernels::simd::{self, ConvPlan, Shared};
            use $crate::kernels::winograd::{self, WinogradPlan};
            use $crate::kernels::{
                AttentionArgs, ConvArgs, ConvShape, Exec, GroupNormArgs, LinearArgs,
            };

            ///
            /// # Safety
            /// the CPU has `$features`; as [`simd::conv_task`].
            #[target_feature(enable = $features)]
            unsafe fn conv_task(p: &ConvPlan<'_>, task: usize, scratch: &mut [f32]) {
                // SAFETY: forwarded contract (features enabled, plan checked).
                unsafe { simd::conv_task::<$S, $mr, $mrs, $nv>(p, task, scratch) }
            }
            #[target_feature(enable = $features)]
            unsafe fn gemv_task(a: &LinearArgs<'_>, out: Shared<f32>, ob: usize) {
                // SAFETY: forwarded contract.
                unsafe { simd::gemv_task::<$S>(a, out, ob) }
            }
            #[target_feature(enable = $features)]
            unsafe fn gn_task(a: &GroupNormArgs<'_>, out: Shared<f32>, task: usize, gpt: usize) {
                // SAFETY: forwarded contract.
                unsafe { simd::group_norm_task::<$S>(a, out, task, gpt) }
            }
            #[target_feature(enable = $features)]
            unsafe fn attn_task(
                a: &AttentionArgs<'_>,
                kt: *const f32,
                out: Shared<f32>,
                task: usize,
                scratch: &mut [f32],
            ) {
                // SAFETY: forwarded contract.
                unsafe { simd::attention_task::<$S>(a, kt, out, task, scratch) }
            }
            #[target_feature(enable = $features)]
            unsafe fn kt_task(a: &AttentionArgs<'_>, kt: Shared<f32>, task: usize) {
                // SAFETY: forwarded contract.
                unsafe { simd::transpose_k(a, kt, task) }
            }

            #[target_feature(enable = $features)]
            unsafe fn wino_phase1(p: &WinogradPlan<'_>, task: usize) {
                // SAFETY: forwarded contract.
                unsafe { winograd::phase1::<$S>(p, task) }
            }
            #[target_feature(enable = $features)]
            unsafe fn wino_phase2(p: &WinogradPlan<'_>, task: usize, scratch: &mut [f32]) {
                // SAFETY: forwarded contract.
                unsafe { winograd::phase2::<$S, $mr, $mrs, $nv>(p, task, scratch) }
            }

            fn conv_scratch(s: &ConvShape) -> Option<(usize, usize)> {
                winograd::scratch_need(s, $mr)
            }

            fn conv2d(a: &ConvArgs<'_>, out: &mut [f32], ex: &Exec<'_>) {
                // SAFETY: called from the kernel entry point, not a task; the slice is dropped
                // before this function returns (the plan keeps only its address, used by the
                // tasks run below, which finish before we return).
                let shared = unsafe { ex.shared() };
                if let Some(plan) =
                    WinogradPlan::new(a, out, $mr, $mrs, ex.threads(), ex.per_thread(), shared)
                {
                    // SAFETY: features checked (this table is only reachable through
                    // `KernelPath::table`); phase 1 tasks write disjoint blocks of the shared
                    // region; phase 2 starts after every phase 1 task returned (`run` waits),
                    // only reads it, and writes disjoint tiles x channel blocks; `th` is the
                    // running thread.
                    ex.run(plan.phase1_tasks(), &|t, _| unsafe {
                        wino_phase1(&plan, t)
                    });
                    ex.run(plan.phase2_tasks(), &|t, th| unsafe {
                        wino_phase2(&plan, t, ex.scratch(th))
                    });
                    return;
                }
                let plan = ConvPlan::new(a, out, $mr, ex.threads());
                ex.run(plan.tasks, &|t, th| {
                    // SAFETY: this table is only reachable through `KernelPath::table`, which
                    // checked the CPU features; the plan checked every slice; `th` is the
                    // thread running this task.
                    unsafe { conv_task(&plan, t, ex.scratch(th)) }
                });
            }
            fn linear(a: &LinearArgs<'_>, out: &mut [f32], ex: &Exec<'_>) {
                if a.rows > simd::GEMV_MAX_ROWS {
                    return conv2d(&a.as_conv(), out, ex);
                }
                a.as_conv().check(out);
                let o = Shared(out.as_mut_ptr());
                // SAFETY: features checked (see conv2d); the arguments were checked just above;
                // tasks write disjoint 32-column blocks of every row.
                ex.run(a.out_f.div_ceil($crate::kernels::PACK_OC), &|t, _| unsafe {
                    gemv_task(a, o, t)
                });
            }
            fn group_norm(a: &GroupNormArgs<'_>, out: &mut [f32], ex: &Exec<'_>) {
                a.check(out);
                let (gpt, tasks) = simd::gn_split(a);
                let o = Shared(out.as_mut_ptr());
                // SAFETY: features checked (see conv2d); tasks write disjoint (sample, group)
                // channel ranges.
                ex.run(tasks, &|t, _| unsafe { gn_task(a, o, t, gpt) });
            }
            fn attention(
                a: &AttentionArgs<'_>,
                scratch: &mut [f32],
                out: &mut [f32],
                ex: &Exec<'_>,
            ) {
                a.check(out);
                let n = a.batch * a.tokens * a.channels;
                assert!(
                    scratch.len() >= n,
                    "attention scratch must hold batch * tokens * channels floats"
                );
                let kt = Shared(scratch.as_mut_ptr());
                // SAFETY: features checked (see conv2d); each task writes its own (sample, head)
                // block of `kt`, inside `scratch` (asserted).
                ex.run(a.batch * a.heads, &|t, _| unsafe { kt_task(a, kt, t) });
                let o = Shared(out.as_mut_ptr());
                // SAFETY: features checked; `kt` is complete and now only read; tasks write
                // disjoint query rows; `th` is the running thread.
                ex.run(simd::attention_tasks(a), &|t, th| unsafe {
                    attn_task(a, kt.get(), o, t, ex.scratch(th))
                });
            }
            $crate::kernels::KernelTable {
                name: $name,
                path: $path,
                conv2d,
                group_norm,
                linear,
                attention,
                conv_scratch,
            }
        };
    };
}
#[allow(unused_imports)]
pub(crate) use simd_table;
