//! The DDPM / DDIM schedulers against diffusers 0.42: beta schedules, timestep lists, all
//! single-step cases of `scheduler_steps.json`, config errors, the DDIM previous-timestep
//! option and the built-in noise.

mod common;

use common::{fixtures_dir, read_json, rel_l2, TensorFile};
use tinydiffusion::schedule::{
    alphas_cumprod, betas, set_timesteps, DdimPrevTimestep, GaussianNoise, Scheduler,
    SchedulerConfig, SchedulerKind, StepShape, TimestepSpacing, VarianceType,
};
use tinydiffusion::Error;

fn schedule_config(kind: &str, json_extra: &str) -> SchedulerConfig {
    SchedulerConfig::from_json(&format!(
        r#"{{"_class_name": "{kind}", "num_train_timesteps": 1000{json_extra}}}"#
    ))
    .unwrap()
}

#[test]
fn beta_schedules_and_timesteps_match_diffusers() {
    let meta = read_json(fixtures_dir().join("schedules.json"));
    let tensors = TensorFile::open(fixtures_dir().join("schedules.safetensors"));
    let mut worst = (0.0f64, 0.0f64);
    for s in meta["schedules"].as_array().unwrap() {
        let name = s["beta_schedule"].as_str().unwrap();
        let cfg = schedule_config(
            "DDPMScheduler",
            &format!(
                r#", "beta_schedule": "{name}", "beta_start": {}, "beta_end": {}"#,
                s["beta_start"], s["beta_end"]
            ),
        );
        let b = betas(&cfg).unwrap();
        let ac = alphas_cumprod(&b);
        let eb = rel_l2(&b, &tensors.f64s(s["betas"].as_str().unwrap()));
        let ea = rel_l2(&ac, &tensors.f64s(s["alphas_cumprod"].as_str().unwrap()));
        println!("{name:<18} betas rel L2 {eb:.2e}, alphas_cumprod rel L2 {ea:.2e}");
        assert!(
            eb <= 1e-6 && ea <= 1e-6,
            "{name}: betas {eb:.3e}, alphas_cumprod {ea:.3e}"
        );
        worst = (worst.0.max(eb), worst.1.max(ea));
    }
    println!(
        "worst: betas {:.2e}, alphas_cumprod {:.2e}",
        worst.0, worst.1
    );

    let entries = meta["timesteps"].as_array().unwrap();
    for e in entries {
        let extra = format!(
            r#", "timestep_spacing": {}, "steps_offset": {}"#,
            e["timestep_spacing"], e["steps_offset"]
        );
        let cfg = schedule_config(e["scheduler"].as_str().unwrap(), &extra);
        let steps = e["num_inference_steps"].as_u64().unwrap() as usize;
        let expected = tensors.i64s(e["tensor"].as_str().unwrap());
        assert_eq!(
            set_timesteps(&cfg, steps).unwrap(),
            expected,
            "{}",
            e["tensor"]
        );
    }
    println!("{} timestep lists equal", entries.len());
}

/// Maps `f` over the case's float64 tensor as f32, the precision the library runs in.
fn f32s(t: &TensorFile, case: &str, what: &str) -> Vec<f32> {
    t.f32s(&format!("{case}.{what}"))
}

#[test]
fn scheduler_steps_match_diffusers() {
    let meta = read_json(fixtures_dir().join("scheduler_steps.json"));
    let tensors = TensorFile::open(fixtures_dir().join("scheduler_steps.safetensors"));
    let cases = meta["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 174);
    let (mut worst_prev, mut worst_x0) = ((0.0f64, String::new()), (0.0f64, String::new()));
    let mut failures = Vec::new();
    let mut nan_reference = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cfg = SchedulerConfig::from_json(&case["scheduler"].to_string()).unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mut sched = Scheduler::new(cfg.clone(), steps).unwrap();
        sched.set_eta(case["eta"].as_f64().unwrap_or(0.0));
        let t = case["timestep"].as_i64().unwrap();
        let i = sched
            .timesteps()
            .iter()
            .position(|&x| x == t)
            .expect("timestep in schedule");
        assert_eq!(
            sched.needs_noise(i),
            case["noise_used"].as_bool().unwrap(),
            "{name}: needs_noise"
        );

        let shape_v = tensors.shape(&format!("{name}.sample"));
        let shape = StepShape::new(shape_v[0], shape_v[1], shape_v[2], shape_v[3]);
        let model_output = f32s(&tensors, name, "model_output");
        let noise = f32s(&tensors, name, "noise");
        let mut sample = f32s(&tensors, name, "sample");
        let mut x0 = vec![0.0f32; sample.len()];
        let mut scratch = vec![0.0f32; sched.scratch_len(shape)];
        let run = |s: &Scheduler, sample: &mut [f32], x0: &mut [f32], scratch: &mut [f32]| {
            s.step(
                i,
                shape,
                &model_output,
                sample,
                Some(&noise),
                Some(x0),
                scratch,
            )
            .unwrap()
        };
        run(&sched, &mut sample, &mut x0, &mut scratch);

        let expected_prev = tensors.f64s(&format!("{name}.prev_sample"));
        let expected_x0 = tensors.f64s(&format!("{name}.pred_original_sample"));
        let e_x0 = rel_l2(&x0, &expected_x0);
        let e_prev = if expected_prev.iter().all(|v| v.is_nan()) {
            // diffusers 0.42 takes sqrt(log beta_t) for fixed_large_log (huggingface/diffusers
            // #14569): every t > 0 step is NaN. Ours uses the intended exp(0.5 log beta_t), the
            // same noise as fixed_large; check against that instead.
            assert_eq!(
                cfg.variance_type,
                VarianceType::FixedLargeLog,
                "{name}: NaN reference"
            );
            nan_reference += 1;
            let mut large_cfg = cfg.clone();
            large_cfg.variance_type = VarianceType::FixedLarge;
            let large = Scheduler::new(large_cfg, steps).unwrap();
            let mut s2 = f32s(&tensors, name, "sample");
            let mut x2 = vec![0.0f32; s2.len()];
            run(&large, &mut s2, &mut x2, &mut scratch);
            assert!(
                sample.iter().all(|v| v.is_finite()),
                "{name}: non-finite prev_sample"
            );
            rel_l2(&sample, &s2)
        } else {
            rel_l2(&sample, &expected_prev)
        };
        if e_prev > worst_prev.0 {
            worst_prev = (e_prev, name.to_string());
        }
        if e_x0 > worst_x0.0 {
            worst_x0 = (e_x0, name.to_string());
        }
        if !(e_prev <= 1e-5 && e_x0 <= 1e-5) {
            failures.push(format!(
                "{name} ({cfg:?}): prev {e_prev:.3e}, x0 {e_x0:.3e}"
            ));
        }

        // A step that draws noise must be given it and must use it (except DDIM's last step,
        // whose variance is 0 since it steps onto the final alpha).
        if sched.needs_noise(i) {
            let r = sched.step(
                i,
                shape,
                &model_output,
                &mut sample.clone(),
                None,
                None,
                &mut scratch,
            );
            assert!(
                matches!(r, Err(Error::InvalidArgument { .. })),
                "{name}: noise not required"
            );
        }
        let ddim_last = cfg.kind == SchedulerKind::Ddim && i + 1 == sched.num_steps();
        if sched.needs_noise(i) && !ddim_last {
            let mut s3 = f32s(&tensors, name, "sample");
            let zeros = vec![0.0f32; noise.len()];
            sched
                .step(
                    i,
                    shape,
                    &model_output,
                    &mut s3,
                    Some(&zeros),
                    None,
                    &mut scratch,
                )
                .unwrap();
            assert_ne!(s3, sample, "{name}: the noise made no difference");
        }
    }
    println!(
        "worst prev_sample rel L2 {:.2e} ({}), worst pred_original_sample {:.2e} ({})",
        worst_prev.0, worst_prev.1, worst_x0.0, worst_x0.1
    );
    println!("{nan_reference} fixed_large_log cases have an all-NaN diffusers prev_sample (compared with fixed_large)");
    assert!(
        failures.is_empty(),
        "scheduler step failures:\n{}",
        failures.join("\n")
    );
}

fn unsupported_key(r: Result<SchedulerConfig, Error>) -> String {
    match r {
        Err(Error::UnsupportedConfig { key, .. }) => key,
        other => panic!("expected UnsupportedConfig, got {other:?}"),
    }
}

fn invalid_key(r: Result<SchedulerConfig, Error>) -> String {
    match r {
        Err(Error::InvalidConfig { key, .. }) => key,
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn config_errors_are_typed() {
    let parse = SchedulerConfig::from_json;
    // A key no diffusers scheduler takes (another class's would be hidden, as in diffusers).
    assert_eq!(
        unsupported_key(parse(
            r#"{"num_train_timesteps": 1000, "use_karras_sigma": true}"#
        )),
        "use_karras_sigma"
    );
    assert_eq!(
        unsupported_key(parse(r#"{"_class_name": "RePaintScheduler"}"#)),
        "_class_name"
    );
    assert_eq!(
        unsupported_key(parse(r#"{"beta_schedule": "foo"}"#)),
        "beta_schedule"
    );
    assert_eq!(
        unsupported_key(parse(r#"{"variance_type": "bar"}"#)),
        "variance_type"
    );
    assert_eq!(
        unsupported_key(parse(r#"{"prediction_type": "flow"}"#)),
        "prediction_type"
    );
    assert_eq!(
        unsupported_key(parse(r#"{"timestep_spacing": "karras"}"#)),
        "timestep_spacing"
    );
    // Wrong JSON types.
    assert_eq!(
        invalid_key(parse(r#"{"clip_sample": "yes"}"#)),
        "clip_sample"
    );
    assert_eq!(invalid_key(parse(r#"{"beta_start": "0.1"}"#)), "beta_start");
    assert_eq!(
        invalid_key(parse(r#"{"num_train_timesteps": 10.5}"#)),
        "num_train_timesteps"
    );
    assert_eq!(
        invalid_key(parse(r#"{"beta_schedule": 3}"#)),
        "beta_schedule"
    );
    assert_eq!(
        invalid_key(parse(r#"{"trained_betas": "none"}"#)),
        "trained_betas"
    );
    // Out of range.
    assert_eq!(
        invalid_key(parse(r#"{"num_train_timesteps": 0}"#)),
        "num_train_timesteps"
    );
    assert_eq!(
        invalid_key(parse(r#"{"steps_offset": -1}"#)),
        "steps_offset"
    );
    assert_eq!(invalid_key(parse(r#"{"beta_end": -0.02}"#)), "beta_end");
    assert_eq!(
        invalid_key(parse(r#"{"sample_max_value": 0}"#)),
        "sample_max_value"
    );
    assert_eq!(
        invalid_key(parse(r#"{"dynamic_thresholding_ratio": 1.5}"#)),
        "dynamic_thresholding_ratio"
    );
    assert_eq!(
        invalid_key(parse(
            r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}"#
        )),
        "trained_betas"
    );
    assert_eq!(
        invalid_key(parse(
            r#"{"num_train_timesteps": 2, "trained_betas": [0.1, 1.5]}"#
        )),
        "trained_betas"
    );
    assert_eq!(
        invalid_key(parse(
            r#"{"num_train_timesteps": 2, "trained_betas": [0.0, 0.5]}"#
        )),
        "trained_betas"
    );
    // Not JSON / not an object.
    assert!(matches!(parse("{"), Err(Error::InvalidJson { .. })));
    assert!(matches!(parse("[1]"), Err(Error::InvalidJson { .. })));
    // A linear schedule starting at beta 0 would divide by zero at t = 0.
    let zero_start = parse(r#"{"beta_start": 0.0}"#).unwrap();
    assert!(matches!(
        Scheduler::new(zero_start, 10),
        Err(Error::InvalidConfig { .. })
    ));

    // Accepted: nulls for optional keys, the other class's keys, private keys, trained betas.
    let ok = parse(
        r#"{"_class_name": "DDPMScheduler", "_diffusers_version": "0.42.1", "trained_betas": null,
            "set_alpha_to_one": false, "num_train_timesteps": 4, "steps_offset": 1}"#,
    )
    .unwrap();
    assert_eq!(ok.kind, SchedulerKind::Ddpm);
    // DDIM's key is hidden in a DDPM config (unread), and carried into DDIM.
    assert!(ok.given.as_ref().unwrap().contains_key("set_alpha_to_one"));
    assert!(!ok.with_kind(SchedulerKind::Ddim).unwrap().set_alpha_to_one);
    let trained = parse(r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2, 0.3]}"#).unwrap();
    let b = betas(&trained).unwrap();
    assert_eq!(b, vec![0.1f32 as f64, 0.2f32 as f64, 0.3f32 as f64]);

    // Steps out of range.
    let cfg = SchedulerConfig::ddim_default();
    for steps in [0, 1001] {
        assert!(
            matches!(
                set_timesteps(&cfg, steps),
                Err(Error::InvalidArgument { .. })
            ),
            "{steps}"
        );
        assert!(
            matches!(
                Scheduler::new(cfg.clone(), steps),
                Err(Error::InvalidArgument { .. })
            ),
            "{steps}"
        );
    }
    // diffusers lists t = 1000 here and then fails; we refuse to build it.
    let mut off = SchedulerConfig::ddpm_default();
    off.steps_offset = 1;
    assert_eq!(set_timesteps(&off, 1000).unwrap()[0], 1000);
    assert!(matches!(
        Scheduler::new(off, 1000),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn with_kind_converts_like_from_config() {
    let ddpm = SchedulerConfig::from_json(
        r#"{"_class_name": "DDPMScheduler", "variance_type": "learned_range", "clip_sample": false,
            "set_alpha_to_one": false, "timestep_spacing": "trailing"}"#,
    )
    .unwrap();
    let ddim = ddpm.clone().with_kind(SchedulerKind::Ddim).unwrap();
    assert_eq!(ddim.kind, SchedulerKind::Ddim);
    assert!(!ddim.clip_sample);
    assert_eq!(ddim.timestep_spacing, TimestepSpacing::Trailing);
    assert!(!ddim.set_alpha_to_one, "present in the JSON: carried");
    assert_eq!(
        ddim.variance_type,
        VarianceType::FixedSmall,
        "DDPM-only key dropped"
    );
    let back = ddim.with_kind(SchedulerKind::Ddpm).unwrap();
    assert!(back.set_alpha_to_one, "DDIM-only key dropped");
    assert_eq!(
        SchedulerConfig::ddpm_default()
            .with_kind(SchedulerKind::Ddim)
            .unwrap(),
        SchedulerConfig::ddim_default()
    );
}

#[test]
fn ddim_next_in_schedule_lands_on_the_next_timestep() {
    // trailing, T = 1000, N = 7: the list is 999, 856, 713, ... but t - T / N = t - 142.
    let mut cfg = SchedulerConfig::ddim_default();
    cfg.timestep_spacing = TimestepSpacing::Trailing;
    cfg.clip_sample = false;
    let default = Scheduler::new(cfg.clone(), 7).unwrap();
    cfg.ddim_prev_timestep = DdimPrevTimestep::NextInSchedule;
    let next = Scheduler::new(cfg, 7).unwrap();
    let ts = next.timesteps().to_vec();
    assert_eq!(ts, [999, 856, 713, 570, 428, 285, 142]);
    assert_eq!(default.prev_timestep(0), Some(857));
    assert_eq!(
        default.prev_timestep(6),
        Some(0),
        "diffusers' last step lands on t = 0, not the final alpha"
    );

    let shape = StepShape::new(1, 1, 2, 2);
    let x: Vec<f32> = vec![0.3, -1.2, 0.7, 2.0];
    let eps: Vec<f32> = vec![0.1, 0.5, -0.4, 1.1];
    let abar = next.alphas_cumprod();
    let mut differing = 0;
    for i in 0..ts.len() {
        let expected_prev = ts.get(i + 1).copied().unwrap_or(-1);
        assert_eq!(next.prev_timestep(i), Some(expected_prev));
        let a_t = abar[ts[i] as usize];
        let a_prev = if expected_prev >= 0 {
            abar[expected_prev as usize]
        } else {
            1.0
        };
        let mut ours = x.clone();
        next.step(i, shape, &eps, &mut ours, None, None, &mut [])
            .unwrap();
        let mut theirs = x.clone();
        default
            .step(i, shape, &eps, &mut theirs, None, None, &mut [])
            .unwrap();
        if default.prev_timestep(i) != Some(expected_prev) {
            assert_ne!(ours, theirs, "step {i}: the options should differ");
            differing += 1;
        } else {
            assert_eq!(ours, theirs, "step {i}");
        }
        // Deterministic DDIM to exactly the next listed timestep.
        let manual: Vec<f64> = x
            .iter()
            .zip(&eps)
            .map(|(&xi, &e)| {
                let x0 = (xi as f64 - (1.0 - a_t).sqrt() * e as f64) / a_t.sqrt();
                a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * e as f64
            })
            .collect();
        assert!(
            rel_l2(&ours, &manual) < 1e-6,
            "step {i}: {ours:?} vs {manual:?}"
        );
    }
    // diffusers steps to 857, 714, 571, 428, 286, 143, 0 (alphas_cumprod[0], not the final
    // alpha); only 428 is on the list.
    assert_eq!(differing, 6);
    println!(
        "NextInSchedule differs from diffusers' t - T / N at {differing} of {} steps",
        ts.len()
    );
}

#[test]
fn step_checks_every_buffer() {
    let mut cfg = SchedulerConfig::ddpm_default();
    cfg.thresholding = true;
    let s = Scheduler::new(cfg, 10).unwrap();
    let shape = StepShape::new(2, 3, 4, 4);
    let n = 2 * 3 * 16;
    let (m, z) = (vec![0.1f32; n], vec![0.2f32; n]);
    let mut x = vec![0.5f32; n];
    let mut scratch = vec![0.0f32; s.scratch_len(shape)];
    assert_eq!(scratch.len(), 48);
    assert!(s
        .step(0, shape, &m, &mut x, Some(&z), None, &mut scratch)
        .is_ok());
    let buf = |r: Result<(), Error>| matches!(r, Err(Error::BufferSize { .. }));
    assert!(buf(s.step(
        0,
        shape,
        &m[1..],
        &mut x,
        Some(&z),
        None,
        &mut scratch
    )));
    assert!(buf(s.step(
        0,
        shape,
        &m,
        &mut x[1..],
        Some(&z),
        None,
        &mut scratch
    )));
    assert!(buf(s.step(
        0,
        shape,
        &m,
        &mut x,
        Some(&z[1..]),
        None,
        &mut scratch
    )));
    assert!(buf(s.step(
        0,
        shape,
        &m,
        &mut x,
        Some(&z),
        Some(&mut [0.0; 3]),
        &mut scratch
    )));
    assert!(buf(s.step(
        0,
        shape,
        &m,
        &mut x,
        Some(&z),
        None,
        &mut scratch[1..]
    )));
    assert!(matches!(
        s.step(0, shape, &m, &mut x, None, None, &mut scratch),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        s.step(10, shape, &m, &mut x, Some(&z), None, &mut scratch),
        Err(Error::InvalidArgument { .. })
    ));
    let empty = StepShape::new(0, 3, 4, 4);
    assert!(s.step(0, empty, &[], &mut [], None, None, &mut []).is_err());
    // The last DDPM step (t = 0) draws no noise.
    assert!(!s.needs_noise(9));
    assert!(s
        .step(9, shape, &m, &mut x, None, None, &mut scratch)
        .is_ok());

    // Learned variance needs the doubled output.
    let mut lv = SchedulerConfig::ddpm_default();
    lv.variance_type = VarianceType::LearnedRange;
    let lv = Scheduler::new(lv, 10).unwrap();
    assert!(buf(lv.step(0, shape, &m, &mut x, Some(&z), None, &mut [])));
    let m2 = vec![0.1f32; 2 * n];
    assert!(lv
        .step(0, shape, &m2, &mut x, Some(&z), None, &mut [])
        .is_ok());

    // DDIM: noise only with eta > 0; a bad eta is an error, not NaN.
    let mut d = Scheduler::new(SchedulerConfig::ddim_default(), 10).unwrap();
    assert!(!d.needs_noise(0));
    assert!(
        d.step(0, shape, &m2, &mut x, None, None, &mut []).is_ok(),
        "2C output: first C channels"
    );
    d.set_eta(1.0);
    assert!(d.needs_noise(0));
    assert!(matches!(
        d.step(0, shape, &m, &mut x, None, None, &mut []),
        Err(Error::InvalidArgument { .. })
    ));
    d.set_eta(f64::NAN);
    assert!(matches!(
        d.step(0, shape, &m, &mut x, Some(&z), None, &mut []),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn add_noise_and_velocity() {
    let s = Scheduler::new(SchedulerConfig::ddpm_default(), 10).unwrap();
    let x0 = [0.5f32, -0.25, 1.0, 0.0];
    let z = [1.0f32, 2.0, -1.0, 0.5];
    let t = [0i64, 999];
    let (mut xt, mut v) = ([0.0f32; 4], [0.0f32; 4]);
    s.add_noise(&x0, &z, &t, &mut xt).unwrap();
    s.velocity(&x0, &z, &t, &mut v).unwrap();
    for k in 0..4 {
        let a = s.alphas_cumprod()[t[k / 2] as usize];
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        assert!((xt[k] as f64 - (sa * x0[k] as f64 + sb * z[k] as f64)).abs() < 1e-6);
        assert!((v[k] as f64 - (sa * z[k] as f64 - sb * x0[k] as f64)).abs() < 1e-6);
    }
    assert!(s.add_noise(&x0, &z, &[1000, 0], &mut xt).is_err());
    assert!(s.add_noise(&x0, &z, &[0, 0, 0], &mut xt).is_err());
    assert!(s.velocity(&x0, &z[..3], &t, &mut v).is_err());
}

#[test]
fn gaussian_noise_is_standard_normal_and_chunk_independent() {
    let g = GaussianNoise::new(42);
    let n = 1_000_000;
    let mut z = vec![0.0f32; n];
    g.fill(3, &mut z);
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    println!("noise mean {mean:.2e}, variance {var:.5}");
    assert!(
        mean.abs() < 5e-3 && (var - 1.0).abs() < 5e-3,
        "mean {mean}, var {var}"
    );
    let within_1 = z.iter().filter(|v| v.abs() < 1.0).count() as f64 / n as f64;
    assert!((within_1 - 0.682_689).abs() < 3e-3, "{within_1}");

    // Chunked fills (odd starts and lengths included) give the same values.
    let mut chunked = vec![0.0f32; n];
    let mut start = 0;
    for (k, len) in [1usize, 2, 3, 1000, 7, 99_999].iter().cycle().enumerate() {
        if start >= n {
            break;
        }
        let end = (start + len + k % 3).min(n);
        g.fill_range(3, start as u64, &mut chunked[start..end]);
        start = end;
    }
    assert_eq!(chunked, z);

    // Deterministic per (seed, stream); streams and seeds differ.
    let mut again = vec![0.0f32; 1000];
    GaussianNoise::new(42).fill(3, &mut again);
    assert_eq!(again[..], z[..1000]);
    let mut other = vec![0.0f32; 1000];
    g.fill(4, &mut other);
    assert_ne!(other, again);
    GaussianNoise::new(43).fill(3, &mut other);
    assert_ne!(other, again);
}

#[test]
fn ddim_use_clipped_model_output_recomputes_epsilon() {
    let mut s = Scheduler::new(SchedulerConfig::ddim_default(), 10).unwrap();
    s.set_use_clipped_model_output(true);
    let shape = StepShape::new(1, 1, 1, 2);
    let (x, eps) = ([3.0f32, -0.2], [-1.5f32, 0.1]);
    let i = 2;
    let t = s.timesteps()[i] as usize;
    let prev = s.prev_timestep(i).unwrap() as usize;
    let (a_t, a_prev) = (s.alphas_cumprod()[t], s.alphas_cumprod()[prev]);
    let mut ours = x;
    s.step(i, shape, &eps, &mut ours, None, None, &mut [])
        .unwrap();
    let manual: Vec<f64> = x
        .iter()
        .zip(&eps)
        .map(|(&xi, &e)| {
            let x0 = ((xi as f64 - (1.0 - a_t).sqrt() * e as f64) / a_t.sqrt()).clamp(-1.0, 1.0);
            let e_clipped = (xi as f64 - a_t.sqrt() * x0) / (1.0 - a_t).sqrt();
            a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * e_clipped
        })
        .collect();
    assert!(rel_l2(&ours, &manual) < 1e-6, "{ours:?} vs {manual:?}");
    let mut plain = x;
    s.set_use_clipped_model_output(false);
    s.step(i, shape, &eps, &mut plain, None, None, &mut [])
        .unwrap();
    assert_ne!(
        plain, ours,
        "the first element's x0 is clipped, so epsilon changes"
    );
}
