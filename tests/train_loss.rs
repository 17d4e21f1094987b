//! The training objectives: the schedule against diffusers, and the gradient of each
//! loss with respect to the model output against finite differences (L_simple with epsilon and
//! v targets, the hybrid loss of improved DDPM at t = 0 and t > 0).
#![cfg(feature = "train")]

mod common;

use common::{fixtures_dir, read_json, rel_l2, TensorFile};
use tinydiffusion::schedule::{BetaSchedule, PredictionType, SchedulerConfig};
use tinydiffusion::train::loss::{loss_and_grad, Batch, LossKind, NoiseSchedule};
use tinydiffusion::train::rng::{Purpose, Stream};

/// The trainer's schedule: diffusers' DDPM defaults (linear 1e-4..0.02, T = 1000) unless given.
fn schedule(kind: BetaSchedule) -> NoiseSchedule {
    NoiseSchedule::new(&SchedulerConfig {
        beta_schedule: kind,
        ..SchedulerConfig::ddpm_default()
    })
    .unwrap()
}

#[test]
fn schedules_match_diffusers() {
    let dir = fixtures_dir();
    let json = read_json(dir.join("schedules.json"));
    let tensors = TensorFile::open(dir.join("schedules.safetensors"));
    for s in json["schedules"].as_array().unwrap() {
        let kind: BetaSchedule = s["beta_schedule"].as_str().unwrap().parse().unwrap();
        let ours = NoiseSchedule::new(&SchedulerConfig {
            beta_schedule: kind,
            num_train_timesteps: 1000,
            beta_start: s["beta_start"].as_f64().unwrap(),
            beta_end: s["beta_end"].as_f64().unwrap(),
            ..SchedulerConfig::ddpm_default()
        })
        .unwrap();
        let err = rel_l2(
            &ours.alphas_cumprod,
            &tensors.f64s(s["alphas_cumprod"].as_str().unwrap()),
        );
        let err_b = rel_l2(&ours.betas, &tensors.f64s(s["betas"].as_str().unwrap()));
        println!("{kind}: alphas_cumprod {err:.2e}, betas {err_b:.2e}");
        assert!(err <= 1e-6 && err_b <= 1e-6);
    }
}

fn randn(seed: u64, n: usize) -> Vec<f32> {
    let mut s = Stream::new(seed, Purpose::Noise, 0);
    (0..n).map(|_| s.gaussian() as f32).collect()
}

/// d loss / d out against central differences, element by element.
fn check_grad(kind: LossKind, pred: PredictionType, out_factor: usize, timesteps: &[usize]) -> f64 {
    let sched = schedule(BetaSchedule::Linear);
    let (c, hw) = (2, 6);
    let batch = timesteps.len();
    let n = batch * c * hw;
    // x0 on the data grid in [-1, 1], including both edge bins.
    let mut x0: Vec<f32> = randn(1, n)
        .iter()
        .map(|v| (v * 0.6).clamp(-1.0, 1.0))
        .collect();
    x0[0] = -1.0;
    x0[1] = 1.0;
    let eps = randn(2, n);
    let mut x_t = vec![0.0; n];
    for (b, &t) in timesteps.iter().enumerate() {
        let a = sched.alphas_cumprod[t];
        for i in b * c * hw..(b + 1) * c * hw {
            x_t[i] = (a.sqrt() * x0[i] as f64 + (1.0 - a).sqrt() * eps[i] as f64) as f32;
        }
    }
    let bt = Batch {
        channels: c,
        pixels: hw,
        x0: &x0,
        eps: &eps,
        x_t: &x_t,
        timesteps,
    };
    let mut out: Vec<f32> = randn(3, n * out_factor).iter().map(|v| v * 0.5).collect();
    let mut d_out = vec![0.0; out.len()];
    let base = loss_and_grad(kind, pred, &sched, &bt, &out, &mut d_out).unwrap();
    let mut scratch = vec![0.0; out.len()];
    let mut worst = 0.0f64;
    // Hybrid: the mean channels see only L_simple (the model mean is detached inside L_vlb),
    // so their gradient must equal the simple loss's; the variance channels are checked below.
    let var_channel = |i: usize| out_factor == 2 && (i / hw) % (2 * c) >= c;
    if let LossKind::Hybrid { .. } = kind {
        let mut d_simple = vec![0.0; out.len()];
        loss_and_grad(LossKind::Simple, pred, &sched, &bt, &out, &mut d_simple).unwrap();
        for i in (0..out.len()).filter(|&i| !var_channel(i)) {
            assert_eq!(d_out[i], d_simple[i], "mean channel {i}");
        }
    }
    for i in (0..out.len()).filter(|&i| out_factor == 1 || var_channel(i)) {
        let orig = out[i];
        let h = 1e-3f32;
        out[i] = orig + h;
        let up = loss_and_grad(kind, pred, &sched, &bt, &out, &mut scratch)
            .unwrap()
            .total;
        let hp = out[i] - orig;
        out[i] = orig - h;
        let down = loss_and_grad(kind, pred, &sched, &bt, &out, &mut scratch)
            .unwrap()
            .total;
        let hm = orig - out[i];
        out[i] = orig;
        let fd = (up - down) / (hp + hm) as f64;
        // Relative to the typical gradient entry.
        let scale = d_out.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
        worst = worst.max((fd - d_out[i] as f64).abs() / scale);
    }
    println!("{kind:?} {pred:?} t={timesteps:?}: loss {:.5} (mse {:.5}, vlb {:.5}); worst grad err {worst:.2e}", base.total, base.mse, base.vlb);
    worst
}

#[test]
fn simple_loss_epsilon_gradient() {
    assert!(check_grad(LossKind::Simple, PredictionType::Epsilon, 1, &[10, 700]) < 1e-3);
}

#[test]
fn simple_loss_v_prediction_gradient() {
    assert!(check_grad(LossKind::Simple, PredictionType::VPrediction, 1, &[10, 700]) < 1e-3);
}

#[test]
fn hybrid_loss_gradient_t_positive_and_zero() {
    // The decoder NLL (t = 0) and the KL terms (t > 0), learned_range output (2C channels).
    assert!(
        check_grad(
            LossKind::Hybrid { lambda: 0.001 },
            PredictionType::Epsilon,
            2,
            &[0, 1, 400, 999]
        ) < 1e-3
    );
    assert!(
        check_grad(
            LossKind::Hybrid { lambda: 0.001 },
            PredictionType::VPrediction,
            2,
            &[0, 250]
        ) < 1e-3
    );
}

#[test]
fn v_prediction_target() {
    // out = v exactly gives zero loss: v = sqrt(abar) eps - sqrt(1 - abar) x0.
    let sched = schedule(BetaSchedule::SquaredcosCapV2);
    let (x0, eps) = (vec![0.5f32, -0.25], vec![1.0f32, 2.0]);
    let t = [300usize];
    let a = sched.alphas_cumprod[300];
    let v: Vec<f32> = x0
        .iter()
        .zip(&eps)
        .map(|(x, e)| (a.sqrt() * *e as f64 - (1.0 - a).sqrt() * *x as f64) as f32)
        .collect();
    let x_t = vec![0.0; 2];
    let b = Batch {
        channels: 1,
        pixels: 2,
        x0: &x0,
        eps: &eps,
        x_t: &x_t,
        timesteps: &t,
    };
    let mut d = vec![0.0; 2];
    let l = loss_and_grad(
        LossKind::Simple,
        PredictionType::VPrediction,
        &sched,
        &b,
        &v,
        &mut d,
    )
    .unwrap();
    assert!(l.total < 1e-12, "{}", l.total);
}

/// The bound's terms for an oracle that predicts the true noise: with the posterior's own
/// variance the KL terms vanish, and the decoder term is the probability mass of the data bin
/// under N(x0, beta~_1) (tanh-approximated CDF, so within 1e-3 of the erf value).
#[test]
fn vlb_terms_of_an_oracle() {
    use tinydiffusion::train::loss::{vlb_term, Variance};
    let sched = schedule(BetaSchedule::Linear);
    let x0 = vec![0.2f32, -0.6, 0.0, 0.5];
    let eps = randn(4, 4);
    for t in [0usize, 1, 500, 999] {
        let a = sched.alphas_cumprod[t];
        let x_t: Vec<f32> = x0
            .iter()
            .zip(&eps)
            .map(|(x, e)| (a.sqrt() * *x as f64 + (1.0 - a).sqrt() * *e as f64) as f32)
            .collect();
        let ts = [t];
        let b = Batch {
            channels: 1,
            pixels: 4,
            x0: &x0,
            eps: &eps,
            x_t: &x_t,
            timesteps: &ts,
        };
        let term = vlb_term(
            &sched,
            PredictionType::Epsilon,
            Variance::FixedSmall,
            &b,
            0,
            &eps,
            None,
            0.0,
        )
        .unwrap();
        if t > 0 {
            assert!(term.abs() < 1e-4, "t = {t}: KL {term}");
        } else {
            let sigma = (sched.betas[1] * (1.0 - sched.alphas_cumprod[0])
                / (1.0 - sched.alphas_cumprod[1]))
                .sqrt();
            let z = 1.0 / 255.0 / sigma;
            let mass = libm::erf(z / std::f64::consts::SQRT_2); // P(|N(0,1)| < z)
            let expected = -mass.log2();
            assert!(
                (term - expected).abs() < 2e-3 * expected,
                "decoder {term} vs {expected}"
            );
        }
    }
}

/// The trainer's noise levels are the sampler's and diffusers' float32 values, bit for bit.
#[test]
fn training_noise_levels_are_the_samplers_bit_for_bit() {
    use tinydiffusion::schedule::Scheduler;
    let dir = fixtures_dir();
    let json = read_json(dir.join("schedules.json"));
    let tensors = TensorFile::open(dir.join("schedules.safetensors"));
    for s in json["schedules"].as_array().unwrap() {
        let cfg = SchedulerConfig {
            beta_schedule: s["beta_schedule"].as_str().unwrap().parse().unwrap(),
            beta_start: s["beta_start"].as_f64().unwrap(),
            beta_end: s["beta_end"].as_f64().unwrap(),
            ..SchedulerConfig::ddpm_default()
        };
        let ours = NoiseSchedule::new(&cfg).unwrap();
        let sampler = Scheduler::new(cfg.clone(), 50).unwrap();
        assert!(ours.betas == sampler.betas() && ours.alphas_cumprod == sampler.alphas_cumprod());
        assert!(ours.betas == tensors.f64s(s["betas"].as_str().unwrap()));
        assert!(ours.alphas_cumprod == tensors.f64s(s["alphas_cumprod"].as_str().unwrap()));
    }
}

/// x0 prediction (`sample`) is not implemented by the losses: a typed error, not a panic.
#[test]
fn sample_prediction_is_a_typed_error() {
    use tinydiffusion::train::loss::{check_prediction, vlb_term, Variance};
    use tinydiffusion::Error;
    let sched = schedule(BetaSchedule::Linear);
    let (x0, eps, x_t) = (vec![0.5f32; 4], vec![0.1f32; 4], vec![0.2f32; 4]);
    let b = Batch {
        channels: 1,
        pixels: 4,
        x0: &x0,
        eps: &eps,
        x_t: &x_t,
        timesteps: &[3],
    };
    let is_unsupported = |e: Error| matches!(e, Error::UnsupportedConfig { ref key, .. } if key == "prediction_type");
    let mut d = vec![0.0; 8];
    for kind in [LossKind::Simple, LossKind::Hybrid { lambda: 0.001 }] {
        let r = loss_and_grad(kind, PredictionType::Sample, &sched, &b, &[0.0; 8], &mut d);
        assert!(is_unsupported(r.unwrap_err()));
    }
    let r = vlb_term(
        &sched,
        PredictionType::Sample,
        Variance::FixedSmall,
        &b,
        0,
        &[0.0; 4],
        None,
        0.0,
    );
    assert!(is_unsupported(r.unwrap_err()));
    assert!(is_unsupported(
        check_prediction(PredictionType::Sample).unwrap_err()
    ));
    for ok in [PredictionType::Epsilon, PredictionType::VPrediction] {
        check_prediction(ok).unwrap();
    }
}
