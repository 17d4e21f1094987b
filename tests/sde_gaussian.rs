//! The continuous-time samplers on a Gaussian data distribution, where the exact score is
//! known in closed form: data x_0 ~ N(mu, sigma^2) per dimension gives
//! x_t ~ N(sqrt(abar) mu, abar sigma^2 + 1 - abar) and
//! eps(x, t) = sqrt(1 - abar) (x - sqrt(abar) mu) / (abar sigma^2 + 1 - abar).
//!
//! - Probability-flow ODE: the exact flow is linear, x_t = sqrt(abar_t) mu + s_t / s_1
//!   (x_1 - sqrt(abar_1) mu) with s_t^2 = abar_t sigma^2 + 1 - abar_t, so the final sample is
//!   compared element by element with the exact solution: Euler's error halves when the step
//!   halves (order 1), Heun's quarters (order 2).
//! - Reverse SDE (Euler-Maruyama) and predictor-corrector: the mean and variance of 2^18
//!   samples converge to the truth as the steps grow (weak order 1 for Euler-Maruyama).

use tinydiffusion::sampler::NoiseLevel;
use tinydiffusion::schedule::sde::NoiseRows;
use tinydiffusion::schedule::{
    GaussianNoise, PredictionType, Predictor, SdeConfig, SdeSampler, StepShape, VpSde,
};

const MU: f64 = 0.5;
const SIGMA: f64 = 0.3;

fn vp() -> VpSde {
    VpSde::linear(0.1, 20.0, 1000).unwrap()
}

fn exact_eps(x: &[f32], level: NoiseLevel, out: &mut [f32]) -> tinydiffusion::Result<()> {
    let a = level.alpha_bar;
    let var = a * SIGMA * SIGMA + 1.0 - a;
    for (o, &xi) in out.iter_mut().zip(x) {
        *o = ((1.0 - a).sqrt() * (xi as f64 - a.sqrt() * MU) / var) as f32;
    }
    Ok(())
}

/// Runs `cfg` on `dims` samples (one batch element per 4096 dims) from seeded x_1.
fn run(cfg: SdeConfig, dims: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let s = SdeSampler::with_sde(vp(), cfg, PredictionType::Epsilon).unwrap();
    let per = 4096;
    let shape = StepShape::new(dims / per, 1, 64, 64);
    let noise = GaussianNoise::new(seed);
    let mut x = vec![0.0f32; dims];
    noise.fill(0, &mut x);
    let x1 = x.clone();
    let mut scratch = vec![0.0f32; s.scratch_len(shape)];
    let mut eps = exact_eps;
    s.run(
        &mut eps,
        shape,
        &mut x,
        NoiseRows::Seeded(noise),
        &mut scratch,
        None,
    )
    .unwrap();
    (x1, x)
}

/// The exact final sample of the ODE sampler from x_1: the exact flow to t_eps, then the
/// (exact) Tweedie step.
fn exact_ode(x1: f32, t_eps: f64) -> f64 {
    let sde = vp();
    let s = |t: f64| {
        let a = sde.alpha_bar(t);
        (a, (a * SIGMA * SIGMA + 1.0 - a).sqrt())
    };
    let (a1, s1) = s(1.0);
    let (a, st) = s(t_eps);
    let x = a.sqrt() * MU + st / s1 * (x1 as f64 - a1.sqrt() * MU);
    let eps = (1.0 - a).sqrt() * (x - a.sqrt() * MU) / (st * st);
    (x - (1.0 - a).sqrt() * eps) / a.sqrt()
}

fn ode_error(solver: Predictor, steps: usize) -> f64 {
    let cfg = SdeConfig::ode(solver, steps);
    let (x1, x) = run(cfg, 4096, 3);
    x1.iter()
        .zip(&x)
        .map(|(&a, &b)| (b as f64 - exact_ode(a, cfg.t_eps)).abs())
        .fold(0.0, f64::max)
}

fn orders(errors: &[f64]) -> Vec<f64> {
    errors.windows(2).map(|w| (w[0] / w[1]).log2()).collect()
}

#[test]
fn probability_flow_ode_converges_at_order_1_euler_and_2_heun() {
    let euler: Vec<f64> = [32, 64, 128, 256]
        .iter()
        .map(|&n| ode_error(Predictor::OdeEuler, n))
        .collect();
    let heun: Vec<f64> = [8, 16, 32, 64]
        .iter()
        .map(|&n| ode_error(Predictor::OdeHeun, n))
        .collect();
    let (oe, oh) = (orders(&euler), orders(&heun));
    eprintln!("euler max errors {euler:?}, orders {oe:.3?}");
    eprintln!("heun  max errors {heun:?}, orders {oh:.3?}");
    for o in &oe {
        assert!((0.85..1.2).contains(o), "Euler order {o}: {oe:?}");
    }
    for o in &oh {
        assert!((1.8..2.3).contains(o), "Heun order {o}: {oh:?}");
    }
    // At equal model evaluations (Heun 64 steps, Euler 128) Heun is far more accurate.
    assert!(
        heun[3] < 5e-3 && heun[3] < euler[2] / 3.0,
        "{heun:?} {euler:?}"
    );
}

/// Mean and variance over all samples, and the target: the denoised output's exact
/// distribution, N(mu, sigma^2 r) with r = abar sigma^2 / (abar sigma^2 + 1 - abar) at t_eps
/// (Tweedie's estimate is slightly less spread than x_0 itself).
fn moments(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

fn target(t_eps: f64) -> (f64, f64) {
    let a = vp().alpha_bar(t_eps);
    let s2 = SIGMA * SIGMA;
    (MU, s2 * a * s2 / (a * s2 + 1.0 - a))
}

fn moment_errors(cfg: impl Fn(usize) -> SdeConfig, steps: &[usize]) -> Vec<(f64, f64)> {
    steps
        .iter()
        .map(|&n| {
            let c = cfg(n);
            let (_, x) = run(c, 1 << 18, 11);
            let (m, v) = moments(&x);
            let (tm, tv) = target(c.t_eps);
            ((m - tm).abs(), (v - tv).abs() / tv)
        })
        .collect()
}

#[test]
fn reverse_sde_mean_and_variance_converge() {
    let steps = [10, 20, 40, 80, 320];
    let e = moment_errors(SdeConfig::sde, &steps);
    let var: Vec<f64> = e.iter().map(|p| p.1).collect();
    eprintln!("euler-maruyama |mean err|, rel var err by steps {steps:?}: {e:?}");
    eprintln!("orders of the variance error {:.3?}", orders(&var[..4]));
    // Weak order 1 while the bias is well above the Monte-Carlo noise (~0.3% for 2^18
    // samples): each halving of the step at least ~halves the variance error.
    for o in orders(&var[..3]) {
        assert!(o > 0.7, "variance error order {o}: {var:?}");
    }
    let (m, v) = e[4];
    assert!(
        m < 3e-3 && v < 1e-2,
        "320 steps: mean err {m}, rel var err {v}"
    );
}

#[test]
fn predictor_corrector_mean_and_variance_converge() {
    let steps = [5, 10, 20, 80];
    let e = moment_errors(|n| SdeConfig::pc(n, 1), &steps);
    eprintln!("pc(1 corrector) |mean err|, rel var err by steps {steps:?}: {e:?}");
    let var: Vec<f64> = e.iter().map(|p| p.1).collect();
    assert!(var[0] > var[1] && var[1] > var[2], "{var:?}");
    let (m, v) = e[3];
    assert!(
        m < 3e-3 && v < 1.5e-2,
        "80 steps: mean err {m}, rel var err {v}"
    );
    // The ODE predictor with a corrector converges too.
    let ode_pc: Vec<f64> = moment_errors(
        |n| SdeConfig {
            corrector_steps: 1,
            ..SdeConfig::ode(Predictor::OdeHeun, n)
        },
        &[40, 160],
    )
    .iter()
    .map(|p| p.1)
    .collect();
    eprintln!("heun + 1 corrector, rel var err at 40, 160 steps: {ode_pc:?}");
    // The Langevin step is set by the snr, not by h, so its bias (~1-3% in variance here) does
    // not vanish with the predictor's step; with the noise-free ODE predictor it dominates.
    assert!(
        ode_pc[1] < ode_pc[0] && ode_pc[1] < 3e-2,
        "heun + corrector: {ode_pc:?}"
    );
}
