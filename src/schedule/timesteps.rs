//! Inference timesteps: diffusers' `set_timesteps(num_inference_steps)`, reproduced exactly.
//!
//! diffusers computes them with NumPy float64 arithmetic (`np.arange` with a float step,
//! `np.linspace`, `np.round`), so a few spacings depend on how NumPy rounds; the helpers here
//! follow NumPy's arithmetic step by step (including round-half-to-even) rather than the
//! mathematically equivalent formula. DDPM and DDIM share this code in diffusers 0.42.

use alloc::format;
use alloc::vec::Vec;

use super::config::{SchedulerConfig, TimestepSpacing};
use crate::error::{invalid_arg, Result};

/// The timesteps of a `num_inference_steps`-step run, first (noisiest) to last.
///
/// Errors: an invalid config, or `num_inference_steps` of 0 or above `num_train_timesteps`
/// ([`crate::Error::InvalidArgument`]). The list is what diffusers gives even where diffusers
/// would later misbehave: `leading` spacing with `steps_offset` can produce `t >= T`, and
/// `trailing` spacing lists N + 1 timesteps ending in -1 for the N where NumPy's
/// `ceil(T / (T / N))` rounds up to N + 1 (62 of the N in 1..=1000 for T = 1000, e.g. 61).
/// [`super::Scheduler::new`] rejects both.
pub fn set_timesteps(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Vec<i64>> {
    cfg.validate()?;
    let t = cfg.num_train_timesteps;
    let n = num_inference_steps;
    if n == 0 {
        return Err(invalid_arg("num_inference_steps", "must be at least 1"));
    }
    if n > t {
        return Err(invalid_arg(
            "num_inference_steps",
            format!("{n} is larger than num_train_timesteps ({t})"),
        ));
    }
    // validate() bounds T and steps_offset by 2^20, so none of the i64 arithmetic overflows.
    let steps = match cfg.timestep_spacing {
        TimestepSpacing::Leading => {
            // (np.arange(0, N) * (T // N)).round()[::-1] + steps_offset
            let ratio = (t / n) as i64;
            let offset = cfg.steps_offset as i64;
            (0..n as i64).rev().map(|i| i * ratio + offset).collect()
        }
        TimestepSpacing::Trailing => {
            // np.round(np.arange(T, 0, -T / N)).astype(int64) - 1
            arange_f64(t as f64, 0.0, -(t as f64 / n as f64))
                .into_iter()
                .map(|v| round_half_even(v) as i64 - 1)
                .collect()
        }
        TimestepSpacing::Linspace => {
            // np.linspace(0, T - 1, N).round()[::-1].astype(int64)
            let stop = (t - 1) as f64;
            let mut v: Vec<i64> = (0..n)
                .map(|i| {
                    let y = if n == 1 {
                        0.0
                    } else if i == n - 1 {
                        stop
                    } else {
                        i as f64 * (stop / (n - 1) as f64)
                    };
                    round_half_even(y) as i64
                })
                .collect();
            v.reverse();
            v
        }
    };
    Ok(steps)
}

/// `np.arange(start, stop, step)` for floats: length `ceil((stop - start) / step)`, element 0
/// is `start`, element 1 is `start + step`, and element i >= 2 is `start + i * delta` with
/// `delta = (start + step) - start` (NumPy's fill loop), not `start + i * step`.
pub(crate) fn arange_f64(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = libm::ceil((stop - start) / step);
    // The callers' lengths are at most N + 1 <= 2^20 + 1; anything else is empty.
    let len = if len.is_finite() && len > 0.0 && len <= (1u64 << 21) as f64 {
        len as usize
    } else {
        0
    };
    let second = start + step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.round` / `np.rint`: to the nearest integer, ties to even.
pub(crate) fn round_half_even(x: f64) -> f64 {
    let lower = libm::floor(x);
    let diff = x - lower;
    let lower_is_even = libm::fmod(lower, 2.0) == 0.0;
    if diff > 0.5 || (diff == 0.5 && !lower_is_even) {
        lower + 1.0
    } else {
        lower
    }
}
