//! The Beta distribution's inverse CDF (`scipy.stats.beta.ppf`), for the beta sigma schedule
//! of diffusers' `_convert_to_beta`. Setup-time only; `no_std` with libm.
//!
//! The regularized incomplete beta function I_x(a, b) is evaluated by its continued fraction
//! (modified Lentz), on the side of the mean where it converges fast; the inverse is Newton's
//! method kept inside a shrinking bisection bracket, so it always converges, and it ends at
//! the floating-point resolution of x (~1e-16 absolute, well inside 1e-12 relative of the
//! sigmas it produces).

/// ln B(a, b).
fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

/// The continued fraction of I_x(a, b) (without its prefactor), for x < (a + 1) / (a + b + 2).
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-16;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if libm::fabs(d) < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even step.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if libm::fabs(d) < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if libm::fabs(c) < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        // Odd step.
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if libm::fabs(d) < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if libm::fabs(c) < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if libm::fabs(del - 1.0) < EPS {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(a, b) (the Beta(a, b) CDF at x).
pub fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    // NaN reads as 0, like the other end.
    if x.is_nan() || x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = a * libm::log(x) + b * libm::log1p(-x) - ln_beta(a, b);
    let front = libm::exp(ln_front);
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(x, a, b) / a
    } else {
        1.0 - front * beta_cf(1.0 - x, b, a) / b
    }
}

/// The Beta(a, b) density at x in (0, 1).
fn beta_pdf(x: f64, a: f64, b: f64) -> f64 {
    libm::exp((a - 1.0) * libm::log(x) + (b - 1.0) * libm::log1p(-x) - ln_beta(a, b))
}

/// `scipy.stats.beta.ppf(p, a, b)`: the x with I_x(a, b) = p (0 at p <= 0, 1 at p >= 1, NaN
/// for NaN p or non-positive a, b).
pub fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p.is_nan() || !(a > 0.0 && b > 0.0) {
        return f64::NAN;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut x = 0.5;
    for _ in 0..400 {
        let f = beta_cdf(x, a, b) - p;
        if f == 0.0 {
            return x;
        }
        if f < 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        let newton = x - f / beta_pdf(x, a, b);
        let inside = newton > lo && newton < hi;
        // Outside the bracket: bisect, geometrically while the bracket spans decades (the
        // tails, where x can be 1e-20).
        let next = if inside {
            newton
        } else if lo == 0.0 {
            hi * 1e-3
        } else if hi > 4.0 * lo {
            libm::sqrt(lo * hi)
        } else {
            0.5 * (lo + hi)
        };
        let converged = next == x
            || hi - lo <= 2.0 * f64::EPSILON * hi
            || (inside && libm::fabs(next - x) <= 2.0 * f64::EPSILON * next);
        if converged {
            return next;
        }
        x = next;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_endpoints() {
        assert_eq!(beta_ppf(0.0, 0.6, 0.6), 0.0);
        assert_eq!(beta_ppf(1.0, 0.6, 0.6), 1.0);
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-15);
        for &p in &[1e-6, 0.01, 0.2, 0.37, 0.9, 0.999] {
            let x = beta_ppf(p, 0.6, 0.6);
            let y = beta_ppf(1.0 - p, 0.6, 0.6);
            assert!((x + y - 1.0).abs() < 1e-14, "{p}: {x} {y}");
            assert!((beta_cdf(x, 0.6, 0.6) - p).abs() < 1e-14 * p.max(1e-3));
        }
        // Beta(1, 1) is uniform.
        assert!((beta_ppf(0.3, 1.0, 1.0) - 0.3).abs() < 1e-15);
    }
}
