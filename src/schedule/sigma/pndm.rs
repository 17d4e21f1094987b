//! `PNDMScheduler`: its timesteps (Runge-Kutta warm-up, then PLMS) and its step.

use alloc::format;
use alloc::vec::Vec;

use super::{linspace, SigmaScheduler};
use crate::error::{invalid_arg, unsupported, Error, Result};
use crate::schedule::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::schedule::timesteps::{arange_f64, round_half_even};

impl SigmaScheduler {
    /// PNDM's timesteps: diffusers' `_timesteps` (ascending), then PRK's 12 and PLMS's, or
    /// PLMS's alone with the second one repeated (`skip_prk_steps`).
    pub(super) fn new_pndm(cfg: SchedulerConfig, n: usize, ac: &[f64]) -> Result<SigmaScheduler> {
        let t_train = cfg.num_train_timesteps;
        if cfg.prediction_type == PredictionType::Sample {
            return Err(unsupported(
                "prediction_type",
                "sample (PNDMScheduler implements epsilon and v_prediction)",
            ));
        }
        let base: Vec<i64> = match cfg.timestep_spacing {
            TimestepSpacing::Linspace => linspace(0.0, (t_train - 1) as f64, n)
                .into_iter()
                .map(|t| round_half_even(t) as i64)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = (t_train / n) as i64;
                (0..n as i64)
                    .map(|i| i * ratio + cfg.steps_offset as i64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let mut v: Vec<i64> = arange_f64(t_train as f64, 0.0, -(t_train as f64 / n as f64))
                    .into_iter()
                    .map(|t| round_half_even(t) as i64 - 1)
                    .collect();
                v.reverse();
                v
            }
        };
        let m = base.len();
        let ts: Vec<i64> = if cfg.skip_prk_steps {
            let mut v: Vec<i64> = base[..m - 1].to_vec();
            if m >= 2 {
                v.push(base[m - 2]);
            }
            v.push(base[m - 1]);
            v.reverse();
            v
        } else {
            if m < 4 {
                return Err(invalid_arg(
                    "num_inference_steps",
                    format!(
                        "{n} steps with skip_prk_steps false: PNDM's Runge-Kutta warm-up needs \
                         at least 4 (diffusers fails below that)"
                    ),
                ));
            }
            // diffusers' `_timesteps[-4:]`.
            let half = (t_train / n / 2) as i64;
            let mut prk: Vec<i64> = Vec::with_capacity(8);
            for &t in &base[m.saturating_sub(4)..] {
                prk.extend([t, t + half]);
            }
            prk.pop();
            let mut doubled: Vec<i64> = prk.iter().flat_map(|&t| [t, t]).collect();
            doubled.pop();
            doubled.remove(0);
            doubled.reverse();
            doubled.extend(base[..m.saturating_sub(3)].iter().rev());
            doubled
        };
        let prk_len = if cfg.skip_prk_steps {
            0
        } else {
            4 * m.min(4) - 4
        };
        let alphas: Vec<f32> = ac.iter().map(|&a| a as f32).collect();
        let final_alpha = if cfg.set_alpha_to_one { 1.0 } else { alphas[0] };
        let sched = SigmaScheduler {
            timesteps: ts.iter().map(|&t| t as f32).collect(),
            rounded: ts,
            cfg,
            num_inference_steps: n,
            sigmas: Vec::new(),
            init_noise_sigma: 1.0,
            alphas,
            final_alpha,
            prk_len,
            orders: Vec::new(),
            ipndm_betas: Vec::new(),
        };
        // Every alpha-bar index a step reads must exist (diffusers would index out of range
        // or, for a negative one, wrap around).
        for i in 0..sched.num_steps() {
            let (t, _) = sched.pndm_times(i);
            if !(0..t_train as i64).contains(&t) {
                return Err(Error::InvalidArgument {
                    what: "num_inference_steps",
                    message: format!(
                        "{n} steps with {} spacing (steps_offset {}) make PNDM read timestep \
                         {t}, outside 0..{t_train}; choose another step count",
                        sched.cfg.timestep_spacing, sched.cfg.steps_offset
                    ),
                });
            }
        }
        Ok(sched)
    }

    /// PNDM evaluation `i`: the timestep whose alpha-bar it steps from and the one it steps to
    /// (negative: the final alpha-bar).
    pub(super) fn pndm_times(&self, i: usize) -> (i64, i64) {
        let t_train = self.cfg.num_train_timesteps as i64;
        let n = self.num_inference_steps as i64;
        let t = self.rounded[i];
        if i < self.prk_len {
            let diff = if i % 2 == 1 { 0 } else { t_train / n / 2 };
            return (self.rounded[i / 4 * 4], t - diff);
        }
        let r = t_train / n;
        if self.cfg.skip_prk_steps && i == 1 {
            (t + r, t)
        } else {
            (t, t - r)
        }
    }

    /// PNDM evaluation `i`: a Runge-Kutta stage (the first 12 unless `skip_prk_steps`) or a
    /// linear multistep (PLMS) step, as diffusers' `step_prk` / `step_plms`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pndm_step(
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
        let (ets, rest) = history.split_at_mut(4 * n);
        let (cur, acc) = rest.split_at_mut(n);
        let skip = self.cfg.skip_prk_steps;
        let (t, prev_t) = self.pndm_times(i);
        // _get_prev_sample's scalars, float32 as in diffusers.
        let a_t = self.alphas[t as usize];
        let a_prev = if prev_t >= 0 {
            self.alphas[prev_t as usize]
        } else {
            self.final_alpha
        };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let sample_coeff = libm::sqrtf(a_prev / a_t) as f64;
        let denom = (a_t * libm::sqrtf(b_prev) + libm::sqrtf(a_t * b_t * a_prev)) as f64;
        let diff = (a_prev - a_t) as f64;
        let v = self.cfg.prediction_type == PredictionType::VPrediction;
        let (va, vb) = (libm::sqrtf(a_t) as f64, libm::sqrtf(b_t) as f64);
        // What this evaluation does.
        enum Mode {
            /// PRK stage i % 4, from the stage-0 sample.
            Prk(usize),
            /// PLMS with `len` stored outputs (the newest `ne - 1`); `first` / `second`: the
            /// two PLMS-only start steps.
            Plms {
                ne: usize,
                len: usize,
                first: bool,
                second: bool,
            },
        }
        let mode = if i < self.prk_len {
            Mode::Prk(i % 4)
        } else {
            // Outputs stored after this step: PRK stores one per 4 stages.
            let ne = if skip {
                i.max(1)
            } else {
                self.prk_len / 4 + (i - self.prk_len + 1)
            };
            Mode::Plms {
                ne,
                len: ne.min(4),
                first: skip && i == 0,
                second: skip && i == 1,
            }
        };
        let e = |ets: &[f32], ne: usize, k: usize, j: usize| ets[((ne - k) % 4) * n + j] as f64;
        for b in 0..batch {
            for kk in 0..per {
                let j = b * per + kk;
                let mo = model_output[b * stride + kk] as f64;
                let x = sample[j] as f64;
                let (eff, base) = match mode {
                    Mode::Prk(k) => match k {
                        0 => {
                            acc[j] = (mo / 6.0) as f32;
                            ets[(i / 4) * n + j] = mo as f32;
                            cur[j] = sample[j];
                            (mo, x)
                        }
                        1 | 2 => {
                            acc[j] = (acc[j] as f64 + mo / 3.0) as f32;
                            (mo, cur[j] as f64)
                        }
                        _ => {
                            let eff = acc[j] as f64 + mo / 6.0;
                            acc[j] = 0.0;
                            (eff, cur[j] as f64)
                        }
                    },
                    Mode::Plms {
                        ne,
                        len,
                        first,
                        second,
                    } => {
                        if !second {
                            ets[((ne - 1) % 4) * n + j] = mo as f32;
                        }
                        if first {
                            cur[j] = sample[j];
                            (mo, x)
                        } else if second {
                            ((mo + e(ets, ne, 1, j)) / 2.0, cur[j] as f64)
                        } else {
                            let e1 = e(ets, ne, 1, j);
                            let eff = match len {
                                2 => (3.0 * e1 - e(ets, ne, 2, j)) / 2.0,
                                3 => {
                                    (23.0 * e1 - 16.0 * e(ets, ne, 2, j) + 5.0 * e(ets, ne, 3, j))
                                        / 12.0
                                }
                                _ => {
                                    (1.0 / 24.0)
                                        * (55.0 * e1 - 59.0 * e(ets, ne, 2, j)
                                            + 37.0 * e(ets, ne, 3, j)
                                            - 9.0 * e(ets, ne, 4, j))
                                }
                            };
                            (eff, x)
                        }
                    }
                };
                let eff = if v { va * eff + vb * base } else { eff };
                sample[j] = (sample_coeff * base - diff * eff / denom) as f32;
            }
        }
    }
}
