//! `--scheduler NAME` against diffusers 0.42's `NewClass.from_config(folder_scheduler.config)`
//! (`tests/fixtures/overrides/`, made by `tests/tools/make_override_fixtures.py`): for each
//! (folder `scheduler_config.json`, new class) pair, [`SchedulerConfig::with_kind`] builds the
//! config diffusers builds (the folder's given keys the new class takes, its defaults for the
//! rest), the same timesteps and sigmas, and the same short sampling run with the tiny-rgb16
//! UNet, through the front end and through the `sample` binary (<= 1e-3).

mod common;

use common::{fixtures_dir, read_json, rel_l2, replay_x0, TensorFile};
use tinydiffusion::sampler::{SampleOptions, SamplerSpec};
use tinydiffusion::schedule::{Scheduler, SchedulerConfig, SchedulerKind, SigmaScheduler};
use tinydiffusion::Model;

struct Case {
    name: String,
    folder_json: String,
    class: SchedulerKind,
    steps: usize,
    converted_json: String,
    noise: bool,
    init_noise_sigma: f64,
}

fn cases() -> (Vec<Case>, serde_json::Value, TensorFile) {
    let dir = fixtures_dir().join("overrides");
    let meta = read_json(dir.join("cases.json"));
    let cases = meta["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().into(),
            folder_json: c["folder_json"].as_str().unwrap().into(),
            class: SchedulerKind::from_class_name(c["scheduler"].as_str().unwrap()).unwrap(),
            steps: c["num_inference_steps"].as_u64().unwrap() as usize,
            converted_json: c["converted_json"].as_str().unwrap().into(),
            noise: c["noise"].as_bool().unwrap(),
            init_noise_sigma: c["init_noise_sigma"].as_f64().unwrap(),
        })
        .collect();
    (cases, meta, TensorFile::open(dir.join("cases.safetensors")))
}

fn converted(case: &Case) -> SchedulerConfig {
    SchedulerConfig::from_json(&case.folder_json)
        .unwrap()
        .with_kind(case.class)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

/// The options diffusers' converted scheduler runs with: its `to_json_string` less the hidden
/// keys (those its `__init__` does not take, which it keeps but never reads, but for the
/// sigma ramps' `sigma_min` / `sigma_max`).
fn diffusers_effective(case: &Case) -> SchedulerConfig {
    let text = case.converted_json.replace("-Infinity", "\"-Infinity\"");
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let keys = case.class.init_keys();
    let kept: serde_json::Map<_, _> = all
        .into_iter()
        .filter(|(k, _)| {
            let hidden_read =
                case.class.reads_sigma_ends() && matches!(k.as_str(), "sigma_min" | "sigma_max");
            k == "_class_name" || keys.contains(&k.as_str()) || hidden_read
        })
        .collect();
    SchedulerConfig::from_json(&serde_json::Value::Object(kept).to_string()).unwrap()
}

#[test]
fn with_kind_builds_what_from_config_builds() {
    let (cases, meta, t) = cases();
    assert!(cases.len() >= 20);
    let mut worst = 0.0f64;
    for case in &cases {
        let mut ours = converted(case);
        let mut theirs = diffusers_effective(case);
        ours.given = None;
        theirs.given = None;
        assert_eq!(ours, theirs, "{}: converted config", case.name);
        // The converted scheduler saved by diffusers (hidden keys and all) reads the same.
        let mut saved = SchedulerConfig::from_json(&case.converted_json)
            .unwrap_or_else(|e| panic!("{}: saved config: {e}", case.name));
        saved.given = None;
        assert_eq!(saved, theirs, "{}: saved converted config", case.name);
        let ts = t.f64s(&format!("{}.timesteps", case.name));
        let sig_key = format!("{}.sigmas", case.name);
        if case.class.is_sigma() {
            let s = SigmaScheduler::new(converted(case), case.steps).unwrap();
            assert_eq!(s.timesteps().len(), ts.len(), "{}", case.name);
            for (&a, &b) in s.timesteps().iter().zip(&ts) {
                assert!(
                    (a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{}",
                    case.name
                );
            }
            // (Heun and KDPM2 list their sigmas per evaluation: covered by the runs.)
            let per_eval = matches!(
                case.class,
                SchedulerKind::Heun | SchedulerKind::Kdpm2 | SchedulerKind::Kdpm2Ancestral
            );
            if t.has(&sig_key) && !per_eval {
                let e = rel_l2(s.sigmas(), &t.f64s(&sig_key));
                assert!(e <= 1e-6, "{}: sigmas {e:.2e}", case.name);
                worst = worst.max(e);
            }
            let ei = (s.init_noise_sigma() - case.init_noise_sigma).abs() / case.init_noise_sigma;
            assert!(ei <= 1e-6, "{}: init_noise_sigma {ei:.2e}", case.name);
        } else {
            let s = Scheduler::new(converted(case), case.steps).unwrap();
            let want: Vec<i64> = ts.iter().map(|&x| x as i64).collect();
            assert_eq!(s.timesteps(), &want[..], "{}", case.name);
        }
    }
    // The pairs diffusers refuses (a carried value the new class does not run) are errors
    // naming the key.
    for r in meta["refused"].as_array().unwrap() {
        let class = SchedulerKind::from_class_name(r["scheduler"].as_str().unwrap()).unwrap();
        let err = SchedulerConfig::from_json(r["folder_json"].as_str().unwrap())
            .unwrap()
            .with_kind(class)
            .unwrap_err();
        assert!(
            err.to_string().contains("algorithm_type"),
            "{}: {err}",
            r["name"]
        );
    }
    println!("{} overrides, worst sigma rel L2 {worst:.2e}", cases.len());
}

#[test]
fn override_runs_match_diffusers() {
    let model = Model::load(fixtures_dir().join("tiny-rgb16")).unwrap();
    let (cases, _, t) = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let x_t = t.f32s(&format!("{}.x_T", case.name));
        let traj = t.f32s(&format!("{}.traj", case.name));
        let noise = case.noise.then(|| t.f32s(&format!("{}.noise", case.name)));
        let n = x_t.len();
        let sampler = SamplerSpec::new(None)
            .steps(case.steps)
            .build(&converted(case))
            .unwrap();
        let mut ws = vec![0.0f32; sampler.workspace_len(&model, 1, false)];
        let mut out = vec![0.0f32; n];
        let opts = SampleOptions {
            initial_noise: Some(&x_t),
            step_noise: noise.as_deref(),
            ..SampleOptions::new(1, 0)
        };
        sampler
            .sample(&model, &mut ws, &opts, &mut out, None)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let last = traj.len() - n;
        let err = rel_l2(&out, &traj[last..]);
        println!("{:<24} final rel L2 {err:.2e}", case.name);
        if err.is_nan() || err > 1e-3 {
            failures.push(format!("{}: {err:.3e}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `sample --model DIR --scheduler CLASS` on a folder holding the case's scheduler config.
#[test]
fn cli_scheduler_flag_matches_diffusers() {
    let bin = env!("CARGO_BIN_EXE_sample");
    let src = fixtures_dir().join("tiny-rgb16");
    let tmp = std::env::temp_dir().join(format!("td-override-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (cases, _, t) = cases();
    let mut failures = Vec::new();
    // Every third case (each class at least once across the set) keeps the test short.
    for case in cases.iter().step_by(3) {
        let dir = tmp.join(&case.name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("scheduler_config.json"), &case.folder_json).unwrap();
        let write = |name: &str, data: &[f32], shape: Vec<usize>| {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
                .unwrap();
            let path = dir.join(format!("{name}.safetensors"));
            safetensors::serialize_to_file([(name, view)], None, &path).unwrap();
            path
        };
        let x_t_data = t.f32s(&format!("{}.x_T", case.name));
        let n = x_t_data.len();
        let x_t = write("x_T", &x_t_data, vec![1, 3, 16, 16]);
        let out = dir.join("x_0.safetensors");
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--model", dir.to_str().unwrap()])
            .args(["--scheduler", case.class.class_name()])
            .args([
                "--steps",
                &case.steps.to_string(),
                "--batch",
                "1",
                "--quiet",
            ])
            .args(["--init-noise", x_t.to_str().unwrap()])
            .args(["--save-tensor", out.to_str().unwrap()])
            .args(["--out", dir.join("x.png").to_str().unwrap()]);
        if case.noise {
            let z = t.f32s(&format!("{}.noise", case.name));
            let p = write("noise", &z, vec![z.len() / n, 1, 3, 16, 16]);
            cmd.args(["--step-noise", p.to_str().unwrap()]);
        }
        let got = replay_x0(&mut cmd, &out, &case.name);
        let traj = t.f32s(&format!("{}.traj", case.name));
        let err = rel_l2(&got, &traj[traj.len() - n..]);
        println!("cli {:<24} final rel L2 {err:.2e}", case.name);
        if err.is_nan() || err > 1e-3 {
            failures.push(format!("{}: {err:.3e}", case.name));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A key the class's `__init__` does not take is hidden in diffusers: kept in the config, never
/// read (but the ramps' `sigma_min` / `sigma_max`). Every such key, with each of a few values,
/// is either refused with an error naming it or changes nothing: the same timesteps, sigmas,
/// input scaling and steps, bit for bit, as the class's defaults.
#[test]
fn keys_a_class_does_not_take_change_nothing() {
    use serde_json::json;
    use tinydiffusion::schedule::StepShape;
    let values: Vec<(&str, Vec<serde_json::Value>)> = vec![
        ("beta_start", vec![json!(0.002)]),
        ("beta_end", vec![json!(0.03)]),
        (
            "beta_schedule",
            vec![json!("scaled_linear"), json!("squaredcos_cap_v2")],
        ),
        (
            "variance_type",
            vec![json!("fixed_large"), json!("learned_range")],
        ),
        ("clip_sample", vec![json!(true), json!(false)]),
        ("clip_sample_range", vec![json!(0.5)]),
        (
            "prediction_type",
            vec![json!("v_prediction"), json!("sample")],
        ),
        ("thresholding", vec![json!(true)]),
        ("dynamic_thresholding_ratio", vec![json!(0.5)]),
        ("sample_max_value", vec![json!(0.5)]),
        (
            "timestep_spacing",
            vec![json!("leading"), json!("trailing")],
        ),
        ("steps_offset", vec![json!(1)]),
        ("rescale_betas_zero_snr", vec![json!(true)]),
        ("set_alpha_to_one", vec![json!(true), json!(false)]),
        ("use_karras_sigmas", vec![json!(true)]),
        ("use_exponential_sigmas", vec![json!(true)]),
        ("use_beta_sigmas", vec![json!(true)]),
        ("use_lu_lambdas", vec![json!(true)]),
        ("use_flow_sigmas", vec![json!(true)]),
        ("flow_shift", vec![json!(3.0)]),
        ("timestep_type", vec![json!("continuous")]),
        ("final_sigmas_type", vec![json!("sigma_min")]),
        ("interpolation_type", vec![json!("linear")]),
        ("solver_order", vec![json!(1), json!(3)]),
        (
            "algorithm_type",
            vec![json!("dpmsolver"), json!("sde-dpmsolver++")],
        ),
        ("solver_type", vec![json!("heun"), json!("bh1")]),
        ("lower_order_final", vec![json!(true), json!(false)]),
        ("euler_at_final", vec![json!(true)]),
        ("lambda_min_clipped", vec![json!(-5.0)]),
        ("predict_x0", vec![json!(false)]),
        ("disable_corrector", vec![json!([0])]),
        ("skip_prk_steps", vec![json!(true), json!(false)]),
        ("original_inference_steps", vec![json!(10)]),
        ("timestep_scaling", vec![json!(5.0)]),
    ];
    let shape = StepShape::new(1, 1, 2, 2);
    // Timesteps, sigmas, input divisors and the final sample of 6 steps with fixed outputs.
    let trace = |cfg: SchedulerConfig| -> Option<Vec<f64>> {
        let s = SigmaScheduler::new(cfg, 6).ok()?;
        let mut out: Vec<f64> = s.timesteps().iter().map(|&t| t as f64).collect();
        out.extend_from_slice(s.sigmas());
        out.push(s.init_noise_sigma());
        let mut x = [0.3f32, -0.7, 1.5, -2.0];
        let mut history = vec![0.0f32; s.history_len(shape)];
        for i in 0..s.num_steps() {
            out.push(s.input_divisor(i));
            let eps = [-0.5f32 + i as f32 * 0.1, 0.25, 0.75, -1.0];
            let z = s.needs_noise(i).then_some(&[0.1f32, -0.2, 0.3, -0.4][..]);
            s.step(i, shape, &eps, &mut x, z, &mut history).ok()?;
        }
        out.extend(x.iter().map(|&v| v as f64));
        Some(out)
    };
    let (mut refused, mut checked, mut failures) = (0, 0, Vec::new());
    for kind in SchedulerKind::ALL.into_iter().filter(|k| k.is_sigma()) {
        let class = kind.class_name();
        let base = trace(
            SchedulerConfig::from_json(&json!({ "_class_name": class }).to_string()).unwrap(),
        )
        .unwrap();
        for (key, vals) in &values {
            if kind.init_keys().contains(key) {
                continue;
            }
            for v in vals {
                let text = json!({ "_class_name": class, *key: v }).to_string();
                match SchedulerConfig::from_json(&text) {
                    Err(e) => {
                        assert!(e.to_string().contains(key), "{class}.{key}: {e}");
                        refused += 1;
                    }
                    Ok(cfg) => {
                        checked += 1;
                        if trace(cfg).as_ref() != Some(&base) {
                            failures.push(format!("{class}.{key} = {v}"));
                        }
                    }
                }
            }
        }
    }
    println!("hidden keys: {checked} ignored, {refused} refused");
    assert!(
        failures.is_empty(),
        "hidden keys that change the run:\n{}",
        failures.join("\n")
    );
}
