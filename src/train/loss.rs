//! Training losses and their gradient with respect to the model output, and the noise schedule
//! they read ([`NoiseSchedule`]: the core's betas and alpha-bars).
//!
//! - **L_simple** (DDPM, Algorithm 1): `mean((out - target)^2)` over every element, with
//!   target `eps` (epsilon prediction) or `v = sqrt(abar) eps - sqrt(1 - abar) x0`
//!   (v-prediction). `d out = 2 (out - target) / count`.
//! - **Hybrid** (improved DDPM, learned variance, `learned_range`): the model outputs `2C`
//!   channels, the prediction then `v` in `[-1, 1]` interpolating the log variance between
//!   `log beta_t` and the clipped posterior log variance `log beta~_t`. The loss is
//!   `L_simple + lambda * T * L_t` with `L_t` the per-timestep variational bound term in bits
//!   per dimension (KL between the true posterior and the model's Gaussian for t > 0, the
//!   discretized-Gaussian decoder NLL at t = 0), the model mean built from the *detached*
//!   prediction (so `L_t` trains only the variance channels), as in Nichol & Dhariwal's code
//!   (`lambda = 0.001`, `T = 1000` gives weight 1 per sampled term).

use alloc::vec::Vec;

use crate::error::{unsupported, Result};
use crate::schedule::{alphas_cumprod, betas, PredictionType, SchedulerConfig};

/// The forward process's per-timestep constants, as the core computes them for sampling
/// ([`crate::schedule::betas()`], [`crate::schedule::alphas_cumprod`]: diffusers' float32
/// values, widened to f64), so training and sampling use the same noise levels bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// The schedule of a scheduler config (its `beta_schedule`, `num_train_timesteps`,
    /// `beta_start`, `beta_end`, `trained_betas`, `rescale_betas_zero_snr`). Errors as
    /// [`crate::schedule::betas()`].
    pub fn new(cfg: &SchedulerConfig) -> Result<NoiseSchedule> {
        let betas = betas(cfg)?;
        let alphas_cumprod = alphas_cumprod(&betas);
        Ok(NoiseSchedule {
            betas,
            alphas_cumprod,
        })
    }

    /// Number of training timesteps.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }
}

/// The prediction types the losses implement: epsilon and v. x_0 prediction (`sample`) is not
/// implemented by the trainer; asking for it is [`crate::Error::UnsupportedConfig`].
pub fn check_prediction(pred: PredictionType) -> Result<()> {
    target(pred).map(|_| ())
}

/// What the model output is compared with.
#[derive(Clone, Copy)]
enum Target {
    Epsilon,
    V,
}

fn target(pred: PredictionType) -> Result<Target> {
    match pred {
        PredictionType::Epsilon => Ok(Target::Epsilon),
        PredictionType::VPrediction => Ok(Target::V),
        PredictionType::Sample => Err(unsupported(
            "prediction_type",
            "sample (the trainer implements epsilon and v_prediction)",
        )),
        PredictionType::FlowPrediction => Err(unsupported(
            "prediction_type",
            "flow_prediction (the trainer implements epsilon and v_prediction)",
        )),
    }
}

/// Which loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossKind {
    Simple,
    /// `L_simple + lambda * T * L_vlb(t)`; needs `out_channels = 2 * in_channels`.
    Hybrid {
        lambda: f64,
    },
}

/// The batch a loss is computed on (NCHW, `channels` = the data's channels).
pub struct Batch<'a> {
    pub channels: usize,
    pub pixels: usize,
    pub x0: &'a [f32],
    pub eps: &'a [f32],
    pub x_t: &'a [f32],
    pub timesteps: &'a [usize],
}

/// Loss value and its parts (each averaged over the batch).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossValue {
    pub total: f64,
    pub mse: f64,
    /// The variational-bound term in bits/dim (hybrid only), before its weight.
    pub vlb: f64,
}

/// Computes the loss of `out` (NCHW, `C` or `2C` channels) and writes `d_out`. Errors only for
/// a prediction type the trainer does not implement ([`check_prediction`]).
pub fn loss_and_grad(
    kind: LossKind,
    pred: PredictionType,
    sched: &NoiseSchedule,
    b: &Batch<'_>,
    out: &[f32],
    d_out: &mut [f32],
) -> Result<LossValue> {
    let tgt = target(pred)?;
    let (c, hw) = (b.channels, b.pixels);
    let batch = b.timesteps.len();
    let out_c = out.len() / (batch * hw);
    let learned = out_c == 2 * c;
    let count = (batch * c * hw) as f64;
    d_out.fill(0.0);
    let mut value = LossValue::default();
    for n in 0..batch {
        let abar = sched.alphas_cumprod[b.timesteps[n]];
        let (sa, sb) = (abar.sqrt(), (1.0 - abar).sqrt());
        for ch in 0..c {
            for p in 0..hw {
                let i = (n * c + ch) * hw + p;
                let o = (n * out_c + ch) * hw + p;
                let target = match tgt {
                    Target::Epsilon => b.eps[i] as f64,
                    Target::V => sa * b.eps[i] as f64 - sb * b.x0[i] as f64,
                };
                let diff = out[o] as f64 - target;
                value.mse += diff * diff;
                d_out[o] = (2.0 * diff / count) as f32;
            }
        }
    }
    value.mse /= count;
    value.total = value.mse;
    if let (LossKind::Hybrid { lambda }, true) = (kind, learned) {
        let weight = lambda * sched.steps() as f64;
        let mut vlb = 0.0;
        for n in 0..batch {
            vlb += vlb_term(
                sched,
                pred,
                Variance::Learned,
                b,
                n,
                out,
                Some(&mut *d_out),
                weight / (batch as f64),
            )?;
        }
        value.vlb = vlb / batch as f64;
        value.total += weight * value.vlb;
    }
    Ok(value)
}

/// `0.5 * (1 + erf(x / sqrt(2)))` as improved DDPM approximates it (tanh form), and its
/// derivative.
fn approx_cdf(x: f64) -> (f64, f64) {
    let k = (2.0 / core::f64::consts::PI).sqrt();
    let u = k * (x + 0.044715 * x * x * x);
    let th = libm::tanh(u);
    (
        0.5 * (1.0 + th),
        0.5 * (1.0 - th * th) * k * (1.0 + 3.0 * 0.044715 * x * x),
    )
}

/// The variance of the model's reverse step `p(x_{t-1} | x_t)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variance {
    /// `learned_range`: the second half of the output channels interpolates the log variance.
    Learned,
    /// `beta~_t` (the posterior's variance; clipped at t = 0 to its value at t = 1).
    FixedSmall,
    /// `beta_t` (at t = 0 the posterior variance at t = 1, as improved DDPM does).
    FixedLarge,
}

/// `L_t` of sample `n` in bits/dim (`t > 0`: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t));
/// `t = 0`: the discretized-Gaussian decoder's negative log-likelihood of `x_0`). With a
/// gradient buffer, adds `scale * dL_t / d(variance channels)` to it (learned variance only;
/// the model mean is treated as a constant). Errors only for a prediction type the trainer does
/// not implement ([`check_prediction`]).
#[allow(clippy::too_many_arguments)]
pub fn vlb_term(
    sched: &NoiseSchedule,
    pred: PredictionType,
    variance: Variance,
    b: &Batch<'_>,
    n: usize,
    out: &[f32],
    mut d_out: Option<&mut [f32]>,
    scale: f64,
) -> Result<f64> {
    let tgt = target(pred)?;
    let (c, hw) = (b.channels, b.pixels);
    let out_c = if variance == Variance::Learned {
        2 * c
    } else {
        out.len() / (b.timesteps.len() * hw)
    };
    let t = b.timesteps[n];
    let beta = &sched.betas;
    let ac = &sched.alphas_cumprod;
    let abar = ac[t];
    let abar_prev = if t > 0 { ac[t - 1] } else { 1.0 };
    let post_var = |s: usize| -> f64 {
        let prev = if s > 0 { ac[s - 1] } else { 1.0 };
        beta[s] * (1.0 - prev) / (1.0 - ac[s])
    };
    // Posterior log variance, clipped at t = 0 to the value at t = 1 (improved DDPM).
    let log_var_q = libm::log(if t == 0 {
        post_var(1.min(sched.steps() - 1))
    } else {
        post_var(t)
    });
    let log_beta = if t == 0 {
        log_var_q
    } else {
        libm::log(beta[t])
    };
    let (min_log, max_log) = (log_var_q, libm::log(beta[t]));
    let c1 = abar_prev.sqrt() * beta[t] / (1.0 - abar);
    let c2 = (1.0 - beta[t]).sqrt() * (1.0 - abar_prev) / (1.0 - abar);
    let dims = (c * hw) as f64;
    let ln2 = core::f64::consts::LN_2;
    let mut total = 0.0;
    for ch in 0..c {
        for p in 0..hw {
            let i = (n * c + ch) * hw + p;
            let mean_out = out[(n * out_c + ch) * hw + p] as f64; // detached
            let var_idx = (n * out_c + c + ch) * hw + p;
            let x_t = b.x_t[i] as f64;
            let x0 = b.x0[i] as f64;
            let x0_hat = match tgt {
                Target::Epsilon => (x_t - (1.0 - abar).sqrt() * mean_out) / abar.sqrt(),
                Target::V => abar.sqrt() * x_t - (1.0 - abar).sqrt() * mean_out,
            };
            let mean_p = c1 * x0_hat + c2 * x_t;
            let log_var_p = match variance {
                Variance::Learned => {
                    let frac = (out[var_idx] as f64 + 1.0) / 2.0;
                    frac * max_log + (1.0 - frac) * min_log
                }
                Variance::FixedSmall => log_var_q,
                Variance::FixedLarge => log_beta,
            };
            let dlogvar_dv = 0.5 * (max_log - min_log);
            let (term, dterm_dlogvar) = if t > 0 {
                let mean_q = c1 * x0 + c2 * x_t;
                let d2 = (mean_q - mean_p) * (mean_q - mean_p);
                let kl = 0.5
                    * (-1.0 + log_var_p - log_var_q
                        + libm::exp(log_var_q - log_var_p)
                        + d2 * libm::exp(-log_var_p));
                let dkl =
                    0.5 * (1.0 - libm::exp(log_var_q - log_var_p) - d2 * libm::exp(-log_var_p));
                (kl, dkl)
            } else {
                // -log of the discretized Gaussian likelihood of x0 (bins of width 2/255).
                let log_scale = 0.5 * log_var_p;
                let inv = libm::exp(-log_scale);
                let centered = x0 - mean_p;
                let (z_plus, z_min) = (
                    inv * (centered + 1.0 / 255.0),
                    inv * (centered - 1.0 / 255.0),
                );
                let (cdf_plus, pdf_plus) = approx_cdf(z_plus);
                let (cdf_min, pdf_min) = approx_cdf(z_min);
                // d z / d log_scale = -z.
                let (logp, dlogp_dls) = if x0 < -0.999 {
                    let v = cdf_plus.max(1e-12);
                    (
                        libm::log(v),
                        if cdf_plus > 1e-12 {
                            -pdf_plus * z_plus / v
                        } else {
                            0.0
                        },
                    )
                } else if x0 > 0.999 {
                    let v = (1.0 - cdf_min).max(1e-12);
                    (
                        libm::log(v),
                        if 1.0 - cdf_min > 1e-12 {
                            pdf_min * z_min / v
                        } else {
                            0.0
                        },
                    )
                } else {
                    let delta = cdf_plus - cdf_min;
                    let v = delta.max(1e-12);
                    (
                        libm::log(v),
                        if delta > 1e-12 {
                            (-pdf_plus * z_plus + pdf_min * z_min) / v
                        } else {
                            0.0
                        },
                    )
                };
                (-logp, -dlogp_dls * 0.5)
            };
            total += term;
            if let (Some(d), Variance::Learned) = (d_out.as_deref_mut(), variance) {
                d[var_idx] += (scale * dterm_dlogvar * dlogvar_dv / (dims * ln2)) as f32;
            }
        }
    }
    Ok(total / (dims * ln2))
}

/// The score-SDE VE denoising score-matching loss of a sigma-conditioned (fourier, NCSN++)
/// model (Song et al. 2021, eq. 7 with lambda(sigma) = sigma^2): the model was called at
/// `x0 + sigma z` with timestep `sigma` and `out` is its score estimate (diffusers' output,
/// already divided by sigma); loss = mean over every element of `(sigma * out + z)^2`.
/// Writes dLoss/d(out) to `d_out`. `sigmas`: one per sample; `z`, `out`: `[B, C, H, W]`.
pub fn ve_score_matching_loss_and_grad(
    sigmas: &[f32],
    z: &[f32],
    out: &[f32],
    d_out: &mut [f32],
) -> Result<LossValue> {
    let n = out.len();
    if sigmas.is_empty() || !n.is_multiple_of(sigmas.len()) || z.len() != n || d_out.len() != n {
        return Err(crate::error::invalid_arg(
            "score matching batch",
            "sigmas (one per sample), noise, output and its gradient disagree in size",
        ));
    }
    let per = n / sigmas.len();
    let mut total = 0.0f64;
    for (b, &sigma) in sigmas.iter().enumerate() {
        let s = sigma as f64;
        for i in b * per..(b + 1) * per {
            let r = s * out[i] as f64 + z[i] as f64;
            total += r * r;
            d_out[i] = (2.0 * r * s / n as f64) as f32;
        }
    }
    let total = total / n as f64;
    Ok(LossValue {
        total,
        mse: total,
        vlb: 0.0,
    })
}

/// sigma = sigma_min (sigma_max / sigma_min)^u for u uniform in [0, 1): log-uniform, as the
/// score-SDE VE training samples it.
pub fn ve_sigma(sigma_min: f64, sigma_max: f64, u: f64) -> f64 {
    sigma_min * (sigma_max / sigma_min).powf(u)
}
