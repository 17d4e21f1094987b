//! The one model abstraction of the samplers: what the continuous-time steps
//! ([`sde`](super::sde)) and the sampling loop ([`crate::sampler`]) call to get eps.
//!
//! It lives under `schedule` so that the schedules never depend on the sampling loop; the
//! loop's module re-exports it (`sampler::{EpsModel, NoiseLevel}`).

use crate::error::Result;

/// The noise level a model is evaluated at: its timestep input and the alpha-bar there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseLevel {
    /// The model's timestep input (fractional for the continuous-time samplers).
    pub timestep: f32,
    /// alpha-bar at this noise level: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps.
    pub alpha_bar: f64,
}

/// The one model abstraction of the samplers: the noise prediction `eps(x, t)` of a whole
/// batch (`x` and `out` are `[B, C, H, W]`). The UNet (with guidance and prediction-type
/// conversion) implements it inside [`sample`](crate::sampler::sample) /
/// [`sample_with`](crate::sampler::sample_with); tests plug in closed-form models. Closures
/// `FnMut(&[f32], NoiseLevel, &mut [f32]) -> Result<()>` implement it.
pub trait EpsModel {
    fn eps(&mut self, x: &[f32], level: NoiseLevel, out: &mut [f32]) -> Result<()>;
}

impl<F: FnMut(&[f32], NoiseLevel, &mut [f32]) -> Result<()>> EpsModel for F {
    fn eps(&mut self, x: &[f32], level: NoiseLevel, out: &mut [f32]) -> Result<()> {
        self(x, level, out)
    }
}
