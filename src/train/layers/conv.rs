//! 2-D convolution over NHWC input, covering every conv of the UNet in one loop nest:
//! 3x3 and 1x1 kernels, stride 2 with diffusers' asymmetric padding (downsampler), a nearest-2x
//! upsample folded into the read (upsampler), an input split in two channel ranges (the skip
//! concatenation, never materialised), a per-channel add (the resnet's time-embedding
//! projection), a residual (the resnet's shortcut) and an output scale:
//!
//! `y[b,p,o] = (sum_{tap,i} x[b, src(p,tap), i] W[tap,i,o] + bias[o] + chan[b,o] + res[b,p,o]) / s`
//!
//! where `src(p, tap)` is the stored input pixel that the (virtually upsampled, zero-padded)
//! input has under kernel tap `tap` of output pixel `p` (none in the padding).
//!
//! Backward, with `dz = dy / s`:
//! - `dW[tap,i,o] += sum_{b,p} x[b, src(p,tap), i] dz[b,p,o]`, `dbias[o] += sum_{b,p} dz[b,p,o]`;
//! - `dchan[b,o] += sum_p dz[b,p,o]`, `dres += dz`;
//! - `dx[b, src(p,tap), i] += sum_o W[tap,i,o] dz[b,p,o]`: each output pixel scatters back into
//!   the input pixels it read. With the upsample, the four virtual pixels that share a stored
//!   pixel all add into it (the backward of nearest upsampling is a 2x2 sum); with the concat,
//!   channels `< in_ca` go to the first part's gradient and the rest to the second's.
//!
//! Weights are HWIO (`[kh][kw][in][out]`). Each pass is a matrix product over tiles of output
//! pixels whose input taps are gathered into rows (`cols`, "im2col", never for the whole map):
//! forward `Y = cols · W`, weight gradient `dW += cols^T · dY`, input gradient
//! `dcols = dY · W^T` scattered back (the scatter is what sums the four virtual pixels of an
//! upsample and splits the concat). For stride 1 without upsampling (most convs) the input
//! gradient is instead computed as a convolution of `dY` per tile of input pixels,
//! `dX = gather_dy(dY) · W'` (`W'` is `[tap][out][in]`), which needs no scatter and gives the
//! product a reduction of `k*k*out_c` instead of `out_c`.

use super::axpy;
use super::gemm::{
    for_each_task, gemm, gemm_serial, team_threads, with_scratch, SharedMut, Strided,
};
use crate::kernels::ConvShape;

/// One convolution's inputs (f32, HWIO weights). Optional inputs are empty slices.
pub struct Conv<'a> {
    pub shape: ConvShape,
    pub in_a: &'a [f32],
    pub in_b: &'a [f32],
    /// `[k, k, in_c, out_c]`.
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    /// `[batch, out_c]`.
    pub channel_add: &'a [f32],
    /// `[batch, out_h, out_w, out_c]`.
    pub residual: &'a [f32],
    pub out_scale: f32,
}

/// Gradients to accumulate into; empty slices are skipped.
pub struct ConvGrads<'a> {
    pub in_a: &'a mut [f32],
    pub in_b: &'a mut [f32],
    pub weight: &'a mut [f32],
    pub bias: &'a mut [f32],
    pub channel_add: &'a mut [f32],
    pub residual: &'a mut [f32],
}

/// The kernel taps of output pixel `(b, oy, ox)` that land inside the input (padding taps
/// contribute nothing), as `(tap, stored_input_pixel)` in increasing tap order. An iterator
/// rather than a callback, so the callers' loop bodies stay in the (AVX2-compiled) caller.
struct Taps<'s> {
    s: &'s ConvShape,
    b: usize,
    oy: usize,
    ox: usize,
    ky: usize,
    kx: usize,
}

#[inline(always)]
fn taps(s: &ConvShape, b: usize, oy: usize, ox: usize) -> Taps<'_> {
    Taps {
        s,
        b,
        oy,
        ox,
        ky: 0,
        kx: 0,
    }
}

impl Iterator for Taps<'_> {
    type Item = (usize, usize);
    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        let s = self.s;
        let (vh, vw) = s.virtual_in();
        let up = s.upsample as usize;
        while self.ky < s.kernel {
            let (ky, kx) = (self.ky, self.kx);
            self.kx += 1;
            if self.kx == s.kernel {
                self.kx = 0;
                self.ky += 1;
            }
            let iy = (self.oy * s.stride + ky) as isize - s.pad_top as isize;
            let ix = (self.ox * s.stride + kx) as isize - s.pad_left as isize;
            if iy < 0 || iy >= vh as isize || ix < 0 || ix >= vw as isize {
                continue;
            }
            let src = (self.b * s.in_h + (iy as usize >> up)) * s.in_w + (ix as usize >> up);
            return Some((ky * s.kernel + kx, src));
        }
        None
    }
}

/// `(sample, row, column)` of output pixel `pixel` (counted over the whole batch).
#[inline(always)]
fn out_pixel(s: &ConvShape, pixel: usize) -> (usize, usize, usize) {
    (
        pixel / (s.out_h * s.out_w),
        pixel / s.out_w % s.out_h,
        pixel % s.out_w,
    )
}

/// Output pixels per tile: the gathered input of a tile (`TILE x k*k*in_c`) stays in L2.
const TILE: usize = 64;

/// Floats of scratch one conv's backward needs (any batch): the gradient of a gathered tile and
/// the transposed weights. (The gathered tiles themselves live in each thread's
/// [`with_scratch`] buffer, since the tasks that fill them run on any thread.)
pub fn scratch_len(s: &ConvShape) -> usize {
    let kdim = s.kernel * s.kernel * s.in_c();
    TILE * kdim + s.out_c * kdim
}

/// Gathers the inputs of output pixels `start..start + rows` into `cols` (`[rows, k*k*in_c]`,
/// `[tap][channel]` order, zeros in the padding), each value times `scale`: the "im2col" view
/// under which the conv is `cols · W`.
#[inline(always)]
fn gather(a: &Conv<'_>, start: usize, rows: usize, scale: f32, cols: &mut [f32]) {
    let kdim = a.shape.kernel * a.shape.kernel * a.shape.in_c();
    gather_columns(a, start, rows, scale, 0..kdim, cols)
}

/// [`gather`] restricted to the im2col columns `columns` (`cols` is `[rows, columns.len()]`):
/// the part of the weight gradient's operand that one task of [`dw_pass`] needs.
#[inline(always)]
fn gather_columns(
    a: &Conv<'_>,
    start: usize,
    rows: usize,
    scale: f32,
    columns: core::ops::Range<usize>,
    cols: &mut [f32],
) {
    if !a.shape.upsample && a.shape.in_cb == 0 {
        gather_rows_of_taps(a, start, rows, scale, columns, cols)
    } else {
        gather_by_taps(a, start, rows, scale, columns, cols)
    }
}

/// [`gather_columns`] for any conv: one copy per kernel tap (and input part).
#[inline(always)]
fn gather_by_taps(
    a: &Conv<'_>,
    start: usize,
    rows: usize,
    scale: f32,
    columns: core::ops::Range<usize>,
    cols: &mut [f32],
) {
    let s = &a.shape;
    let (ca, cb, cin) = (s.in_ca, s.in_cb, s.in_c());
    let (c0, c1) = (columns.start, columns.end);
    let width = c1 - c0;
    for r in 0..rows {
        let pixel = start + r;
        let (b, oy, ox) = out_pixel(s, pixel);
        let row = &mut cols[r * width..(r + 1) * width];
        // Taps come in increasing order: the gaps between them are padding (zeros). A multiply
        // even for `scale == 1` (exact): a plain copy loop would become a `memcpy` call, slow
        // at these lengths (one channel vector per tap).
        let mut next = c0;
        for (tap, src) in taps(s, b, oy, ox) {
            let (t0, t1) = (tap * cin, (tap + 1) * cin);
            if t1 <= c0 {
                continue;
            }
            if t0 >= c1 {
                break;
            }
            let (lo, hi) = (t0.max(c0), t1.min(c1));
            row[next - c0..lo - c0].fill(0.0);
            // Channels `lo - t0..hi - t0` of this tap: the first `ca` from `in_a`, the rest
            // from `in_b`.
            let (ch0, ch1) = (lo - t0, hi - t0);
            let from_a = ch1.min(ca).saturating_sub(ch0);
            let (dst_a, dst_b) = row[lo - c0..hi - c0].split_at_mut(from_a);
            if from_a > 0 {
                let x_a = &a.in_a[src * ca + ch0..src * ca + ch0 + from_a];
                for (d, x) in dst_a.iter_mut().zip(x_a) {
                    *d = x * scale;
                }
            }
            if !dst_b.is_empty() {
                let first = src * cb + ch0.max(ca) - ca;
                let x_b = &a.in_b[first..first + dst_b.len()];
                for (d, x) in dst_b.iter_mut().zip(x_b) {
                    *d = x * scale;
                }
            }
            next = hi;
        }
        row[next - c0..].fill(0.0);
    }
}

/// [`gather_columns`] for a conv with one input part and no upsampling (most of them): the
/// `k` taps of one kernel row read `k` consecutive stored pixels, so each kernel row is one
/// contiguous copy (between the zeros of the padding), not `k` separate ones.
#[inline(always)]
fn gather_rows_of_taps(
    a: &Conv<'_>,
    start: usize,
    rows: usize,
    scale: f32,
    columns: core::ops::Range<usize>,
    cols: &mut [f32],
) {
    let s = &a.shape;
    let (cin, k) = (s.in_ca, s.kernel);
    let (c0, c1) = (columns.start, columns.end);
    let width = c1 - c0;
    // Writes columns `lo..hi` of a row (clipped to `c0..c1`): zeros, or `src` (which starts at
    // column `lo`) times `scale`. A multiply even for `scale == 1` (exact): a plain copy loop
    // would become a `memcpy` call, slow at these lengths.
    let put = |row: &mut [f32], lo: usize, hi: usize, src: Option<&[f32]>| {
        let (l, h) = (lo.max(c0), hi.min(c1));
        if l >= h {
            return;
        }
        let dst = &mut row[l - c0..h - c0];
        match src {
            None => dst.fill(0.0),
            Some(x) => {
                for (d, x) in dst.iter_mut().zip(&x[l - lo..h - lo]) {
                    *d = x * scale;
                }
            }
        }
    };
    for r in 0..rows {
        let pixel = start + r;
        let (b, oy, ox) = out_pixel(s, pixel);
        let row = &mut cols[r * width..(r + 1) * width];
        let ix0 = (ox * s.stride) as isize - s.pad_left as isize;
        // Kernel columns that land inside the map: `kx_lo..kx_hi`.
        let kx_lo = (-ix0).clamp(0, k as isize) as usize;
        let kx_hi = (s.in_w as isize - ix0).clamp(kx_lo as isize, k as isize) as usize;
        for ky in 0..k {
            let seg = ky * k * cin;
            if seg >= c1 || seg + k * cin <= c0 {
                continue;
            }
            let iy = (oy * s.stride + ky) as isize - s.pad_top as isize;
            if iy < 0 || iy >= s.in_h as isize || kx_lo == kx_hi {
                put(row, seg, seg + k * cin, None);
                continue;
            }
            let first = ((b * s.in_h + iy as usize) * s.in_w) as isize + ix0 + kx_lo as isize;
            let first = first as usize * cin;
            let len = (kx_hi - kx_lo) * cin;
            put(row, seg, seg + kx_lo * cin, None);
            let (lo, hi) = (seg + kx_lo * cin, seg + kx_hi * cin);
            put(row, lo, hi, Some(&a.in_a[first..first + len]));
            put(row, hi, seg + k * cin, None);
        }
    }
}

/// For a stride-1 conv without upsampling: gathers, for input pixels `start..start + rows`,
/// the output gradients each input pixel fed (`[rows, k*k*out_c]`, `[tap][channel]` order,
/// zeros where the output pixel would be outside the map), times `scale`. Input pixel `(iy, ix)`
/// fed output pixel `(iy + pad_top - ky, ix + pad_left - kx)` through tap `(ky, kx)`.
#[inline(always)]
fn gather_dy(s: &ConvShape, dy: &[f32], start: usize, rows: usize, scale: f32, cols: &mut [f32]) {
    let (co, k) = (s.out_c, s.kernel);
    let kco = k * k * co;
    for r in 0..rows {
        let q = start + r;
        let (b, iy, ix) = (q / (s.in_h * s.in_w), q / s.in_w % s.in_h, q % s.in_w);
        let row = &mut cols[r * kco..(r + 1) * kco];
        for ky in 0..k {
            let oy = (iy + s.pad_top) as isize - ky as isize;
            for kx in 0..k {
                let ox = (ix + s.pad_left) as isize - kx as isize;
                let dst = &mut row[(ky * k + kx) * co..(ky * k + kx + 1) * co];
                if oy < 0 || oy >= s.out_h as isize || ox < 0 || ox >= s.out_w as isize {
                    dst.fill(0.0);
                    continue;
                }
                let src = ((b * s.out_h + oy as usize) * s.out_w + ox as usize) * co;
                for (d, x) in dst.iter_mut().zip(&dy[src..src + co]) {
                    *d = x * scale;
                }
            }
        }
    }
}

/// Runs `$body` compiled with AVX2 and FMA where the CPU has them (the gather, scatter and
/// elementwise loops then use 8-lane vectors; no FMA contraction, so the results are the same).
macro_rules! avx2_dispatch {
    ($name:ident ($($arg:ident : $ty:ty),*) $body:ident) => {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            /// # Safety
            /// the CPU has AVX2 and FMA; the body is safe code.
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $name($($arg: $ty),*) {
                $body($($arg),*)
            }
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { $name($($arg),*) };
        }
        return $body($($arg),*);
    };
}

/// The input gradient of a stride-1 conv without upsampling, by tiles of input pixels (independent
/// tasks, [`for_each_task`]): `dX += gather_dy(dY) · W'` (`wt` is `W'`, `[tap][out_c][in_c]`).
fn dx_pass(s: &ConvShape, d_out: &[f32], inv: f32, wt: &[f32], da: &mut [f32], db: &mut [f32]) {
    let in_pixels = s.batch * s.in_h * s.in_w;
    let (ca, cb) = (s.in_ca, s.in_cb);
    let kco = s.kernel * s.kernel * s.out_c;
    let (da_len, db_len) = (da.len().min(in_pixels * ca), db.len().min(in_pixels * cb));
    let (sa, sb) = (
        SharedMut::new(&mut da[..da_len]),
        SharedMut::new(&mut db[..db_len]),
    );
    for_each_task(in_pixels.div_ceil(TILE), &|t| {
        let start = t * TILE;
        let rows = TILE.min(in_pixels - start);
        let ta: &mut [f32] = if da_len > 0 && ca > 0 {
            // SAFETY: task `t` takes the gradient rows of input pixels `start..start + rows`
            // only, disjoint between tasks.
            unsafe { sa.slice(start * ca, rows * ca) }
        } else {
            &mut []
        };
        let tb: &mut [f32] = if db_len > 0 && cb > 0 {
            // SAFETY: as for `ta`.
            unsafe { sb.slice(start * cb, rows * cb) }
        } else {
            &mut []
        };
        with_scratch(TILE * kco, |dcols| {
            dx_tile(s, d_out, inv, wt, start, rows, ta, tb, dcols)
        });
    });
}

#[allow(clippy::too_many_arguments)]
fn dx_tile(
    s: &ConvShape,
    d_out: &[f32],
    inv: f32,
    wt: &[f32],
    start: usize,
    rows: usize,
    da: &mut [f32],
    db: &mut [f32],
    dcols: &mut [f32],
) {
    avx2_dispatch!(dx_tile_avx2(s: &ConvShape, d_out: &[f32], inv: f32, wt: &[f32], start: usize, rows: usize, da: &mut [f32], db: &mut [f32], dcols: &mut [f32]) dx_tile_body);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dx_tile_body(
    s: &ConvShape,
    d_out: &[f32],
    inv: f32,
    wt: &[f32],
    start: usize,
    rows: usize,
    da: &mut [f32],
    db: &mut [f32],
    dcols: &mut [f32],
) {
    let (ca, cb, cin) = (s.in_ca, s.in_cb, s.in_c());
    let kco = s.kernel * s.kernel * s.out_c;
    gather_dy(s, d_out, start, rows, inv, dcols);
    let ga = Strided {
        data: dcols,
        rs: kco,
        cs: 1,
    };
    if !da.is_empty() {
        gemm_serial(rows, ca, kco, ga, wt, cin, da, ca, true);
    }
    if !db.is_empty() {
        gemm_serial(rows, cb, kco, ga, &wt[ca..], cin, db, cb, true);
    }
}

/// Forward. Tiles of output pixels are independent tasks ([`for_each_task`]), each gathering
/// into its thread's buffer; `_scratch` is not used by the forward.
pub fn forward(a: &Conv<'_>, out: &mut [f32], _scratch: &mut [f32]) {
    let s = &a.shape;
    let co = s.out_c;
    let kdim = s.kernel * s.kernel * s.in_c();
    let pixels = s.batch * s.out_h * s.out_w;
    let shared = SharedMut::new(&mut out[..pixels * co]);
    for_each_task(pixels.div_ceil(TILE), &|t| {
        let start = t * TILE;
        let rows = TILE.min(pixels - start);
        // SAFETY: task `t` takes output rows `start..start + rows` only, disjoint between tasks.
        let tile = unsafe { shared.slice(start * co, rows * co) };
        with_scratch(TILE * kdim, |cols| forward_tile(a, start, rows, tile, cols));
    });
}

fn forward_tile(a: &Conv<'_>, start: usize, rows: usize, tile: &mut [f32], cols: &mut [f32]) {
    avx2_dispatch!(forward_tile_avx2(a: &Conv<'_>, start: usize, rows: usize, tile: &mut [f32], cols: &mut [f32]) forward_tile_body);
}

#[inline(always)]
fn forward_tile_body(a: &Conv<'_>, start: usize, rows: usize, tile: &mut [f32], cols: &mut [f32]) {
    let s = &a.shape;
    let co = s.out_c;
    let kdim = s.kernel * s.kernel * s.in_c();
    // Bias, time-embedding channel add and residual first; the conv accumulates on top.
    for (r, acc) in tile.chunks_exact_mut(co).enumerate() {
        let pixel = start + r;
        acc.copy_from_slice(&a.bias[..co]);
        if !a.channel_add.is_empty() {
            let b = pixel / (s.out_h * s.out_w);
            axpy(acc, 1.0, &a.channel_add[b * co..(b + 1) * co]);
        }
        if !a.residual.is_empty() {
            axpy(acc, 1.0, &a.residual[pixel * co..(pixel + 1) * co]);
        }
    }
    gather(a, start, rows, 1.0, cols);
    let x = Strided {
        data: cols,
        rs: kdim,
        cs: 1,
    };
    gemm_serial(rows, co, kdim, x, a.weight, co, tile, co, true);
    if a.out_scale != 1.0 {
        for o in tile.iter_mut() {
            *o /= a.out_scale;
        }
    }
}

pub fn backward(a: &Conv<'_>, d_out: &[f32], g: ConvGrads<'_>, scratch: &mut [f32]) {
    avx2_dispatch!(backward_avx2(a: &Conv<'_>, d_out: &[f32], g: ConvGrads<'_>, scratch: &mut [f32]) backward_body);
}

#[inline(always)]
fn backward_body(a: &Conv<'_>, d_out: &[f32], g: ConvGrads<'_>, scratch: &mut [f32]) {
    let s = &a.shape;
    let (ca, cb, cin, co) = (s.in_ca, s.in_cb, s.in_c(), s.out_c);
    let kdim = s.kernel * s.kernel * cin;
    let inv = 1.0 / a.out_scale;
    let pixels = s.batch * s.out_h * s.out_w;
    let ConvGrads {
        in_a: da,
        in_b: db,
        weight: dw,
        bias: dbias,
        channel_add: dchan,
        residual: dres,
    } = g;
    let need_dx = !da.is_empty() || !db.is_empty();
    let (dcols, wt) = scratch.split_at_mut(TILE * kdim);
    let wt = &mut wt[..co * kdim];
    // Stride 1 without upsampling: dX is itself a convolution of dY (flipped kernel, transposed
    // taps), run as gather + product per tile of *input* pixels; no scatter.
    let dx_as_conv = need_dx && s.stride == 1 && !s.upsample;
    let kk2 = s.kernel * s.kernel;
    if dx_as_conv {
        // [tap][out_c][in_c]: the B operand of dX = gather(dY) · W'.
        for t in 0..kk2 {
            for i in 0..cin {
                for o in 0..co {
                    wt[(t * co + o) * cin + i] = a.weight[(t * cin + i) * co + o];
                }
            }
        }
    } else if need_dx {
        // W^T: [out_c, k*k*in_c], so dX = dY · W^T is a plain row-major product.
        for kk in 0..kdim {
            for o in 0..co {
                wt[o * kdim + kk] = a.weight[kk * co + o];
            }
        }
    }
    for start in (0..pixels).step_by(TILE) {
        let rows = TILE.min(pixels - start);
        let dy = &d_out[start * co..(start + rows) * co];
        for (r, dyp) in dy.chunks_exact(co).enumerate() {
            let pixel = start + r;
            if !dbias.is_empty() {
                axpy(dbias, inv, dyp);
            }
            if !dchan.is_empty() {
                let b = pixel / (s.out_h * s.out_w);
                axpy(&mut dchan[b * co..(b + 1) * co], inv, dyp);
            }
            if !dres.is_empty() {
                axpy(&mut dres[pixel * co..(pixel + 1) * co], inv, dyp);
            }
        }
        if need_dx && !dx_as_conv {
            // dcols = dY · W^T, then scattered back to the input pixels each column came from.
            gemm(
                rows,
                kdim,
                co,
                Strided {
                    data: dy,
                    rs: co,
                    cs: 1,
                },
                wt,
                kdim,
                dcols,
                kdim,
                false,
            );
            for r in 0..rows {
                let pixel = start + r;
                let (b, oy, ox) = out_pixel(s, pixel);
                let row = &dcols[r * kdim..(r + 1) * kdim];
                for (tap, src) in taps(s, b, oy, ox) {
                    let d = &row[tap * cin..(tap + 1) * cin];
                    if !da.is_empty() {
                        axpy(&mut da[src * ca..(src + 1) * ca], inv, &d[..ca]);
                    }
                    if !db.is_empty() {
                        axpy(&mut db[src * cb..(src + 1) * cb], inv, &d[ca..]);
                    }
                }
            }
        }
    }
    if !dw.is_empty() {
        dw_pass(a, d_out, inv, dw);
    }
    if dx_as_conv {
        dx_pass(s, d_out, inv, wt, da, db);
    }
}

/// The weight gradient, `dW[k*k*in_c, out_c] += cols^T · dY` tile by tile of output pixels
/// (`cols` read transposed through its strides). The rows of `dW` (im2col columns) are split
/// into one band per thread ([`team_threads`]); each task gathers only its band's columns and
/// walks every pixel tile in order, so each element of `dW` gets the same sums in the same order
/// for any split: the result does not depend on the thread count.
fn dw_pass(a: &Conv<'_>, d_out: &[f32], inv: f32, dw: &mut [f32]) {
    let s = &a.shape;
    let co = s.out_c;
    let kdim = s.kernel * s.kernel * s.in_c();
    // Bands of whole register tiles of every gemm kernel (12 rows: AVX-512's, twice AVX2's);
    // where the bands split does not change any result.
    let band = kdim.div_ceil(team_threads()).next_multiple_of(12);
    let shared = SharedMut::new(&mut dw[..kdim * co]);
    for_each_task(kdim.div_ceil(band), &|t| {
        let (r0, r1) = (t * band, ((t + 1) * band).min(kdim));
        let width = r1 - r0;
        // SAFETY: task `t` takes the rows `r0..r1` of `dW` only, disjoint between tasks.
        let dw_band = unsafe { shared.slice(r0 * co, width * co) };
        with_scratch(TILE * width, |cols| {
            dw_band_body(a, d_out, inv, r0..r1, dw_band, cols)
        });
    });
}

fn dw_band_body(
    a: &Conv<'_>,
    d_out: &[f32],
    inv: f32,
    columns: core::ops::Range<usize>,
    dw_band: &mut [f32],
    cols: &mut [f32],
) {
    avx2_dispatch!(dw_band_avx2(a: &Conv<'_>, d_out: &[f32], inv: f32, columns: core::ops::Range<usize>, dw_band: &mut [f32], cols: &mut [f32]) dw_band_loop);
}

#[inline(always)]
fn dw_band_loop(
    a: &Conv<'_>,
    d_out: &[f32],
    inv: f32,
    columns: core::ops::Range<usize>,
    dw_band: &mut [f32],
    cols: &mut [f32],
) {
    let s = &a.shape;
    let co = s.out_c;
    let pixels = s.batch * s.out_h * s.out_w;
    let width = columns.len();
    for start in (0..pixels).step_by(TILE) {
        let rows = TILE.min(pixels - start);
        gather_columns(a, start, rows, inv, columns.clone(), cols);
        let cols_t = Strided {
            data: cols,
            rs: 1,
            cs: width,
        };
        let dy = &d_out[start * co..(start + rows) * co];
        gemm_serial(width, co, rows, cols_t, dy, co, dw_band, co, true);
    }
}

/// diffusers' `[out, in, kh, kw]` → HWIO `[kh, kw, in, out]`.
pub fn oihw_to_hwio(src: &[f32], out_c: usize, in_c: usize, k: usize, dst: &mut [f32]) {
    for o in 0..out_c {
        for i in 0..in_c {
            for t in 0..k * k {
                dst[(t * in_c + i) * out_c + o] = src[(o * in_c + i) * k * k + t];
            }
        }
    }
}

/// HWIO `[kh, kw, in, out]` → diffusers' `[out, in, kh, kw]`.
pub fn hwio_to_oihw(src: &[f32], out_c: usize, in_c: usize, k: usize, dst: &mut [f32]) {
    for o in 0..out_c {
        for i in 0..in_c {
            for t in 0..k * k {
                dst[(o * in_c + i) * k * k + t] = src[(t * in_c + i) * out_c + o];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(hw: (usize, usize), c: usize, k: usize, stride: usize, pad: usize) -> ConvShape {
        let extra = usize::from(stride == 2 && pad == 0);
        let out = |n: usize| (n + 2 * pad + extra - k) / stride + 1;
        ConvShape {
            batch: 2,
            in_h: hw.0,
            in_w: hw.1,
            in_ca: c,
            in_cb: 0,
            out_c: 4,
            out_h: out(hw.0),
            out_w: out(hw.1),
            kernel: k,
            stride,
            pad_top: pad,
            pad_left: pad,
            upsample: false,
        }
    }

    /// The one-copy-per-kernel-row gather writes exactly what the per-tap one does, for every
    /// kind of conv it takes and for column ranges that cut taps and kernel rows anywhere.
    #[test]
    fn gather_rows_of_taps_matches_gather_by_taps() {
        for s in [
            shape((5, 3), 3, 3, 1, 1),
            shape((4, 6), 2, 3, 2, 0),
            shape((5, 5), 2, 3, 2, 1),
            shape((3, 4), 5, 1, 1, 0),
            shape((1, 1), 4, 3, 1, 1),
        ] {
            let input: Vec<f32> = (0..s.batch * s.in_h * s.in_w * s.in_ca)
                .map(|i| i as f32 * 0.25 - 3.0)
                .collect();
            let a = Conv {
                shape: s,
                in_a: &input,
                in_b: &[],
                weight: &[],
                bias: &[],
                channel_add: &[],
                residual: &[],
                out_scale: 1.0,
            };
            let kdim = s.kernel * s.kernel * s.in_ca;
            let pixels = s.batch * s.out_h * s.out_w;
            let mut ranges = vec![0..kdim, 0..1, kdim - 1..kdim, 1..kdim - 1];
            ranges.push(kdim / 3..2 * kdim / 3 + 1);
            for columns in ranges {
                for (start, rows) in [(0, pixels), (1, pixels - 2), (pixels / 2, 1)] {
                    let len = rows * columns.len();
                    let (mut fast, mut each) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                    gather_rows_of_taps(&a, start, rows, 0.5, columns.clone(), &mut fast);
                    gather_by_taps(&a, start, rows, 0.5, columns.clone(), &mut each);
                    let same = fast
                        .iter()
                        .zip(&each)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{s:?} columns {columns:?} pixels {start}+{rows}");
                }
            }
        }
    }
}
