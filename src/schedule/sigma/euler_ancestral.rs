//! `EulerAncestralDiscreteScheduler`: an Euler step to sigma_down plus fresh noise of std
//! sigma_up (the step itself is [`super::SigmaScheduler::euler_step`]).

/// Splits the move from sigma `s` to `s_next` into a deterministic part down to sigma_down
/// and fresh noise of std sigma_up: `(sigma_down, sigma_up)`. Float32 as in diffusers (0-d
/// float32 tensors).
pub(super) fn ancestral_split(s: f32, s_next: f32) -> (f32, f64) {
    let up2 = s_next * s_next * (s * s - s_next * s_next) / (s * s);
    let up = libm::sqrtf(up2.max(0.0));
    (libm::sqrtf((s_next * s_next - up * up).max(0.0)), up as f64)
}
