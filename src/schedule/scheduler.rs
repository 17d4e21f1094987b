//! The DDPM / DDIM step: diffusers' `DDPMScheduler.step` and `DDIMScheduler.step` on f32
//! NCHW buffers, in place, without heap allocation.
//!
//! Everything that allocates (betas, alpha-bars, timesteps) happens once in
//! [`Scheduler::new`]; [`Scheduler::step`] only reads them and the caller's buffers. The
//! per-element arithmetic runs in f64 from the same float32 alpha-bars diffusers uses, and the
//! result is stored back as f32.

use alloc::format;
use alloc::vec::Vec;

use super::betas::{alphas_cumprod, betas};
use super::config::{
    DdimPrevTimestep, PredictionType, SchedulerConfig, SchedulerKind, VarianceType,
};
use super::timesteps::set_timesteps;
use crate::error::{invalid_arg, Error, Result};

/// The shape of the sample a step works on: `[batch, channels, height, width]`, NCHW.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl StepShape {
    pub fn new(batch: usize, channels: usize, height: usize, width: usize) -> StepShape {
        StepShape {
            batch,
            channels,
            height,
            width,
        }
    }

    /// Elements of one sample, `C * H * W` (`None` on overflow).
    pub fn sample_len(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.height)?
            .checked_mul(self.width)
    }

    /// Elements of the whole batch, `B * C * H * W` (`None` on overflow).
    pub fn len(&self) -> Option<usize> {
        self.sample_len()?.checked_mul(self.batch)
    }

    /// Whether any dimension is 0.
    pub fn is_empty(&self) -> bool {
        self.batch == 0 || self.channels == 0 || self.height == 0 || self.width == 0
    }
}

/// The alpha-bars one step moves between, resolved once per run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StepAlphas {
    /// alpha-bar at the step's timestep.
    t: f64,
    /// alpha-bar at the timestep stepped to (1 or the DDIM final alpha before t = 0).
    prev: f64,
    /// The timestep stepped to; negative means "before t = 0".
    prev_timestep: i64,
}

/// What happens to the x_0 prediction before it is used.
#[derive(Debug, Clone, Copy)]
enum X0Post {
    None,
    /// `clamp(x0, -r, r)`.
    Clip(f64),
    /// Dynamic thresholding with this sample's s: `clamp(x0, -s, s) / s`.
    Threshold(f64),
}

impl X0Post {
    fn apply(self, x0: f64) -> f64 {
        match self {
            X0Post::None => x0,
            X0Post::Clip(r) => torch_clamp(x0, -r, r),
            X0Post::Threshold(s) => torch_clamp(x0, -s, s) / s,
        }
    }
}

/// `torch.clamp`: `min(max(x, lo), hi)`, with NaN propagated (Rust's `max`/`min` drop it).
pub(super) fn torch_clamp(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() || lo.is_nan() || hi.is_nan() {
        return f64::NAN;
    }
    let y = if x < lo { lo } else { x };
    if y > hi {
        hi
    } else {
        y
    }
}

/// `torch.quantile(v, q)` with linear interpolation, for finite non-negative values (the
/// caller handles NaN). Reorders `v`; O(n) by selection instead of a full sort.
pub(super) fn quantile(v: &mut [f32], q: f64) -> f64 {
    let last = v.len().saturating_sub(1);
    let rank = q * last as f64;
    let lo = (libm::floor(rank) as usize).min(last);
    let hi = (libm::ceil(rank) as usize).min(last);
    let weight = rank - lo as f64;
    if v.is_empty() {
        return f64::NAN;
    }
    let (_, below, right) = v.select_nth_unstable_by(lo, f32::total_cmp);
    let below = *below as f64;
    let above = if hi > lo {
        right.iter().fold(f32::INFINITY, |m, &x| m.min(x)) as f64
    } else {
        below
    };
    torch_lerp(below, above, weight)
}

/// torch.lerp's two-sided formula (the interpolation of `torch.quantile`).
pub(super) fn torch_lerp(below: f64, above: f64, weight: f64) -> f64 {
    if weight < 0.5 {
        below + weight * (above - below)
    } else {
        above - (above - below) * (1.0 - weight)
    }
}

/// x_0 and epsilon from the model output `m` and the sample `x`, per `prediction_type`.
#[inline]
fn predict(kind: PredictionType, m: f64, x: f64, sqrt_a: f64, sqrt_b: f64) -> (f64, f64) {
    match kind {
        PredictionType::Epsilon => ((x - sqrt_b * m) / sqrt_a, m),
        PredictionType::Sample => (m, (x - sqrt_a * m) / sqrt_b),
        PredictionType::VPrediction => (sqrt_a * x - sqrt_b * m, sqrt_a * m + sqrt_b * x),
        // Refused by `SchedulerConfig::validate` for this class.
        PredictionType::FlowPrediction => (f64::NAN, f64::NAN),
    }
}

/// Per-step constants of the DDPM posterior (diffusers' `DDPMScheduler.step`).
#[derive(Debug, Clone, Copy)]
struct DdpmStep {
    /// Coefficient of x_0 in the posterior mean.
    c_x0: f64,
    /// Coefficient of x_t in the posterior mean.
    c_xt: f64,
    /// Noise scale for the fixed variance types (unused for learned ones).
    std: f64,
    /// log of the clamped posterior variance and of beta_t (learned_range).
    min_log: f64,
    max_log: f64,
}

/// Per-step constants of DDIM (diffusers' `DDIMScheduler.step`).
#[derive(Debug, Clone, Copy)]
struct DdimStep {
    sqrt_a_prev: f64,
    /// sqrt(1 - alpha-bar_prev - std^2): weight of the "direction pointing to x_t".
    c_dir: f64,
    std: f64,
}

/// A DDPM or DDIM scheduler set up for one number of inference steps.
///
/// Noise: DDPM draws noise at every step with t > 0; DDIM at every step when eta > 0. Eta is
/// a field ([`Scheduler::set_eta`], default 0) rather than a `new` argument because only DDIM
/// reads it and diffusers passes it per step; [`Scheduler::step`] rejects a negative or
/// non-finite eta.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    num_inference_steps: usize,
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<i64>,
    steps: Vec<StepAlphas>,
    eta: f64,
}

impl Scheduler {
    /// Builds the schedule (betas, alpha-bars, timesteps) for `num_inference_steps` steps.
    ///
    /// Errors: an invalid config, steps of 0 or above `num_train_timesteps`, or a timestep
    /// list that leaves `0..num_train_timesteps`, where diffusers would index out of bounds or
    /// wrap around: `leading` spacing with a `steps_offset` that pushes the first timestep to
    /// T, or `trailing` spacing with a step count for which NumPy lists one extra timestep, -1
    /// (e.g. T = 1000 and N = 61).
    pub fn new(cfg: SchedulerConfig, num_inference_steps: usize) -> Result<Scheduler> {
        if cfg.kind.is_sigma() || cfg.kind.is_consistency_or_ve() {
            // Built by `schedule::SigmaScheduler` (or the VE / consistency / LCM modules).
            return Err(crate::error::unsupported(
                "_class_name",
                format!("{} (not a DDPM/DDIM class)", cfg.kind.class_name()),
            ));
        }
        let betas = betas(&cfg)?;
        let alphas_cumprod = alphas_cumprod(&betas);
        let timesteps = set_timesteps(&cfg, num_inference_steps)?;
        let t_max = cfg.num_train_timesteps as i64;
        if let Some(&bad) = timesteps.iter().find(|&&t| t < 0 || t >= t_max) {
            let why = if bad < 0 {
                // np.arange(T, 0, -T / N) has ceil(T / (T / N)) entries, which rounding makes
                // N + 1 for some N (e.g. T = 1000, N = 61): diffusers then lists t = -1 and
                // reads alphas_cumprod[-1], the last training timestep, there.
                format!(
                    "with {} spacing diffusers lists {} timesteps ending in {bad} (NumPy's float \
                     arange overshoots); choose another step count",
                    cfg.timestep_spacing,
                    timesteps.len()
                )
            } else {
                format!(
                    "steps_offset {} pushes timestep {bad} outside 0..{t_max} with {} spacing",
                    cfg.steps_offset, cfg.timestep_spacing
                )
            };
            return Err(Error::InvalidArgument {
                what: "num_inference_steps",
                message: format!("{num_inference_steps} steps: {why}"),
            });
        }
        let alpha_at = |t: i64| alphas_cumprod[t as usize];
        let final_alpha = match cfg.kind {
            // DDPM's `self.one`.
            SchedulerKind::Ddpm => 1.0,
            SchedulerKind::Ddim if cfg.set_alpha_to_one => 1.0,
            _ => alphas_cumprod[0],
        };
        let ratio = (cfg.num_train_timesteps / num_inference_steps) as i64;
        let steps = timesteps
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let next = timesteps.get(i + 1).copied().unwrap_or(-1);
                let prev_timestep = match (cfg.kind, cfg.ddim_prev_timestep) {
                    // DDPM's previous_timestep(): the next listed timestep, or -1.
                    (SchedulerKind::Ddpm, _) | (_, DdimPrevTimestep::NextInSchedule) => next,
                    (_, DdimPrevTimestep::Diffusers) => t - ratio,
                };
                let prev = if prev_timestep >= 0 {
                    alpha_at(prev_timestep)
                } else {
                    final_alpha
                };
                StepAlphas {
                    t: alpha_at(t),
                    prev,
                    prev_timestep,
                }
            })
            .collect();
        Ok(Scheduler {
            cfg,
            num_inference_steps,
            betas,
            alphas_cumprod,
            timesteps,
            steps,
            eta: 0.0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The timesteps, first (noisiest) to last; step `i` runs the model at `timesteps()[i]`.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// Number of steps of a run (the length of [`Scheduler::timesteps`]).
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The `num_inference_steps` the scheduler was built for.
    pub fn num_inference_steps(&self) -> usize {
        self.num_inference_steps
    }

    /// The training betas (float32 values).
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// alpha-bar for every training timestep (float32 values).
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// Standard deviation of x_T: 1 for DDPM and DDIM.
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// DDIM's eta: 0 is deterministic DDIM, 1 has DDPM's posterior variance. Ignored by DDPM.
    pub fn set_eta(&mut self, eta: f64) {
        self.eta = eta;
    }

    pub fn eta(&self) -> f64 {
        self.eta
    }

    /// DDIM: recompute epsilon from the clipped / thresholded x_0 (diffusers' `step`
    /// argument of the same name). Same as setting the config field.
    pub fn set_use_clipped_model_output(&mut self, on: bool) {
        self.cfg.use_clipped_model_output = on;
    }

    /// The timestep step `step_index` moves to (negative: past t = 0, where alpha-bar is 1
    /// for DDPM and the final alpha for DDIM); `None` past the last step.
    pub fn prev_timestep(&self, step_index: usize) -> Option<i64> {
        self.steps.get(step_index).map(|s| s.prev_timestep)
    }

    /// Whether step `step_index` consumes Gaussian noise: DDPM when its timestep is > 0, DDIM
    /// when eta > 0. `false` past the last step.
    pub fn needs_noise(&self, step_index: usize) -> bool {
        match (self.cfg.kind, self.timesteps.get(step_index)) {
            (_, None) => false,
            (SchedulerKind::Ddpm, Some(&t)) => t > 0,
            (_, Some(_)) => self.eta > 0.0,
        }
    }

    /// f32 scratch elements [`Scheduler::step`] needs for `shape`: one sample's worth for
    /// dynamic thresholding (its per-sample quantile), else 0.
    pub fn scratch_len(&self, shape: StepShape) -> usize {
        if self.cfg.thresholding {
            shape.sample_len().unwrap_or(0)
        } else {
            0
        }
    }

    /// One denoising step: `sample` (x_t, `[B, C, H, W]`) becomes x_{t-1} in place.
    ///
    /// - `model_output`: `[B, C, H, W]`, or `[B, 2C, H, W]` where the first C channels are the
    ///   prediction and the last C the variance values (DDPM `learned` / `learned_range`
    ///   require this form; otherwise the variance channels are ignored).
    /// - `noise`: `[B, C, H, W]` standard normal noise, required when
    ///   [`Scheduler::needs_noise`] is true and ignored otherwise.
    /// - `pred_original`: if given, receives the (clipped / thresholded) x_0 prediction.
    /// - `scratch`: at least [`Scheduler::scratch_len`] elements.
    ///
    /// Every length is checked ([`Error::BufferSize`]); nothing is allocated.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        step_index: usize,
        shape: StepShape,
        model_output: &[f32],
        sample: &mut [f32],
        noise: Option<&[f32]>,
        mut pred_original: Option<&mut [f32]>,
        scratch: &mut [f32],
    ) -> Result<()> {
        let Some(&alphas) = self.steps.get(step_index) else {
            return Err(invalid_arg(
                "step_index",
                format!(
                    "{step_index} is past the last step ({} steps)",
                    self.steps.len()
                ),
            ));
        };
        if shape.is_empty() {
            return Err(invalid_arg(
                "step shape",
                "every dimension must be at least 1",
            ));
        }
        let (per, n, n2) = match (shape.sample_len(), shape.len()) {
            (Some(per), Some(n)) if n.checked_mul(2).is_some() => (per, n, 2 * n),
            _ => return Err(invalid_arg("step shape", "B * C * H * W overflows")),
        };
        check_len("sample [B, C, H, W]", n, sample.len())?;
        let learned = self.cfg.kind == SchedulerKind::Ddpm && self.cfg.variance_type.is_learned();
        let doubled = if learned {
            check_len(
                "model output [B, 2C, H, W] (learned variance)",
                n2,
                model_output.len(),
            )?;
            true
        } else if model_output.len() == n2 {
            true
        } else {
            check_len("model output [B, C, H, W]", n, model_output.len())?;
            false
        };
        let noise = step_noise(self.needs_noise(step_index), step_index, n, noise)?;
        if let Some(p) = pred_original.as_deref() {
            check_len("pred_original [B, C, H, W]", n, p.len())?;
        }
        let scratch_len = self.scratch_len(shape);
        if scratch.len() < scratch_len {
            return Err(Error::BufferSize {
                what: "scheduler scratch",
                expected: scratch_len,
                found: scratch.len(),
            });
        }
        if self.cfg.kind == SchedulerKind::Ddim && !(self.eta.is_finite() && self.eta >= 0.0) {
            return Err(invalid_arg(
                "eta",
                format!("{} must be finite and >= 0", self.eta),
            ));
        }

        let sqrt_a = libm::sqrt(alphas.t);
        let sqrt_b = libm::sqrt(1.0 - alphas.t);
        let coeffs = match self.cfg.kind {
            SchedulerKind::Ddpm => Coeffs::Ddpm(self.ddpm_step(alphas)),
            _ => Coeffs::Ddim(self.ddim_step(alphas)),
        };
        let stride = if doubled { 2 * per } else { per };
        for b in 0..shape.batch {
            let x = &mut sample[b * per..(b + 1) * per];
            let m_all = &model_output[b * stride..(b + 1) * stride];
            let (m, var) = m_all.split_at(per);
            let z = noise.map(|z| &z[b * per..(b + 1) * per]);
            let p0 = pred_original
                .as_deref_mut()
                .map(|p| &mut p[b * per..(b + 1) * per]);
            let post = self.x0_post(m, x, sqrt_a, sqrt_b, scratch)?;
            match coeffs {
                Coeffs::Ddpm(c) => self.ddpm_apply(c, m, var, x, z, p0, post, sqrt_a, sqrt_b),
                Coeffs::Ddim(c) => self.ddim_apply(c, m, x, z, p0, post, sqrt_a, sqrt_b),
            }
        }
        Ok(())
    }

    /// The per-step constants [`Scheduler::step`] uses, for backends that run the update
    /// elsewhere (the CUDA kernel `scheduler_step`): `[sqrt(abar_t), sqrt(1 - abar_t)`, then
    /// DDPM `c_x0, c_xt, std, min_log, max_log` or DDIM `sqrt(abar_prev), c_dir, std, 0, 0`,
    /// then 1.0 when the step draws noise, else 0.0`]`. `None` past the last step.
    pub fn step_coefficients(&self, step_index: usize) -> Option<[f64; 8]> {
        let a = *self.steps.get(step_index)?;
        let noise = if self.needs_noise(step_index) {
            1.0
        } else {
            0.0
        };
        let (sa, sb) = (libm::sqrt(a.t), libm::sqrt(1.0 - a.t));
        Some(match self.cfg.kind {
            SchedulerKind::Ddpm => {
                let c = self.ddpm_step(a);
                [sa, sb, c.c_x0, c.c_xt, c.std, c.min_log, c.max_log, noise]
            }
            _ => {
                let c = self.ddim_step(a);
                [sa, sb, c.sqrt_a_prev, c.c_dir, c.std, 0.0, 0.0, noise]
            }
        })
    }

    /// The x_0 post-processing of one sample: dynamic thresholding (which needs the sample's
    /// |x_0| quantile, computed in `scratch`), clipping, or nothing.
    fn x0_post(
        &self,
        m: &[f32],
        x: &[f32],
        sqrt_a: f64,
        sqrt_b: f64,
        scratch: &mut [f32],
    ) -> Result<X0Post> {
        let cfg = &self.cfg;
        if !cfg.thresholding {
            return Ok(if cfg.clip_sample {
                X0Post::Clip(cfg.clip_sample_range)
            } else {
                X0Post::None
            });
        }
        let (per, found) = (x.len(), scratch.len());
        let abs = scratch.get_mut(..per).ok_or(Error::BufferSize {
            what: "scheduler scratch",
            expected: per,
            found,
        })?;
        let mut nan = false;
        for ((a, &mi), &xi) in abs.iter_mut().zip(m).zip(x.iter()) {
            let (x0, _) = predict(cfg.prediction_type, mi as f64, xi as f64, sqrt_a, sqrt_b);
            nan |= x0.is_nan();
            *a = libm::fabs(x0) as f32;
        }
        // torch.quantile returns NaN when the row holds a NaN.
        let q = if nan {
            f64::NAN
        } else {
            quantile(abs, cfg.dynamic_thresholding_ratio)
        };
        Ok(X0Post::Threshold(torch_clamp(q, 1.0, cfg.sample_max_value)))
    }

    fn ddpm_step(&self, a: StepAlphas) -> DdpmStep {
        let beta_prod_t = 1.0 - a.t;
        let beta_prod_prev = 1.0 - a.prev;
        let cur_alpha = a.t / a.prev;
        let cur_beta = 1.0 - cur_alpha;
        let c_x0 = libm::sqrt(a.prev) * cur_beta / beta_prod_t;
        let c_xt = libm::sqrt(cur_alpha) * beta_prod_prev / beta_prod_t;
        // Posterior variance beta~_t, clamped like diffusers before any log is taken.
        let posterior = beta_prod_prev / beta_prod_t * cur_beta;
        let posterior = if posterior > 1e-20 || posterior.is_nan() {
            posterior
        } else {
            1e-20
        };
        let std = match self.cfg.variance_type {
            VarianceType::FixedSmall => libm::sqrt(posterior),
            VarianceType::FixedSmallLog => libm::exp(0.5 * libm::log(posterior)),
            VarianceType::FixedLarge => libm::sqrt(cur_beta),
            VarianceType::FixedLargeLog => libm::exp(0.5 * libm::log(cur_beta)),
            VarianceType::Learned | VarianceType::LearnedRange => 0.0,
        };
        DdpmStep {
            c_x0,
            c_xt,
            std,
            min_log: libm::log(posterior),
            max_log: libm::log(cur_beta),
        }
    }

    fn ddim_step(&self, a: StepAlphas) -> DdimStep {
        let beta_prod_t = 1.0 - a.t;
        let beta_prod_prev = 1.0 - a.prev;
        let variance = beta_prod_prev / beta_prod_t * (1.0 - a.t / a.prev);
        let std = self.eta * libm::sqrt(variance);
        // Negative only for eta > 1, where diffusers returns NaN; drop the direction instead.
        let radicand = 1.0 - a.prev - std * std;
        let c_dir = if radicand > 0.0 {
            libm::sqrt(radicand)
        } else {
            0.0
        };
        DdimStep {
            sqrt_a_prev: libm::sqrt(a.prev),
            c_dir,
            std,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ddpm_apply(
        &self,
        c: DdpmStep,
        m: &[f32],
        var: &[f32],
        x: &mut [f32],
        z: Option<&[f32]>,
        mut p0: Option<&mut [f32]>,
        post: X0Post,
        sqrt_a: f64,
        sqrt_b: f64,
    ) {
        let pred = self.cfg.prediction_type;
        let vt = self.cfg.variance_type;
        for k in 0..x.len() {
            let xi = x[k] as f64;
            let (x0, _) = predict(pred, m[k] as f64, xi, sqrt_a, sqrt_b);
            let x0 = post.apply(x0);
            if let Some(p) = p0.as_deref_mut() {
                p[k] = x0 as f32;
            }
            let mut prev = c.c_x0 * x0 + c.c_xt * xi;
            if let Some(z) = z {
                let std = match vt {
                    // diffusers takes the square root of the predicted variance itself.
                    VarianceType::Learned => libm::sqrt(var[k] as f64),
                    VarianceType::LearnedRange => {
                        let frac = (var[k] as f64 + 1.0) / 2.0;
                        libm::exp(0.5 * (frac * c.max_log + (1.0 - frac) * c.min_log))
                    }
                    _ => c.std,
                };
                prev += std * z[k] as f64;
            }
            x[k] = prev as f32;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ddim_apply(
        &self,
        c: DdimStep,
        m: &[f32],
        x: &mut [f32],
        z: Option<&[f32]>,
        mut p0: Option<&mut [f32]>,
        post: X0Post,
        sqrt_a: f64,
        sqrt_b: f64,
    ) {
        let pred = self.cfg.prediction_type;
        let clipped_eps = self.cfg.use_clipped_model_output;
        for k in 0..x.len() {
            let xi = x[k] as f64;
            let (x0, eps) = predict(pred, m[k] as f64, xi, sqrt_a, sqrt_b);
            let x0 = post.apply(x0);
            if let Some(p) = p0.as_deref_mut() {
                p[k] = x0 as f32;
            }
            let eps = if clipped_eps {
                (xi - sqrt_a * x0) / sqrt_b
            } else {
                eps
            };
            let mut prev = c.sqrt_a_prev * x0 + c.c_dir * eps;
            if let Some(z) = z {
                prev += c.std * z[k] as f64;
            }
            x[k] = prev as f32;
        }
    }

    /// Forward diffusion q(x_t | x_0): `out = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`, with
    /// one timestep per batch element (`t.len()` = batch; the buffers are `[B, ...]`).
    pub fn add_noise(&self, x0: &[f32], noise: &[f32], t: &[i64], out: &mut [f32]) -> Result<()> {
        self.per_timestep(x0, noise, t, out, |sa, sb, x, z| sa * x + sb * z)
    }

    /// The v-prediction target `v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0` (diffusers'
    /// `get_velocity`), one timestep per batch element.
    pub fn velocity(&self, x0: &[f32], noise: &[f32], t: &[i64], out: &mut [f32]) -> Result<()> {
        self.per_timestep(x0, noise, t, out, |sa, sb, x, z| sa * z - sb * x)
    }

    fn per_timestep(
        &self,
        x0: &[f32],
        noise: &[f32],
        t: &[i64],
        out: &mut [f32],
        f: impl Fn(f64, f64, f64, f64) -> f64,
    ) -> Result<()> {
        let n = x0.len();
        if t.is_empty() || !n.is_multiple_of(t.len()) {
            return Err(invalid_arg(
                "timesteps",
                format!("{} timesteps do not split {n} elements", t.len()),
            ));
        }
        check_len("noise", n, noise.len())?;
        check_len("output", n, out.len())?;
        let per = n / t.len();
        let t_max = self.alphas_cumprod.len();
        for (b, &tb) in t.iter().enumerate() {
            let abar = match usize::try_from(tb)
                .ok()
                .and_then(|i| self.alphas_cumprod.get(i))
            {
                Some(&a) => a,
                None => {
                    return Err(invalid_arg(
                        "timesteps",
                        format!("{tb} is outside 0..{t_max}"),
                    ))
                }
            };
            let (sa, sb) = (libm::sqrt(abar), libm::sqrt(1.0 - abar));
            let range = b * per..(b + 1) * per;
            for ((o, &x), &z) in out[range.clone()]
                .iter_mut()
                .zip(&x0[range.clone()])
                .zip(&noise[range])
            {
                *o = f(sa, sb, x as f64, z as f64) as f32;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Coeffs {
    Ddpm(DdpmStep),
    Ddim(DdimStep),
}

/// The noise a step draws: `noise` checked against `n` when the step needs one, an error
/// naming the step when it is missing, `None` when the step draws nothing.
pub(super) fn step_noise(
    needs: bool,
    step: usize,
    n: usize,
    noise: Option<&[f32]>,
) -> Result<Option<&[f32]>> {
    if !needs {
        return Ok(None);
    }
    match noise {
        Some(z) => {
            check_len("step noise [B, C, H, W]", n, z.len())?;
            Ok(Some(z))
        }
        None => Err(invalid_arg(
            "noise",
            format!("step {step} draws noise: pass [B, C, H, W] noise"),
        )),
    }
}

pub(super) fn check_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::BufferSize {
            what,
            expected,
            found,
        })
    }
}
