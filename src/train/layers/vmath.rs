//! Vectorised elementwise math of the trainer: SiLU, its derivative and the shifted `exp` of a
//! softmax row, over slices.
//!
//! On x86-64 with AVX2+FMA (detected at run time) `exp` is the inference kernels' own
//! (`Simd::exp` of `src/kernels/x86.rs`, within 2 ulp of `expf` for |x| < 87, clamped
//! outside), eight lanes at a time; elsewhere libm's `expf`. A slice's tail (its last `len % 8` values) goes
//! through the same vector code on a padded copy, so every value is computed the same way
//! whatever its position: results depend on the input only (not on how a caller splits its
//! work, nor on the thread count).

/// True where the AVX2+FMA path runs.
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
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
    //! The AVX2 bodies, on the inference kernels' vector type ([`Avx2`]: its `exp` is the one
    //! the inference SiLU and softmax use, so training and inference round alike).
    use crate::kernels::simd::Simd;
    use crate::kernels::x86::Avx2;

    type V = <Avx2 as Simd>::V;
    const L: usize = <Avx2 as Simd>::LANES;

    /// `x / (1 + e^-x)`.
    ///
    /// # Safety
    /// the CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn silu_v(x: V) -> V {
        // SAFETY: register-only arithmetic; the caller guarantees AVX2 and FMA.
        unsafe {
            let e = Avx2::exp(Avx2::sub(Avx2::zero(), x));
            Avx2::div(x, Avx2::add(Avx2::splat(1.0), e))
        }
    }

    /// `s (1 + x (1 - s))` with `s = 1 / (1 + e^-x)`.
    ///
    /// # Safety
    /// the CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn silu_grad_v(x: V) -> V {
        // SAFETY: register-only arithmetic; the caller guarantees AVX2 and FMA.
        unsafe {
            let one = Avx2::splat(1.0);
            let e = Avx2::exp(Avx2::sub(Avx2::zero(), x));
            let s = Avx2::div(one, Avx2::add(one, e));
            Avx2::mul(s, Avx2::fma(x, Avx2::sub(one, s), one))
        }
    }

    /// Runs `f` over `x` and `y` (same length) a vector at a time, writing `y`; the tail
    /// (`< L` values) goes through zero-padded copies, so every value takes the same path.
    ///
    /// # Safety
    /// the CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn zip_map(x: &[f32], y: &mut [f32], f: impl Fn(V, V) -> V) {
        let n = x.len().min(y.len());
        let nv = n / L * L;
        // SAFETY (whole body): every pointer is to a chunk or buffer of `L` floats; AVX2 and
        // FMA per the caller.
        unsafe {
            for (xv, yv) in x[..nv].chunks_exact(L).zip(y[..nv].chunks_exact_mut(L)) {
                let r = f(Avx2::load(xv.as_ptr()), Avx2::load(yv.as_ptr()));
                Avx2::store(yv.as_mut_ptr(), r);
            }
            if nv < n {
                let (mut xb, mut yb) = ([0.0f32; L], [0.0f32; L]);
                xb[..n - nv].copy_from_slice(&x[nv..n]);
                yb[..n - nv].copy_from_slice(&y[nv..n]);
                let r = f(Avx2::load(xb.as_ptr()), Avx2::load(yb.as_ptr()));
                Avx2::store(yb.as_mut_ptr(), r);
                y[nv..n].copy_from_slice(&yb[..n - nv]);
            }
        }
    }

    /// # Safety
    /// the CPU has AVX2 and FMA; `x` and `out` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu(x: &[f32], out: &mut [f32]) {
        // SAFETY: AVX2+FMA per the caller.
        unsafe { zip_map(x, out, |xv, _| silu_v(xv)) }
    }

    /// # Safety
    /// the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_in_place(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(L);
        for v in &mut chunks {
            // SAFETY: the chunk holds `L` floats; AVX2+FMA per the caller.
            unsafe { Avx2::store(v.as_mut_ptr(), silu_v(Avx2::load(v.as_ptr()))) };
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let mut buf = [0.0f32; L];
            buf[..tail.len()].copy_from_slice(tail);
            // SAFETY: `buf` holds `L` floats; AVX2+FMA per the caller.
            unsafe { Avx2::store(buf.as_mut_ptr(), silu_v(Avx2::load(buf.as_ptr()))) };
            let n = tail.len();
            tail.copy_from_slice(&buf[..n]);
        }
    }

    /// # Safety
    /// the CPU has AVX2 and FMA; `x` and `d` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn mul_silu_grad(x: &[f32], d: &mut [f32]) {
        // SAFETY: AVX2+FMA per the caller.
        unsafe { zip_map(x, d, |xv, dv| Avx2::mul(dv, silu_grad_v(xv))) }
    }

    /// # Safety
    /// the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
        let n8 = row.len() / L * L;
        // SAFETY (whole body): every pointer is to a chunk or buffer of `L` floats; AVX2+FMA
        // per the caller.
        unsafe {
            let sh = Avx2::splat(shift);
            let mut acc = Avx2::zero();
            for v in row[..n8].chunks_exact_mut(L) {
                let e = Avx2::exp(Avx2::sub(Avx2::load(v.as_ptr()), sh));
                Avx2::store(v.as_mut_ptr(), e);
                acc = Avx2::add(acc, e);
            }
            let mut lanes = [0.0f32; L];
            Avx2::store(lanes.as_mut_ptr(), acc);
            let mut total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            if n8 < row.len() {
                let mut buf = [0.0f32; L];
                let m = row.len() - n8;
                buf[..m].copy_from_slice(&row[n8..]);
                let e = Avx2::exp(Avx2::sub(Avx2::load(buf.as_ptr()), sh));
                Avx2::store(buf.as_mut_ptr(), e);
                for (d, s) in row[n8..].iter_mut().zip(&buf[..m]) {
                    *d = *s;
                    total += *s;
                }
            }
            total
        }
    }
}
