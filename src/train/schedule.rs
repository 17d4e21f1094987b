//! The few schedule quantities training needs: betas and alphas_cumprod as diffusers'
//! `DDPMScheduler` defines them (`linear`, `scaled_linear`, `squaredcos_cap_v2`).
//!
//! Consolidation note: `src/schedule/` (main) owns the crate's schedules for sampling. This is a
//! minimal private copy so the trainer does not depend on a module being written in parallel;
//! once both are merged the trainer should take its betas from `schedule` and this file goes.

use crate::error::{invalid_arg, Result};

/// Beta schedule kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredCosCapV2,
}

impl BetaSchedule {
    pub fn parse(s: &str) -> Result<BetaSchedule> {
        match s {
            "linear" => Ok(BetaSchedule::Linear),
            "scaled_linear" => Ok(BetaSchedule::ScaledLinear),
            "squaredcos_cap_v2" => Ok(BetaSchedule::SquaredCosCapV2),
            _ => Err(invalid_arg(
                "beta schedule",
                alloc::format!("{s}: expected linear, scaled_linear or squaredcos_cap_v2"),
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::SquaredCosCapV2 => "squaredcos_cap_v2",
        }
    }
}

/// The per-timestep constants of the forward process, in f64 (rounded through f32 where
/// diffusers computes in f32).
#[derive(Debug, Clone)]
pub struct Schedule {
    pub kind: BetaSchedule,
    pub beta_start: f64,
    pub beta_end: f64,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl Schedule {
    pub fn new(kind: BetaSchedule, steps: usize, beta_start: f64, beta_end: f64) -> Schedule {
        let linspace = |a: f64, b: f64| -> Vec<f64> {
            (0..steps)
                .map(|i| {
                    if steps == 1 {
                        a
                    } else {
                        a + (b - a) * i as f64 / (steps - 1) as f64
                    }
                })
                .collect()
        };
        let betas: Vec<f64> = match kind {
            BetaSchedule::Linear => linspace(beta_start, beta_end),
            BetaSchedule::ScaledLinear => linspace(beta_start.sqrt(), beta_end.sqrt())
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::SquaredCosCapV2 => {
                let abar =
                    |t: f64| libm::cos((t + 0.008) / 1.008 * core::f64::consts::FRAC_PI_2).powi(2);
                (0..steps)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                        (1.0 - abar(t2) / abar(t1)).min(0.999)
                    })
                    .collect()
            }
        };
        // diffusers holds betas and their cumulative product in float32.
        let betas: Vec<f64> = betas.into_iter().map(|b| b as f32 as f64).collect();
        let mut acc = 1.0f32;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - *b as f32;
                acc as f64
            })
            .collect();
        Schedule {
            kind,
            beta_start,
            beta_end,
            betas,
            alphas_cumprod,
        }
    }

    pub fn steps(&self) -> usize {
        self.betas.len()
    }
}
