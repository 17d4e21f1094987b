//! The direct convolution (and linears of more rows): an implicit GEMM (see the module docs
//! of [`super`]).

use super::{micro, Shared, Simd, G_MAX, KC, MR_MAX, TG};
use crate::kernels::{ConvArgs, PACK_OC};

/// Everything a conv task needs, computed once per call.
pub(crate) struct ConvPlan<'a> {
    pub args: &'a ConvArgs<'a>,
    pub out: Shared<f32>,
    pub cin: usize,
    pub k_total: usize,
    /// Reduction chunk: `k_total` in the fewest chunks of at most [`KC`], of equal length
    /// (rounded up to 16; the last may be shorter). A short last chunk (320 = 256 + 64) would
    /// pay a whole round trip of the output tile for a quarter of the work.
    pub kc: usize,
    pub out_hw: usize,
    pub mr: usize,
    pub tiles_per_sample: usize,
    pub n_ob: usize,
    pub obs_per_task: usize,
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
        // Tile groups differ by at most one tile (`tile_range`), so `want` tasks stay `want`
        // and balanced (19 tiles in 6 groups: 3 or 4 each, not 4 x 4 + 3 in 5 groups).
        let tile_groups = want.div_ceil(ob_groups).clamp(1, n_tiles.max(1));
        let k_total = taps * cin;
        let chunks = k_total.div_ceil(KC).max(1);
        ConvPlan {
            args,
            out: Shared(out.as_mut_ptr()),
            cin,
            k_total,
            kc: k_total.div_ceil(chunks).div_ceil(16) * 16,
            out_hw,
            mr,
            tiles_per_sample,
            n_ob,
            obs_per_task,
            tile_groups,
            tasks: if s.out_c == 0 || n_tiles == 0 || cin == 0 {
                0
            } else {
                ob_groups * tile_groups
            },
        }
    }

    /// Tiles `t0..t1` of tile group `g` (`g < tile_groups`); groups differ by at most one tile.
    #[inline(always)]
    pub(crate) fn tile_range(&self, g: usize) -> (usize, usize) {
        let n_tiles = self.args.shape.batch * self.tiles_per_sample;
        (
            g * n_tiles / self.tile_groups,
            (g + 1) * n_tiles / self.tile_groups,
        )
    }

    /// (sample, first pixel, pixels) of tile `t`; tiles of a sample differ by at most one pixel.
    #[inline(always)]
    pub(crate) fn tile(&self, t: usize) -> (usize, usize, usize) {
        let (b, i) = (t / self.tiles_per_sample, t % self.tiles_per_sample);
        let start = i * self.out_hw / self.tiles_per_sample;
        let end = (i + 1) * self.out_hw / self.tiles_per_sample;
        (b, start, end - start)
    }
}

/// Prefetches into L1 the output rows (and residual rows when `last`) that the microkernel
/// call for tile `t`, output block `ob` touches. Only addresses are computed (a prefetch never
/// faults), so nothing here can read out of bounds.
#[inline(always)]
fn prefetch_out<S: Simd>(p: &ConvPlan<'_>, t: usize, ob: usize, last: bool) {
    let a = p.args;
    let oc = a.shape.out_c;
    let (b, px0, m) = p.tile(t);
    let first = (b * p.out_hw + px0) * oc + ob * PACK_OC;
    let cols = PACK_OC.min(oc - ob * PACK_OC);
    for i in 0..m {
        let off = first + i * oc;
        let mut c = 0;
        while c < cols {
            S::prefetch::<false>(p.out.get().wrapping_add(off + c));
            if last && !a.residual.is_empty() {
                S::prefetch::<false>(a.residual.as_ptr().wrapping_add(off + c));
            }
            c += 16;
        }
    }
}

/// Prefetches into L2 what `pack_a` will read for tile `t` at reduction chunk `k0`, for the
/// convs whose tile input is a plain block of rows (1x1, stride 1, no upsample: linears and
/// shortcuts); other convs read a few overlapping windows that stay in cache anyway.
#[inline(always)]
fn prefetch_input<S: Simd>(p: &ConvPlan<'_>, t: usize, k0: usize) {
    let s = &p.args.shape;
    if s.kernel != 1 || s.stride != 1 || s.upsample {
        return;
    }
    let (b, px0, m) = p.tile(t);
    let k1 = (k0 + p.kc).min(p.k_total);
    let in_hw = s.in_h * s.in_w;
    for (part, pc, c0, c1) in [
        (p.args.in_a, s.in_ca, k0.min(s.in_ca), k1.min(s.in_ca)),
        (
            p.args.in_b,
            s.in_cb,
            k0.max(s.in_ca) - s.in_ca,
            k1.max(s.in_ca) - s.in_ca,
        ),
    ] {
        if c0 >= c1 {
            continue;
        }
        for i in 0..m {
            let row = (b * in_hw + px0 + i) * pc;
            let mut c = c0;
            while c < c1 {
                S::prefetch::<true>(part.as_ptr().wrapping_add(row + c));
                c += 16;
            }
            S::prefetch::<true>(part.as_ptr().wrapping_add(row + c1 - 1));
        }
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
pub(crate) unsafe fn pack_a<S: Simd, const MR: usize>(
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
            let aligned = q0.is_multiple_of(16) && run % 16 == 0;
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
    debug_assert!(
        p.mr == MR && MRS <= MR && PACK_OC.is_multiple_of(NV * S::LANES) && NV * S::LANES <= 64
    );
    let (og, tg) = (task / p.tile_groups, task % p.tile_groups);
    let ob0 = og * p.obs_per_task;
    let ob1 = (ob0 + p.obs_per_task).min(p.n_ob);
    let (t0, t1) = p.tile_range(tg);
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
            let kc = p.kc.min(p.k_total - k0);
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
            // What the next packing step reads (same tiles, next chunk; or the next tiles,
            // first chunk): prefetched into L2 during this step's last output block.
            let (next_tiles, next_k0) = if k0 + kc < p.k_total {
                (g0..g1, k0 + kc)
            } else {
                (g1..(g1 + TG).min(t1), 0)
            };
            for ob in ob0..ob1 {
                for t in g0..g1 {
                    let (b, px0, m) = p.tile(t);
                    let buf = &a_bufs[(t - g0) * MR_MAX * KC..(t - g0 + 1) * MR_MAX * KC];
                    // Output (and residual) rows of the next microkernel call, into L1: the
                    // first chunk's stores and the last chunk's residual come from L3 or DRAM.
                    let (nob, nt) = if t + 1 < g1 {
                        (ob, t + 1)
                    } else {
                        (ob + 1, g0)
                    };
                    if nob < ob1 {
                        prefetch_out::<S>(p, nt, nob, k0 + kc == p.k_total);
                    }
                    if ob + 1 == ob1 && next_tiles.start + (t - g0) < next_tiles.end {
                        prefetch_input::<S>(p, next_tiles.start + (t - g0), next_k0);
                    }
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
