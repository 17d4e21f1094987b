//! diffusers 0.42's `CMStochasticIterativeScheduler` as `ConsistencyModelPipeline` runs it:
//! one- and few-step consistency-model sampling.
//!
//! ```text
//! x = randn * sigma_max
//! for i in 0..N:
//!     out = model(x / sqrt(sigma_i^2 + sigma_data^2), 250 * ln(sigma_i + 1e-44))
//!     denoised = c_out(sigma_i) * out + c_skip(sigma_i) * x     (clamped to [-1, 1] if clip_denoised)
//!     x = denoised + s_noise * z_i * sqrt(clamp(sigma_{i+1})^2 - sigma_min^2)
//! ```
//!
//! The sigmas are the Karras ramp at the timesteps `round(j * (T / N))` of the T training steps,
//! float32 as diffusers stores them, with sigma_min appended. A run of more than one step draws
//! noise at every step, the last one included (its factor is ~0: diffusers draws it anyway); a
//! one-step run draws none. The model output is used as is (no prediction type).

use alloc::format;
use alloc::vec::Vec;

use super::config::{SchedulerConfig, SchedulerKind};
use super::score_ve::check_step;
use super::StepShape;
use crate::error::{invalid_arg, Error, Result};

const DEFAULT_SIGMA_MIN: f64 = 0.002;
const DEFAULT_SIGMA_MAX: f64 = 80.0;

/// One consistency-model run: its sigmas, model timesteps and the config's scalings.
#[derive(Debug, Clone)]
pub struct ConsistencyScheduler {
    cfg: SchedulerConfig,
    /// N + 1 sigmas, float32 (the last is sigma_min).
    sigmas: Vec<f32>,
    /// The model's timestep input of each step, `1000 * 0.25 * ln(sigma + 1e-44)` (float64).
    model_timesteps: Vec<f64>,
    /// The training-step timesteps `round(j * (T / N))`, descending.
    train_timesteps: Vec<i64>,
    sigma_min: f64,
    sigma_max: f64,
}

impl ConsistencyScheduler {
    /// `set_timesteps(N)` of a `CMStochasticIterativeScheduler` config. Errors: another
    /// class, `steps` 0 or above `num_train_timesteps`, T < 2, `sigma_max <= sigma_min`.
    pub fn new(cfg: SchedulerConfig, steps: usize) -> Result<ConsistencyScheduler> {
        cfg.validate()?;
        if cfg.kind != SchedulerKind::CmStochasticIterative {
            return Err(invalid_arg(
                "scheduler",
                format!(
                    "{} is not CMStochasticIterativeScheduler",
                    cfg.kind.class_name()
                ),
            ));
        }
        let t = cfg.num_train_timesteps;
        if steps == 0 || steps > t {
            return Err(invalid_arg(
                "steps",
                format!("{steps} is outside 1..={t} (num_train_timesteps)"),
            ));
        }
        let step_ratio = t / steps;
        let train: Vec<i64> = (0..steps).rev().map(|j| (j * step_ratio) as i64).collect();
        Self::with_timesteps(cfg, &train)
    }

    /// `set_timesteps(timesteps=...)`: custom training-step timesteps, strictly descending,
    /// each below `num_train_timesteps`.
    pub fn with_timesteps(cfg: SchedulerConfig, timesteps: &[i64]) -> Result<ConsistencyScheduler> {
        cfg.validate()?;
        let t = cfg.num_train_timesteps;
        if t < 2 {
            return Err(Error::InvalidConfig {
                key: "num_train_timesteps".into(),
                message: format!("{t}: the Karras ramp needs at least 2"),
            });
        }
        if timesteps.is_empty() {
            return Err(invalid_arg("timesteps", "need at least one"));
        }
        if timesteps.windows(2).any(|w| w[1] >= w[0]) {
            return Err(invalid_arg("timesteps", "must be strictly descending"));
        }
        if timesteps[0] >= t as i64 || timesteps[timesteps.len() - 1] < 0 {
            return Err(invalid_arg(
                "timesteps",
                format!("must lie in 0..{t} (num_train_timesteps)"),
            ));
        }
        let sigma_min = cfg.sigma_min.unwrap_or(DEFAULT_SIGMA_MIN);
        let sigma_max = cfg.sigma_max.unwrap_or(DEFAULT_SIGMA_MAX);
        if sigma_max <= sigma_min {
            return Err(Error::InvalidConfig {
                key: "sigma_max".into(),
                message: format!("{sigma_max} must be above sigma_min {sigma_min}"),
            });
        }
        let rho = cfg.rho;
        let (min_inv, max_inv) = (
            libm::pow(sigma_min, 1.0 / rho),
            libm::pow(sigma_max, 1.0 / rho),
        );
        // diffusers' ramp is the timesteps reversed (ascending) over T - 1: the first step
        // gets the smallest timestep's ramp, so the sigmas run down from sigma_max.
        let karras: Vec<f64> = timesteps
            .iter()
            .rev()
            .map(|&j| {
                let ramp = j as f64 / (t - 1) as f64;
                libm::pow(max_inv + ramp * (min_inv - max_inv), rho)
            })
            .collect();
        let model_timesteps = karras
            .iter()
            .map(|&s| 1000.0 * 0.25 * libm::log(s + 1e-44))
            .collect();
        let mut sigmas: Vec<f32> = karras.iter().map(|&s| s as f32).collect();
        sigmas.push(sigma_min as f32);
        Ok(ConsistencyScheduler {
            cfg,
            sigmas,
            model_timesteps,
            train_timesteps: timesteps.to_vec(),
            sigma_min,
            sigma_max,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn num_steps(&self) -> usize {
        self.model_timesteps.len()
    }

    /// N + 1 sigmas (float32 values), the last sigma_min.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The model's timestep input of each step (diffusers' `scheduler.timesteps`).
    pub fn model_timesteps(&self) -> &[f64] {
        &self.model_timesteps
    }

    /// The training-step timesteps of the run (what [`crate::sampler::StepInfo`] reports).
    pub fn timesteps(&self) -> &[i64] {
        &self.train_timesteps
    }

    /// x_T = randn * init_noise_sigma (sigma_max).
    pub fn init_noise_sigma(&self) -> f64 {
        self.sigma_max
    }

    /// `scale_model_input`: the model input is `x / input_divisor(i)` = `x / sqrt(sigma^2 +
    /// sigma_data^2)`.
    pub fn input_divisor(&self, i: usize) -> f64 {
        let s = self.sigmas[i] as f64;
        libm::sqrt(s * s + self.cfg.sigma_data * self.cfg.sigma_data)
    }

    /// Whether step `i` reads a noise row: every step of a run of more than one step.
    pub fn needs_noise(&self, _i: usize) -> bool {
        self.num_steps() > 1
    }

    /// Gaussian draws of a run (after x_T).
    pub fn noise_rows(&self) -> usize {
        if self.num_steps() > 1 {
            self.num_steps()
        } else {
            0
        }
    }

    /// diffusers' `step` at step `i`, in place. `noise` is required when
    /// [`ConsistencyScheduler::needs_noise`].
    pub fn step(
        &self,
        i: usize,
        shape: StepShape,
        model_output: &[f32],
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) -> Result<()> {
        let steps = self.num_steps();
        let (per, stride, noise) = check_step(
            i,
            steps,
            shape,
            model_output,
            sample,
            self.needs_noise(i),
            noise,
        )?;
        let (smin, sd) = (self.sigma_min, self.cfg.sigma_data);
        let sigma = self.sigmas[i] as f64;
        let next = (self.sigmas[i + 1] as f64).clamp(smin, self.sigma_max);
        let c_skip = sd * sd / ((sigma - smin) * (sigma - smin) + sd * sd);
        let c_out = (sigma - smin) * sd / libm::sqrt(sigma * sigma + sd * sd);
        // diffusers takes the square root of a possibly slightly negative float32 difference
        // (NaN); it is 0 here.
        let spread = self.cfg.s_noise * libm::sqrt((next * next - smin * smin).max(0.0));
        for b in 0..shape.batch {
            let m = &model_output[b * stride..b * stride + per];
            let x = &mut sample[b * per..(b + 1) * per];
            for (j, (xi, &mi)) in x.iter_mut().zip(m).enumerate() {
                let mut d = c_out * mi as f64 + c_skip * *xi as f64;
                if self.cfg.clip_denoised {
                    d = d.clamp(-1.0, 1.0);
                }
                if let Some(z) = noise {
                    d += spread * z[b * per + j] as f64;
                }
                *xi = d as f32;
            }
        }
        Ok(())
    }
}
