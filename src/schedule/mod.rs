//! Noise schedules, DDPM / DDIM steps and the built-in noise source, matching diffusers 0.42's
//! `DDPMScheduler` and `DDIMScheduler`.
//!
//! - [`config`]: `scheduler_config.json` → [`SchedulerConfig`] (both classes, validated).
//! - [`beta_dist`]: the Beta distribution's inverse CDF (the beta sigma schedule).
//! - [`betas`](mod@betas): training betas and alpha-bars, as diffusers' float32 tensors hold them.
//! - [`timesteps`](mod@timesteps): `set_timesteps`, reproduced exactly (leading / trailing / linspace).
//! - [`Scheduler`]: one run's schedule and the allocation-free, in-place `step`.
//! - [`sigma`]: the sigma-parameterised schedulers (Euler, Euler ancestral, DPM-Solver
//!   multistep), with their model-input scaling and multistep history.
//! - [`sde`]: the continuous-time (score-SDE) samplers: reverse SDE, probability-flow ODE,
//!   predictor-corrector.
//! - [`eps`]: [`EpsModel`], the model as every sampler calls it (eps at a [`NoiseLevel`]).
//! - [`noise`]: seeded, counter-based Gaussian noise, identical on every machine.
//! - [`score_ve`], [`consistency`], [`lcm`]: the VE score SDE (predictor-corrector), consistency
//!   models, LCM and TCD.
//!
//! Where diffusers 0.42 is knowingly wrong we say so and, unless parity needs the bug, differ:
//! `fixed_large_log` noise is finite here (diffusers returns NaN), and DDIM's previous timestep
//! can follow the schedule ([`DdimPrevTimestep::NextInSchedule`]) instead of `t - T / N`.

pub mod beta_dist;
pub mod betas;
pub mod config;
pub mod eps;
pub mod noise;
pub mod run;
mod scheduler;
pub mod sde;
pub mod sigma;
pub mod timesteps;

pub mod consistency;
pub mod lcm;
pub mod score_ve;
pub use consistency::ConsistencyScheduler;
pub use lcm::LcmScheduler;
pub use score_ve::ScoreVeScheduler;

pub use betas::{alphas_cumprod, betas};
pub use config::{
    BetaSchedule, DdimPrevTimestep, DpmAlgorithm, FinalSigmas, InterpolationType, PredictionType,
    SchedulerConfig, SchedulerKind, SolverType, TimestepSpacing, TimestepType, UniPcSolver,
    VarianceType,
};
pub use eps::{EpsModel, NoiseLevel};
pub use noise::GaussianNoise;
pub use run::{Guidance, SampleOptions, StepInfo, TextConditioning};
pub use scheduler::{Scheduler, StepShape};
pub use sde::{Predictor, SdeConfig, SdeSampler, VpSde};
pub use sigma::SigmaScheduler;
pub use timesteps::set_timesteps;
