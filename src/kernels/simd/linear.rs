//! Matrix-vector products (linears of one or two rows).

use super::{Shared, Simd};
use crate::kernels::{LinearArgs, PACK_OC};

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
