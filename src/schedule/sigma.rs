//! The sigma-parameterised schedulers of diffusers 0.42: `EulerDiscreteScheduler`,
//! `EulerAncestralDiscreteScheduler`, `DPMSolverMultistepScheduler`, `HeunDiscreteScheduler`,
//! `UniPCMultistepScheduler` and `PNDMScheduler` (the last one steps on alpha-bars, but runs
//! the same loop), on f32 NCHW buffers, in place, without heap allocation.
//!
//! A "step" here is one model evaluation, one entry of diffusers' `timesteps`: Heun's N
//! inference steps are 2N - 1 of them (first-order evaluations at even indices, the
//! second-order correction at odd ones, the sigmas doubled as diffusers stores them); PNDM's
//! are N + 1 (PLMS) or N + 9 (Runge-Kutta warm-up, then PLMS). The multistep state (Heun's
//! derivative, UniPC's converted outputs and last sample, PNDM's past outputs) lives in the
//! caller's history buffer.
//!
//! A run is described by sigma_0 > sigma_1 > ... > sigma_N (sigma = sqrt((1 - abar) / abar),
//! the last one 0 or sigma_min) and the model timestep of each step, which may be fractional
//! (Euler with `linspace` spacing or Karras sigmas evaluates the UNet between training
//! timesteps, as diffusers does). The sampling loop asks for:
//!
//! - [`SigmaScheduler::init_noise_sigma`]: x_T is the standard normal draw times this;
//! - [`SigmaScheduler::input_divisor`]: the UNet sees `x / input_divisor(i)` (diffusers'
//!   `scale_model_input`: `sqrt(sigma^2 + 1)` for Euler, 1 for DPM-Solver);
//! - [`SigmaScheduler::model_timestep`]: the timestep the UNet is evaluated at;
//! - [`SigmaScheduler::step`]: the update, with the multistep history in the caller's
//!   [`SigmaScheduler::history_len`] floats.
//!
//! Noise: Euler ancestral draws one `[B, C, H, W]` Gaussian per step (every step, the last one
//! included, where its weight is 0), SDE-DPM-Solver++ likewise; Euler and the ODE DPM-Solvers
//! draw none. Row k of injected step noise is the k-th draw, as diffusers makes them.
//!
//! Schedules are computed as diffusers does (float32 alpha-bars and sigmas, NumPy float64
//! interpolation, the Karras ramp in float64, sigmas stored as float32); the per-element
//! arithmetic runs in f64 and is stored as f32.

use alloc::format;
use alloc::vec::Vec;

use super::betas::{alphas_cumprod, betas};
use super::config::{
    BetaSchedule, DpmAlgorithm, FinalSigmas, PredictionType, SchedulerConfig, SchedulerKind,
    SolverType, TimestepSpacing, TimestepType, UniPcSolver,
};
use super::scheduler::{check_len, step_noise, StepShape};
use super::timesteps::{arange_f64, round_half_even};
use crate::error::{invalid_arg, unsupported, Error, Result};

/// Karras et al.'s rho.
const RHO: f64 = 7.0;

/// A Euler, Euler-ancestral, DPM-Solver multistep, Heun, UniPC or PNDM scheduler set up for
/// one number of steps.
#[derive(Debug, Clone)]
pub struct SigmaScheduler {
    cfg: SchedulerConfig,
    num_inference_steps: usize,
    /// The model timestep of each step, as diffusers passes it (float32).
    timesteps: Vec<f32>,
    /// The same, rounded (progress reports, [`crate::sampler::Sampler::timesteps`]).
    rounded: Vec<i64>,
    /// sigma of each step plus the final one; float32 values.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    /// PNDM: the float32 alpha-bars, and the one "before" t = 0.
    alphas: Vec<f32>,
    final_alpha: f32,
    /// PNDM: Runge-Kutta evaluations before PLMS (12; 0 with `skip_prk_steps`).
    prk_len: usize,
}

/// sqrt((1 - abar) / abar) in float32, as torch computes it from the float32 alpha-bars.
fn train_sigmas(ac: &[f64]) -> Vec<f32> {
    ac.iter()
        .map(|&a| {
            let a = a as f32;
            libm::sqrtf((1.0f32 - a) / a)
        })
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)` for x within [0, len - 1] (clamped outside).
fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if !(x > 0.0) {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = libm::floor(x) as usize;
    let (a, b) = (fp[j] as f64, fp[j + 1] as f64);
    let slope = b - a;
    slope * (x - j as f64) + a
}

/// diffusers' `_sigma_to_t`: the fractional training timestep of `sigma`, interpolating
/// linearly in log sigma (`log_sigmas` ascending in t, float32 values).
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = libm::log(sigma.max(1e-10));
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    let low_idx = count.saturating_sub(1).min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// diffusers' `_convert_to_karras`: N sigmas from sigma_max down to sigma_min.
fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let min_inv = libm::pow(sigma_min, 1.0 / RHO);
    let max_inv = libm::pow(sigma_max, 1.0 / RHO);
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| libm::pow(max_inv + r * (min_inv - max_inv), RHO))
        .collect()
}

/// `np.linspace(start, stop, n)` (float64).
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return alloc::vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                stop
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

/// alpha_t, sigma_t of the VP process at Karras sigma `s` (`_sigma_to_alpha_sigma_t`).
fn alpha_sigma(s: f64) -> (f64, f64) {
    let alpha = 1.0 / libm::sqrt(s * s + 1.0);
    (alpha, s * alpha)
}

fn lambda(s: f64) -> f64 {
    let (a, sg) = alpha_sigma(s);
    libm::log(a) - libm::log(sg)
}

impl SigmaScheduler {
    /// Builds the schedule for `num_inference_steps` steps of `cfg.kind` (Euler, Euler
    /// ancestral or DPM-Solver multistep).
    ///
    /// Errors: a config of another class, an option combination diffusers refuses
    /// (DPM-Solver `dpmsolver` with `final_sigmas_type` zero, Euler ancestral with
    /// `prediction_type` sample) or this library does not run (thresholding), steps of 0 or
    /// above `num_train_timesteps`, a timestep list leaving the training range.
    pub fn new(cfg: SchedulerConfig, num_inference_steps: usize) -> Result<SigmaScheduler> {
        cfg.validate()?;
        if !cfg.kind.is_sigma() {
            return Err(unsupported("_class_name", cfg.kind.class_name()));
        }
        let n = num_inference_steps;
        let t_train = cfg.num_train_timesteps;
        if n == 0 {
            return Err(invalid_arg("num_inference_steps", "must be at least 1"));
        }
        if n > t_train {
            return Err(invalid_arg(
                "num_inference_steps",
                format!("{n} is larger than num_train_timesteps ({t_train})"),
            ));
        }
        if t_train < 2 {
            return Err(Error::InvalidConfig {
                key: "num_train_timesteps".into(),
                message: "sigma schedulers need at least 2 training timesteps".into(),
            });
        }
        let dpm_only = cfg.kind == SchedulerKind::DpmSolverMultistep;
        let unipc = cfg.kind == SchedulerKind::UniPcMultistep;
        // DPM-Solver and UniPC share the integer timesteps, the VP alpha/sigma and the
        // unscaled model input.
        let dpm = dpm_only || unipc;
        if unipc {
            for (on, key) in [
                (cfg.thresholding, "thresholding"),
                (cfg.rescale_betas_zero_snr, "rescale_betas_zero_snr"),
            ] {
                if on {
                    return Err(unsupported(
                        key,
                        "true (not implemented for UniPCMultistepScheduler here)",
                    ));
                }
            }
            if cfg.unipc_solver == UniPcSolver::Bh1 && cfg.final_sigmas_type == FinalSigmas::Zero {
                return Err(unsupported(
                    "solver_type",
                    "bh1 with final_sigmas_type zero (diffusers 0.42 returns NaN at the last \
                     step: use bh2 or final_sigmas_type sigma_min)",
                ));
            }
            if !cfg.lower_order_final
                && cfg.solver_order > 1
                && n > 1
                && cfg.final_sigmas_type == FinalSigmas::Zero
            {
                return Err(unsupported(
                    "lower_order_final",
                    "false with final_sigmas_type zero (diffusers 0.42 returns inf at the last \
                     step: use lower_order_final true or final_sigmas_type sigma_min)",
                ));
            }
        }
        if cfg.kind == SchedulerKind::EulerAncestral
            && cfg.prediction_type == PredictionType::Sample
        {
            return Err(unsupported(
                "prediction_type",
                "sample (EulerAncestralDiscreteScheduler does not implement it)",
            ));
        }
        if dpm_only && cfg.thresholding {
            return Err(unsupported(
                "thresholding",
                "true (not implemented for DPMSolverMultistepScheduler here)",
            ));
        }
        if dpm_only
            && cfg.algorithm_type == DpmAlgorithm::DpmSolver
            && cfg.final_sigmas_type == FinalSigmas::Zero
        {
            return Err(unsupported(
                "final_sigmas_type",
                "zero with algorithm_type dpmsolver (diffusers refuses it: use sigma_min)",
            ));
        }
        let b = betas(&cfg)?;
        let ac = alphas_cumprod(&b);
        if cfg.kind == SchedulerKind::Pndm {
            return SigmaScheduler::new_pndm(cfg, n, &ac);
        }
        let sig = train_sigmas(&ac);
        // np.log of a float32 array: float32 values.
        let log_sigmas: Vec<f64> = sig
            .iter()
            .map(|&s| libm::log(s as f64) as f32 as f64)
            .collect();

        // Timesteps before any Karras conversion, as float64 values.
        let raw: Vec<f64> = if dpm {
            let last = if unipc {
                t_train
            } else {
                t_train - lambda_clipped_count(&cfg, &ac)
            };
            if last == 0 {
                return Err(Error::InvalidConfig {
                    key: "lambda_min_clipped".into(),
                    message: "clips every timestep".into(),
                });
            }
            match cfg.timestep_spacing {
                TimestepSpacing::Linspace => {
                    let mut v: Vec<f64> = linspace(0.0, (last - 1) as f64, n + 1)
                        .into_iter()
                        .map(round_half_even)
                        .collect();
                    v.reverse();
                    v.pop();
                    v
                }
                TimestepSpacing::Leading => {
                    let ratio = (last / (n + 1)) as f64;
                    let mut v: Vec<f64> = (0..=n).map(|i| i as f64 * ratio).collect();
                    v.reverse();
                    v.pop();
                    v.iter().map(|t| t + cfg.steps_offset as f64).collect()
                }
                TimestepSpacing::Trailing => {
                    arange_f64(last as f64, 0.0, -(t_train as f64 / n as f64))
                        .into_iter()
                        .map(|t| round_half_even(t) - 1.0)
                        .collect()
                }
            }
        } else {
            match cfg.timestep_spacing {
                TimestepSpacing::Linspace => {
                    let mut v: Vec<f64> = linspace(0.0, (t_train - 1) as f64, n)
                        .into_iter()
                        .map(|t| t as f32 as f64)
                        .collect();
                    v.reverse();
                    v
                }
                TimestepSpacing::Leading => {
                    let ratio = (t_train / n) as f64;
                    (0..n)
                        .rev()
                        .map(|i| i as f64 * ratio + cfg.steps_offset as f64)
                        .collect()
                }
                TimestepSpacing::Trailing => {
                    arange_f64(t_train as f64, 0.0, -(t_train as f64 / n as f64))
                        .into_iter()
                        .map(|t| round_half_even(t) - 1.0)
                        .collect()
                }
            }
        };
        let t_max = (t_train - 1) as f64;
        if let Some(&bad) = raw.iter().find(|&&t| !(0.0..=t_max).contains(&t)) {
            return Err(Error::InvalidArgument {
                what: "num_inference_steps",
                message: format!(
                    "{n} steps with {} spacing (steps_offset {}) give timestep {bad}, outside \
                     0..={t_max}; choose another step count",
                    cfg.timestep_spacing, cfg.steps_offset
                ),
            });
        }

        let (mut sigmas, timesteps): (Vec<f64>, Vec<f64>) = if cfg.use_karras_sigmas {
            let (lo, hi) = if unipc {
                (
                    cfg.sigma_min.unwrap_or(sig[0] as f64),
                    cfg.sigma_max.unwrap_or(sig[t_train - 1] as f64),
                )
            } else if dpm {
                (sig[0] as f64, sig[t_train - 1] as f64)
            } else {
                let interp_s: Vec<f64> = raw.iter().map(|&t| interp(t, &sig)).collect();
                (
                    cfg.sigma_min.unwrap_or(interp_s[interp_s.len() - 1]),
                    cfg.sigma_max.unwrap_or(interp_s[0]),
                )
            };
            let s = karras(lo, hi, n);
            let mut t: Vec<f64> = s.iter().map(|&x| sigma_to_t(x, &log_sigmas)).collect();
            if dpm {
                // Rounded, except for cosine betas where diffusers truncates (astype int64).
                for v in t.iter_mut() {
                    *v = if dpm_only && cfg.beta_schedule == BetaSchedule::SquaredcosCapV2 {
                        libm::trunc(*v)
                    } else {
                        round_half_even(*v)
                    };
                }
            }
            (s, t)
        } else {
            let s = raw.iter().map(|&t| interp(t, &sig)).collect();
            (s, raw)
        };
        let last_sigma = match cfg.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            // UniPC with Karras sigmas ends on the ramp's last sigma (its `sigma_min`).
            FinalSigmas::SigmaMin if unipc && cfg.use_karras_sigmas => sigmas[n - 1],
            FinalSigmas::SigmaMin => sig[0] as f64,
        };
        sigmas.push(last_sigma);
        for s in sigmas.iter_mut() {
            *s = *s as f32 as f64;
        }

        let heun = cfg.kind == SchedulerKind::Heun;
        let (sigmas, timesteps) = if heun {
            // Heun: every sigma but the first and last, and every timestep but the first,
            // twice (the second-order evaluation at the same point).
            let mut s2 = Vec::with_capacity(2 * n);
            let mut t2 = Vec::with_capacity(2 * n - 1);
            s2.push(sigmas[0]);
            t2.push(timesteps[0]);
            for k in 1..n {
                s2.extend([sigmas[k], sigmas[k]]);
                t2.extend([timesteps[k], timesteps[k]]);
            }
            s2.push(sigmas[n]);
            (s2, t2)
        } else {
            (sigmas, timesteps)
        };

        let continuous = cfg.kind == SchedulerKind::Euler
            && cfg.timestep_type == TimestepType::Continuous
            && cfg.prediction_type == PredictionType::VPrediction;
        let timesteps: Vec<f32> = if continuous {
            sigmas[..n]
                .iter()
                .map(|&s| 0.25f32 * libm::logf(s as f32))
                .collect()
        } else if dpm {
            // int64 timesteps
            timesteps.iter().map(|&t| libm::trunc(t) as f32).collect()
        } else {
            timesteps.iter().map(|&t| t as f32).collect()
        };
        let rounded = timesteps
            .iter()
            .map(|&t| round_half_even(t as f64) as i64)
            .collect();
        let max_sigma = sigmas.iter().fold(0.0f64, |m, &s| m.max(s)) as f32;
        let init_noise_sigma = match (dpm, cfg.timestep_spacing) {
            (true, _) => 1.0,
            (false, TimestepSpacing::Linspace | TimestepSpacing::Trailing) => max_sigma as f64,
            (false, TimestepSpacing::Leading) => libm::sqrtf(max_sigma * max_sigma + 1.0) as f64,
        };
        Ok(SigmaScheduler {
            cfg,
            num_inference_steps: n,
            timesteps,
            rounded,
            sigmas,
            init_noise_sigma,
            alphas: Vec::new(),
            final_alpha: 0.0,
            prk_len: 0,
        })
    }

    /// PNDM's timesteps: diffusers' `_timesteps` (ascending), then PRK's 12 and PLMS's, or
    /// PLMS's alone with the second one repeated (`skip_prk_steps`).
    fn new_pndm(cfg: SchedulerConfig, n: usize, ac: &[f64]) -> Result<SigmaScheduler> {
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
    fn pndm_times(&self, i: usize) -> (i64, i64) {
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

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn kind(&self) -> SchedulerKind {
        self.cfg.kind
    }

    /// Steps of a run.
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    pub fn num_inference_steps(&self) -> usize {
        self.num_inference_steps
    }

    /// The model timestep of every step, as diffusers' `scheduler.timesteps` (float32).
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// The timesteps rounded to integers (for reports).
    pub fn rounded_timesteps(&self) -> &[i64] {
        &self.rounded
    }

    /// sigma of every step and the final one (`num_steps() + 1` values, float32).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Standard deviation of x_T: x_T = this times a standard normal draw.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// diffusers' `scale_model_input` of step `i`: the UNet sees `x / input_divisor(i)`
    /// (`sqrt(sigma^2 + 1)` in float32 for Euler and Heun, 1 for DPM-Solver and UniPC).
    pub fn input_divisor(&self, i: usize) -> f64 {
        match self.cfg.kind {
            SchedulerKind::DpmSolverMultistep
            | SchedulerKind::UniPcMultistep
            | SchedulerKind::Pndm => 1.0,
            _ => {
                let s = self.sigmas[i] as f32;
                libm::sqrtf(s * s + 1.0) as f64
            }
        }
    }

    /// Whether `input_divisor` differs from 1 (no scaled copy of the input needed).
    pub fn scales_input(&self) -> bool {
        !matches!(
            self.cfg.kind,
            SchedulerKind::DpmSolverMultistep | SchedulerKind::UniPcMultistep | SchedulerKind::Pndm
        )
    }

    /// The timestep the model is evaluated at in step `i`.
    pub fn model_timestep(&self, i: usize) -> f32 {
        self.timesteps[i]
    }

    /// Whether step `i` draws a Gaussian (Euler ancestral and SDE-DPM-Solver++: every step).
    pub fn needs_noise(&self, i: usize) -> bool {
        i < self.num_steps() && self.draws_noise()
    }

    fn draws_noise(&self) -> bool {
        match self.cfg.kind {
            SchedulerKind::EulerAncestral => true,
            SchedulerKind::DpmSolverMultistep => {
                self.cfg.algorithm_type == DpmAlgorithm::SdeDpmSolverPP
            }
            _ => false,
        }
    }

    /// Rows of step noise a run reads (one per step when it draws any).
    pub fn noise_rows(&self) -> usize {
        if self.draws_noise() {
            self.num_steps()
        } else {
            0
        }
    }

    /// f32 elements of multistep history [`SigmaScheduler::step`] needs for `shape`:
    /// `solver_order` converted model outputs for DPM-Solver, else 0.
    pub fn history_len(&self, shape: StepShape) -> usize {
        match self.cfg.kind {
            SchedulerKind::DpmSolverMultistep => shape
                .len()
                .and_then(|n| n.checked_mul(self.cfg.solver_order))
                .unwrap_or(usize::MAX),
            // `solver_order` + 1 converted outputs (the corrector reads the previous
            // `solver_order` and this step's) and the last (corrected) sample.
            SchedulerKind::UniPcMultistep => shape
                .len()
                .and_then(|n| n.checked_mul(self.cfg.solver_order + 2))
                .unwrap_or(usize::MAX),
            // Four past model outputs, the sample the first steps start from and (PRK) the
            // Runge-Kutta sum.
            SchedulerKind::Pndm => shape
                .len()
                .and_then(|n| n.checked_mul(if self.cfg.skip_prk_steps { 5 } else { 6 }))
                .unwrap_or(usize::MAX),
            // The first-order derivative and the sample it started from.
            SchedulerKind::Heun => shape
                .len()
                .and_then(|n| n.checked_mul(2))
                .unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    /// The order DPM-Solver (UniPC: its predictor) uses at step `i` (1 for the other classes).
    pub fn order_at(&self, i: usize) -> usize {
        if self.cfg.kind == SchedulerKind::UniPcMultistep {
            let c = &self.cfg;
            let mut order = c.solver_order;
            if c.lower_order_final {
                order = order.min(self.num_steps() - i);
            }
            return order.min(i + 1);
        }
        if self.cfg.kind != SchedulerKind::DpmSolverMultistep {
            return 1;
        }
        let c = &self.cfg;
        let n = self.num_steps();
        let lower_final = i + 1 == n
            && (c.euler_at_final
                || (c.lower_order_final && n < 15)
                || c.final_sigmas_type == FinalSigmas::Zero);
        let lower_second = i + 2 == n && c.lower_order_final && n < 15;
        if c.solver_order == 1 || i < 1 || lower_final {
            1
        } else if c.solver_order == 2 || i < 2 || lower_second {
            2
        } else {
            3
        }
    }

    /// Step `i`: `sample` (x at sigma_i, `[B, C, H, W]`) becomes x at sigma_{i+1} in place.
    ///
    /// - `model_output`: the UNet's output on the scaled input, `[B, C, H, W]` or
    ///   `[B, 2C, H, W]` (the variance channels are ignored).
    /// - `noise`: `[B, C, H, W]` standard normal, required when [`SigmaScheduler::needs_noise`].
    /// - `history`: [`SigmaScheduler::history_len`] floats kept by the caller across the steps
    ///   of one run (steps must run in order from 0).
    ///
    /// Every length is checked ([`Error::BufferSize`]); nothing is allocated.
    pub fn step(
        &self,
        i: usize,
        shape: StepShape,
        model_output: &[f32],
        sample: &mut [f32],
        noise: Option<&[f32]>,
        history: &mut [f32],
    ) -> Result<()> {
        let steps = self.num_steps();
        if i >= steps {
            return Err(invalid_arg(
                "step_index",
                format!("{i} is past the last step ({steps} steps)"),
            ));
        }
        if shape.is_empty() {
            return Err(invalid_arg(
                "step shape",
                "every dimension must be at least 1",
            ));
        }
        let (per, n) = match (shape.sample_len(), shape.len()) {
            (Some(per), Some(n)) if n.checked_mul(self.cfg.solver_order.max(4) + 2).is_some() => {
                (per, n)
            }
            _ => return Err(invalid_arg("step shape", "B * C * H * W overflows")),
        };
        check_len("sample [B, C, H, W]", n, sample.len())?;
        let doubled = if model_output.len() == 2 * n {
            true
        } else {
            check_len("model output [B, C, H, W]", n, model_output.len())?;
            false
        };
        let noise = step_noise(self.needs_noise(i), i, n, noise)?;
        let hist_len = self.history_len(shape);
        if history.len() < hist_len {
            return Err(Error::BufferSize {
                what: "scheduler history",
                expected: hist_len,
                found: history.len(),
            });
        }
        let stride = if doubled { 2 * per } else { per };
        // PNDM has no sigmas (it steps on alpha-bars).
        let (s, s_next) = match self.sigmas.get(i..i + 2) {
            Some(&[a, b]) => (a, b),
            _ => (0.0, 0.0),
        };
        let pred = self.cfg.prediction_type;
        match self.cfg.kind {
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let ancestral = self.cfg.kind == SchedulerKind::EulerAncestral;
                // Euler ancestral: split the move to sigma_next into a deterministic part down
                // to sigma_down and fresh noise of std sigma_up. These scalars, and the step
                // dt, are float32 in diffusers (0-d float32 tensors); at large sigma (cosine
                // betas: 2e4) dt's rounding shows in the result, so they are formed the same way.
                let (s32, n32) = (s as f32, s_next as f32);
                let (target, up) = if ancestral {
                    let up2 = n32 * n32 * (s32 * s32 - n32 * n32) / (s32 * s32);
                    let up = libm::sqrtf(up2.max(0.0));
                    (libm::sqrtf((n32 * n32 - up * up).max(0.0)), up as f64)
                } else {
                    (n32, 0.0)
                };
                let dt = (target - s32) as f64;
                // v-prediction's scalars as diffusers forms them, in float32: for large sigma
                // (cosine betas) `sigma^2 + 1` rounds, and parity follows it.
                let sq1 = s32 * s32 + 1.0;
                let v_m = (-s32 / libm::sqrtf(sq1)) as f64;
                let v_div = sq1 as f64;
                for b in 0..shape.batch {
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
            SchedulerKind::Heun => {
                self.heun_step(i, per, stride, shape.batch, model_output, sample, history)
            }
            SchedulerKind::UniPcMultistep => {
                self.unipc_step(i, per, stride, shape.batch, model_output, sample, history)
            }
            SchedulerKind::Pndm => {
                self.pndm_step(i, per, stride, shape.batch, model_output, sample, history)
            }
            SchedulerKind::DpmSolverMultistep => self.dpm_step(
                i,
                per,
                stride,
                shape.batch,
                model_output,
                sample,
                noise,
                history,
            ),
            _ => unreachable!("checked in new"),
        }
        Ok(())
    }

    /// Heun: evaluation `i` is a first-order (Euler) step when even, the second-order
    /// correction of the previous one when odd (the sigmas and timesteps are doubled).
    #[allow(clippy::too_many_arguments)]
    fn heun_step(
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
            for k in 0..per {
                let j = b * per + k;
                let xi = sample[j] as f64;
                let mi = m[k] as f64;
                let mut x0 = match c.prediction_type {
                    PredictionType::Epsilon => xi - s_in * mi,
                    PredictionType::VPrediction => mi * v_m + xi / v_div,
                    PredictionType::Sample => mi,
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

    /// UniPC step `i`: convert the model output, correct the previous step's result with it
    /// (UniC, unless disabled), then predict the next sample (UniP). Coefficients as
    /// diffusers' `multistep_uni_c_bh_update` / `multistep_uni_p_bh_update`, in f64.
    #[allow(clippy::too_many_arguments)]
    fn unipc_step(
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
        let slots = c.solver_order + 1;
        let slot = |j: usize| (j % slots) * n;
        let (outs, last) = history.split_at_mut(slots * n);
        let last = &mut last[..n];
        let x0 = c.predict_x0;
        // convert_model_output (from the uncorrected sample) into this step's slot.
        let (a0, s0) = alpha_sigma(self.sigmas[i]);
        let here = slot(i);
        let to = &mut outs[here..here + n];
        convert_model_output(
            x0,
            c.prediction_type,
            (a0, s0),
            sample,
            model_output,
            (per, stride),
            to,
        );
        // Corrector: from the last sample at sigma_{i-1}, with the order step i-1 predicted with.
        if i > 0 && !c.disable_corrector.contains(&(i - 1)) {
            let order = self.order_at(i - 1);
            let co = self.unipc_coeffs(i - 1, order, true);
            let m0 = slot(i - 1);
            for k in 0..n {
                let m0k = outs[m0 + k] as f64;
                let mut v = co.cx * last[k] as f64 + co.c0 * m0k;
                for j in 1..order {
                    let mj = outs[slot(i - 1 - j) + k] as f64;
                    v += co.cd[j - 1] * (mj - m0k);
                }
                v += co.ct * (outs[here + k] as f64 - m0k);
                sample[k] = v as f32;
            }
        }
        // Predictor from the (corrected) sample at sigma_i.
        last.copy_from_slice(&sample[..n]);
        let order = self.order_at(i);
        let co = self.unipc_coeffs(i, order, false);
        for k in 0..n {
            let m0k = outs[here + k] as f64;
            let mut v = co.cx * last[k] as f64 + co.c0 * m0k;
            for j in 1..order {
                let mj = outs[slot(i - j) + k] as f64;
                v += co.cd[j - 1] * (mj - m0k);
            }
            sample[k] = v as f32;
        }
    }

    /// The UniP (`corrector` false) or UniC (true) update from sigma_s to sigma_{s+1} of
    /// `order`, as x_t = cx x + c0 m0 + sum_j cd_j (m_{s-j} - m0) [+ ct (m_t - m0)].
    ///
    /// The scalars are float32 as in diffusers (0-d float32 tensors): near the last step the
    /// update cancels (x against sigma * eps), and their rounding shows in the result.
    fn unipc_coeffs(&self, s: usize, order: usize, corrector: bool) -> UniCoeffs {
        let c = &self.cfg;
        let sg = |j: usize| self.sigmas[j] as f32;
        let (at, st) = alpha_sigma32(sg(s + 1));
        let (a0, s0) = alpha_sigma32(sg(s));
        let l0 = lambda32(sg(s));
        let h = lambda32(sg(s + 1)) - l0;
        // rks: (lambda_{s-j} - lambda_s) / h for j = 1..order-1, then 1.
        let mut rks = [1.0f32; 3];
        for j in 1..order {
            rks[j - 1] = (lambda32(sg(s - j)) - l0) / h;
        }
        rks[order - 1] = 1.0;
        let hh = if c.predict_x0 { -h } else { h };
        let h_phi_1 = libm::expm1f(hh);
        let b_h = match c.unipc_solver {
            UniPcSolver::Bh1 => hh,
            UniPcSolver::Bh2 => h_phi_1,
        };
        let mut b = [0.0f32; 3];
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1u32;
        for (j, bj) in b.iter_mut().enumerate().take(order) {
            *bj = h_phi_k * factorial as f32 / b_h;
            factorial *= j as u32 + 2;
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        // rhos: the predictor solves the (order-1)-square system, the corrector the full one.
        let m = if corrector { order } else { order - 1 };
        let mut rhos = [0.0f64; 3];
        if (corrector && order == 1) || (!corrector && order == 2) {
            rhos[0] = 0.5;
        } else if m > 0 {
            // R[r][col] = rks[col]^r
            let mut a = [[0.0f64; 4]; 3];
            for (r, row) in a.iter_mut().enumerate().take(m) {
                for col in 0..m {
                    row[col] = match r {
                        0 => 1.0,
                        1 => rks[col],
                        _ => rks[col] * rks[col],
                    } as f64;
                }
                row[3] = b[r] as f64;
            }
            solve(&mut a, m, &mut rhos);
            // torch.linalg.solve in float32.
            for r in rhos.iter_mut() {
                *r = *r as f32 as f64;
            }
        }
        let (cx, scale, c0) = if c.predict_x0 {
            (st / s0, -(at * b_h), -(at * h_phi_1))
        } else {
            (at / a0, -(st * b_h), -(st * h_phi_1))
        };
        let (cx, scale, c0) = (cx as f64, scale as f64, c0 as f64);
        let mut cd = [0.0f64; 2];
        for j in 1..order {
            cd[j - 1] = scale * rhos[j - 1] / rks[j - 1] as f64;
        }
        let ct = if corrector { scale * rhos[m - 1] } else { 0.0 };
        UniCoeffs { cx, c0, cd, ct }
    }

    /// PNDM evaluation `i`: a Runge-Kutta stage (the first 12 unless `skip_prk_steps`) or a
    /// linear multistep (PLMS) step, as diffusers' `step_prk` / `step_plms`.
    #[allow(clippy::too_many_arguments)]
    fn pndm_step(
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

    #[allow(clippy::too_many_arguments)]
    fn dpm_step(
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
        let (a0, s0) = alpha_sigma(self.sigmas[i]);
        let here = slot(i);
        let to = &mut history[here..here + n];
        convert_model_output(
            data,
            c.prediction_type,
            (a0, s0),
            sample,
            model_output,
            (per, stride),
            to,
        );
        let used = self.order_at(i);
        let sg = |j: usize| self.sigmas[j];
        let (at, st) = alpha_sigma(sg(i + 1));
        let lt = lambda(sg(i + 1));
        let l0 = lambda(sg(i));
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
            let l1 = lambda(sg(i - 1));
            let r0 = (l0 - l1) / h;
            let r1 = if used >= 3 {
                (l1 - lambda(sg(i - 2))) / h
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
fn lambda_clipped_count(cfg: &SchedulerConfig, ac: &[f64]) -> usize {
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

/// `_sigma_to_alpha_sigma_t` in float32.
fn alpha_sigma32(s: f32) -> (f32, f32) {
    let alpha = 1.0 / libm::sqrtf(s * s + 1.0);
    (alpha, s * alpha)
}

/// log alpha - log sigma in float32.
fn lambda32(s: f32) -> f32 {
    let (a, sg) = alpha_sigma32(s);
    libm::logf(a) - libm::logf(sg)
}

/// One UniPC update's coefficients ([`SigmaScheduler::unipc_coeffs`]).
struct UniCoeffs {
    cx: f64,
    c0: f64,
    cd: [f64; 2],
    ct: f64,
}

/// Solves the m x m system in `a` (augmented: column 3 is the right-hand side) into `x` by
/// Gaussian elimination with partial pivoting (m <= 3).
fn solve(a: &mut [[f64; 4]; 3], m: usize, x: &mut [f64; 3]) {
    for col in 0..m {
        let p = (col..m)
            .max_by(|&r1, &r2| libm::fabs(a[r1][col]).total_cmp(&libm::fabs(a[r2][col])))
            .unwrap_or(col);
        a.swap(col, p);
        for r in col + 1..m {
            let f = a[r][col] / a[col][col];
            for k in col..4 {
                a[r][k] -= f * a[col][k];
            }
        }
    }
    for r in (0..m).rev() {
        let mut v = a[r][3];
        for k in r + 1..m {
            v -= a[r][k] * x[k];
        }
        x[r] = v / a[r][r];
    }
}

/// diffusers' `convert_model_output` of the multistep solvers: the model output as the data
/// prediction x0 (`data`) or as the noise eps, at alpha `a`, sigma `s`; `model_output` rows
/// are `stride` floats apart (learned-variance channels after the first `per`).
fn convert_model_output(
    data: bool,
    prediction: PredictionType,
    (a, s): (f64, f64),
    sample: &[f32],
    model_output: &[f32],
    (per, stride): (usize, usize),
    to: &mut [f32],
) {
    for (b, row) in to.chunks_exact_mut(per.max(1)).enumerate() {
        for (k, o) in row.iter_mut().enumerate() {
            let xi = sample[b * per + k] as f64;
            let mi = model_output[b * stride + k] as f64;
            let v = match (data, prediction) {
                (true, PredictionType::Epsilon) => (xi - s * mi) / a,
                (true, PredictionType::Sample) => mi,
                (true, PredictionType::VPrediction) => a * xi - s * mi,
                (false, PredictionType::Epsilon) => mi,
                (false, PredictionType::Sample) => (xi - a * mi) / s,
                (false, PredictionType::VPrediction) => a * mi + s * xi,
            };
            *o = v as f32;
        }
    }
}
