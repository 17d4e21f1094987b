//! `HeunDiscreteScheduler`'s step.

use super::SigmaScheduler;
use crate::schedule::config::PredictionType;

impl SigmaScheduler {
    /// Heun: evaluation `i` is a first-order (Euler) step when even, the second-order
    /// correction of the previous one when odd (the sigmas and timesteps are doubled).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn heun_step(
        &self,
        i: usize,
        per: usize,
        stride: usize,
        batch: usize,
        model_output: &[f32],
        sample: &mut [f32],
        history: &mut [f32],
    ) {
        let n = per * batch;
        let first = i.is_multiple_of(2);
        let (s_hat, s_next) = if first {
            (self.sigmas[i], self.sigmas[i + 1])
        } else {
            (self.sigmas[i - 1], self.sigmas[i])
        };
        // The sigma x_0 is predicted with; dt and the v-prediction scalars are float32 in
        // diffusers (0-d float32 tensors).
        let s_in = if first { s_hat } else { s_next };
        let s32 = s_in as f32;
        let sq1 = s32 * s32 + 1.0;
        let v_m = (-s32 / libm::sqrtf(sq1)) as f64;
        let v_div = sq1 as f64;
        let dt = (s_next as f32 - s_hat as f32) as f64;
        let c = &self.cfg;
        let keep = first && i + 1 < self.num_steps();
        let (deriv, saved) = history.split_at_mut(n);
        for b in 0..batch {
            let m = &model_output[b * stride..b * stride + per];
            for (k, &mo) in m.iter().enumerate() {
                let j = b * per + k;
                let xi = sample[j] as f64;
                let mi = mo as f64;
                let mut x0 = match c.prediction_type {
                    PredictionType::Epsilon => xi - s_in * mi,
                    PredictionType::VPrediction => mi * v_m + xi / v_div,
                    PredictionType::Sample => mi,
                    // Refused by `SchedulerConfig::validate` for this class.
                    PredictionType::FlowPrediction => f64::NAN,
                };
                if c.clip_sample {
                    x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range);
                }
                if first {
                    let d = (xi - x0) / s_hat;
                    if keep {
                        deriv[j] = d as f32;
                        saved[j] = sample[j];
                    }
                    sample[j] = (xi + d * dt) as f32;
                } else {
                    let d = ((xi - x0) / s_next + deriv[j] as f64) / 2.0;
                    sample[j] = (saved[j] as f64 + d * dt) as f32;
                }
            }
        }
    }
}
