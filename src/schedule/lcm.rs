//! diffusers 0.42's `LCMScheduler` and `TCDScheduler`, run as a `DDPMPipeline`-style loop
//! runs them (`x = randn`; for each t: `x = step(model(x, t), t, x, generator)`).
//!
//! Both take their timesteps from the distillation schedule: `k * j - 1` for j in
//! `1..=original_inference_steps` (`k = T / original_inference_steps`), descending, N of them
//! at `floor(j * (original / N))`.
//!
//! - LCM: `denoised = c_out(t) * x_0 + c_skip(t) * x` (the boundary-condition scalings at
//!   `t * timestep_scaling`, sigma_data 0.5); `x = sqrt(abar_prev) denoised + sqrt(1 -
//!   abar_prev) z` with one draw per step but the last, which returns `denoised`.
//! - TCD (gamma = the step's `eta`, default 0.3): `s = floor((1 - gamma) * t_prev)`, the
//!   prediction re-noised to s, then `x = sqrt(abar_prev / abar_s) x_s + sqrt(1 - abar_prev /
//!   abar_s) z` (one draw per step but the last, none when gamma is 0).

use alloc::format;
use alloc::vec::Vec;

use super::config::{PredictionType, SchedulerConfig, SchedulerKind};
use super::scheduler::{torch_clamp, torch_lerp};
use super::score_ve::check_step;
use super::StepShape;
use crate::error::{invalid_arg, Error, Result};

/// TCD's default gamma (the `eta` of diffusers' `TCDPipeline` and `TCDScheduler.step`).
pub const TCD_DEFAULT_GAMMA: f64 = 0.3;

/// One LCM or TCD run.
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    cfg: SchedulerConfig,
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<i64>,
    /// TCD's gamma; `None` for LCM.
    gamma: Option<f64>,
}

impl LcmScheduler {
    /// `set_timesteps(N)` of an `LCMScheduler` or `TCDScheduler` config (`gamma`: TCD's eta,
    /// in [0, 1]; ignored for LCM). Errors: another class, N outside
    /// `1..=original_inference_steps`, `original_inference_steps` above T.
    pub fn new(cfg: SchedulerConfig, steps: usize, gamma: f64) -> Result<LcmScheduler> {
        cfg.validate()?;
        let tcd = match cfg.kind {
            SchedulerKind::Lcm => false,
            SchedulerKind::Tcd => true,
            other => {
                return Err(invalid_arg(
                    "scheduler",
                    format!("{} is not LCMScheduler or TCDScheduler", other.class_name()),
                ))
            }
        };
        if tcd && !(0.0..=1.0).contains(&gamma) {
            return Err(invalid_arg(
                "eta",
                format!("TCD's gamma {gamma} is outside [0, 1]"),
            ));
        }
        let t = cfg.num_train_timesteps;
        let original = cfg.original_inference_steps;
        if original > t {
            return Err(Error::InvalidConfig {
                key: "original_inference_steps".into(),
                message: format!("{original} is above num_train_timesteps {t}"),
            });
        }
        if steps == 0 || steps > original {
            return Err(invalid_arg(
                "steps",
                format!("{steps} is outside 1..={original} (original_inference_steps)"),
            ));
        }
        let k = t / original;
        let spacing = original as f64 / steps as f64;
        // origin[m] = k * (original - m) - 1 (the distillation timesteps, descending), taken at
        // floor(j * spacing) as numpy's linspace(0, original, N, endpoint=False) gives it.
        let timesteps = (0..steps)
            .map(|j| {
                let m = libm::floor(j as f64 * spacing) as usize;
                (k * (original - m)) as i64 - 1
            })
            .collect();
        let betas = super::betas::betas(&cfg)?;
        let alphas_cumprod = super::betas::alphas_cumprod(&betas);
        Ok(LcmScheduler {
            cfg,
            alphas_cumprod,
            timesteps,
            gamma: tcd.then_some(gamma),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// TCD's gamma (`None` for LCM).
    pub fn gamma(&self) -> Option<f64> {
        self.gamma
    }

    /// Whether step `i` draws noise: every step but the last (TCD: only when gamma > 0).
    pub fn needs_noise(&self, i: usize) -> bool {
        i + 1 < self.num_steps() && self.gamma.is_none_or(|g| g > 0.0)
    }

    /// Gaussian draws of a run (after x_T); row i is step i's.
    pub fn noise_rows(&self) -> usize {
        (0..self.num_steps())
            .filter(|&i| self.needs_noise(i))
            .count()
    }

    /// The step at index `i`, in place. `noise` is required when
    /// [`LcmScheduler::needs_noise`].
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
        let t = self.timesteps[i];
        let ac = &self.alphas_cumprod;
        let abar_t = ac[t as usize];
        let (sa, sb) = (libm::sqrt(abar_t), libm::sqrt(1.0 - abar_t));
        let prediction = self.cfg.prediction_type;
        // x_0 and eps of the model output.
        let split = |m: f64, x: f64| -> (f64, f64) {
            match prediction {
                PredictionType::Epsilon => ((x - sb * m) / sa, m),
                PredictionType::Sample => (m, (x - sa * m) / sb),
                PredictionType::VPrediction => (sa * x - sb * m, sa * m + sb * x),
                // Refused by `SchedulerConfig::validate` for this class.
                PredictionType::FlowPrediction => (f64::NAN, f64::NAN),
            }
        };
        match self.gamma {
            None => {
                let prev_t = self.timesteps.get(i + 1).copied().unwrap_or(t);
                let abar_prev = ac[prev_t as usize];
                let scaled = t as f64 * self.cfg.timestep_scaling;
                let c_skip = 0.25 / (scaled * scaled + 0.25);
                let c_out = scaled / libm::sqrt(scaled * scaled + 0.25);
                let (pa, pb) = (libm::sqrt(abar_prev), libm::sqrt(1.0 - abar_prev));
                let range = self.cfg.clip_sample_range;
                for b in 0..shape.batch {
                    let m = &model_output[b * stride..b * stride + per];
                    let xs = &sample[b * per..(b + 1) * per];
                    // Dynamic thresholding's s of this sample (from its float32 x_0, as torch).
                    let s = self.cfg.thresholding.then(|| {
                        let x0 = |j: usize| split(m[j] as f64, xs[j] as f64).0 as f32;
                        threshold_of(per, self.cfg.dynamic_thresholding_ratio, x0)
                            .clamp_to(self.cfg.sample_max_value)
                    });
                    for (j, (xi, &mi)) in
                        sample[b * per..(b + 1) * per].iter_mut().zip(m).enumerate()
                    {
                        let x = *xi as f64;
                        let mut x0 = split(mi as f64, x).0;
                        if let Some(s) = s {
                            x0 = torch_clamp(x0 as f32 as f64, -s, s) / s;
                        } else if self.cfg.clip_sample {
                            x0 = x0.clamp(-range, range);
                        }
                        let denoised = c_out * x0 + c_skip * x;
                        *xi = match noise {
                            Some(z) => pa * denoised + pb * z[b * per + j] as f64,
                            None => denoised,
                        } as f32;
                    }
                }
            }
            Some(gamma) => {
                let prev_t = self.timesteps.get(i + 1).copied().unwrap_or(0);
                // torch: float32 (1 - gamma) times the long timestep, floored.
                let s = libm::floorf((1.0 - gamma) as f32 * prev_t as f32) as usize;
                let abar_prev = ac[prev_t as usize];
                let abar_s = ac[s];
                let (qa, qb) = (libm::sqrt(abar_s), libm::sqrt(1.0 - abar_s));
                let ratio = abar_prev / abar_s;
                let (ra, rb) = (libm::sqrt(ratio), libm::sqrt((1.0 - ratio).max(0.0)));
                for b in 0..shape.batch {
                    let m = &model_output[b * stride..b * stride + per];
                    for (j, (xi, &mi)) in
                        sample[b * per..(b + 1) * per].iter_mut().zip(m).enumerate()
                    {
                        let (x0, eps) = split(mi as f64, *xi as f64);
                        let noised = qa * x0 + qb * eps;
                        *xi = match noise {
                            Some(z) => ra * noised + rb * z[b * per + j] as f64,
                            None => noised,
                        } as f32;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `torch.quantile(|x0|, ratio)` of one sample (NaN if any value is), before clamping.
struct Quantile(f64);

impl Quantile {
    /// diffusers' `s = clamp(q, 1, sample_max_value)`, as the float32 torch holds.
    fn clamp_to(self, max: f64) -> f64 {
        torch_clamp(self.0, 1.0, max) as f32 as f64
    }
}

/// The `ratio` quantile of `|x0(j)|` over `j < n`, without a buffer (LCM has no history to
/// hold one): each order statistic is found by a binary search over the float32 bit patterns
/// (ordered as the values are, for non-negative floats), one pass over the sample per bit.
fn threshold_of(n: usize, ratio: f64, x0: impl Fn(usize) -> f32) -> Quantile {
    if n == 0 || (0..n).any(|j| x0(j).is_nan()) {
        return Quantile(f64::NAN);
    }
    let kth = |k: usize| {
        let (mut lo, mut hi) = (0u32, f32::INFINITY.to_bits());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at_most = (0..n).filter(|&j| x0(j).abs().to_bits() <= mid).count();
            if at_most > k {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        f32::from_bits(lo) as f64
    };
    let rank = ratio * (n - 1) as f64;
    let (below_k, above_k) = (libm::floor(rank) as usize, libm::ceil(rank) as usize);
    let below = kth(below_k.min(n - 1));
    let above = if above_k > below_k {
        kth(above_k.min(n - 1))
    } else {
        below
    };
    Quantile(torch_lerp(below, above, rank - below_k as f64))
}
