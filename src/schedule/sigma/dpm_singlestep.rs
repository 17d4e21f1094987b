//! `DPMSolverSinglestepScheduler`'s step: DPM-Solver(++) of order 1-3 where a k-th order
//! update spans k steps, each group restarting from the sample it began at (the
//! intermediate steps are lower-order updates whose outputs feed the next model evaluation).

use alloc::vec::Vec;

use super::{convert_model_output, SigmaScheduler};
use crate::schedule::config::{DpmAlgorithm, FinalSigmas, SchedulerConfig, SolverType};

/// diffusers' `get_order_list` for `n` steps, after `set_timesteps` turns
/// `lower_order_final` on (uneven step count, or a final sigma of 0).
pub(super) fn order_list(cfg: &SchedulerConfig, n: usize) -> Vec<u8> {
    let k = cfg.solver_order;
    let lower_final =
        cfg.lower_order_final || !n.is_multiple_of(k) || cfg.final_sigmas_type == FinalSigmas::Zero;
    let cycle = |reps: usize| -> Vec<u8> { (0..reps).flat_map(|_| 1..=k as u8).collect() };
    let mut orders = if !lower_final || k == 1 {
        cycle(n / k)
    } else if k == 3 {
        match n % 3 {
            0 => {
                let mut v = cycle(n / 3 - 1);
                v.extend([1, 2, 1]);
                v
            }
            1 => {
                let mut v = cycle(n / 3);
                v.push(1);
                v
            }
            _ => {
                let mut v = cycle(n / 3);
                v.extend([1, 2]);
                v
            }
        }
    } else if n.is_multiple_of(2) {
        let mut v = cycle(n / 2 - 1);
        v.extend([1, 1]);
        v
    } else {
        let mut v = cycle(n / 2);
        v.push(1);
        v
    };
    if cfg.final_sigmas_type == FinalSigmas::Zero {
        if let Some(last) = orders.last_mut() {
            *last = 1;
        }
    }
    orders
}

impl SigmaScheduler {
    /// Step `i`: convert the model output into history slot `i % solver_order`; a first-order
    /// step also records the sample its group starts from (after the slots), and every step
    /// goes from that sample to sigma_{i+1}.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dpm_singlestep_step(
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
        let slots = c.solver_order;
        let slot = |j: usize| (j % slots) * n;
        let data = matches!(
            c.algorithm_type,
            DpmAlgorithm::DpmSolverPP | DpmAlgorithm::SdeDpmSolverPP
        );
        let here = slot(i);
        convert_model_output(
            data,
            c.prediction_type,
            self.alpha_sigma(self.sigmas[i]),
            sample,
            model_output,
            (per, stride),
            &mut history[here..here + n],
        );
        // DPM-Solver++ only: diffusers fails for `dpmsolver` with thresholding (refused in
        // `new`).
        if self.thresholds() {
            self.threshold_slot(here, (n, per), history, None);
        }
        let (outs, start) = history.split_at_mut(slots * n);
        let start = &mut start[..n];
        let order = self.order_at(i);
        if order == 1 {
            start.copy_from_slice(&sample[..n]);
        }
        // The group's first sigma, and the update's scalars from it to sigma_{i+1}.
        let s = i + 1 - order;
        let (at, st) = self.alpha_sigma(self.sigmas[i + 1]);
        let (a_s, s_s) = self.alpha_sigma(self.sigmas[s]);
        let l_s = self.lambda(self.sigmas[s]);
        let h = self.lambda(self.sigmas[i + 1]) - l_s;
        let (em, ep) = (libm::exp(-h) - 1.0, libm::exp(h) - 1.0);
        let e2 = 1.0 - libm::exp(-2.0 * h);
        // c0: D0's weight; half: order-2 midpoint's D1 weight; g1, g2: the first- and
        // second-derivative weights.
        let (cx, c0, half, g1, g2, cz) = match c.algorithm_type {
            DpmAlgorithm::DpmSolverPP => (
                st / s_s,
                -(at * em),
                -0.5 * (at * em),
                at * (em / h + 1.0),
                -(at * ((em + h) / (h * h) - 0.5)),
                0.0,
            ),
            // sde-dpmsolver is refused for this class in `new`.
            DpmAlgorithm::DpmSolver | DpmAlgorithm::SdeDpmSolver => (
                at / a_s,
                -(st * ep),
                -0.5 * (st * ep),
                -(st * (ep / h - 1.0)),
                -(st * ((ep - h) / (h * h) - 0.5)),
                0.0,
            ),
            DpmAlgorithm::SdeDpmSolverPP => (
                st / s_s * libm::exp(-h),
                at * e2,
                0.5 * (at * e2),
                at * (e2 / (-2.0 * h) + 1.0),
                at * ((e2 - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5),
                st * libm::sqrt(e2),
            ),
        };
        let heun = c.solver_type == SolverType::Heun;
        // r0 = h_0 / h (the newest output's lambda), r1 = h_1 / h (order 3's middle one).
        let r0 = (self.lambda(self.sigmas[i]) - l_s) / h;
        let r1 = if order == 3 {
            (self.lambda(self.sigmas[i - 1]) - l_s) / h
        } else {
            0.0
        };
        let (p1, p2) = (
            if order >= 2 { slot(i + slots - 1) } else { 0 },
            if order >= 3 { slot(i + slots - 2) } else { 0 },
        );
        for k in 0..n {
            let m0 = outs[here + k] as f64;
            let x = start[k] as f64;
            let mut prev = cx * x;
            match order {
                1 => prev += c0 * m0,
                2 => {
                    let m1 = outs[p1 + k] as f64;
                    let d1 = (1.0 / r0) * (m0 - m1);
                    prev += c0 * m1 + if heun { g1 * d1 } else { half * d1 };
                }
                _ => {
                    let (m1, m2) = (outs[p1 + k] as f64, outs[p2 + k] as f64);
                    let d1_0 = (1.0 / r1) * (m1 - m2);
                    let d1_1 = (1.0 / r0) * (m0 - m2);
                    prev += c0 * m2;
                    if heun {
                        let d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1);
                        let d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1);
                        prev += g1 * d1 + g2 * d2;
                    } else {
                        prev += g1 * d1_1;
                    }
                }
            }
            if let Some(z) = noise {
                prev += cz * z[k] as f64;
            }
            sample[k] = prev as f32;
        }
    }
}
