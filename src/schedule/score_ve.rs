//! diffusers 0.42's `ScoreSdeVeScheduler` as `ScoreSdeVePipeline` runs it: the variance-exploding
//! score SDE, sampled by predictor-corrector.
//!
//! ```text
//! x = randn * sigma_max
//! for i, t in linspace(1, sampling_eps, N):            (float32, as torch.linspace)
//!     sigma_t = sigma_min * (sigma_max / sigma_min)^t  (the model's timestep input)
//!     correct_steps times:  x = step_correct(model(x, sigma_t), x, z)   (Langevin, one draw)
//!     x, x_mean = step_pred(model(x, sigma_t), t, x, z)                  (reverse diffusion, one draw)
//! x_0 = x_mean of the last step
//! ```
//!
//! The model output is the score (diffusers' NCSN++ returns it already divided by sigma); it is
//! used as is, whatever `prediction_type` says. The predictor's sigma is
//! `discrete_sigmas[(t * (N - 1)) as int]` over a log-spaced grid of N sigmas, as diffusers
//! indexes it (in float32, truncated). Each step reads its noise rows in the pipeline's draw
//! order: the corrector draws, then the predictor's.

use alloc::format;
use alloc::vec::Vec;

use super::config::{SchedulerConfig, SchedulerKind};
use super::scheduler::check_len;
use super::StepShape;
use crate::error::{invalid_arg, Error, Result};

/// diffusers' `ScoreSdeVeScheduler` defaults of `sigma_min` / `sigma_max`.
const DEFAULT_SIGMA_MIN: f64 = 0.01;
const DEFAULT_SIGMA_MAX: f64 = 1348.0;

/// One run of the VE score SDE: N predictor steps, each after `correct_steps` corrector steps.
#[derive(Debug, Clone)]
pub struct ScoreVeScheduler {
    cfg: SchedulerConfig,
    /// `linspace(1, sampling_eps, N)` in float32.
    times: Vec<f32>,
    /// The model's timestep input of each step: sigma_min * (sigma_max / sigma_min)^t, float32.
    model_sigmas: Vec<f32>,
    /// The predictor's g = sqrt(sigma^2 - sigma_prev^2) of each step (float32 arithmetic).
    diffusion: Vec<f32>,
    /// The discrete-sigma index of each step (`(t * (N - 1)) as int`), reported as timestep.
    indices: Vec<i64>,
    sigma_max: f64,
}

/// Checks the buffers of one step: `sample` is `[B, C, H, W]`, `model_output` is that or
/// `[B, 2C, H, W]` (learned variance: the first C channels are read). Returns the length of
/// one sample and the model output's per-sample stride.
pub(super) fn step_buffers(
    shape: StepShape,
    model_output: &[f32],
    sample: &[f32],
) -> Result<(usize, usize)> {
    if shape.is_empty() {
        return Err(invalid_arg(
            "step shape",
            "every dimension must be at least 1",
        ));
    }
    let (per, n) = match (shape.sample_len(), shape.len()) {
        (Some(per), Some(n)) if n.checked_mul(2).is_some() => (per, n),
        _ => return Err(invalid_arg("step shape", "B * C * H * W overflows")),
    };
    check_len("sample [B, C, H, W]", n, sample.len())?;
    if model_output.len() == n {
        Ok((per, per))
    } else if model_output.len() == 2 * n {
        Ok((per, 2 * per))
    } else {
        Err(Error::BufferSize {
            what: "model output [B, C, H, W] (or [B, 2C, H, W])",
            expected: n,
            found: model_output.len(),
        })
    }
}

/// Checks a noise row's length (`[B, C, H, W]`).
pub(super) fn check_noise(noise: &[f32], n: usize) -> Result<()> {
    check_len("step noise [B, C, H, W]", n, noise.len())
}

/// The checks a consistency or LCM/TCD step starts with: `i` is one of the run's `steps`, the
/// buffers have the step's shape ([`step_buffers`]), and `noise` is given (of the sample's
/// length) when the step `draws` noise. Returns the per-sample length, the model output's
/// stride, and the noise the step uses (`None` when it draws none).
pub(super) fn check_step<'a>(
    i: usize,
    steps: usize,
    shape: StepShape,
    model_output: &[f32],
    sample: &[f32],
    draws: bool,
    noise: Option<&'a [f32]>,
) -> Result<(usize, usize, Option<&'a [f32]>)> {
    if i >= steps {
        return Err(invalid_arg(
            "step_index",
            format!("{i} is past the last step ({steps} steps)"),
        ));
    }
    let (per, stride) = step_buffers(shape, model_output, sample)?;
    let noise = match (draws, noise) {
        (true, Some(z)) => {
            check_noise(z, sample.len())?;
            Some(z)
        }
        (true, None) => return Err(invalid_arg("step noise", "this step draws noise")),
        (false, _) => None,
    };
    Ok((per, stride, noise))
}

impl ScoreVeScheduler {
    /// `set_timesteps(N)` and `set_sigmas(N)` of a `ScoreSdeVeScheduler` config. Errors: a
    /// config of another class, `steps` 0, `sigma_max <= sigma_min`.
    pub fn new(cfg: SchedulerConfig, steps: usize) -> Result<ScoreVeScheduler> {
        cfg.validate()?;
        if cfg.kind != SchedulerKind::ScoreSdeVe {
            return Err(invalid_arg(
                "scheduler",
                format!("{} is not ScoreSdeVeScheduler", cfg.kind.class_name()),
            ));
        }
        // The schedule holds a few floats per step: the same bound as the training schedules.
        if steps == 0 || steps > super::config::MAX_TRAIN_TIMESTEPS {
            return Err(invalid_arg(
                "steps",
                format!(
                    "{steps} is out of range 1..={}",
                    super::config::MAX_TRAIN_TIMESTEPS
                ),
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
        let times = super::betas::linspace_f32(1.0, cfg.sampling_eps, steps);
        // sigma_min * ratio ** t with the Python floats cast to float32 by torch.
        let ratio = (sigma_max / sigma_min) as f32;
        let model_sigmas = times
            .iter()
            .map(|&t| sigma_min as f32 * libm::powf(ratio, t))
            .collect();
        let discrete: Vec<f32> =
            super::betas::linspace_f32(libm::log(sigma_min), libm::log(sigma_max), steps)
                .into_iter()
                .map(libm::expf)
                .collect();
        let last = (steps - 1) as f32;
        let indices: Vec<i64> = times.iter().map(|&t| (t * last) as i64).collect();
        let diffusion = indices
            .iter()
            .map(|&j| {
                // Truncation of a time in [sampling_eps, 1] times N - 1: within 0..N.
                let j = (j.max(0) as usize).min(steps - 1);
                let sigma = discrete[j];
                let prev = if j == 0 { 0.0 } else { discrete[j - 1] };
                libm::sqrtf(sigma * sigma - prev * prev)
            })
            .collect();
        Ok(ScoreVeScheduler {
            cfg,
            times,
            model_sigmas,
            diffusion,
            indices,
            sigma_max,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Predictor steps of a run.
    pub fn num_steps(&self) -> usize {
        self.times.len()
    }

    /// Langevin corrector steps before each predictor step.
    pub fn correct_steps(&self) -> usize {
        self.cfg.correct_steps
    }

    /// The continuous times `linspace(1, sampling_eps, N)`.
    pub fn times(&self) -> &[f32] {
        &self.times
    }

    /// The model's timestep input of step `i` (sigma_t, float32 as the pipeline passes it).
    pub fn model_sigma(&self, i: usize) -> f32 {
        self.model_sigmas[i]
    }

    /// Every step's model sigma.
    pub fn model_sigmas(&self) -> &[f32] {
        &self.model_sigmas
    }

    /// The discrete-sigma index of each step (what [`crate::sampler::StepInfo`] reports).
    pub fn timesteps(&self) -> &[i64] {
        &self.indices
    }

    /// The predictor's diffusion coefficient g of each step.
    pub fn diffusions(&self) -> &[f32] {
        &self.diffusion
    }

    /// x_T = randn * init_noise_sigma (sigma_max).
    pub fn init_noise_sigma(&self) -> f64 {
        self.sigma_max
    }

    /// Model evaluations of a run: `(correct_steps + 1) * N`.
    pub fn model_evaluations(&self) -> usize {
        (self.cfg.correct_steps + 1) * self.num_steps()
    }

    /// Gaussian draws of a run (after x_T): one per model evaluation.
    pub fn noise_rows(&self) -> usize {
        self.model_evaluations()
    }

    /// diffusers' `step_correct`: one Langevin step, in place, with the batch-mean norms of the
    /// model output and of the noise setting the step size
    /// `2 (snr * |z| / |score|)^2`.
    pub fn step_correct(
        &self,
        shape: StepShape,
        model_output: &[f32],
        sample: &mut [f32],
        noise: &[f32],
    ) -> Result<()> {
        let (per, stride) = step_buffers(shape, model_output, sample)?;
        check_noise(noise, sample.len())?;
        let norm = |v: &[f32]| libm::sqrt(v.iter().map(|&x| x as f64 * x as f64).sum::<f64>());
        let batch = shape.batch as f64;
        let (mut grad, mut noise_norm) = (0.0, 0.0);
        for b in 0..shape.batch {
            grad += norm(&model_output[b * stride..b * stride + per]);
            noise_norm += norm(&noise[b * per..(b + 1) * per]);
        }
        let ratio = self.cfg.snr * (noise_norm / batch) / (grad / batch);
        let step = 2.0 * ratio * ratio;
        let spread = libm::sqrt(2.0 * step);
        for b in 0..shape.batch {
            let m = &model_output[b * stride..b * stride + per];
            let z = &noise[b * per..(b + 1) * per];
            for ((x, &mi), &zi) in sample[b * per..(b + 1) * per].iter_mut().zip(m).zip(z) {
                *x = (*x as f64 + step * mi as f64 + spread * zi as f64) as f32;
            }
        }
        Ok(())
    }

    /// diffusers' `step_pred` at step `i`, in place: `x_mean = x + g^2 * score`, then
    /// `x = x_mean + g * z`. The last step keeps `x_mean`, the pipeline's output (its noise
    /// row is still read, since the pipeline draws it).
    pub fn step_pred(
        &self,
        i: usize,
        shape: StepShape,
        model_output: &[f32],
        sample: &mut [f32],
        noise: &[f32],
    ) -> Result<()> {
        let steps = self.num_steps();
        if i >= steps {
            return Err(invalid_arg(
                "step_index",
                format!("{i} is past the last step ({steps} steps)"),
            ));
        }
        let (per, stride) = step_buffers(shape, model_output, sample)?;
        check_noise(noise, sample.len())?;
        let g = self.diffusion[i] as f64;
        let g_noise = if i + 1 == steps { 0.0 } else { g };
        for b in 0..shape.batch {
            let m = &model_output[b * stride..b * stride + per];
            let z = &noise[b * per..(b + 1) * per];
            for ((x, &mi), &zi) in sample[b * per..(b + 1) * per].iter_mut().zip(m).zip(z) {
                let mean = *x as f64 + g * g * mi as f64;
                *x = (mean + g_noise * zi as f64) as f32;
            }
        }
        Ok(())
    }
}
