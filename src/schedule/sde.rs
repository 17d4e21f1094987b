//! The continuous-time view of the same model (Song et al., "Score-Based Generative Modeling
//! through Stochastic Differential Equations", ICLR 2021): a DDPM-trained eps-model is the
//! score of a variance-preserving SDE,
//!
//! ```text
//! dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw,        t in [0, 1]
//! s(x, t) = grad log p_t(x) = -eps(x, t) / sqrt(1 - abar(t))
//! ```
//!
//! and it can be sampled by integrating, from t = 1 down to a small `t_eps`,
//!
//! - the reverse-time SDE `dx = [f - g^2 s] dt + g dw` (Euler-Maruyama, [`Predictor::EulerMaruyama`]),
//! - the probability-flow ODE `dx = [f - g^2 s / 2] dt` (Euler or Heun, [`Predictor::OdeEuler`],
//!   [`Predictor::OdeHeun`]),
//! - either of them as the predictor of a predictor-corrector sampler with Langevin corrector
//!   steps ([`SdeConfig::corrector_steps`], [`SdeConfig::snr`]),
//!
//! followed by one Tweedie denoising step at `t_eps` (score_sde's `noise_removal`):
//! `x_0 = (x - sqrt(1 - abar) eps) / sqrt(abar)`.
//!
//! ## The continuous schedule ([`VpSde`])
//! Continuous time maps to the model's timestep input as score_sde does: `tau = t (T - 1)`
//! (fractional; the UNet's sinusoidal embedding takes any float). The noise level at t is
//! either
//! - [`VpSde::from_alphas_cumprod`] (the default, [`VpSde::from_config`]): log abar
//!   interpolated linearly in tau between the model's own discrete `alphas_cumprod`, so at
//!   every integer tau the SDE's noise level is exactly the one the model was trained at, for
//!   every beta schedule the crate supports; beta(t) = -d log abar / dt is piecewise constant.
//! - [`VpSde::linear`]: score_sde's closed form `beta(t) = beta_min + t (beta_max - beta_min)`,
//!   `beta_min = T beta_start`, `beta_max = T beta_end` ([`VpSde::linear_from_config`]). It
//!   differs from the discrete schedule by a few percent in abar (exp of minus the integral of
//!   beta versus the product of the 1 - beta_i: about 5% at tau = 900 for the DDPM defaults),
//!   which is why it is not the default.
//!
//! ## Time grid and model evaluations
//! `t_i = 1 - i (1 - t_eps) / N`, i = 0..=N, for N = [`SdeConfig::steps`]. Step i runs the
//! corrector at t_i (`corrector_steps` evaluations), then the predictor from t_i to t_{i+1}
//! (one evaluation; Heun two, at t_i and t_{i+1}). The denoising step adds one more:
//! [`SdeSampler::model_evaluations`].
//!
//! ## Noise
//! Every Gaussian draw (the Euler-Maruyama increment, each Langevin step) is one "noise row"
//! of `[B, C, H, W]`, numbered in the order drawn; row k is stream k + 1 of the seeded
//! [`GaussianNoise`] (stream 0 is x_T), or row k of injected noise. [`SdeSampler::noise_rows`]
//! says how many a run draws.
//!
//! ## Differences from score_sde
//! - Langevin step sizes use each sample's own norms (score_sde averages the norms over the
//!   batch), so a sample does not depend on what else is in the batch.
//! - The grid really ends at `t_eps` (score_sde's `linspace(1, eps, N)` with `dt = -1 / N`
//!   overshoots by `eps`).

use alloc::format;
use alloc::vec::Vec;

use super::betas::{alphas_cumprod, betas};
use super::config::{BetaSchedule, PredictionType, SchedulerConfig};
use super::eps::{EpsModel, NoiseLevel};
use super::noise::GaussianNoise;
use super::scheduler::StepShape;
use crate::error::{invalid_arg, Error, Result};

/// The continuous noise schedule of the VP-SDE and its map to the model's timesteps.
#[derive(Debug, Clone, PartialEq)]
pub struct VpSde {
    kind: Kind,
    /// T, the model's `num_train_timesteps`: tau = t (T - 1).
    train_timesteps: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Linear {
        beta_min: f64,
        beta_max: f64,
    },
    /// log abar at tau = 0, 1, ..., T - 1.
    Table {
        log_abar: Vec<f64>,
    },
}

impl VpSde {
    /// score_sde's linear VP-SDE: `beta(t) = beta_min + t (beta_max - beta_min)`,
    /// `log abar(t) = -beta_min t - (beta_max - beta_min) t^2 / 2`; the model sees
    /// `tau = t (train_timesteps - 1)`.
    pub fn linear(beta_min: f64, beta_max: f64, train_timesteps: usize) -> Result<VpSde> {
        if !(beta_min.is_finite() && beta_max.is_finite() && beta_min >= 0.0 && beta_max > 0.0) {
            return Err(invalid_arg(
                "VP-SDE",
                format!("beta_min {beta_min} and beta_max {beta_max} must be finite, >= 0 and > 0"),
            ));
        }
        if train_timesteps < 2 {
            return Err(invalid_arg("VP-SDE", "needs at least 2 training timesteps"));
        }
        Ok(VpSde {
            kind: Kind::Linear { beta_min, beta_max },
            train_timesteps,
        })
    }

    /// The VP-SDE whose noise level at `tau = t (T - 1)` interpolates log abar linearly
    /// between the discrete `alphas_cumprod[0..T]`, T = `alphas_cumprod.len()`.
    ///
    /// Errors: fewer than 2 entries, or an alpha-bar outside (0, 1] (zero terminal SNR has no
    /// score at t = 1).
    pub fn from_alphas_cumprod(alphas_cumprod: &[f64]) -> Result<VpSde> {
        if alphas_cumprod.len() < 2 {
            return Err(invalid_arg("VP-SDE", "needs at least 2 training timesteps"));
        }
        if let Some((i, a)) = alphas_cumprod
            .iter()
            .enumerate()
            .find(|(_, a)| !(**a > 0.0 && **a <= 1.0))
        {
            return Err(invalid_arg(
                "VP-SDE",
                format!(
                    "alpha-bar {i} = {a} is outside (0, 1] (zero terminal SNR schedules have no \
                     score at t = 1)"
                ),
            ));
        }
        Ok(VpSde {
            kind: Kind::Table {
                log_abar: alphas_cumprod.iter().map(|&a| libm::log(a)).collect(),
            },
            train_timesteps: alphas_cumprod.len(),
        })
    }

    /// The default continuous schedule of a scheduler config: its discrete alpha-bars,
    /// interpolated ([`VpSde::from_alphas_cumprod`]).
    pub fn from_config(cfg: &SchedulerConfig) -> Result<VpSde> {
        VpSde::from_alphas_cumprod(&alphas_cumprod(&betas(cfg)?))
    }

    /// score_sde's closed form for a `linear` config: `beta_min = T beta_start`,
    /// `beta_max = T beta_end`. Errors for other schedules (or `trained_betas`).
    pub fn linear_from_config(cfg: &SchedulerConfig) -> Result<VpSde> {
        cfg.validate()?;
        if cfg.beta_schedule != BetaSchedule::Linear
            || cfg.trained_betas.is_some()
            || cfg.rescale_betas_zero_snr
        {
            return Err(invalid_arg(
                "VP-SDE",
                "the closed-form linear SDE needs beta_schedule = linear (no trained_betas, no \
                 zero-SNR rescaling)",
            ));
        }
        let t = cfg.num_train_timesteps as f64;
        VpSde::linear(
            t * cfg.beta_start,
            t * cfg.beta_end,
            cfg.num_train_timesteps,
        )
    }

    /// T, the model's training timesteps.
    pub fn train_timesteps(&self) -> usize {
        self.train_timesteps
    }

    /// The model's timestep input at continuous time t: `t (T - 1)`.
    pub fn timestep(&self, t: f64) -> f64 {
        t * (self.train_timesteps - 1) as f64
    }

    /// Table segment and fraction of tau(t), clamped to [0, T - 1].
    fn segment(&self, t: f64) -> (usize, f64) {
        let last = self.train_timesteps - 1;
        let tau = self.timestep(t).clamp(0.0, last as f64);
        let k = (libm::floor(tau) as usize).min(last - 1);
        (k, tau - k as f64)
    }

    /// log abar(t).
    pub fn log_alpha_bar(&self, t: f64) -> f64 {
        match &self.kind {
            Kind::Linear { beta_min, beta_max } => {
                -beta_min * t - 0.5 * (beta_max - beta_min) * t * t
            }
            Kind::Table { log_abar } => {
                let (k, f) = self.segment(t);
                log_abar[k] + f * (log_abar[k + 1] - log_abar[k])
            }
        }
    }

    /// abar(t) = exp(log abar(t)).
    pub fn alpha_bar(&self, t: f64) -> f64 {
        libm::exp(self.log_alpha_bar(t))
    }

    /// beta(t) = -d log abar / dt (for the table: the slope of t's segment; at a knot, the
    /// segment above it).
    pub fn beta(&self, t: f64) -> f64 {
        match &self.kind {
            Kind::Linear { beta_min, beta_max } => beta_min + t * (beta_max - beta_min),
            Kind::Table { log_abar } => {
                let (k, _) = self.segment(t);
                -(log_abar[k + 1] - log_abar[k]) * (self.train_timesteps - 1) as f64
            }
        }
    }

    /// score_sde's `alpha` of the Langevin step size for VP-SDEs (`1 - beta_discrete`):
    /// `1 - beta(t) / T`, clamped to (0, 1].
    pub fn corrector_alpha(&self, t: f64) -> f64 {
        (1.0 - self.beta(t) / self.train_timesteps as f64).clamp(1e-12, 1.0)
    }
}

/// The predictor of a step (from t_i to t_{i+1}).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Predictor {
    /// Euler-Maruyama on the reverse-time SDE: one evaluation, one noise row.
    EulerMaruyama,
    /// Euler on the probability-flow ODE: one evaluation, deterministic.
    OdeEuler,
    /// Heun (explicit trapezoid) on the probability-flow ODE: two evaluations, deterministic.
    OdeHeun,
}

impl Predictor {
    pub fn name(self) -> &'static str {
        match self {
            Predictor::EulerMaruyama => "euler-maruyama",
            Predictor::OdeEuler => "ode-euler",
            Predictor::OdeHeun => "ode-heun",
        }
    }

    /// Model evaluations per step.
    pub fn evaluations(self) -> usize {
        match self {
            Predictor::OdeHeun => 2,
            _ => 1,
        }
    }
}

/// One continuous-time sampling run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SdeConfig {
    pub predictor: Predictor,
    /// Predictor steps N (>= 1).
    pub steps: usize,
    /// Langevin corrector steps before each predictor step (0: no corrector).
    pub corrector_steps: usize,
    /// Signal-to-noise ratio of the Langevin step size rule (score_sde: 0.16 for VP-SDEs).
    pub snr: f64,
    /// The last time of the grid, in (0, 1) (score_sde: 1e-3).
    pub t_eps: f64,
    /// Finish with the Tweedie denoising step at `t_eps` (one more evaluation).
    pub denoise: bool,
}

impl SdeConfig {
    /// Reverse SDE, Euler-Maruyama, `steps` steps, no corrector.
    pub fn sde(steps: usize) -> SdeConfig {
        SdeConfig {
            predictor: Predictor::EulerMaruyama,
            steps,
            corrector_steps: 0,
            snr: 0.16,
            t_eps: 1e-3,
            denoise: true,
        }
    }

    /// Probability-flow ODE with `solver` ([`Predictor::OdeEuler`] or [`Predictor::OdeHeun`]).
    pub fn ode(solver: Predictor, steps: usize) -> SdeConfig {
        SdeConfig {
            predictor: solver,
            ..SdeConfig::sde(steps)
        }
    }

    /// Predictor-corrector: Euler-Maruyama plus `corrector_steps` Langevin steps per step.
    pub fn pc(steps: usize, corrector_steps: usize) -> SdeConfig {
        SdeConfig {
            corrector_steps,
            ..SdeConfig::sde(steps)
        }
    }

    /// Model evaluations of a run: `steps * (evaluations per predictor step + corrector
    /// steps) + denoise`.
    pub fn model_evaluations(&self) -> usize {
        self.steps * (self.predictor.evaluations() + self.corrector_steps) + self.denoise as usize
    }

    /// Gaussian noise rows `[B, C, H, W]` a run draws.
    pub fn noise_rows(&self) -> usize {
        self.steps * (self.corrector_steps + (self.predictor == Predictor::EulerMaruyama) as usize)
    }

    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(invalid_arg("steps", "must be at least 1"));
        }
        if self.steps > MAX_SDE_STEPS {
            return Err(invalid_arg(
                "steps",
                format!("{} is above the limit of {MAX_SDE_STEPS}", self.steps),
            ));
        }
        if !(self.t_eps > 0.0 && self.t_eps < 1.0) {
            return Err(invalid_arg(
                "sde eps",
                format!("{} is outside (0, 1)", self.t_eps),
            ));
        }
        if !(self.snr.is_finite() && self.snr >= 0.0) {
            return Err(invalid_arg(
                "snr",
                format!("{} must be finite and >= 0", self.snr),
            ));
        }
        if self.steps.checked_mul(self.corrector_steps + 2).is_none() {
            return Err(invalid_arg("steps", "steps * corrector steps overflows"));
        }
        Ok(())
    }
}

/// Most steps of a continuous-time run. The grid is stored (one timestep per step), so an
/// absurd step count from an untrusted caller must be an error, not an allocation failure.
pub const MAX_SDE_STEPS: usize = 1 << 20;

/// Where the Gaussian noise rows of a run come from.
#[derive(Debug, Clone, Copy)]
pub enum NoiseRows<'a> {
    /// Row k is stream k + 1 of this generator.
    Seeded(GaussianNoise),
    /// `[rows, B, C, H, W]`: row k is the k-th draw.
    Injected(&'a [f32]),
}

/// A continuous-time sampler: a [`VpSde`], an [`SdeConfig`] and how to read the model output.
#[derive(Debug, Clone, PartialEq)]
pub struct SdeSampler {
    sde: VpSde,
    cfg: SdeConfig,
    prediction_type: PredictionType,
    /// Model timestep tau(t_i) of each grid point, rounded (for progress reports).
    grid_timesteps: Vec<i64>,
}

/// Progress of a continuous-time run, after each predictor step (and the denoising step).
pub struct SdeStep<'a> {
    pub index: usize,
    pub steps: usize,
    /// Continuous time reached.
    pub t: f64,
    pub sample: &'a [f32],
}

impl SdeSampler {
    /// The sampler for a model whose scheduler config is `sched`: the default continuous
    /// schedule ([`VpSde::from_config`]) and `sched`'s prediction type.
    pub fn new(sched: &SchedulerConfig, cfg: SdeConfig) -> Result<SdeSampler> {
        SdeSampler::with_sde(VpSde::from_config(sched)?, cfg, sched.prediction_type)
    }

    /// The sampler for an explicit SDE; `prediction_type` says what the model outputs
    /// (eps, x_0 or v), converted to eps before each use.
    pub fn with_sde(
        sde: VpSde,
        cfg: SdeConfig,
        prediction_type: PredictionType,
    ) -> Result<SdeSampler> {
        cfg.validate()?;
        let mut s = SdeSampler {
            sde,
            cfg,
            prediction_type,
            grid_timesteps: Vec::new(),
        };
        s.grid_timesteps = (0..cfg.steps)
            .map(|i| libm::round(s.sde.timestep(s.time(i))) as i64)
            .collect();
        Ok(s)
    }

    pub fn sde(&self) -> &VpSde {
        &self.sde
    }

    pub fn config(&self) -> &SdeConfig {
        &self.cfg
    }

    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    /// Predictor steps N.
    pub fn num_steps(&self) -> usize {
        self.cfg.steps
    }

    /// tau(t_i) rounded, i = 0..N: where each step starts, as a model timestep.
    pub fn timesteps(&self) -> &[i64] {
        &self.grid_timesteps
    }

    /// Grid time t_i = 1 - i (1 - t_eps) / N.
    pub fn time(&self, i: usize) -> f64 {
        if i >= self.cfg.steps {
            return self.cfg.t_eps;
        }
        1.0 - i as f64 * (1.0 - self.cfg.t_eps) / self.cfg.steps as f64
    }

    /// See [`SdeConfig::model_evaluations`].
    pub fn model_evaluations(&self) -> usize {
        self.cfg.model_evaluations()
    }

    /// See [`SdeConfig::noise_rows`].
    pub fn noise_rows(&self) -> usize {
        self.cfg.noise_rows()
    }

    /// Scratch floats [`SdeSampler::run`] needs: eps and one noise row, plus the Heun
    /// intermediate sample and slope.
    pub fn scratch_len(&self, shape: StepShape) -> usize {
        let n = shape.len().unwrap_or(0);
        let per = if self.cfg.predictor == Predictor::OdeHeun {
            4
        } else {
            2
        };
        n.saturating_mul(per)
    }

    fn level(&self, t: f64) -> NoiseLevel {
        NoiseLevel {
            timestep: self.sde.timestep(t) as f32,
            alpha_bar: self.sde.alpha_bar(t),
        }
    }

    /// Integrates from `x` = x_1 (`[B, C, H, W]`, in place) to x_0 with `model` giving eps.
    /// `scratch`: at least [`SdeSampler::scratch_len`] floats. No allocation.
    pub fn run<E: EpsModel + ?Sized>(
        &self,
        model: &mut E,
        shape: StepShape,
        x: &mut [f32],
        noise: NoiseRows<'_>,
        scratch: &mut [f32],
        mut on_step: Option<&mut dyn FnMut(&SdeStep<'_>)>,
    ) -> Result<()> {
        let n = shape
            .len()
            .filter(|_| !shape.is_empty())
            .ok_or_else(|| invalid_arg("step shape", "empty or overflowing"))?;
        let per = n / shape.batch;
        if x.len() != n {
            return Err(Error::BufferSize {
                what: "sample [B, C, H, W]",
                expected: n,
                found: x.len(),
            });
        }
        let rows = self.noise_rows();
        if let NoiseRows::Injected(z) = noise {
            if Some(z.len()) != rows.checked_mul(n) {
                return Err(Error::BufferSize {
                    what: "step noise [rows, B, C, H, W]",
                    expected: rows.saturating_mul(n),
                    found: z.len(),
                });
            }
        }
        let need = self.scratch_len(shape);
        if scratch.len() < need {
            return Err(Error::BufferSize {
                what: "SDE scratch",
                expected: need,
                found: scratch.len(),
            });
        }
        let (eps, rest) = scratch.split_at_mut(n);
        let (zbuf, rest) = rest.split_at_mut(n);
        let (x2, rest) = if self.cfg.predictor == Predictor::OdeHeun {
            let (a, b) = rest.split_at_mut(n);
            (a, &mut b[..n])
        } else {
            (&mut [][..], &mut [][..])
        };
        let d1 = rest;
        let mut row = 0usize;
        // The next noise row: copied into zbuf (seeded) or borrowed (injected).
        let mut draw = |zbuf: &mut [f32]| {
            match noise {
                NoiseRows::Seeded(g) => g.fill(row as u64 + 1, zbuf),
                NoiseRows::Injected(z) => zbuf.copy_from_slice(&z[row * n..(row + 1) * n]),
            }
            row += 1;
        };
        let steps = self.cfg.steps;
        let h = (1.0 - self.cfg.t_eps) / steps as f64;
        for i in 0..steps {
            let t = self.time(i);
            let t_next = self.time(i + 1);
            let lvl = self.level(t);
            let sigma = libm::sqrt(1.0 - lvl.alpha_bar);
            // Langevin corrector at t: x += step s + sqrt(2 step) z, step = 2 alpha (snr |z| / |s|)^2.
            for _ in 0..self.cfg.corrector_steps {
                self.eps(model, x, lvl, eps)?;
                draw(zbuf);
                let alpha = self.sde.corrector_alpha(t);
                for b in 0..shape.batch {
                    let r = b * per..(b + 1) * per;
                    let (e, z, xb) = (&eps[r.clone()], &zbuf[r.clone()], &mut x[r]);
                    // |s| = |eps| / sigma.
                    let en = norm(e) / sigma;
                    let zn = norm(z);
                    let step = if en > 0.0 {
                        let q = self.cfg.snr * zn / en;
                        2.0 * alpha * q * q
                    } else {
                        0.0
                    };
                    let noise_scale = libm::sqrt(2.0 * step);
                    for ((xi, &ei), &zi) in xb.iter_mut().zip(e).zip(z) {
                        let s = -(ei as f64) / sigma;
                        *xi = (*xi as f64 + step * s + noise_scale * zi as f64) as f32;
                    }
                }
            }
            let beta = self.sde.beta(t);
            self.eps(model, x, lvl, eps)?;
            match self.cfg.predictor {
                // x <- x + h (beta/2 x + beta s) + sqrt(beta h) z
                Predictor::EulerMaruyama => {
                    draw(zbuf);
                    let g = libm::sqrt(beta * h);
                    for ((xi, &ei), &zi) in x.iter_mut().zip(eps.iter()).zip(zbuf.iter()) {
                        let (xv, s) = (*xi as f64, -(ei as f64) / sigma);
                        *xi = (xv + h * beta * (0.5 * xv + s) + g * zi as f64) as f32;
                    }
                }
                // x <- x + h beta/2 (x + s)
                Predictor::OdeEuler => {
                    for (xi, &ei) in x.iter_mut().zip(eps.iter()) {
                        let (xv, s) = (*xi as f64, -(ei as f64) / sigma);
                        *xi = (xv + h * 0.5 * beta * (xv + s)) as f32;
                    }
                }
                // d1 = F(x, t), x2 = x + h d1, d2 = F(x2, t - h), x <- x + h (d1 + d2) / 2
                Predictor::OdeHeun => {
                    for (((d, x2i), &xi), &ei) in d1
                        .iter_mut()
                        .zip(x2.iter_mut())
                        .zip(x.iter())
                        .zip(eps.iter())
                    {
                        let (xv, s) = (xi as f64, -(ei as f64) / sigma);
                        let slope = 0.5 * beta * (xv + s);
                        *d = slope as f32;
                        *x2i = (xv + h * slope) as f32;
                    }
                    let lvl2 = self.level(t_next);
                    let sigma2 = libm::sqrt(1.0 - lvl2.alpha_bar);
                    // beta just above t_next: the same segment the step lies in.
                    let beta2 = self.sde.beta(t_next);
                    self.eps(model, x2, lvl2, eps)?;
                    for (((xi, &x2i), &ei), &d) in
                        x.iter_mut().zip(x2.iter()).zip(eps.iter()).zip(d1.iter())
                    {
                        let s2 = -(ei as f64) / sigma2;
                        let slope2 = 0.5 * beta2 * (x2i as f64 + s2);
                        *xi = (*xi as f64 + 0.5 * h * (d as f64 + slope2)) as f32;
                    }
                }
            }
            if let Some(cb) = on_step.as_mut() {
                cb(&SdeStep {
                    index: i,
                    steps,
                    t: t_next,
                    sample: x,
                });
            }
        }
        if self.cfg.denoise {
            // Tweedie: E[x_0 | x_t] = (x - sqrt(1 - abar) eps) / sqrt(abar).
            let lvl = self.level(self.cfg.t_eps);
            self.eps(model, x, lvl, eps)?;
            let (sa, sb) = (libm::sqrt(lvl.alpha_bar), libm::sqrt(1.0 - lvl.alpha_bar));
            for (xi, &ei) in x.iter_mut().zip(eps.iter()) {
                *xi = ((*xi as f64 - sb * ei as f64) / sa) as f32;
            }
        }
        Ok(())
    }

    fn eps<E: EpsModel + ?Sized>(
        &self,
        model: &mut E,
        x: &[f32],
        level: NoiseLevel,
        out: &mut [f32],
    ) -> Result<()> {
        model.eps(x, level, out)
    }
}

/// Euclidean norm in f64.
fn norm(v: &[f32]) -> f64 {
    libm::sqrt(v.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_discrete_alpha_bars_at_integer_timesteps() {
        let cfg = SchedulerConfig::ddpm_default();
        let abar = alphas_cumprod(&betas(&cfg).unwrap());
        let sde = VpSde::from_config(&cfg).unwrap();
        for k in [0usize, 1, 17, 500, 998, 999] {
            let t = k as f64 / 999.0;
            let rel = (sde.alpha_bar(t) - abar[k]).abs() / abar[k];
            assert!(rel < 1e-12, "tau {k}: {} vs {}", sde.alpha_bar(t), abar[k]);
        }
        // The closed form is within a few percent of the table in abar (the discrete product
        // vs the integral of beta).
        let lin = VpSde::linear_from_config(&cfg).unwrap();
        for k in [100usize, 500, 900] {
            let t = k as f64 / 999.0;
            let rel = (lin.alpha_bar(t) - abar[k]).abs() / abar[k];
            assert!(rel < 0.15, "tau {k}: {rel}");
        }
        assert!((lin.beta(0.0) - 0.1).abs() < 1e-12 && (lin.beta(1.0) - 20.0).abs() < 1e-12);
    }

    #[test]
    fn evaluation_and_noise_counts() {
        let ode = SdeConfig::ode(Predictor::OdeHeun, 10);
        assert_eq!(ode.model_evaluations(), 21);
        assert_eq!(ode.noise_rows(), 0);
        let pc = SdeConfig::pc(10, 2);
        assert_eq!(pc.model_evaluations(), 31);
        assert_eq!(pc.noise_rows(), 30);
    }
}
