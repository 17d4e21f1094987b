//! Training noise schedules: betas and the cumulative products of alphas.
//!
//! diffusers builds these as float32 tensors (`torch.linspace(..., dtype=torch.float32)`,
//! `torch.tensor(betas, dtype=torch.float32)`), and everything downstream reads those float32
//! values. We reproduce the float32 values (each beta and each alpha-bar is rounded to f32 the
//! way PyTorch rounds it) and hand them out as f64, so the step arithmetic can run in f64 from
//! the same numbers diffusers uses. Transcendentals go through `libm`, so the result is
//! identical on every machine.

use alloc::format;
use alloc::vec::Vec;
use core::f64::consts::PI;

use super::config::{BetaSchedule, SchedulerConfig};
use crate::error::{Error, Result};

/// The training betas (f32 values, widened to f64), after `rescale_betas_zero_snr` if set.
///
/// Errors: an invalid config ([`SchedulerConfig::validate`]), or a schedule whose betas leave
/// (0, 1] (e.g. `beta_start = 0` with `linear`, which would divide by zero at t = 0).
pub fn betas(cfg: &SchedulerConfig) -> Result<Vec<f64>> {
    cfg.validate()?;
    let t = cfg.num_train_timesteps;
    let mut b: Vec<f32> = match (&cfg.trained_betas, cfg.beta_schedule) {
        (Some(tb), _) => tb.iter().map(|&v| v as f32).collect(),
        (None, BetaSchedule::Linear) => linspace_f32(cfg.beta_start, cfg.beta_end, t),
        (None, BetaSchedule::ScaledLinear) => {
            let roots = linspace_f32(libm::sqrt(cfg.beta_start), libm::sqrt(cfg.beta_end), t);
            roots.into_iter().map(|r| r * r).collect()
        }
        (None, BetaSchedule::SquaredcosCapV2) => betas_for_alpha_bar(t, 0.999, cosine_alpha_bar),
        (None, BetaSchedule::Laplace) => betas_for_alpha_bar(t, 0.999, laplace_alpha_bar),
        (None, BetaSchedule::Sigmoid) => {
            // torch.sigmoid(torch.linspace(-6, 6, T)) * (end - start) + start, all in f32.
            let span = (cfg.beta_end - cfg.beta_start) as f32;
            let start = cfg.beta_start as f32;
            linspace_f32(-6.0, 6.0, t)
                .into_iter()
                .map(|x| {
                    let s = (1.0 / (1.0 + libm::exp(-(x as f64)))) as f32;
                    s * span + start
                })
                .collect()
        }
    };
    if cfg.rescale_betas_zero_snr {
        b = rescale_zero_terminal_snr(&b);
    }
    let key = if cfg.trained_betas.is_some() {
        "trained_betas"
    } else {
        "beta_schedule"
    };
    if let Some((i, v)) = b
        .iter()
        .enumerate()
        .find(|(_, v)| !(**v > 0.0 && **v <= 1.0))
    {
        return Err(Error::InvalidConfig {
            key: key.into(),
            message: format!("beta {i} = {v} is outside (0, 1] (check beta_start / beta_end)"),
        });
    }
    Ok(b.into_iter().map(f64::from).collect())
}

/// alpha-bar_t = prod_{s <= t} (1 - beta_s), as `torch.cumprod(1.0 - betas)` on the CPU
/// computes it for float32 betas: each alpha rounded to f32, the running product kept in f64,
/// each output rounded to f32 (widened back to f64 here).
pub fn alphas_cumprod(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            let alpha = 1.0f32 - b as f32;
            acc *= alpha as f64;
            (acc as f32) as f64
        })
        .collect()
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU: f32 endpoints and step, the
/// first half counted up from `start` (`start + step * i`), the second half down from `end`
/// (`end - step * (steps - 1 - i)`). PyTorch's x86 builds contract those expressions into
/// fused multiply-adds, and only the fused form reproduces diffusers' betas bit for bit, so
/// we fuse too (`libm::fmaf` is correctly rounded, hence the same everywhere).
pub(crate) fn linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if steps == 1 {
        return alloc::vec![s];
    }
    let step = (e - s) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                libm::fmaf(step, i as f32, s)
            } else {
                libm::fmaf(-step, (steps - 1 - i) as f32, e)
            }
        })
        .collect()
}

/// alpha-bar(t) of the `squaredcos_cap_v2` schedule, in f64 as Python's `math` computes it.
fn cosine_alpha_bar(t: f64) -> f64 {
    let c = libm::cos((t + 0.008) / 1.008 * PI / 2.0);
    c * c
}

/// alpha-bar(t) of diffusers' `laplace` schedule.
fn laplace_alpha_bar(t: f64) -> f64 {
    let lmb =
        -0.5 * libm::copysign(1.0, 0.5 - t) * libm::log(1.0 - 2.0 * libm::fabs(0.5 - t) + 1e-6);
    let snr = libm::exp(lmb);
    libm::sqrt(snr / (1.0 + snr))
}

/// Discretizes a continuous alpha-bar over [0, 1] into `t` betas, each capped at `max_beta`;
/// computed in f64 like diffusers' Python loop, then stored as f32 like its tensor.
fn betas_for_alpha_bar(t: usize, max_beta: f64, alpha_bar: fn(f64) -> f64) -> Vec<f32> {
    (0..t)
        .map(|i| {
            let t1 = i as f64 / t as f64;
            let t2 = (i + 1) as f64 / t as f64;
            let beta = 1.0 - alpha_bar(t2) / alpha_bar(t1);
            (if beta < max_beta { beta } else { max_beta }) as f32
        })
        .collect()
}

/// Rescales betas so the last alpha-bar is exactly 0 (zero terminal SNR, Lin et al. 2023,
/// Algorithm 1), in f32 like diffusers' tensor code.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    let mut sqrt_bar: Vec<f32> = betas
        .iter()
        .map(|&b| {
            acc *= (1.0f32 - b) as f64;
            libm::sqrtf(acc as f32)
        })
        .collect();
    let (first, last) = match (sqrt_bar.first(), sqrt_bar.last()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => return Vec::new(),
    };
    let scale = first / (first - last);
    for v in sqrt_bar.iter_mut() {
        *v = (*v - last) * scale;
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    out.extend(bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}
