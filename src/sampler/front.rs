//! The one sampler front end: which sampler, how many steps, its options and their defaults,
//! built from a model's scheduler config. The `sample` binary, the C API and the examples all
//! build their sampler here, so they agree on defaults and on what is a bad argument.
//!
//! ```
//! use tinydiffusion::sampler::{Sampler, SamplerKind};
//! use tinydiffusion::schedule::SchedulerConfig;
//!
//! let cfg = SchedulerConfig::ddpm_default();
//! let ddim = Sampler::builder(SamplerKind::Ddim).steps(20).eta(0.5).build(&cfg)?;
//! assert_eq!(ddim.num_steps(), 20);
//! let pc = Sampler::builder(SamplerKind::Pc).corrector_steps(2).build(&cfg)?;
//! assert_eq!(pc.num_steps(), 500); // the default: see `default_steps`
//! # Ok::<(), tinydiffusion::Error>(())
//! ```

use alloc::format;

use super::{Method, SampleOptions, StepInfo};
use crate::error::{invalid_arg, Result};
use crate::model::Model;
use crate::schedule::config::MAX_TRAIN_TIMESTEPS;
use crate::schedule::lcm::TCD_DEFAULT_GAMMA;
use crate::schedule::{ConsistencyScheduler, LcmScheduler, ScoreVeScheduler};
use crate::schedule::{
    DdimPrevTimestep, DpmAlgorithm, Predictor, Scheduler, SchedulerConfig, SchedulerKind,
    SdeConfig, SdeSampler, SigmaScheduler,
};

/// Which sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// DDPM ancestral sampling (diffusers' `DDPMScheduler`).
    Ddpm,
    /// DDIM (diffusers' `DDIMScheduler`; eta 0 is deterministic).
    Ddim,
    /// Reverse-time VP-SDE, Euler-Maruyama.
    Sde,
    /// Probability-flow ODE (Heun by default, or Euler).
    Ode,
    /// Predictor-corrector: a predictor (Euler-Maruyama by default) plus Langevin steps.
    Pc,
    /// diffusers' `EulerDiscreteScheduler`.
    Euler,
    /// diffusers' `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// diffusers' `DPMSolverMultistepScheduler` (the config's algorithm and order, or those
    /// of the `dpm++2m` / `dpm++2m-sde` aliases).
    DpmSolverMultistep,
    /// diffusers' `HeunDiscreteScheduler` (two model evaluations per step but the last).
    Heun,
    /// diffusers' `UniPCMultistepScheduler`.
    UniPcMultistep,
    /// diffusers' `PNDMScheduler` (PLMS; Runge-Kutta warm-up unless `skip_prk_steps`).
    Pndm,
    /// diffusers' `LMSDiscreteScheduler` (linear multistep, order 4).
    Lms,
    /// diffusers' `DPMSolverSinglestepScheduler` (the config's algorithm and order, or those
    /// of the `dpm++2s` alias).
    DpmSolverSinglestep,
    /// diffusers' `KDPM2DiscreteScheduler` (two model evaluations per step but the last).
    Kdpm2,
    /// diffusers' `KDPM2AncestralDiscreteScheduler` (KDPM2 plus noise, one draw per step but
    /// the last).
    Kdpm2Ancestral,
    /// diffusers' `DEISMultistepScheduler` (log-rho DEIS, the config's `solver_order`).
    DeisMultistep,
    /// diffusers' `IPNDMScheduler` (its own schedule; the model sees times in (0, 1]).
    Ipndm,
    /// diffusers' `ScoreSdeVeScheduler` as `ScoreSdeVePipeline` runs it (VE score SDE,
    /// predictor-corrector).
    ScoreSdeVe,
    /// diffusers' `CMStochasticIterativeScheduler` (consistency models, one or few steps).
    Consistency,
    /// diffusers' `LCMScheduler`.
    Lcm,
    /// diffusers' `TCDScheduler` (gamma: the `eta` option, default 0.3).
    Tcd,
}

impl SamplerKind {
    /// Every kind, in the order of the names
    /// `ddpm, ddim, sde, ode, pc, euler, euler-a, dpm, heun, unipc, pndm, lms, dpm-singlestep,
    /// kdpm2, kdpm2-a, deis, ipndm, sde-ve, cm, lcm, tcd`.
    pub const ALL: [SamplerKind; 21] = [
        SamplerKind::Ddpm,
        SamplerKind::Ddim,
        SamplerKind::Sde,
        SamplerKind::Ode,
        SamplerKind::Pc,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::DpmSolverMultistep,
        SamplerKind::Heun,
        SamplerKind::UniPcMultistep,
        SamplerKind::Pndm,
        SamplerKind::Lms,
        SamplerKind::DpmSolverSinglestep,
        SamplerKind::Kdpm2,
        SamplerKind::Kdpm2Ancestral,
        SamplerKind::DeisMultistep,
        SamplerKind::Ipndm,
        SamplerKind::ScoreSdeVe,
        SamplerKind::Consistency,
        SamplerKind::Lcm,
        SamplerKind::Tcd,
    ];

    /// `ddpm`, `ddim`, `sde`, `ode`, `pc`, `euler`, `euler-a` or `dpm` (the
    /// `sample --scheduler` names; [`SamplerSpec::named`] also takes diffusers class names and
    /// the `dpm++2m`, `dpm++2m-sde` aliases).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Sde => "sde",
            SamplerKind::Ode => "ode",
            SamplerKind::Pc => "pc",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler-a",
            SamplerKind::DpmSolverMultistep => "dpm",
            SamplerKind::Heun => "heun",
            SamplerKind::UniPcMultistep => "unipc",
            SamplerKind::Pndm => "pndm",
            SamplerKind::Lms => "lms",
            SamplerKind::DpmSolverSinglestep => "dpm-singlestep",
            SamplerKind::Kdpm2 => "kdpm2",
            SamplerKind::Kdpm2Ancestral => "kdpm2-a",
            SamplerKind::DeisMultistep => "deis",
            SamplerKind::Ipndm => "ipndm",
            SamplerKind::ScoreSdeVe => "sde-ve",
            SamplerKind::Consistency => "cm",
            SamplerKind::Lcm => "lcm",
            SamplerKind::Tcd => "tcd",
        }
    }

    /// The kind of a [`SamplerKind::name`] or of a diffusers class name.
    pub fn from_name(name: &str) -> Option<SamplerKind> {
        SamplerKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .or_else(|| SchedulerKind::from_class_name(name).map(SamplerKind::of_class))
    }

    /// The kind of a diffusers scheduler class.
    pub fn of_class(kind: SchedulerKind) -> SamplerKind {
        match kind {
            SchedulerKind::Ddpm => SamplerKind::Ddpm,
            SchedulerKind::Ddim => SamplerKind::Ddim,
            SchedulerKind::Euler => SamplerKind::Euler,
            SchedulerKind::EulerAncestral => SamplerKind::EulerAncestral,
            SchedulerKind::DpmSolverMultistep => SamplerKind::DpmSolverMultistep,
            SchedulerKind::Heun => SamplerKind::Heun,
            SchedulerKind::UniPcMultistep => SamplerKind::UniPcMultistep,
            SchedulerKind::Pndm => SamplerKind::Pndm,
            SchedulerKind::Lms => SamplerKind::Lms,
            SchedulerKind::DpmSolverSinglestep => SamplerKind::DpmSolverSinglestep,
            SchedulerKind::Kdpm2 => SamplerKind::Kdpm2,
            SchedulerKind::Kdpm2Ancestral => SamplerKind::Kdpm2Ancestral,
            SchedulerKind::DeisMultistep => SamplerKind::DeisMultistep,
            SchedulerKind::Ipndm => SamplerKind::Ipndm,
            SchedulerKind::ScoreSdeVe => SamplerKind::ScoreSdeVe,
            SchedulerKind::CmStochasticIterative => SamplerKind::Consistency,
            SchedulerKind::Lcm => SamplerKind::Lcm,
            SchedulerKind::Tcd => SamplerKind::Tcd,
        }
    }

    /// The diffusers class of a discrete-time kind (`None` for the SDE kinds).
    pub fn class(self) -> Option<SchedulerKind> {
        match self {
            SamplerKind::Ddpm => Some(SchedulerKind::Ddpm),
            SamplerKind::Ddim => Some(SchedulerKind::Ddim),
            SamplerKind::Euler => Some(SchedulerKind::Euler),
            SamplerKind::EulerAncestral => Some(SchedulerKind::EulerAncestral),
            SamplerKind::DpmSolverMultistep => Some(SchedulerKind::DpmSolverMultistep),
            SamplerKind::Heun => Some(SchedulerKind::Heun),
            SamplerKind::UniPcMultistep => Some(SchedulerKind::UniPcMultistep),
            SamplerKind::Pndm => Some(SchedulerKind::Pndm),
            SamplerKind::Lms => Some(SchedulerKind::Lms),
            SamplerKind::DpmSolverSinglestep => Some(SchedulerKind::DpmSolverSinglestep),
            SamplerKind::Kdpm2 => Some(SchedulerKind::Kdpm2),
            SamplerKind::Kdpm2Ancestral => Some(SchedulerKind::Kdpm2Ancestral),
            SamplerKind::DeisMultistep => Some(SchedulerKind::DeisMultistep),
            SamplerKind::Ipndm => Some(SchedulerKind::Ipndm),
            SamplerKind::ScoreSdeVe => Some(SchedulerKind::ScoreSdeVe),
            SamplerKind::Consistency => Some(SchedulerKind::CmStochasticIterative),
            SamplerKind::Lcm => Some(SchedulerKind::Lcm),
            SamplerKind::Tcd => Some(SchedulerKind::Tcd),
            SamplerKind::Sde | SamplerKind::Ode | SamplerKind::Pc => None,
        }
    }

    /// The class of a scheduler config.
    pub fn of_config(cfg: &SchedulerConfig) -> SamplerKind {
        SamplerKind::of_class(cfg.kind)
    }

    /// The score-SDE kinds (continuous time): `Sde`, `Ode`, `Pc`.
    pub fn is_continuous(self) -> bool {
        matches!(self, SamplerKind::Sde | SamplerKind::Ode | SamplerKind::Pc)
    }
}

/// The default number of (predictor) steps of `kind` for a model trained with
/// `num_train_timesteps` (T) timesteps, the one place every front end takes it from:
///
/// | kind | default steps |
/// |---|---|
/// | DDPM | T (every training timestep) |
/// | DDIM | min(50, T) |
/// | SDE (reverse SDE, Euler-Maruyama) | min(1000, T) |
/// | ODE (probability-flow, Heun or Euler) | min(50, T) |
/// | PC (predictor-corrector) | min(500, T) |
/// | Euler, Euler ancestral, DPM-Solver, Heun, UniPC, PNDM, LMS, DPM-Solver singlestep, KDPM2 (ancestral), DEIS, IPNDM | min(50, T) (diffusers' pipeline default) |
/// | score-SDE VE | min(2000, T) (the pipeline's 2000 at the class's T = 2000) |
/// | consistency models | 1 |
/// | LCM, TCD | min(4, T) |
///
/// Each is valid for any model (at most T, at least 1 when T is).
pub fn default_steps(kind: SamplerKind, num_train_timesteps: usize) -> usize {
    let t = num_train_timesteps;
    match kind {
        SamplerKind::Ddpm => t,
        SamplerKind::Ddim => t.min(50),
        SamplerKind::Sde => t.min(1000),
        SamplerKind::Ode => t.min(50),
        SamplerKind::Pc => t.min(500),
        SamplerKind::Euler
        | SamplerKind::EulerAncestral
        | SamplerKind::DpmSolverMultistep
        | SamplerKind::Heun
        | SamplerKind::UniPcMultistep
        | SamplerKind::Pndm
        | SamplerKind::Lms
        | SamplerKind::DpmSolverSinglestep
        | SamplerKind::Kdpm2
        | SamplerKind::Kdpm2Ancestral
        | SamplerKind::DeisMultistep
        | SamplerKind::Ipndm => t.min(50),
        SamplerKind::ScoreSdeVe => t.min(2000),
        SamplerKind::Consistency => t.min(1),
        SamplerKind::Lcm | SamplerKind::Tcd => t.min(4),
    }
}

/// The class of image `i` of a run on a model with `num_classes` class embeddings when the
/// caller gives no labels, the one default of every front end (the `sample` tool, the C API,
/// [`Sampler::sample`] and the sampling loop): image i gets class i, cycling over every class
/// but the last, which is the null ("no class") label of classifier-free guidance by
/// convention. A model with one or two classes gets class 0 for every image.
///
/// ```
/// use tinydiffusion::sampler::default_class_label;
/// let labels: Vec<i64> = (0..12).map(|i| default_class_label(11, i)).collect();
/// assert_eq!(labels, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
/// ```
pub fn default_class_label(num_classes: usize, i: usize) -> i64 {
    let real = num_classes.saturating_sub(1).max(1);
    (i % real) as i64
}

/// What to build: every `None` is the default. Fields a kind does not use are ignored, but a
/// value that is given must be valid whatever the kind (an `eta` of NaN is an error even for
/// the SDE). Build with [`Sampler::new`] or [`SamplerSpec::build`]; the chainable setters
/// (`Sampler::builder(kind).steps(20).eta(0.5)`) set the fields.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SamplerSpec {
    /// `None`: the class of the scheduler config (DDPM or DDIM).
    pub kind: Option<SamplerKind>,
    /// Inference (predictor) steps, >= 1. `None`: [`default_steps`].
    pub steps: Option<usize>,
    /// DDIM's eta, finite and >= 0 (default 0: deterministic). DDPM and the SDE kinds ignore it.
    pub eta: Option<f64>,
    /// DDIM's previous timestep (default: the scheduler config's, diffusers' `t - T / N`).
    pub ddim_prev_timestep: Option<DdimPrevTimestep>,
    /// DDIM recomputes eps from the clipped x_0 (default: the scheduler config's).
    pub use_clipped_model_output: Option<bool>,
    /// SDE / ODE / PC predictor. Default: Euler-Maruyama for SDE and PC, Heun for ODE. SDE
    /// takes only Euler-Maruyama and ODE only the ODE solvers; PC takes any.
    pub predictor: Option<Predictor>,
    /// PC: Langevin corrector steps per step (default 1; the other kinds use none).
    pub corrector_steps: Option<usize>,
    /// SDE kinds: signal-to-noise ratio of the Langevin step size, finite and >= 0 (default
    /// 0.16).
    pub snr: Option<f64>,
    /// SDE kinds: the last time of the grid, in (0, 1) (default 0.001).
    pub t_eps: Option<f64>,
    /// SDE kinds: finish with the Tweedie denoising step at `t_eps` (default true).
    pub denoise: Option<bool>,
    /// DPM-Solver: `algorithm_type` (default: the scheduler config's).
    pub dpm_algorithm: Option<DpmAlgorithm>,
    /// DPM-Solver: `solver_order`, 1-3 (default: the scheduler config's).
    pub solver_order: Option<usize>,
}

impl SamplerSpec {
    /// Every option at its default, for `kind` (`None`: the scheduler config's class).
    pub fn new(kind: Option<SamplerKind>) -> SamplerSpec {
        SamplerSpec {
            kind,
            ..SamplerSpec::default()
        }
    }

    pub fn steps(mut self, steps: usize) -> SamplerSpec {
        self.steps = Some(steps);
        self
    }

    pub fn eta(mut self, eta: f64) -> SamplerSpec {
        self.eta = Some(eta);
        self
    }

    pub fn ddim_prev_timestep(mut self, mode: DdimPrevTimestep) -> SamplerSpec {
        self.ddim_prev_timestep = Some(mode);
        self
    }

    pub fn use_clipped_model_output(mut self, on: bool) -> SamplerSpec {
        self.use_clipped_model_output = Some(on);
        self
    }

    pub fn predictor(mut self, predictor: Predictor) -> SamplerSpec {
        self.predictor = Some(predictor);
        self
    }

    pub fn corrector_steps(mut self, n: usize) -> SamplerSpec {
        self.corrector_steps = Some(n);
        self
    }

    pub fn snr(mut self, snr: f64) -> SamplerSpec {
        self.snr = Some(snr);
        self
    }

    pub fn t_eps(mut self, t_eps: f64) -> SamplerSpec {
        self.t_eps = Some(t_eps);
        self
    }

    pub fn denoise(mut self, on: bool) -> SamplerSpec {
        self.denoise = Some(on);
        self
    }

    /// The spec of a `--scheduler` name: a [`SamplerKind::name`], a diffusers class name
    /// (`EulerDiscreteScheduler`, ...), or an alias: `dpm++2m` (DPM-Solver++ order 2),
    /// `dpm++2m-sde` (SDE-DPM-Solver++ order 2), `euler-ancestral`, `dpm++2s` (singlestep
    /// DPM-Solver++ order 2). `None` for anything else.
    pub fn named(name: &str) -> Option<SamplerSpec> {
        let dpm = |alg| SamplerSpec {
            dpm_algorithm: Some(alg),
            solver_order: Some(2),
            ..SamplerSpec::new(Some(SamplerKind::DpmSolverMultistep))
        };
        match name {
            "dpm++2m" => Some(dpm(DpmAlgorithm::DpmSolverPP)),
            "dpm++2m-sde" => Some(dpm(DpmAlgorithm::SdeDpmSolverPP)),
            "dpm++2s" => Some(SamplerSpec {
                kind: Some(SamplerKind::DpmSolverSinglestep),
                ..dpm(DpmAlgorithm::DpmSolverPP)
            }),
            "euler-ancestral" | "euler_a" => {
                Some(SamplerSpec::new(Some(SamplerKind::EulerAncestral)))
            }
            "score-sde-ve" => Some(SamplerSpec::new(Some(SamplerKind::ScoreSdeVe))),
            "consistency" => Some(SamplerSpec::new(Some(SamplerKind::Consistency))),
            _ => SamplerKind::from_name(name).map(|k| SamplerSpec::new(Some(k))),
        }
    }

    /// The kind this spec builds for a model with scheduler config `cfg`.
    pub fn resolved_kind(&self, cfg: &SchedulerConfig) -> SamplerKind {
        self.kind.unwrap_or_else(|| SamplerKind::of_config(cfg))
    }

    /// The steps this spec builds for a model with scheduler config `cfg`.
    pub fn resolved_steps(&self, cfg: &SchedulerConfig) -> usize {
        self.steps
            .unwrap_or_else(|| default_steps(self.resolved_kind(cfg), cfg.num_train_timesteps))
    }

    /// Checks every given value (whatever the kind) and that the predictor fits the kind.
    pub fn validate(&self, cfg: &SchedulerConfig) -> Result<()> {
        if let Some(n) = self.steps {
            // Every schedule holds a few floats per step; no sampler runs more than this.
            if n == 0 || n > MAX_TRAIN_TIMESTEPS {
                return Err(invalid_arg(
                    "steps",
                    format!("{n} is out of range 1..={MAX_TRAIN_TIMESTEPS}"),
                ));
            }
        }
        if let Some(eta) = self.eta {
            if !(eta.is_finite() && eta >= 0.0) {
                return Err(invalid_arg("eta", format!("{eta} must be finite and >= 0")));
            }
        }
        if let Some(snr) = self.snr {
            if !(snr.is_finite() && snr >= 0.0) {
                return Err(invalid_arg("snr", format!("{snr} must be finite and >= 0")));
            }
        }
        if let Some(o) = self.solver_order {
            if !(1..=3).contains(&o) {
                return Err(invalid_arg("solver_order", format!("{o} is not 1, 2 or 3")));
            }
        }
        if let Some(t) = self.t_eps {
            if !(t > 0.0 && t < 1.0) {
                return Err(invalid_arg("sde eps", format!("{t} is outside (0, 1)")));
            }
        }
        let kind = self.resolved_kind(cfg);
        if let Some(p) = self.predictor {
            let ode = p != Predictor::EulerMaruyama;
            if (kind == SamplerKind::Sde && ode) || (kind == SamplerKind::Ode && !ode) {
                return Err(invalid_arg(
                    "predictor",
                    format!(
                        "{} does not fit sampler kind {} (a pc run combines any predictor with \
                         Langevin steps)",
                        p.name(),
                        kind.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// [`Sampler::new`] of this spec.
    pub fn build(&self, cfg: &SchedulerConfig) -> Result<Sampler> {
        Sampler::new(self, cfg)
    }
}

/// A built sampler: the kind, its schedule (DDPM/DDIM timesteps and tables, or the SDE grid)
/// and its options. Immutable; [`Sampler::sample`] allocates nothing.
#[derive(Debug, Clone)]
pub struct Sampler {
    kind: SamplerKind,
    built: Built,
}

#[derive(Debug, Clone)]
enum Built {
    Discrete(Scheduler),
    Sde(SdeSampler),
    Sigma(SigmaScheduler),
    ScoreVe(ScoreVeScheduler),
    Consistency(ConsistencyScheduler),
    Lcm(LcmScheduler),
}

impl Sampler {
    /// A spec with every option at its default, for `kind`; finish with
    /// [`SamplerSpec::build`].
    pub fn builder(kind: SamplerKind) -> SamplerSpec {
        SamplerSpec::new(Some(kind))
    }

    /// Builds `spec` for a model whose scheduler config is `cfg` (the schedule, the
    /// prediction type and, for DDPM and DDIM, every other setting of diffusers'
    /// `from_config`). DDPM and DDIM convert the config to their class as diffusers'
    /// `from_config` does; the SDE kinds read its schedule and prediction type.
    ///
    /// Errors: any invalid value of `spec` ([`SamplerSpec::validate`]), steps above what the
    /// schedule allows, an invalid config.
    pub fn new(spec: &SamplerSpec, cfg: &SchedulerConfig) -> Result<Sampler> {
        spec.validate(cfg)?;
        let kind = spec.resolved_kind(cfg);
        let steps = spec.resolved_steps(cfg);
        let built = match kind {
            SamplerKind::Ddpm | SamplerKind::Ddim => {
                let class = if kind == SamplerKind::Ddpm {
                    SchedulerKind::Ddpm
                } else {
                    SchedulerKind::Ddim
                };
                let mut c = cfg.clone().with_kind(class)?;
                if let Some(mode) = spec.ddim_prev_timestep {
                    c.ddim_prev_timestep = mode;
                }
                if let Some(on) = spec.use_clipped_model_output {
                    c.use_clipped_model_output = on;
                }
                let mut s = Scheduler::new(c, steps)?;
                if let Some(eta) = spec.eta {
                    s.set_eta(eta);
                }
                Built::Discrete(s)
            }
            SamplerKind::Euler
            | SamplerKind::EulerAncestral
            | SamplerKind::DpmSolverMultistep
            | SamplerKind::Heun
            | SamplerKind::UniPcMultistep
            | SamplerKind::Pndm
            | SamplerKind::Lms
            | SamplerKind::DpmSolverSinglestep
            | SamplerKind::Kdpm2
            | SamplerKind::Kdpm2Ancestral
            | SamplerKind::DeisMultistep
            | SamplerKind::Ipndm => {
                let class = kind.class().expect("a discrete-time kind");
                let mut c = cfg.clone().with_kind(class)?;
                if let Some(a) = spec.dpm_algorithm {
                    c.algorithm_type = a;
                }
                if let Some(o) = spec.solver_order {
                    c.solver_order = o;
                }
                Built::Sigma(SigmaScheduler::new(c, steps)?)
            }
            SamplerKind::Sde | SamplerKind::Ode | SamplerKind::Pc => {
                let d = SdeConfig::sde(steps);
                let predictor = spec.predictor.unwrap_or(if kind == SamplerKind::Ode {
                    Predictor::OdeHeun
                } else {
                    Predictor::EulerMaruyama
                });
                let sde = SdeConfig {
                    predictor,
                    corrector_steps: if kind == SamplerKind::Pc {
                        spec.corrector_steps.unwrap_or(1)
                    } else {
                        0
                    },
                    snr: spec.snr.unwrap_or(d.snr),
                    t_eps: spec.t_eps.unwrap_or(d.t_eps),
                    denoise: spec.denoise.unwrap_or(d.denoise),
                    ..d
                };
                Built::Sde(SdeSampler::new(cfg, sde)?)
            }
            SamplerKind::ScoreSdeVe => {
                let mut c = cfg.clone().with_kind(SchedulerKind::ScoreSdeVe)?;
                if let Some(n) = spec.corrector_steps {
                    c.correct_steps = n;
                }
                if let Some(snr) = spec.snr {
                    c.snr = snr;
                }
                Built::ScoreVe(ScoreVeScheduler::new(c, steps)?)
            }
            SamplerKind::Consistency => Built::Consistency(ConsistencyScheduler::new(
                cfg.clone()
                    .with_kind(SchedulerKind::CmStochasticIterative)?,
                steps,
            )?),
            SamplerKind::Lcm | SamplerKind::Tcd => {
                let class = kind.class().expect("a discrete-time kind");
                Built::Lcm(LcmScheduler::new(
                    cfg.clone().with_kind(class)?,
                    steps,
                    spec.eta.unwrap_or(TCD_DEFAULT_GAMMA),
                )?)
            }
        };
        Ok(Sampler { kind, built })
    }

    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The sampling loop's view of it.
    pub fn method(&self) -> Method<'_> {
        match &self.built {
            Built::Discrete(s) => Method::Scheduler(s),
            Built::Sde(s) => Method::Sde(s),
            Built::Sigma(s) => Method::Sigma(s),
            Built::ScoreVe(s) => Method::ScoreVe(s),
            Built::Consistency(s) => Method::Consistency(s),
            Built::Lcm(s) => Method::Lcm(s),
        }
    }

    /// The DDPM/DDIM scheduler, if it is one.
    pub fn scheduler(&self) -> Option<&Scheduler> {
        match &self.built {
            Built::Discrete(s) => Some(s),
            _ => None,
        }
    }

    /// The continuous-time sampler, if it is one.
    pub fn sde(&self) -> Option<&SdeSampler> {
        match &self.built {
            Built::Sde(s) => Some(s),
            _ => None,
        }
    }

    /// The Euler / Euler ancestral / DPM-Solver scheduler, if it is one.
    pub fn sigma(&self) -> Option<&SigmaScheduler> {
        match &self.built {
            Built::Sigma(s) => Some(s),
            _ => None,
        }
    }

    /// (Predictor) steps of a run.
    pub fn num_steps(&self) -> usize {
        self.method().num_steps()
    }

    /// Rows of [`SampleOptions::step_noise`] a run reads ([`Method::noise_rows`]).
    pub fn noise_rows(&self) -> usize {
        self.method().noise_rows()
    }

    /// Model evaluations of a run, without guidance (twice as many with it).
    pub fn model_evaluations(&self) -> usize {
        self.method().model_evaluations()
    }

    /// The timesteps of a run, first (noisiest) to last; for the SDE kinds the rounded model
    /// timestep where each step starts.
    pub fn timesteps(&self) -> &[i64] {
        match &self.built {
            Built::Discrete(s) => s.timesteps(),
            Built::Sde(s) => s.timesteps(),
            Built::Sigma(s) => s.rounded_timesteps(),
            Built::ScoreVe(s) => s.timesteps(),
            Built::Consistency(s) => s.timesteps(),
            Built::Lcm(s) => s.timesteps(),
        }
    }

    /// Exact workspace (f32 elements) of [`Sampler::sample`] with [`SampleOptions::threads`]
    /// 0: sized for the model's thread count, so it depends on the machine (its cores, its
    /// kernel path); see [`Sampler::workspace_len_for_threads`].
    pub fn workspace_len(&self, model: &Model, batch: usize, guided: bool) -> usize {
        super::workspace_len_with(model, self.method(), batch, guided)
    }

    /// Exact workspace (f32 elements) of [`Sampler::sample`] with [`SampleOptions::threads`] =
    /// `threads`: for `threads` >= 1 the same on every machine of the architecture (a run
    /// with it uses at most `threads` threads); 0 is [`Sampler::workspace_len`].
    pub fn workspace_len_for_threads(
        &self,
        model: &Model,
        batch: usize,
        guided: bool,
        threads: usize,
    ) -> usize {
        super::workspace_len_for_threads(model, self.method(), batch, guided, threads)
    }

    /// Runs the sampling loop ([`super::sample_with`]): `out` (`[batch, C, H, W]`) receives
    /// x_0. A class-conditional model given no labels samples [`default_class_label`]s.
    /// Allocates nothing.
    pub fn sample(
        &self,
        model: &Model,
        workspace: &mut [f32],
        opts: &SampleOptions<'_>,
        out: &mut [f32],
        on_step: Option<&mut dyn FnMut(&StepInfo<'_>)>,
    ) -> Result<()> {
        super::sample_with(model, self.method(), workspace, opts, out, on_step)
    }
}

impl From<Scheduler> for Sampler {
    fn from(s: Scheduler) -> Sampler {
        Sampler {
            kind: SamplerKind::of_config(s.config()),
            built: Built::Discrete(s),
        }
    }
}

impl From<SigmaScheduler> for Sampler {
    fn from(s: SigmaScheduler) -> Sampler {
        Sampler {
            kind: SamplerKind::of_config(s.config()),
            built: Built::Sigma(s),
        }
    }
}

impl From<ScoreVeScheduler> for Sampler {
    fn from(s: ScoreVeScheduler) -> Sampler {
        Sampler {
            kind: SamplerKind::ScoreSdeVe,
            built: Built::ScoreVe(s),
        }
    }
}

/// For a run the front end cannot describe, e.g. custom timesteps
/// ([`ConsistencyScheduler::with_timesteps`]).
impl From<ConsistencyScheduler> for Sampler {
    fn from(s: ConsistencyScheduler) -> Sampler {
        Sampler {
            kind: SamplerKind::Consistency,
            built: Built::Consistency(s),
        }
    }
}

impl From<LcmScheduler> for Sampler {
    fn from(s: LcmScheduler) -> Sampler {
        Sampler {
            kind: SamplerKind::of_config(s.config()),
            built: Built::Lcm(s),
        }
    }
}

impl From<SdeSampler> for Sampler {
    fn from(s: SdeSampler) -> Sampler {
        let c = s.config();
        let kind = match (c.predictor, c.corrector_steps) {
            (_, n) if n > 0 => SamplerKind::Pc,
            (Predictor::EulerMaruyama, _) => SamplerKind::Sde,
            _ => SamplerKind::Ode,
        };
        Sampler {
            kind,
            built: Built::Sde(s),
        }
    }
}

impl<'a> From<&'a Sampler> for Method<'a> {
    fn from(s: &'a Sampler) -> Method<'a> {
        s.method()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_any_model() {
        for t in [1usize, 2, 10, 49, 50, 999, 1000, 4000] {
            let mut cfg = SchedulerConfig::ddpm_default();
            cfg.num_train_timesteps = t;
            for kind in SamplerKind::ALL {
                let steps = default_steps(kind, t);
                assert!(steps >= 1 && steps <= t, "{kind:?} at T = {t}: {steps}");
                // PNDM's Runge-Kutta warm-up (diffusers' default) needs 4 steps, as in
                // diffusers; with skip_prk_steps it runs on any T >= 2.
                // LCM and TCD need T >= original_inference_steps (50), as in diffusers.
                let lcm = matches!(kind, SamplerKind::Lcm | SamplerKind::Tcd);
                if t >= 2 && !(kind == SamplerKind::Pndm && t < 4) && !(lcm && t < 50) {
                    let s = Sampler::builder(kind).build(&cfg).unwrap();
                    // Heun reports its 2N - 1 evaluations as steps; N is its inference steps.
                    let n = s.sigma().map_or(s.num_steps(), |x| x.num_inference_steps());
                    assert_eq!(n, steps, "{kind:?} at T = {t}");
                    assert_eq!(s.kind(), kind);
                }
            }
        }
        // Unchanged for T >= 1000.
        let d: [usize; 21] = SamplerKind::ALL.map(|k| default_steps(k, 1000));
        assert_eq!(
            d,
            [
                1000, 50, 1000, 50, 500, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 1000, 1,
                4, 4
            ]
        );
    }

    #[test]
    fn bad_values_and_kind_mismatches() {
        let cfg = SchedulerConfig::ddpm_default();
        let bad = |spec: SamplerSpec| Sampler::new(&spec, &cfg).is_err();
        assert!(bad(SamplerSpec::new(None).steps(0)));
        assert!(bad(Sampler::builder(SamplerKind::Sde).eta(f64::NAN)));
        assert!(bad(Sampler::builder(SamplerKind::Ddim).snr(-1.0)));
        assert!(bad(Sampler::builder(SamplerKind::Ode).t_eps(1.0)));
        assert!(bad(
            Sampler::builder(SamplerKind::Sde).predictor(Predictor::OdeHeun)
        ));
        assert!(bad(
            Sampler::builder(SamplerKind::Ode).predictor(Predictor::EulerMaruyama)
        ));
        assert!(!bad(
            Sampler::builder(SamplerKind::Pc).predictor(Predictor::OdeHeun)
        ));
        assert_eq!(
            SamplerSpec::new(None).build(&cfg).unwrap().kind(),
            SamplerKind::Ddpm
        );
        for k in SamplerKind::ALL {
            assert_eq!(SamplerKind::from_name(k.name()), Some(k));
        }
    }
}
