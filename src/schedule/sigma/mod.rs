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
//!
//! This module holds the shared schedule (sigmas, timesteps, interpolation, Karras) and the
//! driver; each class's step is its own submodule.

use alloc::format;
use alloc::vec::Vec;

use super::beta_dist::beta_ppf;
use super::betas::{alphas_cumprod, betas};
use super::config::{
    BetaSchedule, DpmAlgorithm, FinalSigmas, InterpolationType, PredictionType, SchedulerConfig,
    SchedulerKind, TimestepSpacing, TimestepType, UniPcSolver,
};
use super::scheduler::{check_len, quantile, step_noise, torch_clamp, StepShape};
use super::timesteps::{arange_f64, round_half_even};
use crate::error::{invalid_arg, unsupported, Error, Result};

mod deis;
mod dpm_singlestep;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod heun;
mod ipndm;
mod kdpm2;
mod lms;
mod pndm;
mod unipc;

use dpm_solver::lambda_clipped_count;

/// Karras et al.'s rho.
const RHO: f64 = 7.0;

/// The alpha = beta of diffusers' `_convert_to_beta` (its defaults; no config key sets them).
const BETA_SIGMA_AB: f64 = 0.6;

/// How a class lays out its inference sigmas (diffusers' `use_*_sigmas` / `use_lu_lambdas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ramp {
    /// The training sigmas interpolated at the spaced timesteps.
    Interp,
    Karras,
    Exponential,
    Beta,
    /// DPM-Solver multistep's `use_lu_lambdas`.
    Lu,
    /// Flow-matching sigmas (`use_flow_sigmas`, `flow_shift`) of DPM-Solver, UniPC and DEIS.
    Flow,
}

impl Ramp {
    /// The ramp of `cfg`, in diffusers' precedence (Karras, then Lu, exponential, beta). A
    /// class without an option ignores it, as diffusers' `from_config` drops keys the class
    /// does not take (a config converted with `with_kind`).
    fn of(cfg: &SchedulerConfig) -> Ramp {
        let has_exp_beta = cfg.kind.takes_exponential_and_beta_sigmas();
        if cfg.use_karras_sigmas {
            Ramp::Karras
        } else if cfg.use_lu_lambdas && cfg.kind == SchedulerKind::DpmSolverMultistep {
            Ramp::Lu
        } else if cfg.use_exponential_sigmas && has_exp_beta {
            Ramp::Exponential
        } else if cfg.use_beta_sigmas && has_exp_beta {
            Ramp::Beta
        } else if cfg.use_flow_sigmas
            && matches!(
                cfg.kind,
                SchedulerKind::DpmSolverMultistep
                    | SchedulerKind::DpmSolverSinglestep
                    | SchedulerKind::UniPcMultistep
                    | SchedulerKind::DeisMultistep
            )
        {
            Ramp::Flow
        } else {
            Ramp::Interp
        }
    }
}

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
    /// DPM-Solver singlestep: the order of each step (diffusers' `order_list`).
    orders: Vec<u8>,
    /// IPNDM: its betas (N + 1, float32; its alphas are in `alphas`).
    ipndm_betas: Vec<f32>,
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
    if x.is_nan() || x <= 0.0 {
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
        let single = cfg.kind == SchedulerKind::DpmSolverSinglestep;
        // DPM-Solver, multistep or singlestep (the same schedule and options).
        let dpm_only = cfg.kind == SchedulerKind::DpmSolverMultistep || single;
        let unipc = cfg.kind == SchedulerKind::UniPcMultistep;
        // DEIS: DPM-Solver's timesteps without lambda clipping, a final sigma of sigma_min.
        let deis = cfg.kind == SchedulerKind::DeisMultistep;
        // DPM-Solver and UniPC share the integer timesteps, the VP alpha/sigma and the
        // unscaled model input.
        let dpm = dpm_only || unipc || deis;
        if unipc {
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
        if matches!(
            cfg.kind,
            SchedulerKind::EulerAncestral | SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Ancestral
        ) && cfg.prediction_type == PredictionType::Sample
        {
            return Err(unsupported(
                "prediction_type",
                format!("sample ({} does not implement it)", cfg.kind.class_name()),
            ));
        }
        if single && cfg.thresholding && cfg.algorithm_type == DpmAlgorithm::DpmSolver {
            // diffusers 0.42 indexes its alphas with a None timestep there and fails.
            return Err(unsupported(
                "thresholding",
                "true with algorithm_type dpmsolver (DPMSolverSinglestepScheduler fails on it in \
                 diffusers 0.42: use dpmsolver++)",
            ));
        }
        let noise_algorithm = matches!(
            cfg.algorithm_type,
            DpmAlgorithm::DpmSolver | DpmAlgorithm::SdeDpmSolver
        );
        if cfg.prediction_type == PredictionType::FlowPrediction
            && ((dpm_only && noise_algorithm) || (unipc && !cfg.predict_x0))
        {
            // diffusers converts flow_prediction to x_0 only (ValueError otherwise).
            return Err(unsupported(
                "prediction_type",
                "flow_prediction with a noise-prediction solver (diffusers refuses it: use \
                 dpmsolver++ / sde-dpmsolver++, or UniPC with predict_x0)",
            ));
        }
        if single && cfg.algorithm_type == DpmAlgorithm::SdeDpmSolver {
            return Err(unsupported(
                "algorithm_type",
                "sde-dpmsolver (DPMSolverSinglestepScheduler does not implement it)",
            ));
        }
        if dpm_only
            && matches!(
                cfg.algorithm_type,
                DpmAlgorithm::DpmSolver | DpmAlgorithm::SdeDpmSolver
            )
            && cfg.final_sigmas_type == FinalSigmas::Zero
        {
            return Err(unsupported(
                "final_sigmas_type",
                format!(
                    "zero with algorithm_type {} (diffusers refuses it: use sigma_min)",
                    cfg.algorithm_type
                ),
            ));
        }
        if cfg.kind == SchedulerKind::Ipndm {
            return SigmaScheduler::new_ipndm(cfg, n);
        }
        let b = betas(&cfg)?;
        let mut ac = alphas_cumprod(&b);
        if cfg.rescale_betas_zero_snr {
            // diffusers: "close to 0 without being 0 so first sigma is not inf" (fp16's
            // smallest subnormal), in Euler, Euler ancestral, DPM-Solver multistep and UniPC.
            if let Some(last) = ac.last_mut() {
                *last = libm::exp2(-24.0);
            }
        }
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
            let last = if unipc || deis {
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
            // The singlestep class has no `timestep_spacing`: always linspace.
            let spacing = if single {
                TimestepSpacing::Linspace
            } else {
                cfg.timestep_spacing
            };
            match spacing {
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

        let ramp = Ramp::of(&cfg);
        // Euler's log-linear sigmas: a ramp then starts from the training sigmas' ends.
        let log_linear = cfg.kind == SchedulerKind::Euler
            && cfg.interpolation_type == InterpolationType::LogLinear;
        let (mut sigmas, timesteps): (Vec<f64>, Vec<f64>) = if ramp == Ramp::Flow {
            // Flow matching: sigma = 1 - alpha on a linear grid, shifted by `flow_shift`; the
            // model timestep sigma * T (truncated below, as the integer classes do).
            let shift = cfg.flow_shift;
            let shifted = |x: f64| shift * x / (1.0 + (shift - 1.0) * x);
            let grid = linspace(1.0, 1.0 / t_train as f64, n + 1);
            let mut s: Vec<f64> = if unipc {
                let mut v: Vec<f64> = grid[..n].iter().map(|&x| shifted(x)).collect();
                // `shift_terminal` (0 reads as false in diffusers): 1 - sigma scaled so the
                // last sigma is the terminal value.
                if let Some(terminal) = cfg.shift_terminal.filter(|&x| x != 0.0) {
                    let scale = (1.0 - v[n - 1]) / (1.0 - terminal);
                    for x in v.iter_mut() {
                        *x = 1.0 - (1.0 - *x) / scale;
                    }
                }
                v
            } else {
                let mut v: Vec<f64> = grid.iter().map(|&a| shifted(1.0 - a)).collect();
                v.reverse();
                v.truncate(n);
                v
            };
            // UniPC: "to avoid inf torch.log(alpha_si)" at sigma 1.
            if unipc && libm::fabs(s[0] - 1.0) < 1e-6 {
                s[0] -= 1e-6;
            }
            let t = s.iter().map(|&x| x * t_train as f64).collect();
            (s, t)
        } else if ramp != Ramp::Interp {
            // The ramp's ends: the training sigmas' (DPM-Solver, UniPC, DEIS), or the
            // interpolated schedule's, unless the config holds `sigma_min` / `sigma_max`: diffusers
            // reads them wherever present, hidden keys included (`hasattr(self.config, ...)`),
            // but for LMS's Karras ramp.
            let (lo, hi) = if cfg.kind == SchedulerKind::Lms && ramp == Ramp::Karras {
                let interp_s: Vec<f64> = raw.iter().map(|&t| interp(t, &sig)).collect();
                (interp_s[interp_s.len() - 1], interp_s[0])
            } else if dpm {
                (
                    cfg.sigma_min.unwrap_or(sig[0] as f64),
                    cfg.sigma_max.unwrap_or(sig[t_train - 1] as f64),
                )
            } else {
                let interp_s: Vec<f64> = raw.iter().map(|&t| interp(t, &sig)).collect();
                (
                    cfg.sigma_min.unwrap_or(if log_linear {
                        sig[0] as f64
                    } else {
                        interp_s[interp_s.len() - 1]
                    }),
                    cfg.sigma_max.unwrap_or(if log_linear {
                        sig[t_train - 1] as f64
                    } else {
                        interp_s[0]
                    }),
                )
            };
            let s = match ramp {
                Ramp::Karras => karras(lo, hi, n),
                Ramp::Exponential => linspace(libm::log(hi), libm::log(lo), n)
                    .into_iter()
                    .map(libm::exp)
                    .collect(),
                Ramp::Beta => linspace(0.0, 1.0, n)
                    .into_iter()
                    .map(|r| lo + beta_ppf(1.0 - r, BETA_SIGMA_AB, BETA_SIGMA_AB) * (hi - lo))
                    .collect(),
                // Linear in log sigma between the float32 log sigmas' ends (rho = 1).
                Ramp::Lu => {
                    let (l_min, l_max) = (log_sigmas[0], log_sigmas[t_train - 1]);
                    linspace(0.0, 1.0, n)
                        .into_iter()
                        .map(|r| libm::exp(l_max + r * (l_min - l_max)))
                        .collect()
                }
                Ramp::Interp | Ramp::Flow => unreachable!("handled above"),
            };
            let mut t: Vec<f64> = s.iter().map(|&x| sigma_to_t(x, &log_sigmas)).collect();
            let kdpm2 = matches!(
                cfg.kind,
                SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Ancestral
            );
            // Karras and Lu timesteps are rounded (DPM-Solver, UniPC, DEIS, KDPM2), except for
            // cosine betas in the multistep DPM-Solver where diffusers truncates (astype
            // int64); exponential and beta ones are not (the integer classes truncate below).
            if matches!(ramp, Ramp::Karras | Ramp::Lu) && (dpm || kdpm2) {
                for v in t.iter_mut() {
                    *v = if dpm_only
                        && !single
                        && cfg.beta_schedule == BetaSchedule::SquaredcosCapV2
                    {
                        libm::trunc(*v)
                    } else {
                        round_half_even(*v)
                    };
                }
            }
            (s, t)
        } else if log_linear {
            // N + 1 sigmas, log-linear from the largest training sigma to the smallest (the
            // last is where the run ends; diffusers' appended final sigma is never reached).
            let (hi, lo) = (libm::log(sig[t_train - 1] as f64), libm::log(sig[0] as f64));
            let s = linspace(hi, lo, n + 1).into_iter().map(libm::exp).collect();
            (s, raw)
        } else {
            let s = raw.iter().map(|&t| interp(t, &sig)).collect();
            (s, raw)
        };
        let last_sigma = match cfg.final_sigmas_type {
            // DEIS has no final_sigmas_type: sigma_min (a ramp's: its last sigma).
            _ if deis && ramp != Ramp::Interp => sigmas[n - 1],
            _ if deis => sig[0] as f64,
            FinalSigmas::Zero => 0.0,
            // UniPC with a sigma ramp ends on the ramp's last sigma (its `sigma_min`).
            FinalSigmas::SigmaMin if unipc && ramp != Ramp::Interp => sigmas[n - 1],
            FinalSigmas::SigmaMin => sig[0] as f64,
        };
        if !(log_linear && ramp == Ramp::Interp) {
            sigmas.push(last_sigma);
        }
        for s in sigmas.iter_mut() {
            *s = *s as f32 as f64;
        }

        let kdpm2 = matches!(
            cfg.kind,
            SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Ancestral
        );
        let (sigmas, timesteps) = if kdpm2 {
            let (s, t) = kdpm2::interleave(
                &sigmas,
                &timesteps,
                &log_sigmas,
                cfg.kind == SchedulerKind::Kdpm2Ancestral,
            );
            // An interpolated sigma of 0 before the last step (KDPM2 ancestral when
            // sigma_down underflows): diffusers evaluates the model at a NaN timestep there.
            if let Some(k) = (1..s.len() - 1)
                .step_by(2)
                .find(|&j| s[j] <= 0.0 || s[j].is_nan())
            {
                return Err(Error::InvalidArgument {
                    what: "num_inference_steps",
                    message: format!(
                        "{n} steps: {}'s interpolated sigma of evaluation {k} is 0 (diffusers \
                         evaluates the model at a NaN timestep there); choose more steps",
                        cfg.kind.class_name()
                    ),
                });
            }
            (s, t)
        } else {
            (sigmas, timesteps)
        };
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
        let orders = if single {
            dpm_singlestep::order_list(&cfg, n)
        } else {
            Vec::new()
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
        let built = SigmaScheduler {
            cfg,
            num_inference_steps: n,
            timesteps,
            rounded,
            sigmas,
            init_noise_sigma,
            alphas: Vec::new(),
            final_alpha: 0.0,
            prk_len: 0,
            orders,
            ipndm_betas: Vec::new(),
        };
        if built.cfg.kind == SchedulerKind::DpmSolverMultistep
            && built.cfg.algorithm_type == DpmAlgorithm::SdeDpmSolver
        {
            if let Some(i) = (0..built.num_steps()).find(|&i| built.order_at(i) == 3) {
                // diffusers 0.42 has no third-order sde-dpmsolver update (UnboundLocalError).
                return Err(unsupported(
                    "solver_order",
                    format!(
                        "3 with algorithm_type sde-dpmsolver ({n} steps reach a third-order \
                         step at {i}, which diffusers 0.42 does not implement: use solver_order 2)"
                    ),
                ));
            }
        }
        Ok(built)
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

    /// sigma of every step and the final one (`num_steps() + 1` values, float32); empty for
    /// PNDM and IPNDM, which have no sigma ramp.
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
            | SchedulerKind::DeisMultistep
            | SchedulerKind::Ipndm
            | SchedulerKind::Pndm
            | SchedulerKind::DpmSolverSinglestep => 1.0,
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
            SchedulerKind::DpmSolverMultistep
                | SchedulerKind::UniPcMultistep
                | SchedulerKind::DeisMultistep
                | SchedulerKind::Ipndm
                | SchedulerKind::Pndm
                | SchedulerKind::DpmSolverSinglestep
        )
    }

    /// The timestep the model is evaluated at in step `i`.
    pub fn model_timestep(&self, i: usize) -> f32 {
        self.timesteps[i]
    }

    /// Whether step `i` draws a Gaussian (Euler ancestral and SDE-DPM-Solver++: every step).
    pub fn needs_noise(&self, i: usize) -> bool {
        let ancestral_kdpm2 = self.cfg.kind == SchedulerKind::Kdpm2Ancestral;
        // KDPM2 ancestral draws after each second-order evaluation only.
        i < self.num_steps() && self.draws_noise() && !(ancestral_kdpm2 && i.is_multiple_of(2))
    }

    /// The row of step noise evaluation `i` reads: the number of draws before it (diffusers'
    /// draw order).
    pub fn noise_row(&self, i: usize) -> usize {
        if self.cfg.kind == SchedulerKind::Kdpm2Ancestral {
            i / 2
        } else {
            i
        }
    }

    fn draws_noise(&self) -> bool {
        match self.cfg.kind {
            SchedulerKind::EulerAncestral | SchedulerKind::Kdpm2Ancestral => true,
            SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverSinglestep => {
                matches!(
                    self.cfg.algorithm_type,
                    DpmAlgorithm::SdeDpmSolverPP | DpmAlgorithm::SdeDpmSolver
                )
            }
            _ => false,
        }
    }

    /// Rows of step noise a run reads (one per step when it draws any; KDPM2 ancestral: one
    /// per second-order evaluation).
    pub fn noise_rows(&self) -> usize {
        if self.cfg.kind == SchedulerKind::Kdpm2Ancestral {
            self.num_steps() / 2
        } else if self.draws_noise() {
            self.num_steps()
        } else {
            0
        }
    }

    /// f32 elements of multistep history [`SigmaScheduler::step`] needs for `shape`: the
    /// class's [`SigmaScheduler::history_slots`] samples, plus one sample's worth of scratch
    /// for the per-sample quantile of dynamic thresholding when it is on.
    pub fn history_len(&self, shape: StepShape) -> usize {
        let scratch = if self.thresholds() {
            shape.sample_len().unwrap_or(usize::MAX)
        } else {
            0
        };
        shape
            .len()
            .and_then(|n| n.checked_mul(self.history_slots()))
            .and_then(|h| h.checked_add(scratch))
            .unwrap_or(usize::MAX)
    }

    /// Whether the x_0 prediction is dynamically thresholded (DPM-Solver, UniPC with data
    /// prediction, DEIS; diffusers' `thresholding`).
    fn thresholds(&self) -> bool {
        let c = &self.cfg;
        c.thresholding
            && match c.kind {
                SchedulerKind::DpmSolverMultistep
                | SchedulerKind::DpmSolverSinglestep
                | SchedulerKind::DeisMultistep => true,
                SchedulerKind::UniPcMultistep => c.predict_x0,
                _ => false,
            }
    }

    /// Whether the run is on flow-matching sigmas (`use_flow_sigmas`: alpha = 1 - sigma).
    fn flow(&self) -> bool {
        Ramp::of(&self.cfg) == Ramp::Flow
    }

    /// alpha_t, sigma_t of sigma `s` (`_sigma_to_alpha_sigma_t`): VP, or flow matching's
    /// (1 - s, s).
    fn alpha_sigma(&self, s: f64) -> (f64, f64) {
        if self.flow() {
            (1.0 - s, s)
        } else {
            alpha_sigma(s)
        }
    }

    /// The log-SNR log alpha - log sigma of sigma `s`.
    fn lambda(&self, s: f64) -> f64 {
        let (a, sg) = self.alpha_sigma(s);
        libm::log(a) - libm::log(sg)
    }

    /// Whole samples of history the class keeps (the thresholding scratch comes after them).
    fn history_slots(&self) -> usize {
        match self.cfg.kind {
            // `solver_order` converted model outputs.
            SchedulerKind::DpmSolverMultistep => self.cfg.solver_order,
            // `solver_order` + 1 converted outputs (the corrector reads the previous
            // `solver_order` and this step's) and the last (corrected) sample.
            SchedulerKind::UniPcMultistep => self.cfg.solver_order + 2,
            // Four past model outputs, the sample the first steps start from and (PRK) the
            // Runge-Kutta sum.
            SchedulerKind::Pndm => {
                if self.cfg.skip_prk_steps {
                    5
                } else {
                    6
                }
            }
            // The last four combined outputs.
            SchedulerKind::Ipndm => 4,
            // `solver_order` noise predictions.
            SchedulerKind::DeisMultistep => self.cfg.solver_order,
            // `solver_order` converted outputs and the sample the current group started from.
            SchedulerKind::DpmSolverSinglestep => self.cfg.solver_order + 1,
            // The sample the first evaluation of a step started from.
            SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Ancestral => 1,
            // The derivatives of the last `LMS_ORDER` steps.
            SchedulerKind::Lms => lms::LMS_ORDER,
            // The first-order derivative and the sample it started from.
            SchedulerKind::Heun => 2,
            _ => 0,
        }
    }

    /// diffusers' `_threshold_sample` on the x_0 prediction in `history[at..at + n]` (rows of
    /// `per` floats), in place; the quantile's selection runs in the scratch after the
    /// history slots. Then, for a noise-prediction slot (`to_eps`: the alpha and sigma of the
    /// step's sample), back to eps = (x - alpha x_0) / sigma.
    fn threshold_slot(
        &self,
        at: usize,
        (n, per): (usize, usize),
        history: &mut [f32],
        to_eps: Option<((f64, f64), &[f32])>,
    ) {
        let c = &self.cfg;
        let (head, scratch) = history.split_at_mut(self.history_slots() * n);
        let scratch = &mut scratch[..per];
        for row in head[at..at + n].chunks_exact_mut(per) {
            let mut nan = false;
            for (a, &v) in scratch.iter_mut().zip(row.iter()) {
                nan |= v.is_nan();
                *a = libm::fabsf(v);
            }
            // torch.quantile returns NaN when the row holds a NaN.
            let q = if nan {
                f64::NAN
            } else {
                quantile(scratch, c.dynamic_thresholding_ratio)
            };
            // float32, as torch holds s.
            let s = torch_clamp(q, 1.0, c.sample_max_value) as f32 as f64;
            for v in row.iter_mut() {
                *v = (torch_clamp(*v as f64, -s, s) / s) as f32;
            }
        }
        if let Some(((a, sg), sample)) = to_eps {
            for (v, &x) in head[at..at + n].iter_mut().zip(sample) {
                *v = ((x as f64 - a * *v as f64) / sg) as f32;
            }
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
        if self.cfg.kind == SchedulerKind::Lms {
            return self.lms_order(i);
        }
        if self.cfg.kind == SchedulerKind::DpmSolverSinglestep {
            return (self.orders[i] as usize).min(i + 1);
        }
        let deis = self.cfg.kind == SchedulerKind::DeisMultistep;
        if self.cfg.kind != SchedulerKind::DpmSolverMultistep && !deis {
            return 1;
        }
        let c = &self.cfg;
        let n = self.num_steps();
        // DEIS has neither `euler_at_final` nor a final sigma of 0.
        let lower_final = i + 1 == n
            && ((c.lower_order_final && n < 15)
                || (!deis && (c.euler_at_final || c.final_sigmas_type == FinalSigmas::Zero)));
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
        match self.cfg.kind {
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => self.euler_step(
                shape.batch,
                per,
                stride,
                s,
                s_next,
                model_output,
                sample,
                noise,
            ),
            SchedulerKind::Heun => {
                self.heun_step(i, per, stride, shape.batch, model_output, sample, history)
            }
            SchedulerKind::UniPcMultistep => {
                self.unipc_step(i, per, stride, shape.batch, model_output, sample, history)
            }
            SchedulerKind::Pndm => {
                self.pndm_step(i, per, stride, shape.batch, model_output, sample, history)
            }
            SchedulerKind::Lms => {
                self.lms_step(i, per, stride, shape.batch, model_output, sample, history)
            }
            SchedulerKind::DeisMultistep => {
                self.deis_step(i, per, stride, shape.batch, model_output, sample, history)
            }
            SchedulerKind::Ipndm => {
                self.ipndm_step(i, per, stride, shape.batch, model_output, sample, history)
            }
            SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Ancestral => self.kdpm2_step(
                i,
                per,
                stride,
                shape.batch,
                model_output,
                sample,
                noise,
                history,
            ),
            SchedulerKind::DpmSolverSinglestep => self.dpm_singlestep_step(
                i,
                per,
                stride,
                shape.batch,
                model_output,
                sample,
                noise,
                history,
            ),
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
                // x_0 = x - sigma v (alpha = 1 - sigma); eps through it (DEIS, as diffusers).
                (true, PredictionType::FlowPrediction) => xi - s * mi,
                (false, PredictionType::FlowPrediction) => (xi - a * (xi - s * mi)) / s,
            };
            *o = v as f32;
        }
    }
}
