//! `DDPMScheduler` / `DDIMScheduler` configuration: diffusers' `scheduler_config.json`, parsed
//! and validated.
//!
//! One struct holds the options of every class, because diffusers lets any class be built from
//! another's config (`EulerDiscreteScheduler.from_config(pndm.config)`), and pipelines routinely
//! swap them. Every key a diffusers scheduler class takes is understood (another class's is
//! hidden, as diffusers keeps it); anything else is rejected with an error naming the key, so a
//! config that would change the computation is never half-read.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde_json::{Map, Value};

use crate::error::{unsupported, Error, Result};

/// Largest `num_train_timesteps` (and `steps_offset`) accepted: far beyond any trained model,
/// small enough that schedule buffers and timestep arithmetic cannot overflow.
pub const MAX_TRAIN_TIMESTEPS: usize = 1 << 20;

const FILE: &str = "scheduler_config.json";

/// Which diffusers scheduler class the config describes (its `_class_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    /// `DDPMScheduler`: ancestral sampling, noise at every step with t > 0.
    Ddpm,
    /// `DDIMScheduler`: deterministic for eta = 0, DDPM-like noise as eta grows.
    Ddim,
    /// `EulerDiscreteScheduler`: Euler steps of the probability-flow ODE in sigma space.
    Euler,
    /// `EulerAncestralDiscreteScheduler`: Euler steps plus fresh noise (one draw per step).
    EulerAncestral,
    /// `DPMSolverMultistepScheduler`: DPM-Solver(++) of order 1-3, optionally the SDE variant.
    DpmSolverMultistep,
    /// `HeunDiscreteScheduler`: Heun's second-order method in sigma space (two model
    /// evaluations per step except the last).
    Heun,
    /// `UniPCMultistepScheduler`: UniPC predictor-corrector of order 1-3 (data prediction).
    UniPcMultistep,
    /// `PNDMScheduler`: pseudo linear multistep (PLMS), after Runge-Kutta warm-up steps unless
    /// `skip_prk_steps`.
    Pndm,
    /// `LMSDiscreteScheduler`: linear multistep (order 4) on the Euler schedule.
    Lms,
    /// `DPMSolverSinglestepScheduler`: DPM-Solver(++) of order 1-3, each group of steps
    /// restarting from its first sample.
    DpmSolverSinglestep,
    /// `KDPM2DiscreteScheduler`: DPM-Solver-2 in sigma space (two model evaluations per step
    /// but the last, the second at an interpolated sigma).
    Kdpm2,
    /// `KDPM2AncestralDiscreteScheduler`: KDPM2 plus fresh noise after each second evaluation.
    Kdpm2Ancestral,
    /// `DEISMultistepScheduler`: log-rho DEIS of order 1-3.
    DeisMultistep,
    /// `IPNDMScheduler`: improved PNDM (fourth-order Adams-Bashforth) on its own sine schedule.
    Ipndm,
    /// `ScoreSdeVeScheduler`: variance-exploding score SDE, Langevin corrector steps and a
    /// reverse-diffusion predictor (`schedule::score_ve`).
    ScoreSdeVe,
    /// `CMStochasticIterativeScheduler`: consistency-model one- and few-step sampling
    /// (`schedule::consistency`).
    CmStochasticIterative,
    /// `LCMScheduler`: latent-consistency multistep sampling (`schedule::lcm`).
    Lcm,
    /// `TCDScheduler`: trajectory-consistency distillation sampling, gamma (eta) stochastic
    /// (`schedule::lcm`).
    Tcd,
}

impl SchedulerKind {
    /// diffusers' class name.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddpm => "DDPMScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerKind::Heun => "HeunDiscreteScheduler",
            SchedulerKind::UniPcMultistep => "UniPCMultistepScheduler",
            SchedulerKind::Pndm => "PNDMScheduler",
            SchedulerKind::Lms => "LMSDiscreteScheduler",
            SchedulerKind::DpmSolverSinglestep => "DPMSolverSinglestepScheduler",
            SchedulerKind::Kdpm2 => "KDPM2DiscreteScheduler",
            SchedulerKind::Kdpm2Ancestral => "KDPM2AncestralDiscreteScheduler",
            SchedulerKind::DeisMultistep => "DEISMultistepScheduler",
            SchedulerKind::Ipndm => "IPNDMScheduler",
            SchedulerKind::ScoreSdeVe => "ScoreSdeVeScheduler",
            SchedulerKind::CmStochasticIterative => "CMStochasticIterativeScheduler",
            SchedulerKind::Lcm => "LCMScheduler",
            SchedulerKind::Tcd => "TCDScheduler",
        }
    }

    /// Every class this library runs.
    pub const ALL: [SchedulerKind; 18] = [
        SchedulerKind::Ddpm,
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::Heun,
        SchedulerKind::UniPcMultistep,
        SchedulerKind::Pndm,
        SchedulerKind::Lms,
        SchedulerKind::DpmSolverSinglestep,
        SchedulerKind::Kdpm2,
        SchedulerKind::Kdpm2Ancestral,
        SchedulerKind::DeisMultistep,
        SchedulerKind::Ipndm,
        SchedulerKind::ScoreSdeVe,
        SchedulerKind::CmStochasticIterative,
        SchedulerKind::Lcm,
        SchedulerKind::Tcd,
    ];

    /// The kind of a diffusers class name.
    pub fn from_class_name(name: &str) -> Option<SchedulerKind> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.class_name() == name)
    }

    /// The options diffusers 0.42's `__init__` of the class takes: the keys `from_config`
    /// passes on when converting to it (see [`SchedulerConfig::with_kind`]).
    pub fn init_keys(self) -> &'static [&'static str] {
        match self {
            SchedulerKind::Ddpm => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "variance_type",
                "clip_sample",
                "prediction_type",
                "thresholding",
                "dynamic_thresholding_ratio",
                "clip_sample_range",
                "sample_max_value",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
            ],
            SchedulerKind::Ddim => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "clip_sample",
                "set_alpha_to_one",
                "steps_offset",
                "prediction_type",
                "thresholding",
                "dynamic_thresholding_ratio",
                "clip_sample_range",
                "sample_max_value",
                "timestep_spacing",
                "rescale_betas_zero_snr",
            ],
            SchedulerKind::Euler => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "prediction_type",
                "interpolation_type",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "sigma_min",
                "sigma_max",
                "timestep_spacing",
                "timestep_type",
                "steps_offset",
                "rescale_betas_zero_snr",
                "final_sigmas_type",
            ],
            SchedulerKind::EulerAncestral => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "prediction_type",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
            ],
            SchedulerKind::DpmSolverMultistep => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "solver_order",
                "prediction_type",
                "thresholding",
                "dynamic_thresholding_ratio",
                "sample_max_value",
                "algorithm_type",
                "solver_type",
                "lower_order_final",
                "euler_at_final",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_lu_lambdas",
                "use_flow_sigmas",
                "flow_shift",
                "final_sigmas_type",
                "lambda_min_clipped",
                "variance_type",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
                "use_dynamic_shifting",
                "time_shift_type",
            ],
            SchedulerKind::Heun => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "prediction_type",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "clip_sample",
                "clip_sample_range",
                "timestep_spacing",
                "steps_offset",
            ],
            SchedulerKind::UniPcMultistep => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "solver_order",
                "prediction_type",
                "thresholding",
                "dynamic_thresholding_ratio",
                "sample_max_value",
                "predict_x0",
                "solver_type",
                "lower_order_final",
                "disable_corrector",
                "solver_p",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_flow_sigmas",
                "flow_shift",
                "timestep_spacing",
                "steps_offset",
                "final_sigmas_type",
                "rescale_betas_zero_snr",
                "use_dynamic_shifting",
                "time_shift_type",
                "sigma_min",
                "sigma_max",
                "shift_terminal",
            ],
            SchedulerKind::Pndm => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "skip_prk_steps",
                "set_alpha_to_one",
                "prediction_type",
                "timestep_spacing",
                "steps_offset",
            ],
            SchedulerKind::Lms => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "prediction_type",
                "timestep_spacing",
                "steps_offset",
            ],
            SchedulerKind::DpmSolverSinglestep => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "solver_order",
                "prediction_type",
                "thresholding",
                "dynamic_thresholding_ratio",
                "sample_max_value",
                "algorithm_type",
                "solver_type",
                "lower_order_final",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_flow_sigmas",
                "flow_shift",
                "final_sigmas_type",
                "lambda_min_clipped",
                "variance_type",
                "use_dynamic_shifting",
                "time_shift_type",
            ],
            SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Ancestral => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "prediction_type",
                "timestep_spacing",
                "steps_offset",
            ],
            SchedulerKind::DeisMultistep => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "solver_order",
                "prediction_type",
                "thresholding",
                "dynamic_thresholding_ratio",
                "sample_max_value",
                "algorithm_type",
                "solver_type",
                "lower_order_final",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_flow_sigmas",
                "flow_shift",
                "timestep_spacing",
                "steps_offset",
                "use_dynamic_shifting",
                "time_shift_type",
            ],
            SchedulerKind::Ipndm => &["num_train_timesteps", "trained_betas"],
            SchedulerKind::ScoreSdeVe => &[
                "num_train_timesteps",
                "snr",
                "sigma_min",
                "sigma_max",
                "sampling_eps",
                "correct_steps",
            ],
            SchedulerKind::CmStochasticIterative => &[
                "num_train_timesteps",
                "sigma_min",
                "sigma_max",
                "sigma_data",
                "s_noise",
                "rho",
                "clip_denoised",
            ],
            SchedulerKind::Lcm => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "original_inference_steps",
                "clip_sample",
                "clip_sample_range",
                "set_alpha_to_one",
                "steps_offset",
                "prediction_type",
                "thresholding",
                "dynamic_thresholding_ratio",
                "sample_max_value",
                "timestep_spacing",
                "timestep_scaling",
                "rescale_betas_zero_snr",
            ],
            SchedulerKind::Tcd => &[
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "original_inference_steps",
                "clip_sample",
                "clip_sample_range",
                "set_alpha_to_one",
                "steps_offset",
                "prediction_type",
                "thresholding",
                "dynamic_thresholding_ratio",
                "sample_max_value",
                "timestep_spacing",
                "timestep_scaling",
                "rescale_betas_zero_snr",
            ],
        }
    }

    /// The classes whose sigma ramps (Karras, exponential, beta) end at `sigma_min` /
    /// `sigma_max` when the config holds them: diffusers reads them with
    /// `hasattr(self.config, ...)`, so a hidden key (given in the JSON, or carried by
    /// `from_config`, though `__init__` does not take it) counts too. LMS reads them for its
    /// exponential and beta ramps only. They are the classes with the exponential and beta
    /// ramps ([`SchedulerKind::takes_exponential_and_beta_sigmas`]).
    pub fn reads_sigma_ends(self) -> bool {
        self.takes_exponential_and_beta_sigmas()
    }

    /// The classes whose `__init__` takes `use_exponential_sigmas` and `use_beta_sigmas`; any
    /// other ignores them, as diffusers' `from_config` drops keys a class does not take.
    pub fn takes_exponential_and_beta_sigmas(self) -> bool {
        matches!(
            self,
            SchedulerKind::Euler
                | SchedulerKind::Heun
                | SchedulerKind::Lms
                | SchedulerKind::Kdpm2
                | SchedulerKind::Kdpm2Ancestral
                | SchedulerKind::DpmSolverMultistep
                | SchedulerKind::DpmSolverSinglestep
                | SchedulerKind::UniPcMultistep
                | SchedulerKind::DeisMultistep
        )
    }

    /// The sigma-parameterised classes (`schedule::sigma`): Euler, Euler ancestral, DPM-Solver,
    /// Heun, UniPC, PNDM.
    pub fn is_sigma(self) -> bool {
        !matches!(self, SchedulerKind::Ddpm | SchedulerKind::Ddim) && !self.is_consistency_or_ve()
    }

    /// The classes of `schedule::score_ve`, `schedule::consistency` and `schedule::lcm`: VE
    /// score SDE, consistency models, LCM, TCD.
    pub fn is_consistency_or_ve(self) -> bool {
        matches!(
            self,
            SchedulerKind::ScoreSdeVe
                | SchedulerKind::CmStochasticIterative
                | SchedulerKind::Lcm
                | SchedulerKind::Tcd
        )
    }
}

/// Every option any class's `__init__` takes ([`SchedulerKind::init_keys`]).
const ALL_INIT_KEYS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "variance_type",
    "clip_sample",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "clip_sample_range",
    "sample_max_value",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
    "set_alpha_to_one",
    "interpolation_type",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "sigma_min",
    "sigma_max",
    "timestep_type",
    "final_sigmas_type",
    "solver_order",
    "algorithm_type",
    "solver_type",
    "lower_order_final",
    "euler_at_final",
    "use_lu_lambdas",
    "use_flow_sigmas",
    "flow_shift",
    "lambda_min_clipped",
    "use_dynamic_shifting",
    "time_shift_type",
    "predict_x0",
    "disable_corrector",
    "solver_p",
    "shift_terminal",
    "skip_prk_steps",
    "snr",
    "sampling_eps",
    "correct_steps",
    "sigma_data",
    "s_noise",
    "rho",
    "clip_denoised",
    "original_inference_steps",
    "timestep_scaling",
];

/// `timestep_type` (Euler): the model timestep of each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepType {
    /// The (possibly fractional) training timestep.
    Discrete,
    /// `0.25 * ln(sigma)` (only with `v_prediction`, as in diffusers; otherwise discrete).
    Continuous,
}

/// `interpolation_type` (Euler): how the inference sigmas are laid out without a sigma ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterpolationType {
    /// The training sigmas interpolated at the (fractional) inference timesteps.
    Linear,
    /// N + 1 sigmas evenly spaced in log sigma between the training sigmas' ends, the model still
    /// called at the spaced timesteps. diffusers 0.42 appends the final sigma as an (N + 2)-th
    /// it never reaches: the last step ends on the smallest training sigma.
    LogLinear,
}

/// `final_sigmas_type`: the sigma after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigmas {
    /// 0: the last step lands on the clean sample.
    Zero,
    /// sigma at training timestep 0.
    SigmaMin,
}

/// `algorithm_type` (DPM-Solver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// Data-prediction DPM-Solver++ (the default).
    DpmSolverPP,
    /// Noise-prediction DPM-Solver.
    DpmSolver,
    /// Stochastic DPM-Solver++ (one Gaussian draw per step).
    SdeDpmSolverPP,
    /// Stochastic noise-prediction DPM-Solver (multistep only; orders 1 and 2, as diffusers).
    SdeDpmSolver,
}

/// `solver_type` (DPM-Solver, order 2): how the second-order term is formed. diffusers maps
/// `logrho`, `bh1` and `bh2` (UniPC's) to `midpoint`; so does this parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverType {
    Midpoint,
    Heun,
}

/// `solver_type` of UniPC: the B(h) of its predictor and corrector. diffusers maps DPM-Solver's
/// `midpoint`, `heun` and `logrho` to `bh2`; so does this parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcSolver {
    /// B(h) = h.
    Bh1,
    /// B(h) = e^h - 1 (the default).
    Bh2,
}

/// `beta_schedule`: how the training betas are laid out over `num_train_timesteps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linear`: evenly spaced from `beta_start` to `beta_end`.
    Linear,
    /// `scaled_linear`: evenly spaced square roots, squared (latent diffusion).
    ScaledLinear,
    /// `squaredcos_cap_v2`: the cosine alpha-bar of improved DDPM, betas capped at 0.999.
    SquaredcosCapV2,
    /// `sigmoid`: sigmoid over [-6, 6] scaled into [`beta_start`, `beta_end`] (DDPM only in
    /// diffusers; accepted for DDIM here since the betas do not depend on the class).
    Sigmoid,
    /// `laplace`: the Laplace alpha-bar (DDPM only in diffusers, undocumented there).
    Laplace,
}

/// `variance_type` (DDPM): the variance of the noise added at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    /// Posterior variance beta~_t.
    FixedSmall,
    /// Posterior variance, computed through its log.
    FixedSmallLog,
    /// beta_t of the (possibly skipped) step.
    FixedLarge,
    /// beta_t through its log. diffusers 0.42 takes the square root of the log and returns NaN
    /// for every t > 0 (huggingface/diffusers#14569); this library uses the intended
    /// `exp(0.5 * log beta_t)`, i.e. the same noise as [`VarianceType::FixedLarge`].
    FixedLargeLog,
    /// The model predicts the variance (second half of its output channels); diffusers takes its
    /// square root as the noise scale.
    Learned,
    /// The model predicts v in [-1, 1] interpolating the log variance between beta~_t and
    /// beta_t (improved DDPM).
    LearnedRange,
}

impl VarianceType {
    /// Whether the model output carries variance channels (`out_channels = 2 * in_channels`).
    pub fn is_learned(self) -> bool {
        matches!(self, VarianceType::Learned | VarianceType::LearnedRange)
    }
}

/// `prediction_type`: what the model output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise epsilon.
    Epsilon,
    /// The clean sample x_0.
    Sample,
    /// v = sqrt(abar) eps - sqrt(1 - abar) x_0.
    VPrediction,
    /// The flow-matching velocity eps - x_0 (DPM-Solver, UniPC, DEIS on flow sigmas only).
    FlowPrediction,
}

/// `timestep_spacing`: how the inference timesteps are picked from the training ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// Multiples of `T / N` (integer division) from 0, plus `steps_offset`.
    Leading,
    /// Evenly spaced down from T - 1 (by the real-valued `T / N`).
    Trailing,
    /// `N` evenly spaced points over [0, T - 1], rounded.
    Linspace,
}

/// How DDIM picks the timestep it steps to (ours; not a diffusers key).
///
/// diffusers' DDIM always steps from t to `t - T / N` (integer division), whatever the spacing.
/// That matches the listed timesteps for `leading` spacing, but not for `trailing` or
/// `linspace` when N does not divide T: the step then lands between listed timesteps, and the
/// last step lands on t >= 0 instead of the final alpha (huggingface/diffusers#12633, #11347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdimPrevTimestep {
    /// `t - T / N`, exactly as diffusers does (the default, for parity).
    Diffusers,
    /// The next entry of the timestep list, or the final alpha after the last one.
    NextInSchedule,
}

macro_rules! names {
    ($ty:ident, $key:literal { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every accepted name, as diffusers writes it in JSON.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The value as diffusers writes it in JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }

            fn parse(key: &str, v: &Value) -> Result<$ty> {
                match v.as_str() {
                    $(Some($name) => Ok($ty::$variant),)+
                    Some(_) => Err(unsupported(key, v)),
                    None => Err(bad(key, format!("expected a string, got {v}"))),
                }
            }
        }

        /// Parses the name diffusers writes in JSON (one of [`Self::NAMES`]); anything else is
        /// [`Error::UnsupportedConfig`] naming the key.
        impl core::str::FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<$ty> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(unsupported($key, Value::from(s))),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(BetaSchedule, "beta_schedule" {
    Linear = "linear",
    ScaledLinear = "scaled_linear",
    SquaredcosCapV2 = "squaredcos_cap_v2",
    Sigmoid = "sigmoid",
    Laplace = "laplace",
});
names!(VarianceType, "variance_type" {
    FixedSmall = "fixed_small",
    FixedSmallLog = "fixed_small_log",
    FixedLarge = "fixed_large",
    FixedLargeLog = "fixed_large_log",
    Learned = "learned",
    LearnedRange = "learned_range",
});
names!(PredictionType, "prediction_type" {
    Epsilon = "epsilon",
    Sample = "sample",
    VPrediction = "v_prediction",
    FlowPrediction = "flow_prediction",
});
names!(TimestepType, "timestep_type" {
    Discrete = "discrete",
    Continuous = "continuous",
});
names!(InterpolationType, "interpolation_type" {
    Linear = "linear",
    LogLinear = "log_linear",
});
names!(FinalSigmas, "final_sigmas_type" {
    Zero = "zero",
    SigmaMin = "sigma_min",
});
names!(DpmAlgorithm, "algorithm_type" {
    DpmSolverPP = "dpmsolver++",
    DpmSolver = "dpmsolver",
    SdeDpmSolverPP = "sde-dpmsolver++",
    SdeDpmSolver = "sde-dpmsolver",
});
names!(SolverType, "solver_type" {
    Midpoint = "midpoint",
    Heun = "heun",
});
names!(UniPcSolver, "solver_type" {
    Bh1 = "bh1",
    Bh2 = "bh2",
});
names!(TimestepSpacing, "timestep_spacing" {
    Leading = "leading",
    Trailing = "trailing",
    Linspace = "linspace",
});

/// The options of diffusers' `DDPMScheduler` and `DDIMScheduler` (0.42), plus two of ours
/// (`ddim_prev_timestep`, `use_clipped_model_output`).
///
/// Fields that only one class reads are still kept for the other, so that
/// [`SchedulerConfig::with_kind`] can convert like diffusers' `from_config` does.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub kind: SchedulerKind,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Replaces `beta_schedule` when given; one value per training timestep, each in (0, 1].
    pub trained_betas: Option<Vec<f64>>,
    /// DDPM only.
    pub variance_type: VarianceType,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub prediction_type: PredictionType,
    /// Dynamic thresholding of the x_0 prediction (Imagen); replaces `clip_sample` when on.
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
    /// DDIM only: the alpha-bar "before" t = 0 is 1 (true) or `alphas_cumprod[0]` (false).
    pub set_alpha_to_one: bool,
    /// DDIM only; ours. See [`DdimPrevTimestep`].
    pub ddim_prev_timestep: DdimPrevTimestep,
    /// DDIM only; diffusers' `step(use_clipped_model_output=...)` argument, kept here so a
    /// whole sampling run is described by one value. Not a JSON key.
    pub use_clipped_model_output: bool,
    /// Euler, DPM-Solver: Karras et al.'s rho = 7 sigma ramp between the schedule's ends.
    pub use_karras_sigmas: bool,
    /// Euler, Heun, LMS, KDPM2 (+ ancestral), DPM-Solver (multi/singlestep), UniPC, DEIS:
    /// sigmas evenly spaced in log sigma between the schedule's ends.
    pub use_exponential_sigmas: bool,
    /// The same classes: sigmas at the Beta(0.6, 0.6) quantiles between the schedule's ends
    /// ("Beta Sampling is All You Need"; diffusers' `_convert_to_beta` defaults).
    pub use_beta_sigmas: bool,
    /// DPM-Solver multistep: log sigma evenly spaced (Lu et al.'s uniform-lambda schedule).
    pub use_lu_lambdas: bool,
    /// DPM-Solver (multi/singlestep), UniPC, DEIS: flow-matching sigmas (alpha = 1 - sigma)
    /// on a linear grid, shifted by `flow_shift`.
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    /// Euler: the Karras ramp's ends (`None`: the schedule's own).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// Euler: `timestep_type`.
    pub timestep_type: TimestepType,
    /// Euler: `interpolation_type`.
    pub interpolation_type: InterpolationType,
    /// UniPC with flow sigmas: the flow sigmas stretched so the last is this (`None`, or 0,
    /// which diffusers reads as false: no stretch).
    pub shift_terminal: Option<f64>,
    /// Euler, DPM-Solver: `final_sigmas_type`.
    pub final_sigmas_type: FinalSigmas,
    /// DPM-Solver: 1, 2 or 3.
    pub solver_order: usize,
    pub algorithm_type: DpmAlgorithm,
    pub solver_type: SolverType,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    /// DPM-Solver: timesteps whose log-SNR lambda is below this are never used (`-inf`: all).
    pub lambda_min_clipped: f64,
    /// UniPC: `solver_type` bh1 / bh2.
    pub unipc_solver: UniPcSolver,
    /// UniPC: data prediction (true, the default) or noise prediction.
    pub predict_x0: bool,
    /// UniPC: the steps whose corrector is skipped (diffusers' `disable_corrector`: the
    /// corrector applied at step i + 1 to the result of step i).
    pub disable_corrector: Vec<usize>,
    /// PNDM: PLMS only (true), or 12 Runge-Kutta (PRK) evaluations first (false, diffusers'
    /// default).
    pub skip_prk_steps: bool,
    /// Score-SDE VE: signal-to-noise ratio of the Langevin corrector's step size.
    pub snr: f64,
    /// Score-SDE VE: the last continuous time of the grid (`linspace(1, sampling_eps, N)`).
    pub sampling_eps: f64,
    /// Score-SDE VE: Langevin corrector steps before each predictor step.
    pub correct_steps: usize,
    /// Consistency models: the data standard deviation of the c_skip / c_out / c_in scalings.
    pub sigma_data: f64,
    /// Consistency models: scale of the noise added between steps.
    pub s_noise: f64,
    /// Consistency models: the Karras ramp's rho.
    pub rho: f64,
    /// Consistency models: clamp the denoised sample to [-1, 1].
    pub clip_denoised: bool,
    /// LCM, TCD: the distillation schedule's step count (its timesteps are `k * j - 1`,
    /// `k = T / original_inference_steps`).
    pub original_inference_steps: usize,
    /// LCM: the timestep multiplier of the boundary-condition scalings.
    pub timestep_scaling: f64,
    /// The keys the JSON gave, as written (diffusers' config less `_`-keys and those listed in
    /// `_use_default_values`), the class's own and any other: [`SchedulerConfig::with_kind`]
    /// converts from these as `from_config` does. `None` for a config built in code, whose
    /// options that differ from its class's defaults count as given.
    pub given: Option<Map<String, Value>>,
}

fn json_err(message: impl Into<String>) -> Error {
    Error::InvalidJson {
        file: FILE,
        message: message.into(),
    }
}

fn bad(key: &str, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        key: key.into(),
        message: message.into(),
    }
}

fn as_bool(key: &str, v: &Value) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| bad(key, format!("expected true or false, got {v}")))
}

fn as_f64(key: &str, v: &Value) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(bad(key, format!("expected a number, got {v}"))),
    }
}

/// A non-negative integer no larger than [`MAX_TRAIN_TIMESTEPS`].
fn as_count(key: &str, v: &Value) -> Result<usize> {
    match (v.as_u64(), v.as_i64()) {
        (Some(n), _) if n <= MAX_TRAIN_TIMESTEPS as u64 => Ok(n as usize),
        (Some(n), _) => Err(bad(
            key,
            format!("{n} is larger than {MAX_TRAIN_TIMESTEPS}"),
        )),
        (None, Some(n)) => Err(bad(key, format!("{n} is negative"))),
        _ => Err(bad(
            key,
            format!("expected a non-negative integer, got {v}"),
        )),
    }
}

const NEG_INF_TOKEN: &str = "-Infinity";

/// `-Infinity` outside JSON strings becomes the string `"-Infinity"`.
fn quote_neg_infinity(text: &str) -> String {
    if !text.contains(NEG_INF_TOKEN) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let (mut in_str, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_str && rest.starts_with(NEG_INF_TOKEN) {
            out.push('"');
            out.push_str(NEG_INF_TOKEN);
            out.push('"');
            rest = &rest[NEG_INF_TOKEN.len()..];
            continue;
        }
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn opt_bool(key: &str, v: &Value) -> Result<bool> {
    match v {
        Value::Null => Ok(false),
        _ => as_bool(key, v),
    }
}

fn opt_f64(key: &str, v: &Value) -> Result<Option<f64>> {
    match v {
        Value::Null => Ok(None),
        _ => as_f64(key, v).map(Some),
    }
}

/// Most Langevin corrector steps per step of the score-SDE VE scheduler (diffusers' default is
/// 1): keeps the noise row count of a run addressable.
pub const MAX_CORRECT_STEPS: usize = 1000;

/// The keys of the score-SDE VE, consistency, LCM and TCD classes. `Ok(true)`: the key was
/// one of the class's own and is parsed into `cfg`; `Ok(false)`: the shared parser decides.
/// The VE and consistency classes have no beta schedule: any key of theirs not listed here
/// (but `_`-prefixed ones) is refused, naming it.
fn parse_consistency_or_ve_key(
    kind: SchedulerKind,
    k: &str,
    v: &Value,
    cfg: &mut SchedulerConfig,
) -> Result<bool> {
    let positive = |k: &str, v: &Value| -> Result<f64> {
        let x = as_f64(k, v)?;
        if x > 0.0 {
            Ok(x)
        } else {
            Err(bad(k, format!("{x} must be > 0")))
        }
    };
    match kind {
        SchedulerKind::ScoreSdeVe => match k {
            "snr" => cfg.snr = as_f64(k, v)?,
            "sigma_min" => cfg.sigma_min = Some(positive(k, v)?),
            "sigma_max" => cfg.sigma_max = Some(positive(k, v)?),
            "sampling_eps" => cfg.sampling_eps = as_f64(k, v)?,
            "correct_steps" => cfg.correct_steps = as_count(k, v)?,
            "num_train_timesteps" => return Ok(false),
            _ if k.starts_with('_') => return Ok(false),
            _ => return Err(unsupported(k, v)),
        },
        SchedulerKind::CmStochasticIterative => match k {
            "sigma_min" => cfg.sigma_min = Some(positive(k, v)?),
            "sigma_max" => cfg.sigma_max = Some(positive(k, v)?),
            "sigma_data" => cfg.sigma_data = as_f64(k, v)?,
            "s_noise" => cfg.s_noise = as_f64(k, v)?,
            "rho" => cfg.rho = as_f64(k, v)?,
            "clip_denoised" => cfg.clip_denoised = as_bool(k, v)?,
            "num_train_timesteps" => return Ok(false),
            _ if k.starts_with('_') => return Ok(false),
            _ => return Err(unsupported(k, v)),
        },
        SchedulerKind::Lcm | SchedulerKind::Tcd => match k {
            "original_inference_steps" => cfg.original_inference_steps = as_count(k, v)?,
            "timestep_scaling" => cfg.timestep_scaling = as_f64(k, v)?,
            _ => return Ok(false),
        },
        _ => return Ok(false),
    }
    Ok(true)
}

/// Keys of diffusers 0.1-era scheduler configs that diffusers 0.42 ignores and that never
/// changed the computation; old Hub folders (e.g. the original DDPM conversions) carry them.
fn is_legacy_noop(key: &str, v: &Value) -> bool {
    match key {
        "tensor_format" => v.is_string(),
        "timestep_values" => v.is_null(),
        _ => false,
    }
}

impl SchedulerConfig {
    /// diffusers' `DDPMScheduler()` constructor defaults.
    pub fn ddpm_default() -> SchedulerConfig {
        SchedulerConfig {
            kind: SchedulerKind::Ddpm,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            variance_type: VarianceType::FixedSmall,
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            set_alpha_to_one: true,
            ddim_prev_timestep: DdimPrevTimestep::Diffusers,
            use_clipped_model_output: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            sigma_min: None,
            sigma_max: None,
            timestep_type: TimestepType::Discrete,
            interpolation_type: InterpolationType::Linear,
            shift_terminal: None,
            final_sigmas_type: FinalSigmas::Zero,
            solver_order: 2,
            algorithm_type: DpmAlgorithm::DpmSolverPP,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            lambda_min_clipped: f64::NEG_INFINITY,
            unipc_solver: UniPcSolver::Bh2,
            predict_x0: true,
            disable_corrector: Vec::new(),
            skip_prk_steps: false,
            snr: 0.15,
            sampling_eps: 1e-5,
            correct_steps: 1,
            sigma_data: 0.5,
            s_noise: 1.0,
            rho: 7.0,
            clip_denoised: true,
            original_inference_steps: 50,
            timestep_scaling: 10.0,
            given: None,
        }
    }

    /// diffusers' constructor defaults of `kind` (the sigma classes space timesteps
    /// `linspace` by default; every other shared key has the same default in every class).
    pub fn default_for(kind: SchedulerKind) -> SchedulerConfig {
        let mut c = SchedulerConfig {
            kind,
            ..SchedulerConfig::ddpm_default()
        };
        if kind.is_sigma() {
            c.timestep_spacing = TimestepSpacing::Linspace;
        }
        if kind == SchedulerKind::Heun {
            // HeunDiscreteScheduler's own defaults ("sensible defaults" of latent diffusion).
            c.beta_start = 0.00085;
            c.beta_end = 0.012;
            c.clip_sample = false;
        }
        if matches!(kind, SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Ancestral) {
            // The KDPM2 classes' own defaults ("sensible defaults").
            c.beta_start = 0.00085;
            c.beta_end = 0.012;
        }
        if kind == SchedulerKind::DpmSolverSinglestep {
            // DPMSolverSinglestepScheduler's own default.
            c.lower_order_final = false;
        }
        if kind == SchedulerKind::Pndm {
            // PNDMScheduler's own defaults.
            c.timestep_spacing = TimestepSpacing::Leading;
            c.set_alpha_to_one = false;
        }
        match kind {
            // sigma_min / sigma_max left None: the class's own (0.01 / 1348, 0.002 / 80).
            SchedulerKind::ScoreSdeVe => c.num_train_timesteps = 2000,
            SchedulerKind::CmStochasticIterative => c.num_train_timesteps = 40,
            SchedulerKind::Lcm | SchedulerKind::Tcd => {
                c.beta_start = 0.00085;
                c.beta_end = 0.012;
                c.beta_schedule = BetaSchedule::ScaledLinear;
                c.clip_sample = false;
            }
            _ => {}
        }
        c
    }

    /// diffusers' `DDIMScheduler()` constructor defaults (the shared keys have the same
    /// defaults in both classes).
    pub fn ddim_default() -> SchedulerConfig {
        SchedulerConfig {
            kind: SchedulerKind::Ddim,
            ..SchedulerConfig::ddpm_default()
        }
    }

    /// Parses a diffusers `scheduler_config.json`.
    ///
    /// `_class_name` picks the class (absent: DDPM); other keys starting with `_` are ignored.
    /// The class's own options (its `__init__`'s, [`SchedulerKind::init_keys`]) are parsed;
    /// another class's option (a config saved after `from_config` holds them) is hidden, as in
    /// diffusers: kept in [`SchedulerConfig::given`] for [`SchedulerConfig::with_kind`], never
    /// read, but the sigma ramps' `sigma_min` / `sigma_max` ([`SchedulerKind::reads_sigma_ends`]).
    /// Keys listed in `_use_default_values` are ignored, as diffusers does. `null` means
    /// "default" for `trained_betas`. Errors: invalid JSON → [`Error::InvalidJson`];
    /// unknown key, unknown class or enum value → [`Error::UnsupportedConfig`]; wrong type or
    /// out-of-range value → [`Error::InvalidConfig`], each naming the key.
    pub fn from_json(text: &str) -> Result<SchedulerConfig> {
        // Python's json writes -inf as the bare token `-Infinity` (DPM-Solver's
        // `lambda_min_clipped`), which is not JSON; read it as a string.
        let text = quote_neg_infinity(text);
        let root: Value = serde_json::from_str(&text).map_err(|e| json_err(e.to_string()))?;
        let obj = root
            .as_object()
            .ok_or_else(|| json_err("top level is not an object"))?;
        SchedulerConfig::from_object(obj)
    }

    /// [`SchedulerConfig::from_json`] on parsed JSON.
    fn from_object(obj: &Map<String, Value>) -> Result<SchedulerConfig> {
        // Keys a diffusers object filled from its defaults (`_use_default_values`, kept when a
        // config is copied in memory): diffusers ignores their values, and so does this parser.
        let defaulted: Vec<&str> = match obj.get("_use_default_values") {
            Some(Value::Array(keys)) => keys.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let given: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| !k.starts_with('_') && !defaulted.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let kind = match obj.get("_class_name") {
            None => SchedulerKind::Ddpm,
            Some(v) => match v.as_str().and_then(SchedulerKind::from_class_name) {
                Some(kind) => kind,
                None => return Err(unsupported("_class_name", v)),
            },
        };
        let sigma = kind.is_sigma();
        let dpm = kind == SchedulerKind::DpmSolverMultistep;
        let heun = kind == SchedulerKind::Heun;
        let unipc = kind == SchedulerKind::UniPcMultistep;
        let single = kind == SchedulerKind::DpmSolverSinglestep;
        // DPM-Solver's options (multistep and singlestep).
        let dpm_like = dpm || single;
        let deis = kind == SchedulerKind::DeisMultistep;
        let multistep = dpm || unipc || single || deis;
        let pndm = kind == SchedulerKind::Pndm;
        let mut cfg = SchedulerConfig::default_for(kind);
        // DPM-Solver's `algorithm_type` "deis" (read as dpmsolver++).
        let mut deis_algorithm = false;
        for (key, v) in &given {
            let k = key.as_str();
            // Another class's option (a config saved after `from_config` holds them): diffusers
            // keeps it hidden and never reads it (but the ramps' `sigma_min` / `sigma_max`), so
            // neither does this parser. Keys no class takes are still refused, naming them.
            let hidden_read = kind.reads_sigma_ends() && matches!(k, "sigma_min" | "sigma_max");
            if ALL_INIT_KEYS.contains(&k) && !kind.init_keys().contains(&k) && !hidden_read {
                continue;
            }
            if parse_consistency_or_ve_key(kind, k, v, &mut cfg)? {
                continue;
            }
            match k {
                "_class_name" => {}
                _ if k.starts_with('_') => {} // _diffusers_version, _use_default_values, ...
                "num_train_timesteps" => cfg.num_train_timesteps = as_count(k, v)?,
                "beta_start" => cfg.beta_start = as_f64(k, v)?,
                "beta_end" => cfg.beta_end = as_f64(k, v)?,
                "beta_schedule" => cfg.beta_schedule = BetaSchedule::parse(k, v)?,
                "trained_betas" => {
                    cfg.trained_betas = match v {
                        Value::Null => None,
                        Value::Array(items) => Some(
                            items
                                .iter()
                                .map(|b| as_f64(k, b))
                                .collect::<Result<Vec<f64>>>()?,
                        ),
                        _ => {
                            return Err(bad(
                                k,
                                format!("expected a list of numbers or null, got {v}"),
                            ))
                        }
                    }
                }
                // DPM-Solver's `variance_type` is null or learned / learned_range: the
                // variance channels are dropped either way (the step reads the first C).
                "variance_type" if dpm_like => match v {
                    Value::Null => {}
                    _ if matches!(
                        VarianceType::parse(k, v)?,
                        VarianceType::Learned | VarianceType::LearnedRange
                    ) => {}
                    _ => return Err(unsupported(k, v)),
                },
                "variance_type" => cfg.variance_type = VarianceType::parse(k, v)?,
                "clip_sample" => cfg.clip_sample = as_bool(k, v)?,
                "clip_sample_range" => cfg.clip_sample_range = as_f64(k, v)?,
                "prediction_type" => cfg.prediction_type = PredictionType::parse(k, v)?,
                "thresholding" => cfg.thresholding = as_bool(k, v)?,
                "dynamic_thresholding_ratio" => cfg.dynamic_thresholding_ratio = as_f64(k, v)?,
                "sample_max_value" => cfg.sample_max_value = as_f64(k, v)?,
                "timestep_spacing" => cfg.timestep_spacing = TimestepSpacing::parse(k, v)?,
                "steps_offset" => cfg.steps_offset = as_count(k, v)?,
                // Only some sigma classes take the key (diffusers' others would drop it): the
                // rest accept its "off" value only.
                "rescale_betas_zero_snr"
                    if sigma
                        && !matches!(
                            kind,
                            SchedulerKind::Euler
                                | SchedulerKind::EulerAncestral
                                | SchedulerKind::DpmSolverMultistep
                                | SchedulerKind::UniPcMultistep
                        ) =>
                {
                    if as_bool(k, v)? {
                        return Err(unsupported(k, v));
                    }
                }
                "rescale_betas_zero_snr" => cfg.rescale_betas_zero_snr = as_bool(k, v)?,
                "set_alpha_to_one" => cfg.set_alpha_to_one = as_bool(k, v)?,
                "use_karras_sigmas"
                    if sigma
                        && !matches!(kind, SchedulerKind::EulerAncestral | SchedulerKind::Pndm) =>
                {
                    cfg.use_karras_sigmas = opt_bool(k, v)?
                }
                // Euler's and UniPC's own keys; a hidden key of the other ramp classes, which
                // diffusers reads all the same (see `SchedulerKind::reads_sigma_ends`).
                "sigma_min" if kind.reads_sigma_ends() => cfg.sigma_min = opt_f64(k, v)?,
                "sigma_max" if kind.reads_sigma_ends() => cfg.sigma_max = opt_f64(k, v)?,
                "timestep_type" if kind == SchedulerKind::Euler => {
                    cfg.timestep_type = TimestepType::parse(k, v)?
                }
                "interpolation_type" if kind == SchedulerKind::Euler => {
                    cfg.interpolation_type = InterpolationType::parse(k, v)?
                }
                "final_sigmas_type" if matches!(kind, SchedulerKind::Euler) || multistep => {
                    cfg.final_sigmas_type = FinalSigmas::parse(k, v)?
                }
                "use_exponential_sigmas" | "use_beta_sigmas"
                    if matches!(
                        kind,
                        SchedulerKind::Euler
                            | SchedulerKind::Heun
                            | SchedulerKind::Lms
                            | SchedulerKind::Kdpm2
                            | SchedulerKind::Kdpm2Ancestral
                    ) || multistep =>
                {
                    let on = opt_bool(k, v)?;
                    if k == "use_beta_sigmas" {
                        cfg.use_beta_sigmas = on
                    } else {
                        cfg.use_exponential_sigmas = on
                    }
                }
                "use_lu_lambdas" if dpm => cfg.use_lu_lambdas = opt_bool(k, v)?,
                // Options of diffusers we do not run: only their "off" value is accepted.
                // Dynamic shifting of flow sigmas needs the pipeline's `mu`, which no config
                // holds.
                // Euler's `interpolation_type` log_linear (below) gives N + 2 sigmas for N
                // timesteps in diffusers 0.42; UniPC's `solver_p` is a second scheduler.
                "use_flow_sigmas" if multistep => cfg.use_flow_sigmas = opt_bool(k, v)?,
                "flow_shift" if multistep => cfg.flow_shift = as_f64(k, v)?,
                "use_dynamic_shifting" if multistep => {
                    if opt_bool(k, v)? {
                        return Err(unsupported(k, v));
                    }
                }
                "time_shift_type" if multistep => {
                    if v.as_str() != Some("exponential") {
                        return Err(unsupported(k, v));
                    }
                }
                "solver_order" if multistep => {
                    cfg.solver_order = match v.as_u64() {
                        Some(n @ 1..=3) => n as usize,
                        _ => return Err(unsupported(k, v)),
                    }
                }
                // DEIS reads the DPM-Solver algorithms and solver types as its own.
                "algorithm_type" if deis => match v.as_str() {
                    Some("deis" | "dpmsolver" | "dpmsolver++") => {}
                    _ => return Err(unsupported(k, v)),
                },
                "solver_type" if deis => match v.as_str() {
                    Some("logrho" | "midpoint" | "heun" | "bh1" | "bh2") => {}
                    _ => return Err(unsupported(k, v)),
                },
                // Both DPM-Solvers read `deis` as dpmsolver++, as diffusers does.
                "algorithm_type" if dpm_like && v.as_str() == Some("deis") => {
                    cfg.algorithm_type = DpmAlgorithm::DpmSolverPP;
                    deis_algorithm = true;
                }
                // The singlestep class has no sde-dpmsolver (diffusers raises NotImplementedError).
                "algorithm_type" if single && v.as_str() == Some("sde-dpmsolver") => {
                    return Err(unsupported(k, v))
                }
                "algorithm_type" if dpm_like => cfg.algorithm_type = DpmAlgorithm::parse(k, v)?,
                "solver_type" if unipc => {
                    cfg.unipc_solver = match v.as_str() {
                        Some("midpoint" | "heun" | "logrho") => UniPcSolver::Bh2,
                        _ => UniPcSolver::parse(k, v)?,
                    }
                }
                "predict_x0" if unipc => cfg.predict_x0 = as_bool(k, v)?,
                "disable_corrector" if unipc => {
                    cfg.disable_corrector = match v {
                        Value::Array(items) => items
                            .iter()
                            .map(|i| as_count(k, i))
                            .collect::<Result<Vec<usize>>>()?,
                        _ => {
                            return Err(bad(k, format!("expected a list of step indices, got {v}")))
                        }
                    }
                }
                // A second scheduler as the predictor, and flow-sigma options: only "off".
                // A second scheduler as the predictor: only "none".
                "solver_p" if unipc => {
                    if !v.is_null() {
                        return Err(unsupported(k, v));
                    }
                }
                "shift_terminal" if unipc => cfg.shift_terminal = opt_f64(k, v)?,
                "solver_type" if dpm_like => {
                    cfg.solver_type = match v.as_str() {
                        Some("logrho" | "bh1" | "bh2") => SolverType::Midpoint,
                        _ => SolverType::parse(k, v)?,
                    }
                }
                "lower_order_final" if multistep => cfg.lower_order_final = as_bool(k, v)?,
                "euler_at_final" if dpm => cfg.euler_at_final = as_bool(k, v)?,
                "lambda_min_clipped" if dpm_like => {
                    cfg.lambda_min_clipped = match v {
                        Value::String(s) if s == NEG_INF_TOKEN => f64::NEG_INFINITY,
                        _ => as_f64(k, v)?,
                    }
                }
                "skip_prk_steps" if pndm => cfg.skip_prk_steps = as_bool(k, v)?,
                // PNDM's flag, copied into many Stable Diffusion scheduler configs; no effect.
                "skip_prk_steps" if sigma => {
                    as_bool(k, v)?;
                }
                _ if is_legacy_noop(k, v) => {}
                _ => return Err(unsupported(k, v)),
            }
        }
        if (heun
            || unipc
            || pndm
            || single
            || deis
            || matches!(
                kind,
                SchedulerKind::Lms | SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Ancestral
            ))
            && matches!(
                cfg.beta_schedule,
                BetaSchedule::Sigmoid | BetaSchedule::Laplace
            )
        {
            // diffusers' Heun, UniPC and PNDM schedulers raise NotImplementedError for these.
            return Err(unsupported("beta_schedule", cfg.beta_schedule.as_str()));
        }
        if deis_algorithm && cfg.final_sigmas_type == FinalSigmas::Zero {
            // diffusers checks the name it was given before reading it as dpmsolver++.
            return Err(unsupported(
                "final_sigmas_type",
                "zero with algorithm_type deis (diffusers refuses it: use sigma_min)",
            ));
        }
        // LCM thresholds its x_0 (`schedule::lcm`); TCD keeps the key but never reads it in
        // diffusers 0.42 (nor `clip_sample`), so neither does this library.
        if matches!(kind, SchedulerKind::Lcm | SchedulerKind::Tcd)
            && matches!(
                cfg.beta_schedule,
                BetaSchedule::Sigmoid | BetaSchedule::Laplace
            )
        {
            // diffusers' LCM and TCD schedulers raise NotImplementedError for these.
            return Err(unsupported("beta_schedule", cfg.beta_schedule.as_str()));
        }
        cfg.validate()?;
        cfg.given = Some(given);
        Ok(cfg)
    }

    /// The config `NewClass.from_config(folder_scheduler.config)` builds in diffusers 0.42
    /// (`kind` is the new class): what `--scheduler NAME` runs.
    ///
    /// diffusers passes the new class exactly the given keys ([`SchedulerConfig::given`]) its
    /// `__init__` takes ([`SchedulerKind::init_keys`]); every other option takes the new class's
    /// default. The other given keys stay in its config, hidden, as diffusers keeps them: the
    /// sigma ramps read hidden `sigma_min` / `sigma_max` ([`SchedulerKind::reads_sigma_ends`]),
    /// and a later conversion sees them all. Our own fields
    /// (`ddim_prev_timestep`, `use_clipped_model_output`) carry over.
    ///
    /// Errors: a carried value the new class refuses (e.g. `algorithm_type` sde-dpmsolver++ onto
    /// DEIS, which diffusers refuses too), as [`SchedulerConfig::from_json`] reports it.
    pub fn with_kind(self, kind: SchedulerKind) -> Result<SchedulerConfig> {
        if kind == self.kind {
            return Ok(self);
        }
        let given = match &self.given {
            Some(map) => map.clone(),
            None => self.non_default_keys(),
        };
        let new_keys = kind.init_keys();
        let mut passed = Map::new();
        passed.insert("_class_name".into(), Value::from(kind.class_name()));
        let mut kept = Map::new();
        for (k, v) in given {
            // A key the new class does not take stays in its config, hidden; only the ramps of
            // the classes that look for `sigma_min` / `sigma_max` read such keys.
            let hidden_read =
                kind.reads_sigma_ends() && matches!(k.as_str(), "sigma_min" | "sigma_max");
            if new_keys.contains(&k.as_str()) || hidden_read {
                passed.insert(k.clone(), v.clone());
            }
            kept.insert(k, v);
        }
        let mut out = SchedulerConfig::from_object(&passed)?;
        out.given = self.given.is_some().then_some(kept);
        out.ddim_prev_timestep = self.ddim_prev_timestep;
        out.use_clipped_model_output = self.use_clipped_model_output;
        Ok(out)
    }

    /// The options of a config built in code that differ from its class's defaults, as
    /// diffusers writes them: what [`SchedulerConfig::with_kind`] counts as given when there is
    /// no JSON.
    fn non_default_keys(&self) -> Map<String, Value> {
        let defaults = SchedulerConfig::default_for(self.kind);
        let mut out = Map::new();
        for key in ALL_INIT_KEYS {
            if let Some(v) = self.key_value(key) {
                if defaults.key_value(key).as_ref() != Some(&v) {
                    out.insert((*key).into(), v);
                }
            }
        }
        out
    }

    /// The JSON value of one diffusers option as this config holds it (`None`: a key with no
    /// field here, whose only accepted value is its default).
    fn key_value(&self, key: &str) -> Option<Value> {
        let f = |x: f64| Value::from(x);
        let opt = |x: Option<f64>| x.map_or(Value::Null, Value::from);
        Some(match key {
            "num_train_timesteps" => Value::from(self.num_train_timesteps),
            "beta_start" => f(self.beta_start),
            "beta_end" => f(self.beta_end),
            "beta_schedule" => Value::from(self.beta_schedule.as_str()),
            "trained_betas" => match &self.trained_betas {
                Some(b) => Value::from(b.clone()),
                None => Value::Null,
            },
            "variance_type" => Value::from(self.variance_type.as_str()),
            "clip_sample" => Value::from(self.clip_sample),
            "clip_sample_range" => f(self.clip_sample_range),
            "prediction_type" => Value::from(self.prediction_type.as_str()),
            "thresholding" => Value::from(self.thresholding),
            "dynamic_thresholding_ratio" => f(self.dynamic_thresholding_ratio),
            "sample_max_value" => f(self.sample_max_value),
            "timestep_spacing" => Value::from(self.timestep_spacing.as_str()),
            "steps_offset" => Value::from(self.steps_offset),
            "rescale_betas_zero_snr" => Value::from(self.rescale_betas_zero_snr),
            "set_alpha_to_one" => Value::from(self.set_alpha_to_one),
            "use_karras_sigmas" => Value::from(self.use_karras_sigmas),
            "use_exponential_sigmas" => Value::from(self.use_exponential_sigmas),
            "use_beta_sigmas" => Value::from(self.use_beta_sigmas),
            "use_lu_lambdas" => Value::from(self.use_lu_lambdas),
            "use_flow_sigmas" => Value::from(self.use_flow_sigmas),
            "flow_shift" => f(self.flow_shift),
            "sigma_min" => opt(self.sigma_min),
            "sigma_max" => opt(self.sigma_max),
            "timestep_type" => Value::from(self.timestep_type.as_str()),
            "interpolation_type" => Value::from(self.interpolation_type.as_str()),
            "shift_terminal" => opt(self.shift_terminal),
            "final_sigmas_type" => Value::from(self.final_sigmas_type.as_str()),
            "solver_order" => Value::from(self.solver_order),
            "algorithm_type" if self.kind == SchedulerKind::DeisMultistep => return None,
            "algorithm_type" => Value::from(self.algorithm_type.as_str()),
            "solver_type" => match self.kind {
                SchedulerKind::DeisMultistep => return None,
                SchedulerKind::UniPcMultistep => Value::from(self.unipc_solver.as_str()),
                _ => Value::from(self.solver_type.as_str()),
            },
            "lower_order_final" => Value::from(self.lower_order_final),
            "euler_at_final" => Value::from(self.euler_at_final),
            "lambda_min_clipped" if self.lambda_min_clipped == f64::NEG_INFINITY => {
                Value::from(NEG_INF_TOKEN)
            }
            "lambda_min_clipped" => f(self.lambda_min_clipped),
            "predict_x0" => Value::from(self.predict_x0),
            "disable_corrector" => Value::from(self.disable_corrector.clone()),
            "skip_prk_steps" => Value::from(self.skip_prk_steps),
            "snr" => f(self.snr),
            "sampling_eps" => f(self.sampling_eps),
            "correct_steps" => Value::from(self.correct_steps),
            "sigma_data" => f(self.sigma_data),
            "s_noise" => f(self.s_noise),
            "rho" => f(self.rho),
            "clip_denoised" => Value::from(self.clip_denoised),
            "original_inference_steps" => Value::from(self.original_inference_steps),
            "timestep_scaling" => f(self.timestep_scaling),
            _ => return None,
        })
    }

    /// Checks every range the schedule and step arithmetic rely on. Called by
    /// [`SchedulerConfig::from_json`] and again when a scheduler is built, since the fields
    /// are public.
    pub fn validate(&self) -> Result<()> {
        let t = self.num_train_timesteps;
        if t == 0 || t > MAX_TRAIN_TIMESTEPS {
            return Err(bad(
                "num_train_timesteps",
                format!("{t} is out of range 1..={MAX_TRAIN_TIMESTEPS}"),
            ));
        }
        if self.steps_offset > MAX_TRAIN_TIMESTEPS {
            return Err(bad(
                "steps_offset",
                format!("{} is larger than {MAX_TRAIN_TIMESTEPS}", self.steps_offset),
            ));
        }
        for (key, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(bad(key, format!("{v} is outside [0, 1]")));
            }
        }
        // IPNDM's trained betas are its N + 1 step betas (checked when it is built).
        if let (Some(tb), false) = (&self.trained_betas, self.kind == SchedulerKind::Ipndm) {
            if tb.len() != t {
                return Err(bad(
                    "trained_betas",
                    format!("has {} values, num_train_timesteps is {t}", tb.len()),
                ));
            }
            if let Some((i, b)) = tb
                .iter()
                .enumerate()
                .find(|(_, b)| !(**b > 0.0 && **b <= 1.0))
            {
                return Err(bad(
                    "trained_betas",
                    format!("value {i} = {b} is outside (0, 1]"),
                ));
            }
        }
        if !(self.clip_sample_range.is_finite() && self.clip_sample_range >= 0.0) {
            return Err(bad(
                "clip_sample_range",
                format!("{} must be finite and >= 0", self.clip_sample_range),
            ));
        }
        let r = self.dynamic_thresholding_ratio;
        if !(r.is_finite() && (0.0..=1.0).contains(&r)) {
            return Err(bad(
                "dynamic_thresholding_ratio",
                format!("{r} is outside [0, 1]"),
            ));
        }
        if !(1..=3).contains(&self.solver_order) {
            return Err(unsupported("solver_order", self.solver_order));
        }
        if !(self.flow_shift.is_finite() && self.flow_shift > 0.0) {
            return Err(bad(
                "flow_shift",
                format!("{} must be finite and > 0", self.flow_shift),
            ));
        }
        let flow_class = matches!(
            self.kind,
            SchedulerKind::DpmSolverMultistep
                | SchedulerKind::DpmSolverSinglestep
                | SchedulerKind::UniPcMultistep
                | SchedulerKind::DeisMultistep
        );
        if self.prediction_type == PredictionType::FlowPrediction
            && !(flow_class && self.use_flow_sigmas)
        {
            return Err(unsupported(
                "prediction_type",
                format!(
                    "flow_prediction (run only by DPM-Solver, UniPC and DEIS with \
                     use_flow_sigmas; not by {})",
                    self.kind.class_name()
                ),
            ));
        }
        if self.use_flow_sigmas
            && flow_class
            && (self.use_karras_sigmas
                || self.use_exponential_sigmas
                || self.use_beta_sigmas
                || self.use_lu_lambdas)
        {
            // diffusers lets another ramp win (UniPC: Karras rescaled to flow); not run here.
            return Err(unsupported(
                "use_flow_sigmas",
                "true with another sigma ramp (use_karras / exponential / beta sigmas, \
                 use_lu_lambdas)",
            ));
        }
        // diffusers raises ValueError for more than one sigma ramp.
        let ramps = [
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
        ];
        if ramps.iter().filter(|(_, on)| *on).count() > 1 {
            let key = ramps.iter().rev().find(|(_, on)| *on).map_or("", |r| r.0);
            return Err(bad(
                key,
                "only one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas can \
                 be true",
            ));
        }
        for (key, v) in [("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(bad(key, format!("{v} must be finite and > 0")));
                }
            }
        }
        if self.kind == SchedulerKind::Euler
            && self.interpolation_type == InterpolationType::LogLinear
            && self.timestep_type == TimestepType::Continuous
            && self.prediction_type == PredictionType::VPrediction
        {
            // diffusers then makes N + 1 timesteps from its N + 2 sigmas and steps past the
            // schedule it set.
            return Err(unsupported(
                "interpolation_type",
                "log_linear with timestep_type continuous and v_prediction",
            ));
        }
        if let Some(x) = self.shift_terminal {
            if !self.use_flow_sigmas {
                // diffusers raises ValueError.
                return Err(unsupported(
                    "shift_terminal",
                    format!("{x} without use_flow_sigmas"),
                ));
            }
            if !(x.is_finite() && x < 1.0) {
                return Err(bad("shift_terminal", format!("{x} must be finite and < 1")));
            }
        }
        if self.lambda_min_clipped.is_nan() {
            return Err(bad("lambda_min_clipped", "is NaN"));
        }
        if !(self.sample_max_value.is_finite() && self.sample_max_value > 0.0) {
            return Err(bad(
                "sample_max_value",
                format!("{} must be finite and > 0", self.sample_max_value),
            ));
        }
        self.validate_consistency_or_ve()
    }

    /// The ranges of the score-SDE VE, consistency, LCM and TCD options.
    fn validate_consistency_or_ve(&self) -> Result<()> {
        for (key, v) in [
            ("snr", self.snr),
            ("s_noise", self.s_noise),
            ("timestep_scaling", self.timestep_scaling),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(key, format!("{v} must be finite and >= 0")));
            }
        }
        for (key, v) in [("sigma_data", self.sigma_data), ("rho", self.rho)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(key, format!("{v} must be finite and > 0")));
            }
        }
        if !(self.sampling_eps > 0.0 && self.sampling_eps <= 1.0) {
            return Err(bad(
                "sampling_eps",
                format!("{} is outside (0, 1]", self.sampling_eps),
            ));
        }
        if self.correct_steps > MAX_CORRECT_STEPS {
            return Err(bad(
                "correct_steps",
                format!("{} is larger than {MAX_CORRECT_STEPS}", self.correct_steps),
            ));
        }
        if self.original_inference_steps == 0 {
            return Err(bad("original_inference_steps", "must be at least 1"));
        }
        Ok(())
    }
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig::ddpm_default()
    }
}
