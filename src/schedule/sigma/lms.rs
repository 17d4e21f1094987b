//! `LMSDiscreteScheduler`'s step: a linear multistep method of order up to 4 on the ODE
//! derivative in sigma, on the Euler schedule.
//!
//! diffusers integrates each Lagrange basis polynomial with `scipy.integrate.quad`; the
//! polynomials have degree <= 3, so three-point Gauss-Legendre quadrature (exact to degree
//! 5) gives the same integrals in closed form.

use super::SigmaScheduler;
use crate::schedule::config::PredictionType;

/// diffusers' default `order` argument of `step` (the pipelines never pass another).
pub(super) const LMS_ORDER: usize = 4;

/// Gauss-Legendre nodes and weights on [-1, 1], three points.
const GL_NODES: [f64; 3] = [-0.774_596_669_241_483_4, 0.0, 0.774_596_669_241_483_4];
const GL_WEIGHTS: [f64; 3] = [5.0 / 9.0, 8.0 / 9.0, 5.0 / 9.0];

impl SigmaScheduler {
    /// The order LMS uses at step `i`.
    pub(super) fn lms_order(&self, i: usize) -> usize {
        (i + 1).min(LMS_ORDER)
    }

    /// `get_lms_coefficient(order, i, k)`: the integral from sigma_i to sigma_{i+1} of the
    /// Lagrange basis polynomial of node sigma_{i-k} over the nodes sigma_i .. sigma_{i-order+1}.
    pub(super) fn lms_coefficient(&self, order: usize, i: usize, k: usize) -> f64 {
        let node = |j: usize| self.sigmas[i - j];
        let (a, b) = (self.sigmas[i], self.sigmas[i + 1]);
        let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
        let mut sum = 0.0;
        for (x, w) in GL_NODES.iter().zip(GL_WEIGHTS) {
            let tau = mid + half * x;
            let mut prod = 1.0;
            for j in (0..order).filter(|&j| j != k) {
                prod *= (tau - node(j)) / (node(k) - node(j));
            }
            sum += w * prod;
        }
        sum * half
    }

    /// LMS step `i`: this step's derivative into history slot `i % 4`, and
    /// x + sum_k c_k d_{i-k}.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lms_step(
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
        let s = self.sigmas[i];
        // v-prediction's scalars are float32 in diffusers (0-d float32 tensors).
        let s32 = s as f32;
        let sq1 = s32 * s32 + 1.0;
        let v_m = (-s32 / libm::sqrtf(sq1)) as f64;
        let v_div = sq1 as f64;
        let order = self.lms_order(i);
        let mut coeffs = [0.0f64; LMS_ORDER];
        for (k, c) in coeffs.iter_mut().enumerate().take(order) {
            *c = self.lms_coefficient(order, i, k);
        }
        let here = (i % LMS_ORDER) * n;
        for b in 0..batch {
            for k in 0..per {
                let j = b * per + k;
                let xi = sample[j] as f64;
                let mi = model_output[b * stride + k] as f64;
                let x0 = match self.cfg.prediction_type {
                    PredictionType::Epsilon => xi - s * mi,
                    PredictionType::VPrediction => mi * v_m + xi / v_div,
                    PredictionType::Sample => mi,
                    // Refused by `SchedulerConfig::validate` for this class.
                    PredictionType::FlowPrediction => f64::NAN,
                };
                let d = (xi - x0) / s;
                history[here + j] = d as f32;
                // This step's derivative unrounded: at a large first sigma (cosine betas)
                // x + c_0 d cancels, and an f32 d would show in the result.
                let mut prev = xi + coeffs[0] * d;
                for (m, c) in coeffs.iter().enumerate().take(order).skip(1) {
                    prev += c * history[((i - m) % LMS_ORDER) * n + j] as f64;
                }
                sample[j] = prev as f32;
            }
        }
    }
}
