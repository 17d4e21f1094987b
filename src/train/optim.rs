//! AdamW with decoupled weight decay, global gradient-norm clipping, linear learning-rate
//! warmup and an exponential moving average of the weights. All state is flat f32 buffers in
//! the [`super::params::ParamTable`] layout; every update is elementwise in a fixed order, so a
//! run is bit-reproducible.

/// Optimiser hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Linear warmup from `lr / warmup` to `lr` over this many steps (0: none).
    pub warmup: u64,
    /// Clip the global gradient L2 norm to this (0 or infinite: no clipping).
    pub max_grad_norm: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup: 0,
            max_grad_norm: 1.0,
        }
    }
}

impl AdamWConfig {
    /// Learning rate of step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f32 {
        if self.warmup == 0 || step >= self.warmup {
            self.lr
        } else {
            self.lr * (step + 1) as f32 / self.warmup as f32
        }
    }
}

/// Global L2 norm of the gradients (accumulated in f64).
pub fn grad_norm(grads: &[f32]) -> f64 {
    grads
        .iter()
        .map(|g| (*g as f64) * (*g as f64))
        .sum::<f64>()
        .sqrt()
}

/// Scales `grads` so their global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`:
/// factor `max_norm / (norm + 1e-6)` when below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f64 {
    let norm = grad_norm(grads);
    if max_norm > 0.0 && max_norm.is_finite() {
        let coef = max_norm as f64 / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (*g as f64 * coef) as f32;
            }
        }
    }
    norm
}

/// One AdamW step (PyTorch's `AdamW`): `p -= lr * wd * p`, then
/// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
/// `p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)` with `t = step + 1`.
pub fn adamw_step(
    cfg: &AdamWConfig,
    step: u64,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let lr = cfg.lr_at(step);
    let t = (step + 1) as i32;
    let bc1 = 1.0 - libm::pow(cfg.beta1 as f64, t as f64) as f32;
    let bc2 = 1.0 - libm::pow(cfg.beta2 as f64, t as f64) as f32;
    let bc2_sqrt = libm::sqrtf(bc2);
    let step_size = lr / bc1;
    let decay = 1.0 - lr * cfg.weight_decay;
    for (((p, g), m), v) in params
        .iter_mut()
        .zip(grads)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        *p *= decay;
        *m = cfg.beta1 * *m + (1.0 - cfg.beta1) * g;
        *v = cfg.beta2 * *v + (1.0 - cfg.beta2) * g * g;
        let denom = libm::sqrtf(*v) / bc2_sqrt + cfg.eps;
        *p -= step_size * *m / denom;
    }
}

/// EMA decay of step `step`: `min(max_decay, (1 + step) / (10 + step))` (diffusers' `EMAModel`
/// warmup form), so early weights are forgotten quickly.
pub fn ema_decay(max_decay: f32, step: u64) -> f32 {
    let warm = (1.0 + step as f64) / (10.0 + step as f64);
    (max_decay as f64).min(warm) as f32
}

/// `ema = decay * ema + (1 - decay) * params`.
pub fn ema_update(ema: &mut [f32], params: &[f32], decay: f32) {
    for (e, p) in ema.iter_mut().zip(params) {
        *e -= (1.0 - decay) * (*e - p);
    }
}
