//! Euler and Euler ancestral steps (`EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`).

use super::euler_ancestral::ancestral_split;
use super::SigmaScheduler;
use crate::schedule::config::{PredictionType, SchedulerKind};

impl SigmaScheduler {
    /// One Euler (ancestral: plus fresh noise) step from sigma `s` to `s_next`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn euler_step(
        &self,
        batch: usize,
        per: usize,
        stride: usize,
        s: f64,
        s_next: f64,
        model_output: &[f32],
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) {
        let pred = self.cfg.prediction_type;
        // dt is float32 in diffusers (a 0-d float32 tensor); at large sigma (cosine betas:
        // 2e4) its rounding shows in the result, so it is formed the same way.
        let (s32, n32) = (s as f32, s_next as f32);
        let (target, up) = if self.cfg.kind == SchedulerKind::EulerAncestral {
            ancestral_split(s32, n32)
        } else {
            (n32, 0.0)
        };
        let dt = (target - s32) as f64;
        // v-prediction's scalars as diffusers forms them, in float32: for large sigma
        // (cosine betas) `sigma^2 + 1` rounds, and parity follows it.
        let sq1 = s32 * s32 + 1.0;
        let v_m = (-s32 / libm::sqrtf(sq1)) as f64;
        let v_div = sq1 as f64;
        for b in 0..batch {
            let x = &mut sample[b * per..(b + 1) * per];
            let m = &model_output[b * stride..b * stride + per];
            let z = noise.map(|z| &z[b * per..(b + 1) * per]);
            for k in 0..per {
                let xi = x[k] as f64;
                let mi = m[k] as f64;
                let x0 = match pred {
                    PredictionType::Epsilon => xi - s * mi,
                    PredictionType::VPrediction => mi * v_m + xi / v_div,
                    PredictionType::Sample => mi,
                    // Refused by `SchedulerConfig::validate` for this class.
                    PredictionType::FlowPrediction => f64::NAN,
                };
                let d = (xi - x0) / s;
                let mut prev = xi + d * dt;
                if let Some(z) = z {
                    prev += z[k] as f64 * up;
                }
                x[k] = prev as f32;
            }
        }
    }
}
