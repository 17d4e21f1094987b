//! `IPNDMScheduler`: improved pseudo linear multistep on its own schedule. Step k of N has
//! beta_k = sin(s_k pi / 2)^2 and alpha_k = sqrt(1 - beta_k^2) for s_k = 1 - k / N (then 0),
//! or the config's `trained_betas` (N + 1 values); the model sees the continuous time
//! atan2(beta, alpha) * 2 / pi in (0, 1], as diffusers passes it.

use alloc::format;
use alloc::vec::Vec;

use super::SigmaScheduler;
use crate::error::{Error, Result};
use crate::schedule::config::SchedulerConfig;

/// `torch.linspace(start, end, n)` in float32 (each half counted from its own end).
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return alloc::vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - i - 1) as f32
            }
        })
        .collect()
}

impl SigmaScheduler {
    /// The IPNDM schedule for `n` steps: betas in `ipndm_betas`, alphas in `alphas` (N + 1
    /// each, float32).
    pub(super) fn new_ipndm(cfg: SchedulerConfig, n: usize) -> Result<SigmaScheduler> {
        let betas: Vec<f32> = match &cfg.trained_betas {
            Some(b) if b.len() != n + 1 => {
                return Err(Error::InvalidConfig {
                    key: "trained_betas".into(),
                    message: format!(
                        "IPNDMScheduler takes num_inference_steps + 1 = {} betas, got {}",
                        n + 1,
                        b.len()
                    ),
                })
            }
            Some(b) => {
                if let Some((i, v)) = b
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !(0.0..=1.0).contains(*v))
                {
                    return Err(Error::InvalidConfig {
                        key: "trained_betas".into(),
                        message: format!("value {i} = {v} is outside [0, 1]"),
                    });
                }
                b.iter().map(|&v| v as f32).collect()
            }
            None => {
                let mut steps = linspace_f32(1.0, 0.0, n + 1);
                steps[n] = 0.0;
                let half_pi = (core::f64::consts::PI / 2.0) as f32;
                steps
                    .iter()
                    .map(|&s| {
                        let v = libm::sinf(s * half_pi);
                        v * v
                    })
                    .collect()
            }
        };
        let alphas: Vec<f32> = betas.iter().map(|&b| libm::sqrtf(1.0 - b * b)).collect();
        let pi32 = core::f32::consts::PI;
        let timesteps: Vec<f32> = betas[..n]
            .iter()
            .zip(&alphas)
            .map(|(&b, &a)| libm::atan2f(b, a) / pi32 * 2.0)
            .collect();
        Ok(SigmaScheduler {
            rounded: timesteps.iter().map(|&t| libm::roundf(t) as i64).collect(),
            timesteps,
            cfg,
            num_inference_steps: n,
            sigmas: Vec::new(),
            init_noise_sigma: 1.0,
            alphas,
            final_alpha: 0.0,
            prk_len: 0,
            orders: Vec::new(),
            ipndm_betas: betas,
        })
    }

    /// IPNDM step `i`: this step's combined output into history slot `i % 4`, the
    /// Adams-Bashforth combination of the last (up to) four, then the update to step i + 1.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ipndm_step(
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
        let (b, a) = (self.ipndm_betas[i] as f64, self.alphas[i] as f64);
        let (nb, na) = (self.ipndm_betas[i + 1] as f64, self.alphas[i + 1] as f64);
        let slot = |j: usize| (j % 4) * n;
        let count = (i + 1).min(4);
        let a_div = a.max(1e-8);
        for bi in 0..batch {
            for k in 0..per {
                let j = bi * per + k;
                let x = sample[j] as f64;
                let e0 = x * b + model_output[bi * stride + k] as f64 * a;
                history[slot(i) + j] = e0 as f32;
                let e = |m: usize| history[slot(i - m) + j] as f64;
                let eff = match count {
                    1 => e0,
                    2 => (3.0 * e0 - e(1)) / 2.0,
                    3 => (23.0 * e0 - 16.0 * e(1) + 5.0 * e(2)) / 12.0,
                    _ => (1.0 / 24.0) * (55.0 * e0 - 59.0 * e(1) + 37.0 * e(2) - 9.0 * e(3)),
                };
                let pred = (x - b * eff) / a_div;
                sample[j] = (na * pred + eff * nb) as f32;
            }
        }
    }
}
