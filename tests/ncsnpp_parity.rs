//! NCSN++ (score-SDE VE) against diffusers 0.42 (tests/tools/make_ncsnpp_fixtures.py): the
//! Fourier time embedding of sigma, the skip blocks with FIR resampling, the skip image added
//! to conv_out and the division by sigma. Float64 reference with the fixture's f16 weights, at
//! sigmas 0.01, 1 and 50 in one batch; every block's output is checked too.

mod common;

use common::{fixtures_dir, rel_l2, tap_nchw, TensorFile};
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::memory::Reuse;
use tinydiffusion::model::Op;
use tinydiffusion::weights::LoadOptions;
use tinydiffusion::{Error, Model};

const MODEL: &str = "ncsnpp/tiny-ncsnpp8";

fn check(path: KernelPath) {
    let dir = fixtures_dir().join(MODEL);
    let f = TensorFile::open(dir.join("forward.safetensors"));
    let (x, t, expected) = (f.f32s("x"), f.f32s("t"), f.f64s("out"));
    let mut model = Model::load_with(&dir, LoadOptions::default(), Reuse::None).unwrap();
    model.set_kernels(path).unwrap();
    let batch = t.len();
    let mut ws = vec![0.0f32; model.workspace_len(batch)];
    let mut out = vec![0.0f32; expected.len()];
    model.forward(&mut ws, &x, &t, None, &mut out).unwrap();

    let mut report = String::new();
    let mut worst_tap = 0.0f64;
    let mut checked = 0;
    for tap in model.taps() {
        let (key, post) = match tap.name.split_once('+') {
            Some((k, p)) => (k, Some(p)),
            None => (tap.name.as_str(), None),
        };
        let name = format!("act.{key}");
        if !f.has(&name) {
            continue;
        }
        let mut want = f.f64s(&name);
        if post == Some("silu") {
            want.iter_mut().for_each(|v| *v /= 1.0 + (-*v).exp());
        }
        let ours = tap_nchw(&model, &ws, tap, batch);
        let err = rel_l2(&ours, &want);
        worst_tap = worst_tap.max(err);
        checked += 1;
        report += &format!("  {:<22} {err:.2e}\n", tap.name);
    }
    assert!(
        checked >= 9,
        "only {checked} taps matched the fixture:\n{report}"
    );
    // Per sigma, since the division by sigma makes the small-sigma sample dominate the norm.
    let per = expected.len() / batch;
    let mut errs = Vec::new();
    for b in 0..batch {
        let r = b * per..(b + 1) * per;
        errs.push(rel_l2(&out[r.clone()], &expected[r]));
    }
    println!(
        "{MODEL} [{}]: out rel L2 per sigma {t:?}: {}, worst block {worst_tap:.2e}\n{report}",
        model.kernels_name(),
        errs.iter()
            .map(|e| format!("{e:.2e}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (e, s) in errs.iter().zip(&t) {
        assert!(
            *e <= 1e-4,
            "sigma {s}: forward rel L2 {e:.3e} > 1e-4\n{report}"
        );
    }
    assert!(worst_tap <= 1e-4, "a block is off:\n{report}");

    // The shared (inference) plan gives the same bits.
    let mut shared = Model::load(&dir).unwrap();
    shared.set_kernels(path).unwrap();
    let mut ws2 = vec![f32::NAN; shared.workspace_len(batch)];
    let mut out2 = vec![0.0f32; out.len()];
    shared.forward(&mut ws2, &x, &t, None, &mut out2).unwrap();
    assert_eq!(out, out2);
}

#[test]
fn ncsnpp_forward_matches_diffusers_on_every_cpu_path() {
    for path in KernelPath::ALL {
        if path.is_available() {
            check(path);
        }
    }
}

#[test]
fn ncsnpp_describes_the_new_ops() {
    let model = Model::load(fixtures_dir().join(MODEL)).unwrap();
    let kinds: Vec<&str> = model.ops().iter().map(Op::kind).collect();
    for k in ["fourier_embedding", "fir_resample", "timestep_divide"] {
        assert!(kinds.contains(&k), "no {k} op");
    }
    assert!(!kinds.contains(&"sinusoid"));
    // Both directions of FIR resampling.
    let dirs: Vec<bool> = model
        .ops()
        .iter()
        .filter_map(|o| match o {
            Op::FirResample(f) => Some(f.up),
            _ => None,
        })
        .collect();
    assert!(dirs.contains(&true) && dirs.contains(&false));
}

#[test]
fn one_sigma_broadcasts_and_samples_stay_independent() {
    let dir = fixtures_dir().join(MODEL);
    let f = TensorFile::open(dir.join("forward.safetensors"));
    let (x, t) = (f.f32s("x"), f.f32s("t"));
    let model = Model::load(&dir).unwrap();
    let batch = t.len();
    let per = x.len() / batch;
    let mut ws = vec![0.0f32; model.workspace_len(batch)];
    let mut all = vec![0.0f32; x.len()];
    model.forward(&mut ws, &x, &t, None, &mut all).unwrap();
    for (b, sigma) in t.iter().enumerate() {
        // One sigma for the batch is the same as that sigma repeated.
        let (mut one, mut repeated) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        model
            .forward(&mut ws, &x, &[*sigma], None, &mut one)
            .unwrap();
        model
            .forward(&mut ws, &x, &vec![*sigma; batch], None, &mut repeated)
            .unwrap();
        assert_eq!(one, repeated, "sigma {sigma}");
        // Sample b alone matches sample b of the batch (kernel blocking may differ by batch).
        let mut alone = vec![0.0f32; per];
        let mut ws1 = vec![0.0f32; model.workspace_len(1)];
        let xb = &x[b * per..(b + 1) * per];
        model
            .forward(&mut ws1, xb, &[*sigma], None, &mut alone)
            .unwrap();
        let err = rel_l2(&alone, &all[b * per..(b + 1) * per]);
        assert!(
            err <= 1e-5,
            "sigma {sigma}: batch 1 vs batch {batch}: {err:.2e}"
        );
    }
}

#[test]
fn fourier_model_refuses_non_positive_sigmas() {
    let dir = fixtures_dir().join(MODEL);
    let model = Model::load(&dir).unwrap();
    let (c, h, w) = model.input_shape();
    let x = vec![0.0f32; c * h * w];
    let mut out = vec![0.0f32; x.len()];
    let mut ws = vec![0.0f32; model.workspace_len(1)];
    for t in [0.0f32, -1.0] {
        let r = model.forward(&mut ws, &x, &[t], None, &mut out);
        assert!(
            matches!(r, Err(Error::InvalidArgument { .. })),
            "t = {t}: {r:?}"
        );
    }
}

/// The trainer's forward walk of the fixture gives the inference output, and its backward
/// (through the FIR resampling, the skip blocks and the division by sigma) matches a finite
/// difference of `L = sum(out * r)` along a random direction of every trainable parameter.
#[cfg(feature = "train")]
#[test]
fn train_graph_forward_and_backward_on_ncsnpp() {
    use tinydiffusion::model::describe_config;
    use tinydiffusion::train::params::ParamKind;
    use tinydiffusion::train::TrainGraph;

    let dir = fixtures_dir().join(MODEL);
    let f = TensorFile::open(dir.join("forward.safetensors"));
    let (x, t, expected) = (f.f32s("x"), f.f32s("t"), f.f64s("out"));
    let model = Model::load(&dir).unwrap();
    let graph = TrainGraph::new(&describe_config(&model.config).unwrap()).unwrap();
    let table = &graph.params;
    let mut params = vec![0.0f32; table.buffer_len()];
    let weights = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    table.read_safetensors(&weights, "", &mut params).unwrap();
    let batch = t.len();
    let mut ws = graph.workspace(batch);
    graph.forward(&params, &mut ws, &x, &t, None).unwrap();
    let err = rel_l2(&ws.out, &expected);
    println!("train forward vs diffusers: {err:.2e}");
    assert!(err <= 1e-4, "train forward: {err:.3e}");

    // Cotangent scaled per sample by sigma, so every sigma's sample matters alike.
    let per = ws.out.len() / batch;
    let mut s =
        tinydiffusion::train::rng::Stream::new(3, tinydiffusion::train::rng::Purpose::Noise, 0);
    let r: Vec<f32> = (0..ws.out.len())
        .map(|i| s.gaussian() as f32 * t[i / per])
        .collect();
    ws.d_out.copy_from_slice(&r);
    let mut grads = vec![0.0f32; table.buffer_len()];
    graph.backward(&params, &mut grads, &mut ws, None).unwrap();
    let mut u = vec![0.0f32; params.len()];
    for spec in table.specs() {
        if spec.kind == ParamKind::FourierWeight {
            assert!(grads[spec.range()].iter().all(|g| *g == 0.0));
            continue; // fixed in diffusers: no gradient
        }
        for v in &mut u[spec.range()] {
            *v = s.gaussian() as f32;
        }
    }
    let analytic: f64 = grads
        .iter()
        .zip(&u)
        .map(|(g, d)| *g as f64 * *d as f64)
        .sum();
    let loss = |h: f32| {
        let p: Vec<f32> = params.iter().zip(&u).map(|(p, d)| p + h * d).collect();
        let mut w2 = graph.workspace(batch);
        graph.forward(&p, &mut w2, &x, &t, None).unwrap();
        w2.out
            .iter()
            .zip(&r)
            .map(|(o, r)| *o as f64 * *r as f64)
            .sum::<f64>()
    };
    let central = |h: f32| (loss(h) - loss(-h)) / (2.0 * h as f64);
    let fd = (4.0 * central(5e-4) - central(1e-3)) / 3.0;
    let rel = (fd - analytic).abs() / analytic.abs();
    println!("whole-graph gradient: analytic {analytic:.6} fd {fd:.6} rel {rel:.1e}");
    assert!(rel < 5e-3, "analytic {analytic} vs fd {fd}");
}

/// The trainer takes fourier models (the VE score-matching loss: tests/train_run.rs,
/// tests/train_gradient.rs) but refuses DDPM-only objectives for them, naming the key.
#[cfg(feature = "train")]
#[test]
fn trainer_takes_fourier_models_with_the_ve_loss_only() {
    use tinydiffusion::train::data::Dataset;
    use tinydiffusion::train::loss::LossKind;
    use tinydiffusion::train::trainer::{Init, TrainOptions, Trainer};
    let config = std::fs::read_to_string(fixtures_dir().join(MODEL).join("config.json")).unwrap();
    let data = Dataset {
        channels: 3,
        height: 8,
        width: 8,
        images: vec![0.0; 2 * 3 * 8 * 8],
        labels: None,
    };
    let opts = TrainOptions {
        batch: 2,
        ..TrainOptions::default()
    };
    let mut tr = Trainer::new(&config, Init::Seeded(1), data.clone(), opts.clone()).unwrap();
    assert!(tr.train_step().unwrap().loss.total.is_finite());
    let hybrid = TrainOptions {
        loss: LossKind::Hybrid { lambda: 0.001 },
        ..opts
    };
    let err = Trainer::new(&config, Init::Seeded(1), data, hybrid).err();
    assert!(
        matches!(err, Some(Error::InvalidArgument { what, .. }) if what == "loss"),
        "{err:?}"
    );
}

/// The NCSN++ config keys are accepted only with values that work; the rest name their key.
#[test]
fn ncsnpp_config_refusals_name_the_key() {
    use tinydiffusion::UNetConfig;
    let text = std::fs::read_to_string(fixtures_dir().join(MODEL).join("config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg = UNetConfig::from_json(&text).unwrap();
    assert!(cfg.time_fourier && cfg.norm_groups_null);
    let mid = cfg.mid_block.as_ref().unwrap();
    assert_eq!((mid.resnet_groups, mid.attn_groups), (8, Some(8)));
    assert_eq!(cfg.norm_num_groups, 2); // conv_norm_out: min(8 / 4, 32)
    let key_of = |key: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[key] = value;
        match UNetConfig::from_json(&c.to_string()) {
            Err(Error::UnsupportedConfig { key, .. }) | Err(Error::InvalidConfig { key, .. }) => {
                key
            }
            other => panic!("{key}: expected a config error, got {other:?}"),
        }
    };
    use serde_json::json;
    // Skip blocks read and write a 3-channel image.
    assert_eq!(key_of("in_channels", json!(1)), "in_channels");
    assert_eq!(key_of("out_channels", json!(6)), "out_channels");
    // Mixed with plain blocks.
    let down = json!(["SkipDownBlock2D", "AttnDownBlock2D", "SkipDownBlock2D"]);
    assert_eq!(key_of("down_block_types", down), "down_block_types");
    let up = json!(["AttnSkipUpBlock2D", "UpBlock2D", "SkipUpBlock2D"]);
    assert_eq!(key_of("up_block_types", up), "up_block_types");
    // GroupNorm groups that do not divide (diffusers refuses to build these).
    assert_eq!(
        key_of("block_out_channels", json!([8, 16, 32])),
        "block_out_channels"
    );
    assert_eq!(
        key_of("time_embedding_type", json!("learned-ish")),
        "time_embedding_type"
    );
    assert_eq!(
        key_of("resnet_time_scale_shift", json!("spatial")),
        "resnet_time_scale_shift"
    );
}

/// 300 random skip-block configs: ours accepts exactly those diffusers can build (its GroupNorms
/// refuse groups that do not divide the channels).
#[test]
fn skip_block_configs_accepted_exactly_when_diffusers_builds_them() {
    use tinydiffusion::UNetConfig;
    let cases = common::read_json(fixtures_dir().join("ncsnpp/config_cases.json"));
    let mut disagree = Vec::new();
    for case in cases.as_array().unwrap() {
        let mut cfg = case.clone();
        let builds = cfg.as_object_mut().unwrap().remove("builds").unwrap();
        let levels = cfg["block_out_channels"].as_array().unwrap().len();
        cfg["sample_size"] = (1u64 << levels).into();
        cfg["time_embedding_type"] = "fourier".into();
        cfg["norm_num_groups"] = serde_json::Value::Null;
        cfg["attention_head_dim"] = serde_json::Value::Null;
        let ours = UNetConfig::from_json(&cfg.to_string());
        if ours.is_ok() != builds.as_bool().unwrap() {
            disagree.push(format!("{cfg}: diffusers builds {builds}, ours {ours:?}"));
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
}
