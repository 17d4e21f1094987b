//! The NCSN++ (score-SDE) layers: FIR resampling and the output's division by sigma. (The
//! Fourier time embedding has no backward: no gradient flows into the timestep, and its `W`
//! is a fixed buffer in diffusers.)

use crate::kernels::scalar::{fir_taps, FirArgs};

/// Factor-2 FIR up- or downsampling, exactly the inference kernel
/// ([`crate::kernels::scalar::fir_resample`]).
pub fn fir_forward(a: &FirArgs<'_>, out: &mut [f32]) {
    crate::kernels::scalar::fir_resample(a, out);
}

/// The FIR op is linear, `out[o] = sum_i w(o, i) in[i]` with separable taps, so
/// `d_in[i] += sum_o w(o, i) d_out[o]`: the same taps, scattered instead of gathered.
pub fn fir_backward(
    batch: usize,
    channels: usize,
    (in_h, in_w): (usize, usize),
    up: bool,
    d_out: &[f32],
    d_in: &mut [f32],
) {
    if d_in.is_empty() {
        return;
    }
    let c = channels;
    let (oh, ow) = if up {
        (2 * in_h, 2 * in_w)
    } else {
        (in_h / 2, in_w / 2)
    };
    for b in 0..batch {
        let dst = &mut d_in[b * in_h * in_w * c..(b + 1) * in_h * in_w * c];
        for oy in 0..oh {
            let (ty, ny) = fir_taps(up, oy, in_h);
            for ox in 0..ow {
                let (tx, nx) = fir_taps(up, ox, in_w);
                let o = ((b * oh + oy) * ow + ox) * c;
                let g = &d_out[o..o + c];
                for &(iy, wy) in &ty[..ny] {
                    for &(ix, wx) in &tx[..nx] {
                        let px = &mut dst[(iy * in_w + ix) * c..(iy * in_w + ix + 1) * c];
                        super::axpy(px, wy * wx, g);
                    }
                }
            }
        }
    }
}

/// `out[b] = input[b] / t[b]` over `per` floats a sample.
pub fn timestep_divide_forward(input: &[f32], t: &[f32], per: usize, out: &mut [f32]) {
    for (b, &tb) in t.iter().enumerate() {
        let r = b * per..(b + 1) * per;
        for (o, v) in out[r.clone()].iter_mut().zip(&input[r]) {
            *o = v / tb;
        }
    }
}

/// `d_in[b] += d_out[b] / t[b]`.
pub fn timestep_divide_backward(d_out: &[f32], t: &[f32], per: usize, d_in: &mut [f32]) {
    if d_in.is_empty() {
        return;
    }
    for (b, &tb) in t.iter().enumerate() {
        let r = b * per..(b + 1) * per;
        for (d, g) in d_in[r.clone()].iter_mut().zip(&d_out[r]) {
            *d += g / tb;
        }
    }
}
