//! `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler`: two model evaluations per
//! step, a first-order one at sigma_k moving to an interpolated sigma, and a second-order one
//! there that redoes the move from sigma_k (ancestral: down to sigma_down, plus fresh noise of
//! std sigma_up). The last step has the first evaluation only (to sigma 0).
//!
//! The evaluations' sigmas are stored interleaved, `[s_0, si_0, s_1, si_1, ..., s_{N-1}, 0]`,
//! so the driver's `sigmas[i]` is the sigma evaluation `i` scales its input with.

use alloc::vec::Vec;

use super::euler_ancestral::ancestral_split;
use super::{sigma_to_t, SigmaScheduler};
use crate::schedule::config::{PredictionType, SchedulerKind};

/// `exp(lerp(log a, log b, 0.5))` in float32 as torch computes it (weight 0.5 takes the
/// `end - (end - start) * (1 - w)` branch; a 0 sigma gives 0).
fn log_midpoint(a: f32, b: f32) -> f32 {
    let (la, lb) = (libm::logf(a), libm::logf(b));
    libm::expf(lb - (lb - la) * 0.5)
}

/// The evaluations of a KDPM2 (`ancestral` false) or KDPM2-ancestral run on the step sigmas
/// `s` (N + 1 float32 values, the last 0) and step timesteps `t` (N): the interleaved sigmas
/// (2N values, the last 0) and model timesteps (2N - 1).
pub(super) fn interleave(
    s: &[f64],
    t: &[f64],
    log_sigmas: &[f64],
    ancestral: bool,
) -> (Vec<f64>, Vec<f64>) {
    let n = t.len();
    let s32: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    // The interpolated sigma the second evaluation of step k uses.
    let interp = |k: usize| -> f32 {
        if ancestral {
            // Between sigma_k and its sigma_down (0 for the last two, as diffusers sets them).
            if k + 2 > n {
                return 0.0;
            }
            let (down, _) = ancestral_split(s32[k], s32[k + 1]);
            log_midpoint(s32[k], down)
        } else {
            log_midpoint(s32[k + 1], s32[k])
        }
    };
    let mut sig = Vec::with_capacity(2 * n);
    let mut ts = Vec::with_capacity(2 * n - 1);
    for k in 0..n {
        sig.push(s[k]);
        ts.push(t[k]);
        let si = interp(k) as f64;
        sig.push(si);
        if k + 1 < n {
            ts.push(sigma_to_t(si, log_sigmas));
        }
    }
    // The last step's interpolated sigma is 0: the final sigma.
    (sig, ts)
}

impl SigmaScheduler {
    /// KDPM2 (ancestral) evaluation `i`: first-order when even (the sample is kept for the
    /// second one in `history`), second-order when odd.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn kdpm2_step(
        &self,
        i: usize,
        per: usize,
        stride: usize,
        batch: usize,
        model_output: &[f32],
        sample: &mut [f32],
        noise: Option<&[f32]>,
        history: &mut [f32],
    ) {
        let first = i.is_multiple_of(2);
        let s_in = self.sigmas[i];
        // dt and the scalars are float32 in diffusers (0-d float32 tensors).
        let s_in32 = s_in as f32;
        let sq1 = s_in32 * s_in32 + 1.0;
        let v_m = (-s_in32 / libm::sqrtf(sq1)) as f64;
        let v_div = sq1 as f64;
        let (dt, up) = if first {
            ((self.sigmas[i + 1] as f32 - s_in32) as f64, 0.0)
        } else {
            let (from, to) = (self.sigmas[i - 1] as f32, self.sigmas[i + 1] as f32);
            if self.cfg.kind == SchedulerKind::Kdpm2Ancestral {
                let (down, up) = ancestral_split(from, to);
                ((down - from) as f64, up)
            } else {
                ((to - from) as f64, 0.0)
            }
        };
        let keep = first && i + 1 < self.num_steps();
        let saved = &mut history[..per * batch];
        for b in 0..batch {
            for k in 0..per {
                let j = b * per + k;
                let xi = sample[j] as f64;
                let mi = model_output[b * stride + k] as f64;
                let x0 = match self.cfg.prediction_type {
                    PredictionType::VPrediction => mi * v_m + xi / v_div,
                    _ => xi - s_in * mi,
                };
                let d = (xi - x0) / s_in;
                let prev = if first {
                    if keep {
                        saved[j] = sample[j];
                    }
                    xi + d * dt
                } else {
                    let mut p = saved[j] as f64 + d * dt;
                    if let Some(z) = noise {
                        p += z[j] as f64 * up;
                    }
                    p
                };
                sample[j] = prev as f32;
            }
        }
    }
}
