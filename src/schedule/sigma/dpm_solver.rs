//! `DPMSolverMultistepScheduler`'s step.

use super::{convert_model_output, SigmaScheduler};
use crate::schedule::config::{DpmAlgorithm, SchedulerConfig, SolverType};

impl SigmaScheduler {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dpm_step(
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
        let c = &self.cfg;
        let n = per * batch;
        let order = c.solver_order;
        let slot = |j: usize| (j % order) * n;
        let data = matches!(
            c.algorithm_type,
            DpmAlgorithm::DpmSolverPP | DpmAlgorithm::SdeDpmSolverPP
        );
        // convert_model_output into this step's history slot.
        let (a0, s0) = self.alpha_sigma(self.sigmas[i]);
        let here = slot(i);
        let to = &mut history[here..here + n];
        // Thresholding clamps the x_0 prediction, so noise prediction goes through it.
        let threshold = self.thresholds();
        convert_model_output(
            data || threshold,
            c.prediction_type,
            (a0, s0),
            sample,
            model_output,
            (per, stride),
            to,
        );
        if threshold {
            let to_eps = (!data).then_some(((a0, s0), &*sample));
            self.threshold_slot(here, (n, per), history, to_eps);
        }
        let used = self.order_at(i);
        let sg = |j: usize| self.sigmas[j];
        let (at, st) = self.alpha_sigma(sg(i + 1));
        let lt = self.lambda(sg(i + 1));
        let l0 = self.lambda(sg(i));
        let h = lt - l0;
        // x_t = cx * x + c0 * D0 + c1 * D1 + c2 * D2 + cz * z
        let c0;
        let (mut c1, mut c2) = (0.0, 0.0);
        let em = libm::exp(-h) - 1.0; // exp(-h) - 1
        let ep = libm::exp(h) - 1.0; // exp(h) - 1
        let e2 = 1.0 - libm::exp(-2.0 * h);
        let (cx, cz) = match c.algorithm_type {
            DpmAlgorithm::DpmSolverPP => (st / s0, 0.0),
            DpmAlgorithm::DpmSolver => (at / a0, 0.0),
            DpmAlgorithm::SdeDpmSolverPP => (st / s0 * libm::exp(-h), st * libm::sqrt(e2)),
            DpmAlgorithm::SdeDpmSolver => (at / a0, st * libm::sqrt(libm::exp(2.0 * h) - 1.0)),
        };
        match c.algorithm_type {
            DpmAlgorithm::DpmSolverPP => {
                c0 = -(at * em);
                match used {
                    1 => {}
                    2 => {
                        c1 = match c.solver_type {
                            SolverType::Midpoint => -0.5 * (at * em),
                            SolverType::Heun => at * (em / h + 1.0),
                        }
                    }
                    _ => {
                        c1 = at * (em / h + 1.0);
                        c2 = -(at * ((em + h) / (h * h) - 0.5));
                    }
                }
            }
            DpmAlgorithm::DpmSolver => {
                c0 = -(st * ep);
                match used {
                    1 => {}
                    2 => {
                        c1 = match c.solver_type {
                            SolverType::Midpoint => -0.5 * (st * ep),
                            SolverType::Heun => -(st * (ep / h - 1.0)),
                        }
                    }
                    _ => {
                        c1 = -(st * (ep / h - 1.0));
                        c2 = -(st * ((ep - h) / (h * h) - 0.5));
                    }
                }
            }
            // diffusers has no third-order sde-dpmsolver (refused in `new`).
            DpmAlgorithm::SdeDpmSolver => {
                c0 = -2.0 * (st * ep);
                if used == 2 {
                    c1 = match c.solver_type {
                        SolverType::Midpoint => -(st * ep),
                        SolverType::Heun => -2.0 * (st * (ep / h - 1.0)),
                    }
                }
            }
            DpmAlgorithm::SdeDpmSolverPP => {
                c0 = at * e2;
                match used {
                    1 => {}
                    2 => {
                        c1 = match c.solver_type {
                            SolverType::Midpoint => 0.5 * (at * e2),
                            SolverType::Heun => at * (e2 / (-2.0 * h) + 1.0),
                        }
                    }
                    _ => {
                        c1 = at * (e2 / (-2.0 * h) + 1.0);
                        c2 = at * ((e2 - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5);
                    }
                }
            }
        }
        // D1, D2 from the history: r0 = h_0 / h, r1 = h_1 / h.
        let (r0, r1) = if used >= 2 {
            let l1 = self.lambda(sg(i - 1));
            let r0 = (l0 - l1) / h;
            let r1 = if used >= 3 {
                (l1 - self.lambda(sg(i - 2))) / h
            } else {
                0.0
            };
            (r0, r1)
        } else {
            (1.0, 0.0)
        };
        let (p1, p2) = (
            if used >= 2 { slot(i + order - 1) } else { 0 },
            if used >= 3 { slot(i + order - 2) } else { 0 },
        );
        for k in 0..n {
            let xi = sample[k] as f64;
            let m0 = history[here + k] as f64;
            let mut prev = cx * xi + c0 * m0;
            if used == 2 {
                let m1 = history[p1 + k] as f64;
                prev += c1 * ((1.0 / r0) * (m0 - m1));
            } else if used == 3 {
                let m1 = history[p1 + k] as f64;
                let m2 = history[p2 + k] as f64;
                let d10 = (1.0 / r0) * (m0 - m1);
                let d11 = (1.0 / r1) * (m1 - m2);
                let d1 = d10 + (r0 / (r0 + r1)) * (d10 - d11);
                let d2 = (1.0 / (r0 + r1)) * (d10 - d11);
                prev += c1 * d1 + c2 * d2;
            }
            if let Some(z) = noise {
                prev += cz * z[k] as f64;
            }
            sample[k] = prev as f32;
        }
    }
}

/// DPM-Solver's `lambda_min_clipped`: how many of the flipped lambdas lie below it
/// (`torch.searchsorted` of the ascending flipped log-SNRs).
pub(super) fn lambda_clipped_count(cfg: &SchedulerConfig, ac: &[f64]) -> usize {
    if cfg.lambda_min_clipped == f64::NEG_INFINITY {
        return 0;
    }
    ac.iter()
        .rev()
        .filter(|&&a| {
            let a = a as f32;
            let l = libm::logf(libm::sqrtf(a)) - libm::logf(libm::sqrtf(1.0 - a));
            (l as f64) < cfg.lambda_min_clipped
        })
        .count()
}
