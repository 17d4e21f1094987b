//! The score-SDE VE, consistency-model, LCM and TCD schedulers against diffusers 0.42
//! (`tests/fixtures/sched_b/`, made by `tests/tools/make_sched_b_fixtures.py`): `set_timesteps`
//! for every config and several step counts (and the counts diffusers refuses, refused here
//! too), chains of single steps with fixed model outputs and injected noise (per step <= 1e-5
//! relative L2), and whole runs on the tiny UNets with injected x_T and noise, through the one
//! front end and through `sample --scheduler-config` (<= 1e-3).

mod common;

use common::{fixtures_dir, read_json, rel_l2, replay_x0, TensorFile};
use tinydiffusion::sampler::{SampleOptions, Sampler, SamplerSpec, StepInfo};
use tinydiffusion::schedule::{
    ConsistencyScheduler, LcmScheduler, SchedulerConfig, SchedulerKind, ScoreVeScheduler, StepShape,
};
use tinydiffusion::Model;

fn fixtures() -> (serde_json::Value, TensorFile) {
    let dir = fixtures_dir().join("sched_b");
    (
        read_json(dir.join("cases.json")),
        TensorFile::open(dir.join("cases.safetensors")),
    )
}

fn config(case: &serde_json::Value) -> SchedulerConfig {
    SchedulerConfig::from_json(case["scheduler_json"].as_str().unwrap()).unwrap()
}

const GRID: [usize; 9] = [1, 2, 3, 4, 7, 10, 25, 50, 500];

#[test]
fn schedules_match_diffusers() {
    let (meta, t) = fixtures();
    let cases = meta["schedules"].as_array().unwrap();
    assert!(cases.len() >= 80, "{}", cases.len());
    let mut worst = 0.0f64;
    let mut seen = std::collections::BTreeMap::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let cfg = config(case);
        if case["custom_timesteps"].is_null() {
            seen.entry(case["config"].as_str().unwrap().to_string())
                .or_insert_with(|| (cfg.clone(), Vec::new()))
                .1
                .push(steps);
        }
        let ts = t.f64s(&format!("{name}.timesteps"));
        let init = case["init_noise_sigma"].as_f64().unwrap();
        match cfg.kind {
            SchedulerKind::ScoreSdeVe => {
                let s = ScoreVeScheduler::new(cfg, steps).unwrap();
                let times: Vec<f64> = s.times().iter().map(|&x| x as f64).collect();
                assert_eq!(times, ts, "{name}: times (bit-exact float32)");
                let e = rel_l2(s.model_sigmas(), &t.f64s(&format!("{name}.sigmas")));
                // g of each step from diffusers' discrete sigmas, indexed as step_pred does.
                let discrete = t.f32s(&format!("{name}.discrete_sigmas"));
                let g: Vec<f64> = ts
                    .iter()
                    .map(|&tt| {
                        let j = (tt as f32 * (steps - 1) as f32) as usize;
                        let prev = if j == 0 { 0.0 } else { discrete[j - 1] };
                        ((discrete[j] * discrete[j] - prev * prev) as f64).sqrt()
                    })
                    .collect();
                let eg = rel_l2(s.diffusions(), &g);
                // g = sqrt(sigma_j^2 - sigma_(j-1)^2) cancels: a 1-ulp difference of float32
                // exp between libm and torch grows to ~1e-6 at 500 steps.
                assert!(
                    e <= 1e-6 && eg <= 1e-5,
                    "{name}: sigmas {e:.2e}, g {eg:.2e}"
                );
                assert_eq!(s.init_noise_sigma(), init);
                worst = worst.max(e).max(eg);
            }
            SchedulerKind::CmStochasticIterative => {
                let s = match case["custom_timesteps"].as_array() {
                    Some(ts) => {
                        let ts: Vec<i64> = ts.iter().map(|v| v.as_i64().unwrap()).collect();
                        ConsistencyScheduler::with_timesteps(cfg, &ts).unwrap()
                    }
                    None => ConsistencyScheduler::new(cfg, steps).unwrap(),
                };
                let e = rel_l2(s.model_timesteps(), &ts);
                let es = rel_l2(s.sigmas(), &t.f64s(&format!("{name}.sigmas")));
                assert!(
                    e <= 1e-12 && es <= 1e-7,
                    "{name}: timesteps {e:.2e}, sigmas {es:.2e}"
                );
                assert_eq!(s.init_noise_sigma(), init);
                worst = worst.max(e).max(es);
            }
            SchedulerKind::Lcm | SchedulerKind::Tcd => {
                let s = LcmScheduler::new(cfg, steps, 0.3).unwrap();
                let ours: Vec<f64> = s.timesteps().iter().map(|&x| x as f64).collect();
                assert_eq!(ours, ts, "{name}: timesteps");
            }
            other => panic!("{name}: unexpected class {other:?}"),
        }
    }
    // What diffusers refuses (too many steps for T or original_inference_steps) we refuse.
    for (config_name, (cfg, ok)) in &seen {
        for steps in GRID.into_iter().filter(|s| !ok.contains(s)) {
            let refused = match cfg.kind {
                SchedulerKind::ScoreSdeVe => ScoreVeScheduler::new(cfg.clone(), steps).is_err(),
                SchedulerKind::CmStochasticIterative => {
                    ConsistencyScheduler::new(cfg.clone(), steps).is_err()
                }
                _ => LcmScheduler::new(cfg.clone(), steps, 0.3).is_err(),
            };
            assert!(
                refused,
                "{config_name} at {steps} steps: diffusers refuses it"
            );
        }
    }
    println!("{} schedules, worst rel L2 {worst:.2e}", cases.len());
}

#[test]
fn step_chains_match_diffusers() {
    let (meta, t) = fixtures();
    let chains = meta["chains"].as_array().unwrap();
    assert!(chains.len() >= 20);
    let shape = StepShape::new(2, 3, 4, 4);
    let mut worst = (0.0f64, String::new());
    let mut failures = Vec::new();
    for case in chains {
        let name = case["name"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let evaluations = case["evaluations"].as_u64().unwrap() as usize;
        let cfg = config(case);
        let gamma = case["gamma"].as_f64();
        let ve = (cfg.kind == SchedulerKind::ScoreSdeVe)
            .then(|| ScoreVeScheduler::new(cfg.clone(), steps).unwrap());
        let cm = (cfg.kind == SchedulerKind::CmStochasticIterative)
            .then(|| ConsistencyScheduler::new(cfg.clone(), steps).unwrap());
        let lcm = matches!(cfg.kind, SchedulerKind::Lcm | SchedulerKind::Tcd)
            .then(|| LcmScheduler::new(cfg.clone(), steps, gamma.unwrap_or(0.0)).unwrap());
        for k in 0..evaluations {
            let key = format!("{name}.{k}");
            let mut x = t.f32s(&format!("{key}.sample"));
            let mo = t.f32s(&format!("{key}.model_output"));
            let z_key = format!("{key}.noise");
            let z = t.has(&z_key).then(|| t.f32s(&z_key));
            let mut es = 0.0;
            if let Some(s) = &ve {
                let draws = s.correct_steps() + 1;
                let z = z.as_deref().expect("every VE step draws");
                if k % draws + 1 < draws {
                    s.step_correct(shape, &mo, &mut x, z).unwrap();
                } else {
                    s.step_pred(k / draws, shape, &mo, &mut x, z).unwrap();
                }
            } else if let Some(s) = &cm {
                let d = s.input_divisor(k);
                let scaled: Vec<f32> = x.iter().map(|&v| (v as f64 / d) as f32).collect();
                es = rel_l2(&scaled, &t.f64s(&format!("{key}.scaled")));
                assert_eq!(s.needs_noise(k), z.is_some(), "{key}: draws");
                s.step(k, shape, &mo, &mut x, z.as_deref()).unwrap();
            } else if let Some(s) = &lcm {
                assert_eq!(s.needs_noise(k), z.is_some(), "{key}: draws");
                s.step(k, shape, &mo, &mut x, z.as_deref()).unwrap();
            }
            let e = rel_l2(&x, &t.f64s(&format!("{key}.out"))).max(es);
            if e > worst.0 {
                worst = (e, key.clone());
            }
            if e.is_nan() || e > 1e-5 {
                failures.push(format!("{key}: {e:.3e}"));
            }
        }
    }
    println!(
        "{} chains, worst step rel L2 {:.2e} ({})",
        chains.len(),
        worst.0,
        worst.1
    );
    assert!(
        failures.is_empty(),
        "step failures:\n{}",
        failures.join("\n")
    );
}

struct Run {
    name: String,
    model: String,
    case: serde_json::Value,
    steps: usize,
    labels: Option<Vec<i64>>,
    gamma: Option<f64>,
    /// ConsistencyModelPipeline's `timesteps` (built by hand: the front end takes a count).
    custom: Option<Vec<i64>>,
    x_t: Vec<f32>,
    noise: Option<Vec<f32>>,
    traj: Vec<f32>,
}

fn runs() -> Vec<Run> {
    let (meta, t) = fixtures();
    meta["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let name = case["name"].as_str().unwrap().to_string();
            let rows = case["noise_rows"].as_u64().unwrap();
            Run {
                model: case["model"].as_str().unwrap().to_string(),
                steps: case["num_inference_steps"].as_u64().unwrap() as usize,
                labels: case["class_labels"]
                    .as_array()
                    .map(|l| l.iter().map(|v| v.as_i64().unwrap()).collect()),
                gamma: case["gamma"].as_f64(),
                custom: case["custom_timesteps"]
                    .as_array()
                    .map(|l| l.iter().map(|v| v.as_i64().unwrap()).collect()),
                x_t: t.f32s(&format!("{name}.x_T")),
                noise: (rows > 0).then(|| t.f32s(&format!("{name}.noise"))),
                traj: t.f32s(&format!("{name}.traj")),
                case: case.clone(),
                name,
            }
        })
        .collect()
}

fn spec_of(run: &Run) -> SamplerSpec {
    let spec = SamplerSpec::new(None).steps(run.steps);
    match run.gamma {
        Some(g) => spec.eta(g),
        None => spec,
    }
}

#[test]
fn sampling_runs_match_diffusers() {
    let all = runs();
    assert!(all.len() >= 10);
    let mut failures = Vec::new();
    for run in &all {
        let model = Model::load(fixtures_dir().join(&run.model)).unwrap();
        let sampler: Sampler = match &run.custom {
            Some(ts) => ConsistencyScheduler::with_timesteps(config(&run.case), ts)
                .unwrap()
                .into(),
            None => spec_of(run).build(&config(&run.case)).unwrap(),
        };
        let n = run.x_t.len();
        assert_eq!(
            sampler.noise_rows(),
            run.noise.as_ref().map_or(0, |z| z.len() / n),
            "{}: noise rows",
            run.name
        );
        let mut ws = vec![0.0f32; sampler.workspace_len(&model, 2, false)];
        let mut out = vec![0.0f32; n];
        let opts = SampleOptions {
            initial_noise: Some(&run.x_t),
            step_noise: run.noise.as_deref(),
            class_labels: run.labels.as_deref(),
            ..SampleOptions::new(2, 0)
        };
        let mut per_step = Vec::new();
        let mut cb = |s: &StepInfo<'_>| {
            let k = s.index + 1;
            per_step.push(rel_l2(s.sample, &run.traj[k * n..(k + 1) * n]));
        };
        sampler
            .sample(&model, &mut ws, &opts, &mut out, Some(&mut cb))
            .unwrap();
        assert_eq!(per_step.len(), run.steps, "{}: steps reported", run.name);
        let last = run.traj.len() - n;
        let err = rel_l2(&out, &run.traj[last..last + n]);
        let worst_step = per_step.iter().cloned().fold(0.0, f64::max);
        println!(
            "{:<32} final rel L2 {err:.2e}, worst step {worst_step:.2e}",
            run.name
        );
        if !(err <= 1e-3 && worst_step <= 1e-3) {
            failures.push(format!(
                "{}: {err:.3e} (worst step {worst_step:.3e})",
                run.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "run failures:\n{}",
        failures.join("\n")
    );
}

/// `sample --model TINY --scheduler-config FILE` replays the runs: the file's class and options
/// replace the folder's (which has none), `--eta` is TCD's gamma, `--class-label` the labels.
#[test]
fn cli_scheduler_config_replays_runs() {
    let bin = env!("CARGO_BIN_EXE_sample");
    let tmp = std::env::temp_dir().join(format!("td-sched-b-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let mut failures = Vec::new();
    for (i, run) in runs()
        .iter()
        .enumerate()
        .filter(|(_, r)| r.custom.is_none())
    {
        let (c, h, w) = Model::load(fixtures_dir().join(&run.model))
            .unwrap()
            .input_shape();
        let dir = tmp.join(format!("run{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg_path = dir.join("scheduler.json");
        std::fs::write(&cfg_path, run.case["scheduler_json"].as_str().unwrap()).unwrap();
        let n = run.x_t.len();
        let write = |name: &str, data: &[f32], shape: Vec<usize>| {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
                .unwrap();
            let path = dir.join(format!("{name}.safetensors"));
            safetensors::serialize_to_file([(name, view)], None, &path).unwrap();
            path
        };
        let x_t = write("x_T", &run.x_t, vec![2, c, h, w]);
        let out = dir.join("x_0.safetensors");
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--model", fixtures_dir().join(&run.model).to_str().unwrap()])
            .args(["--scheduler-config", cfg_path.to_str().unwrap()])
            .args(["--steps", &run.steps.to_string(), "--batch", "2", "--quiet"])
            .args(["--init-noise", x_t.to_str().unwrap()])
            .args(["--save-tensor", out.to_str().unwrap()])
            .args(["--out", "none"]);
        if let Some(z) = &run.noise {
            let p = write("noise", z, vec![z.len() / n, 2, c, h, w]);
            cmd.args(["--step-noise", p.to_str().unwrap()]);
        }
        if let Some(g) = run.gamma {
            cmd.args(["--eta", &g.to_string()]);
        }
        if let Some(l) = &run.labels {
            let l: Vec<String> = l.iter().map(|v| v.to_string()).collect();
            cmd.args(["--class-label", &l.join(",")]);
        }
        let got = replay_x0(&mut cmd, &out, &run.name);
        let last = run.traj.len() - n;
        let err = rel_l2(&got, &run.traj[last..last + n]);
        println!("cli {:<28} final rel L2 {err:.2e}", run.name);
        if err.is_nan() || err > 1e-3 {
            failures.push(format!("{}: {err:.3e}", run.name));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        failures.is_empty(),
        "cli failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn names_defaults_and_bad_values() {
    use tinydiffusion::sampler::{default_steps, SamplerKind};
    let ddpm = SchedulerConfig::ddpm_default();
    for (name, class) in [
        ("sde-ve", "ScoreSdeVeScheduler"),
        ("score-sde-ve", "ScoreSdeVeScheduler"),
        ("ScoreSdeVeScheduler", "ScoreSdeVeScheduler"),
        ("cm", "CMStochasticIterativeScheduler"),
        ("consistency", "CMStochasticIterativeScheduler"),
        (
            "CMStochasticIterativeScheduler",
            "CMStochasticIterativeScheduler",
        ),
        ("lcm", "LCMScheduler"),
        ("LCMScheduler", "LCMScheduler"),
        ("tcd", "TCDScheduler"),
        ("TCDScheduler", "TCDScheduler"),
    ] {
        let spec = SamplerSpec::named(name).unwrap_or_else(|| panic!("{name}"));
        let kind = spec.kind.unwrap();
        assert_eq!(kind.class().unwrap().class_name(), class, "{name}");
        let s = spec.build(&ddpm).unwrap();
        assert_eq!(s.kind(), kind);
    }
    assert_eq!(default_steps(SamplerKind::ScoreSdeVe, 2000), 2000);
    assert_eq!(default_steps(SamplerKind::Consistency, 40), 1);
    assert_eq!(default_steps(SamplerKind::Lcm, 1000), 4);
    assert_eq!(default_steps(SamplerKind::Tcd, 1000), 4);
    // The VE class's own config: 2000 steps by default, as ScoreSdeVePipeline.
    let ve = SchedulerConfig::from_json(r#"{"_class_name": "ScoreSdeVeScheduler"}"#).unwrap();
    let s = SamplerSpec::new(None).build(&ve).unwrap();
    assert_eq!(
        (s.num_steps(), s.noise_rows(), s.model_evaluations()),
        (2000, 4000, 4000)
    );
    // Bad values name their key.
    let key_of = |json: &str| match SchedulerConfig::from_json(json) {
        Err(tinydiffusion::Error::UnsupportedConfig { key, .. })
        | Err(tinydiffusion::Error::InvalidConfig { key, .. }) => key,
        other => panic!("{json}: {other:?}"),
    };
    for (json, key) in [
        (
            r#"{"_class_name": "ScoreSdeVeScheduler", "snr": "x"}"#,
            "snr",
        ),
        (
            r#"{"_class_name": "ScoreSdeVeScheduler", "snr": -1}"#,
            "snr",
        ),
        (
            r#"{"_class_name": "ScoreSdeVeScheduler", "sigma_min": 0}"#,
            "sigma_min",
        ),
        (
            r#"{"_class_name": "ScoreSdeVeScheduler", "sampling_eps": 2}"#,
            "sampling_eps",
        ),
        (
            r#"{"_class_name": "ScoreSdeVeScheduler", "correct_steps": -1}"#,
            "correct_steps",
        ),
        (
            r#"{"_class_name": "CMStochasticIterativeScheduler", "rho": 0}"#,
            "rho",
        ),
        (
            r#"{"_class_name": "CMStochasticIterativeScheduler", "clip_denoised": 1}"#,
            "clip_denoised",
        ),
        (
            r#"{"_class_name": "LCMScheduler", "original_inference_steps": 0}"#,
            "original_inference_steps",
        ),
        (
            r#"{"_class_name": "LCMScheduler", "timestep_scaling": null}"#,
            "timestep_scaling",
        ),
        (
            r#"{"_class_name": "TCDScheduler", "beta_schedule": "sigmoid"}"#,
            "beta_schedule",
        ),
        // (TCD's `thresholding` is accepted and unread, as in diffusers 0.42; LCM runs it.)
        (
            r#"{"_class_name": "TCDScheduler", "thresholding": true, "dynamic_thresholding_ratio": 2}"#,
            "dynamic_thresholding_ratio",
        ),
    ] {
        assert_eq!(key_of(json), key, "{json}");
    }
    // Another class's option is hidden in diffusers (kept, never read): ignored here too.
    for json in [
        r#"{"_class_name": "ScoreSdeVeScheduler", "beta_start": 0.1}"#,
        r#"{"_class_name": "CMStochasticIterativeScheduler", "prediction_type": "epsilon"}"#,
        r#"{"_class_name": "LCMScheduler", "snr": 0.1}"#,
    ] {
        let cfg = SchedulerConfig::from_json(json).unwrap();
        let mut plain = SchedulerConfig::default_for(cfg.kind);
        plain.given = cfg.given.clone();
        assert_eq!(cfg, plain, "{json}");
    }
    // Steps past what the schedule allows, sigma_max below sigma_min, TCD gamma outside [0, 1].
    let lcm = SchedulerConfig::from_json(r#"{"_class_name": "LCMScheduler"}"#).unwrap();
    assert!(SamplerSpec::new(None).steps(51).build(&lcm).is_err());
    let tcd = lcm.clone().with_kind(SchedulerKind::Tcd).unwrap();
    assert!(SamplerSpec::new(None).eta(1.5).build(&tcd).is_err());
    let cm =
        SchedulerConfig::from_json(r#"{"_class_name": "CMStochasticIterativeScheduler"}"#).unwrap();
    assert!(SamplerSpec::new(None).steps(41).build(&cm).is_err());
    let inverted = SchedulerConfig::from_json(
        r#"{"_class_name": "CMStochasticIterativeScheduler", "sigma_min": 5, "sigma_max": 1}"#,
    )
    .unwrap();
    assert!(SamplerSpec::new(None).build(&inverted).is_err());
}

/// `--scheduler-config` errors name the flag, the file and the offending key.
#[test]
fn cli_scheduler_config_errors() {
    let bin = env!("CARGO_BIN_EXE_sample");
    let tmp = std::env::temp_dir().join(format!("td-sched-b-cli-err-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let bad_key = tmp.join("bad_key.json");
    std::fs::write(&bad_key, r#"{"_class_name": "LCMScheduler", "gamma": 0.3}"#).unwrap();
    let bad_json = tmp.join("bad.json");
    std::fs::write(&bad_json, "{").unwrap();
    for (path, needle) in [
        (tmp.join("missing.json"), "--scheduler-config"),
        (bad_key, "gamma"),
        (bad_json, "invalid JSON"),
    ] {
        let out = std::process::Command::new(bin)
            .args([
                "--model",
                fixtures_dir().join("tiny-rgb16").to_str().unwrap(),
            ])
            .args(["--scheduler-config", path.to_str().unwrap()])
            .args(["--batch", "1", "--quiet", "--out", "none"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}", path.display());
        assert!(
            err.contains(needle) && err.contains("--scheduler-config"),
            "{}: {err}",
            path.display()
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
