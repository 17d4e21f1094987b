//! The packed weight layout shared by every kernel path (see the [`super`] module docs for why).
//!
//! A conv weight `[out, in, k, k]` (diffusers) or a linear weight `[out, in]` (k = 1) is stored
//! as `[ceil(out / 32), k, k, in, 32]`: output channels in blocks of [`PACK_OC`], and within a
//! block, one 32-wide row per reduction index `k = (ky * k + kx) * in + i`. Output channels past
//! `out` in the last block are zero.

use half::f16;

/// Output channels per packed block.
pub const PACK_OC: usize = 32;

/// Elements of a packed weight.
pub fn packed_len(out: usize, inp: usize, k: usize) -> usize {
    out.div_ceil(PACK_OC) * PACK_OC * inp * k * k
}

/// Index in the packed weight of diffusers' element `[o, i, ky, kx]` (`tap = ky * k + kx`,
/// `taps = k * k`).
#[inline]
pub fn packed_index(o: usize, i: usize, tap: usize, inp: usize, taps: usize) -> usize {
    ((o / PACK_OC) * taps * inp + tap * inp + i) * PACK_OC + o % PACK_OC
}

/// Packs a diffusers-layout weight (`src` in `[out, in, k, k]` order) into `dst`
/// (`packed_len(out, inp, k)` elements).
pub fn pack_weight(src: &[f16], out: usize, inp: usize, k: usize, dst: &mut [f16]) {
    let taps = k * k;
    assert_eq!(src.len(), out * inp * taps, "pack_weight: source length");
    assert_eq!(
        dst.len(),
        packed_len(out, inp, k),
        "pack_weight: destination length"
    );
    dst.fill(f16::ZERO);
    for o in 0..out {
        for i in 0..inp {
            for tap in 0..taps {
                dst[packed_index(o, i, tap, inp, taps)] = src[(o * inp + i) * taps + tap];
            }
        }
    }
}

/// The inverse of [`pack_weight`] (tests and tools).
pub fn unpack_weight(src: &[f16], out: usize, inp: usize, k: usize) -> alloc::vec::Vec<f16> {
    let taps = k * k;
    let mut dst = alloc::vec![f16::ZERO; out * inp * taps];
    for o in 0..out {
        for i in 0..inp {
            for tap in 0..taps {
                dst[(o * inp + i) * taps + tap] = src[packed_index(o, i, tap, inp, taps)];
            }
        }
    }
    dst
}
