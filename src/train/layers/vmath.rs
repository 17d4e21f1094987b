//! Vectorised elementwise math of the trainer: SiLU, its derivative and the shifted `exp` of a
//! softmax row, over slices.
//!
//! On x86-64 with AVX2+FMA (detected at run time) `exp` is the polynomial of the inference
//! kernels (`src/kernels/x86.rs`, within 2 ulp of `expf` for |x| < 87, clamped outside), eight
//! lanes at a time; elsewhere libm's `expf`. A slice's tail (its last `len % 8` values) goes
//! through the same vector code on a padded copy, so every value is computed the same way
//! whatever its position: results depend on the input only (not on how a caller splits its
//! work, nor on the thread count).

/// True where the AVX2+FMA path runs.
#[inline]
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline]
fn sigmoid_scalar(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

/// `out[i] = silu(x[i]) = x / (1 + e^-x)` (as [`crate::kernels::silu`] computes it).
pub fn silu(x: &[f32], out: &mut [f32]) {
    let n = x.len().min(out.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { x86::silu(&x[..n], &mut out[..n]) };
    }
    for (o, v) in out[..n].iter_mut().zip(&x[..n]) {
        *o = crate::kernels::silu(*v);
    }
}

/// `x[i] = silu(x[i])`.
pub fn silu_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { x86::silu_in_place(x) };
    }
    for v in x.iter_mut() {
        *v = crate::kernels::silu(*v);
    }
}

/// `d[i] *= silu'(x[i])`, with `silu'(x) = s (1 + x (1 - s))`, `s = sigmoid(x)`.
pub fn mul_silu_grad(x: &[f32], d: &mut [f32]) {
    let n = x.len().min(d.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { x86::mul_silu_grad(&x[..n], &mut d[..n]) };
    }
    for (g, v) in d[..n].iter_mut().zip(&x[..n]) {
        let s = sigmoid_scalar(*v);
        *g *= s * (1.0 + v * (1.0 - s));
    }
}

/// `row[j] = e^(row[j] - shift)`; returns the sum of the new values (in a fixed order).
pub fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { x86::exp_shifted_sum(row, shift) };
    }
    let mut total = 0.0f32;
    for s in row.iter_mut() {
        *s = libm::expf(*s - shift);
        total += *s;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    // The constants of `src/kernels/x86.rs`.
    const EXP_HI: f32 = 88.3;
    const EXP_LO: f32 = -87.3;
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P0: f32 = 1.987_569_1e-4;
    const P1: f32 = 1.398_199_9e-3;
    const P2: f32 = 8.333_452e-3;
    const P3: f32 = 4.166_579_6e-2;
    const P4: f32 = 1.666_666_5e-1;
    // `5.000_000_1e-1` in the inference kernels: the same f32.
    const P5: f32 = 0.5;

    /// `e^x` lane by lane, as the inference kernels' `Avx2::exp`.
    ///
    /// # Safety
    /// the CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn exp(x: __m256) -> __m256 {
        // SAFETY: register-only intrinsics; the caller guarantees AVX2 and FMA.
        unsafe {
            let x = _mm256_min_ps(
                _mm256_max_ps(x, _mm256_set1_ps(EXP_LO)),
                _mm256_set1_ps(EXP_HI),
            );
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
            );
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
            let mut p = _mm256_set1_ps(P0);
            for c in [P1, P2, P3, P4, P5] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let r2 = _mm256_mul_ps(r, r);
            let y = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
            _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
        }
    }

    /// `x / (1 + e^-x)`.
    ///
    /// # Safety
    /// the CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn silu8(x: __m256) -> __m256 {
        // SAFETY: register-only intrinsics; the caller guarantees AVX2 and FMA.
        unsafe {
            let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
            _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
        }
    }

    /// `s (1 + x (1 - s))` with `s = 1 / (1 + e^-x)`.
    ///
    /// # Safety
    /// the CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn silu_grad8(x: __m256) -> __m256 {
        // SAFETY: register-only intrinsics; the caller guarantees AVX2 and FMA.
        unsafe {
            let one = _mm256_set1_ps(1.0);
            let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let s = _mm256_div_ps(one, _mm256_add_ps(one, e));
            _mm256_mul_ps(
                s,
                _mm256_add_ps(one, _mm256_mul_ps(x, _mm256_sub_ps(one, s))),
            )
        }
    }

    /// Copies the tail (`< 8` values) into a zero-padded vector buffer.
    #[inline(always)]
    fn pad(tail: &[f32]) -> [f32; 8] {
        let mut buf = [0.0f32; 8];
        buf[..tail.len()].copy_from_slice(tail);
        buf
    }

    /// # Safety
    /// the CPU has AVX2 and FMA; `x` and `out` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu(x: &[f32], out: &mut [f32]) {
        let n8 = x.len() / 8 * 8;
        for (xv, ov) in x[..n8].chunks_exact(8).zip(out[..n8].chunks_exact_mut(8)) {
            // SAFETY: both chunks hold 8 floats; AVX2+FMA per the caller.
            unsafe { _mm256_storeu_ps(ov.as_mut_ptr(), silu8(_mm256_loadu_ps(xv.as_ptr()))) };
        }
        if n8 < x.len() {
            let mut buf = pad(&x[n8..]);
            // SAFETY: `buf` holds 8 floats; AVX2+FMA per the caller.
            unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), silu8(_mm256_loadu_ps(buf.as_ptr()))) };
            let m = x.len() - n8;
            out[n8..].copy_from_slice(&buf[..m]);
        }
    }

    /// # Safety
    /// the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_in_place(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for v in &mut chunks {
            // SAFETY: the chunk holds 8 floats; AVX2+FMA per the caller.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), silu8(_mm256_loadu_ps(v.as_ptr()))) };
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let mut buf = pad(tail);
            // SAFETY: `buf` holds 8 floats; AVX2+FMA per the caller.
            unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), silu8(_mm256_loadu_ps(buf.as_ptr()))) };
            let n = tail.len();
            tail.copy_from_slice(&buf[..n]);
        }
    }

    /// # Safety
    /// the CPU has AVX2 and FMA; `x` and `d` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn mul_silu_grad(x: &[f32], d: &mut [f32]) {
        let n8 = x.len() / 8 * 8;
        for (xv, dv) in x[..n8].chunks_exact(8).zip(d[..n8].chunks_exact_mut(8)) {
            // SAFETY: both chunks hold 8 floats; AVX2+FMA per the caller.
            unsafe {
                let g = silu_grad8(_mm256_loadu_ps(xv.as_ptr()));
                let p = dv.as_mut_ptr();
                _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), g));
            }
        }
        if n8 < x.len() {
            let (xb, mut db) = (pad(&x[n8..]), pad(&d[n8..]));
            // SAFETY: both buffers hold 8 floats; AVX2+FMA per the caller.
            unsafe {
                let g = silu_grad8(_mm256_loadu_ps(xb.as_ptr()));
                let p = db.as_mut_ptr();
                _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), g));
            }
            let m = x.len() - n8;
            d[n8..].copy_from_slice(&db[..m]);
        }
    }

    /// # Safety
    /// the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
        let n8 = row.len() / 8 * 8;
        // SAFETY (whole body): every pointer is to a chunk or buffer of 8 floats; AVX2+FMA
        // per the caller.
        unsafe {
            let sh = _mm256_set1_ps(shift);
            let mut acc = _mm256_setzero_ps();
            for v in row[..n8].chunks_exact_mut(8) {
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(v.as_ptr()), sh));
                _mm256_storeu_ps(v.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            let mut total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            if n8 < row.len() {
                let mut buf = pad(&row[n8..]);
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), sh));
                _mm256_storeu_ps(buf.as_mut_ptr(), e);
                let m = row.len() - n8;
                for (d, s) in row[n8..].iter_mut().zip(&buf[..m]) {
                    *d = *s;
                    total += *s;
                }
            }
            total
        }
    }
}
