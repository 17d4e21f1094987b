//! `DEISMultistepScheduler`'s step (log-rho DEIS of order 1-3): the noise prediction
//! extrapolated as a Lagrange polynomial in log rho (rho = sigma / alpha) and integrated in
//! closed form.

use super::{convert_model_output, SigmaScheduler};

/// The integral of the order-2 Lagrange basis of node `b` (other node `c`) in log rho, as
/// diffusers' `ind_fn`, at `t`.
fn ind2(t: f64, b: f64, c: f64) -> f64 {
    let (lt, lb, lc) = (libm::log(t), libm::log(b), libm::log(c));
    t * (-lc + lt - 1.0) / (lb - lc)
}

/// The order-3 counterpart (node `b`, other nodes `c`, `d`).
fn ind3(t: f64, b: f64, c: f64, d: f64) -> f64 {
    let (lt, lb, lc, ld) = (libm::log(t), libm::log(b), libm::log(c), libm::log(d));
    let num = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    num / ((lb - lc) * (lb - ld))
}

impl SigmaScheduler {
    /// DEIS step `i`: the noise prediction into history slot `i % solver_order`, then the
    /// update of the order [`SigmaScheduler::order_at`] gives.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deis_step(
        &self,
        i: usize,
        per: usize,
        stride: usize,
        batch: usize,
        model_output: &[f32],
        sample: &mut [f32],
        history: &mut [f32],
    ) {
        let c = &self.cfg;
        let n = per * batch;
        let slots = c.solver_order;
        let slot = |j: usize| (j % slots) * n;
        let here = slot(i);
        let (a0, s0) = self.alpha_sigma(self.sigmas[i]);
        // With thresholding, through the clamped x_0 as diffusers computes it.
        let threshold = self.thresholds();
        convert_model_output(
            threshold,
            c.prediction_type,
            (a0, s0),
            sample,
            model_output,
            (per, stride),
            &mut history[here..here + n],
        );
        if threshold {
            self.threshold_slot(here, (n, per), history, Some(((a0, s0), &*sample)));
        }
        let order = self.order_at(i);
        let (at, st) = self.alpha_sigma(self.sigmas[i + 1]);
        let rho = |j: usize| {
            let (a, s) = self.alpha_sigma(self.sigmas[j]);
            s / a
        };
        // x_t = cx * x + sum_k coef_k * m_{i-k}
        let mut coef = [0.0f64; 3];
        let cx;
        match order {
            // Flow sigmas near 1: alpha_t / alpha_s and e^h - 1 reach ~1e2 and cancel, so the
            // float32 scalars diffusers forms them in decide the result; formed the same way.
            1 if self.flow() => {
                let (t32, s32) = (self.sigmas[i + 1] as f32, self.sigmas[i] as f32);
                let (at32, a032) = (1.0 - t32, 1.0 - s32);
                let h = (libm::logf(at32) - libm::logf(t32)) - (libm::logf(a032) - libm::logf(s32));
                cx = (at32 / a032) as f64;
                coef[0] = -(t32 * (libm::expf(h) - 1.0)) as f64;
            }
            1 => {
                let h = self.lambda(self.sigmas[i + 1]) - self.lambda(self.sigmas[i]);
                cx = at / a0;
                coef[0] = -(st * (libm::exp(h) - 1.0));
            }
            2 => {
                let (rt, r0, r1) = (st / at, rho(i), rho(i - 1));
                cx = at / a0;
                coef[0] = at * (ind2(rt, r0, r1) - ind2(r0, r0, r1));
                coef[1] = at * (ind2(rt, r1, r0) - ind2(r0, r1, r0));
            }
            _ => {
                let (rt, r0, r1, r2) = (st / at, rho(i), rho(i - 1), rho(i - 2));
                cx = at / a0;
                coef[0] = at * (ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2));
                coef[1] = at * (ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0));
                coef[2] = at * (ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1));
            }
        }
        let prev: [usize; 3] = [
            here,
            if order >= 2 { slot(i + slots - 1) } else { 0 },
            if order >= 3 { slot(i + slots - 2) } else { 0 },
        ];
        for k in 0..n {
            let mut v = cx * sample[k] as f64;
            for (m, cm) in coef.iter().enumerate().take(order) {
                v += cm * history[prev[m] + k] as f64;
            }
            sample[k] = v as f32;
        }
    }
}
