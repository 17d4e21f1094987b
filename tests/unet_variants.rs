//! UNet2DModel variants beyond the shared fixtures (tests/tools/make_unet_a_fixtures.py,
//! diffusers 0.42): the improved-DDPM family (AdaGN `scale_shift`, resnet down/upsamplers,
//! multi-head attention, a mid attention without GroupNorm, learned variance), and the other
//! options: a learned time embedding, `act_fn` mish / gelu / relu, no mid block, a mid block
//! without attention, one-head attention, centered input, downsample padding 0. Forward parity
//! per block on every kernel path this CPU has, and whole sampling runs with injected noise.

mod common;

use common::{fixtures_dir, read_json, rel_l2, tap_nchw, SampleCase, TensorFile};
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::memory::Reuse;
use tinydiffusion::sampler;
use tinydiffusion::weights::LoadOptions;
use tinydiffusion::Model;

const MODELS: [&str; 5] = [
    "unet-a/iddpm8",
    "unet-a/learned8",
    "unet-a/gelu8",
    "unet-a/relu8",
    "unet-a/classts8",
];

/// torch's activations in f64, for the taps taken after one (`time_embedding+mish`).
fn post_act(name: &str, v: f64) -> f64 {
    match name {
        "silu" => v / (1.0 + (-v).exp()),
        "mish" => v * (if v > 20.0 { v } else { v.exp().ln_1p() }).tanh(),
        "gelu" => 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)),
        "relu" => v.max(0.0),
        other => panic!("unknown post-activation {other}"),
    }
}

/// The forward case against diffusers: every block's activation (a report naming the first
/// bad block) and the output within 1e-4; returns the output's error.
fn check_forward(name: &str, path: KernelPath) -> f64 {
    let dir = fixtures_dir().join(name);
    let common::ForwardCase {
        x,
        t,
        labels,
        expected,
        activations,
        tensors,
    } = common::forward_case(name);

    let mut model = Model::load_with(&dir, LoadOptions::default(), Reuse::None).unwrap();
    model.set_kernels(path).unwrap();
    let (c, h, w) = model.input_shape();
    let batch = x.len() / (c * h * w);
    let mut ws = vec![0.0f32; model.workspace_len(batch)];
    let mut out = vec![0.0f32; expected.len()];
    model
        .forward(&mut ws, &x, &t, labels.as_deref(), &mut out)
        .unwrap();
    let mut report = String::new();
    let mut worst_tap = 0.0f64;
    for tap in model.taps() {
        let (key, post) = match tap.name.split_once('+') {
            Some((k, p)) => (k, Some(p)),
            None => (tap.name.as_str(), None),
        };
        let Some(tensor) = activations.get(key) else {
            continue;
        };
        let mut want = tensors.f64s(tensor.as_str().unwrap());
        if let Some(post) = post {
            want.iter_mut().for_each(|v| *v = post_act(post, *v));
        }
        let ours = tap_nchw(&model, &ws, tap, batch);
        let e = rel_l2(&ours, &want);
        worst_tap = worst_tap.max(e);
        report += &format!("  {:<24} {e:.2e}\n", tap.name);
    }
    let err = rel_l2(&out, &expected);
    println!(
        "{name} [{}]: out rel L2 {err:.3e}, worst block {worst_tap:.2e}\n{report}",
        model.kernels_name()
    );
    assert!(
        err <= 1e-4 && worst_tap <= 1e-4,
        "{name}: {err:.3e}\n{report}"
    );

    // The shared (inference) memory plan gives the same bits.
    let mut shared = Model::load(&dir).unwrap();
    shared.set_kernels(path).unwrap();
    let mut ws2 = vec![f32::NAN; shared.workspace_len(batch)];
    let mut out2 = vec![0.0f32; out.len()];
    shared
        .forward(&mut ws2, &x, &t, labels.as_deref(), &mut out2)
        .unwrap();
    assert_eq!(out, out2, "{name}: shared memory plan changed the result");
    err
}

#[test]
fn variants_forward_match_diffusers_on_every_path() {
    for path in KernelPath::ALL {
        if !path.is_available() {
            println!("skipped: no {} kernels on this CPU", path.name());
            continue;
        }
        for m in MODELS {
            check_forward(m, path);
        }
    }
}

#[test]
fn variants_sampling_runs_match_diffusers() {
    for m in MODELS {
        let dir = fixtures_dir().join(m);
        let model = Model::load(&dir).unwrap();
        let cases = read_json(dir.join("cases.json"));
        let tensors = TensorFile::open(dir.join("cases.safetensors"));
        for case in cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] == "sample")
        {
            let run = SampleCase::read(&model, case, &tensors);
            assert_eq!(
                run.scheduler.timesteps(),
                &run.expected_timesteps(&tensors)[..]
            );
            let mut ws = vec![0.0f32; run.workspace_len(&model)];
            let mut out = vec![0.0f32; run.x_t.len()];
            sampler::sample(
                &model,
                &run.scheduler,
                &mut ws,
                &run.options(),
                &mut out,
                None,
            )
            .unwrap();
            let err = rel_l2(&out, &run.expected_final(&tensors));
            println!("{m} {}: final rel L2 {err:.2e}", run.name);
            assert!(err <= 1e-3, "{m} {}: {err:.3e}", run.name);
        }
    }
}

/// A config with `key` set to `value` on top of a small valid one.
fn config_with(key: &str, value: serde_json::Value) -> String {
    let mut cfg = serde_json::json!({
        "_class_name": "UNet2DModel",
        "sample_size": 8,
        "block_out_channels": [8, 16],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4,
    });
    cfg[key] = value;
    cfg.to_string()
}

#[test]
fn unknown_or_refused_values_are_typed_errors_naming_the_key() {
    use serde_json::json;
    use tinydiffusion::config::UNetConfig;
    for (key, value) in [
        ("act_fn", json!("tanh")),
        ("resnet_time_scale_shift", json!("spatial")),
        ("resnet_time_scale_shift", json!("ada_group")),
        ("downsample_type", json!("fir")),
        ("upsample_type", json!("fir")),
        ("time_embedding_type", json!("sinusoidal")),
        (
            "down_block_types",
            json!(["DownBlock2D", "SkipDownBlock2D"]),
        ),
        ("up_block_types", json!(["CrossAttnUpBlock2D", "UpBlock2D"])),
        ("class_embed_type", json!("projection")),
    ] {
        let err = UNetConfig::from_json(&config_with(key, value.clone())).unwrap_err();
        assert!(
            format!("{err}").contains(key.trim_end_matches("_types")),
            "{key} = {value}: {err}"
        );
    }
    // The learned time embedding needs its table size.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&config_with("time_embedding_type", json!("learned"))).unwrap();
    cfg["num_train_timesteps"] = serde_json::Value::Null;
    let err = UNetConfig::from_json(&cfg.to_string()).unwrap_err();
    assert!(format!("{err}").contains("num_train_timesteps"), "{err}");
    // "timestep" needs num_class_embeds here (the label range).
    let err =
        UNetConfig::from_json(&config_with("class_embed_type", json!("timestep"))).unwrap_err();
    assert!(format!("{err}").contains("num_class_embeds"), "{err}");
    // "identity" takes embeddings as inputs (tests/unet_c_runs.rs).
    UNetConfig::from_json(&config_with("class_embed_type", json!("identity"))).unwrap();
    // Accepted: every get_activation name UNet2DModel's blocks use.
    for act in ["silu", "swish", "mish", "gelu", "relu"] {
        UNetConfig::from_json(&config_with("act_fn", json!(act))).unwrap();
    }
}

#[test]
fn learned_time_embedding_takes_integer_timesteps_only() {
    let model = Model::load(fixtures_dir().join("unet-a/learned8")).unwrap();
    let (c, h, w) = model.input_shape();
    let x = vec![0.1f32; c * h * w];
    let mut out = vec![0.0f32; x.len()];
    let mut ws = vec![0.0f32; model.workspace_len(1)];
    model
        .forward(&mut ws, &x, &[999.0], None, &mut out)
        .unwrap();
    for t in [12.5, 1000.0, -1.0] {
        let err = model
            .forward(&mut ws, &x, &[t], None, &mut out)
            .unwrap_err();
        assert!(format!("{err}").contains("timestep"), "{t}: {err}");
    }
}

#[cfg(feature = "train")]
#[test]
fn trainer_builds_a_unet_without_mid_block() {
    use tinydiffusion::model::describe_config;
    use tinydiffusion::train::TrainGraph;
    // Gradients against PyTorch: tests/train_gradient.rs (unet-c/nomid8).
    let model = Model::load(fixtures_dir().join("unet-a/gelu8")).unwrap();
    TrainGraph::new(&describe_config(&model.config).unwrap()).unwrap();
}

/// The `sample` binary on a variant fixture folder replays diffusers' DDPM run: injected x_T
/// and step noise in, x_0 out.
#[test]
fn cli_replays_a_variant_ddpm_run() {
    let dir = fixtures_dir().join("unet-a/learned8");
    let tensors = TensorFile::open(dir.join("cases.safetensors"));
    let scratch = std::env::temp_dir().join(format!("tinydiffusion-unet-a-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let (x_t, noise, out) = (
        scratch.join("x_T.safetensors"),
        scratch.join("noise.safetensors"),
        scratch.join("x_0.safetensors"),
    );
    let write = |path: &std::path::Path, name: &str, key: &str| {
        let data = tensors.f32s(key);
        let shape = tensors.shape(key);
        tinydiffusion::io::write_tensors(path, &[(name, &shape[..], &data[..])]).unwrap();
    };
    write(&x_t, "x_T", "ddpm20.x_T");
    write(&noise, "noise", "ddpm20.noise");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sample"))
        .args([
            "--model",
            dir.to_str().unwrap(),
            "--scheduler",
            "ddpm",
            "--steps",
            "20",
            "--init-noise",
            x_t.to_str().unwrap(),
            "--step-noise",
            noise.to_str().unwrap(),
            "--save-tensor",
            out.to_str().unwrap(),
            "--out",
            "none",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = TensorFile::open(&out).f32s("x_0");
    let traj = tensors.f64s("ddpm20.traj");
    let err = rel_l2(&ours, &traj[traj.len() - ours.len()..]);
    println!("sample CLI on unet-a/learned8, DDPM 20 steps: final rel L2 {err:.2e}");
    assert!(err <= 1e-3, "{err:.3e}");
    let _ = std::fs::remove_dir_all(&scratch);
}
