//! The register-tiled microkernel of the direct and Winograd convolutions.

use super::Simd;
use crate::kernels::PACK_OC;

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
