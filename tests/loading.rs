//! Loading: f16 files are used in place, conversion is exact, old attention names load, and
//! bad configs or weights give typed errors naming the key or tensor.

mod common;

use common::fixtures_dir;
use safetensors::{Dtype, SafeTensors};
use tinydiffusion::memory::Reuse;
use tinydiffusion::model::convert::to_f16_safetensors;
use tinydiffusion::weights::{LoadOptions, WeightBytes};
use tinydiffusion::{Error, Model, UNetConfig};

fn fixture(model: &str) -> (String, Vec<u8>) {
    let dir = fixtures_dir().join(model);
    (
        std::fs::read_to_string(dir.join("config.json")).unwrap(),
        std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap(),
    )
}

fn run(model: &Model) -> Vec<f32> {
    let (c, h, w) = model.input_shape();
    let x: Vec<f32> = (0..2 * c * h * w)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let (co, _, _) = model.output_shape();
    let mut out = vec![0.0; 2 * co * h * w];
    let mut ws = vec![0.0; model.workspace_len(2)];
    let labels = model.config.num_class_embeds.map(|_| vec![0i64, 1]);
    model
        .forward(&mut ws, &x, &[3.0, 700.0], labels.as_deref(), &mut out)
        .unwrap();
    out
}

/// Rewrites a safetensors buffer through `f(name, dtype, shape, data)`; returning None drops
/// the tensor.
fn rewrite(
    bytes: &[u8],
    f: impl Fn(&str, Dtype, &[usize], &[u8]) -> Option<(String, Dtype, Vec<usize>, Vec<u8>)>,
) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let owned: Vec<_> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, v)| f(&n, v.dtype(), v.shape(), v.data()))
        .collect();
    let views: Vec<_> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn converted_f16_loads_in_place_and_matches() {
    for m in ["tiny-rgb16", "tiny-class16"] {
        let (config, bytes) = fixture(m);
        let original = Model::from_parts(&config, WeightBytes::Owned(bytes.clone())).unwrap();
        assert_eq!(original.weights().in_place_tensors, 0);
        let (f16_bytes, report) = to_f16_safetensors(&bytes).unwrap();
        assert_eq!(report.converted, report.tensors);
        let converted = Model::from_parts(&config, WeightBytes::Owned(f16_bytes)).unwrap();
        assert_eq!(
            converted.weights().converted_tensors,
            0,
            "{m}: f16 file must need no conversion"
        );
        assert!(converted.weights().in_place_tensors > 0);
        assert_eq!(
            run(&original),
            run(&converted),
            "{m}: conversion changed the numbers"
        );
    }
}

#[test]
fn old_attention_names_load() {
    let (config, bytes) = fixture("tiny-rgb16");
    let renamed = rewrite(&bytes, |n, d, s, b| {
        let n = n
            .replace(".to_q.", ".query.")
            .replace(".to_k.", ".key.")
            .replace(".to_v.", ".value.")
            .replace(".to_out.0.", ".proj_attn.");
        Some((n, d, s.to_vec(), b.to_vec()))
    });
    assert_ne!(renamed, bytes);
    let a = Model::from_parts(&config, WeightBytes::Owned(bytes)).unwrap();
    let b = Model::from_parts(&config, WeightBytes::Owned(renamed)).unwrap();
    assert_eq!(run(&a), run(&b));
}

#[test]
fn bf16_weights_load() {
    let (config, bytes) = fixture("tiny-gray8");
    let bf16 = rewrite(&bytes, |n, _d, s, b| {
        let data: Vec<u8> = b
            .chunks_exact(4)
            .flat_map(|c| {
                half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
            })
            .collect();
        Some((n.to_string(), Dtype::BF16, s.to_vec(), data))
    });
    let a = run(&Model::from_parts(&config, WeightBytes::Owned(bytes)).unwrap());
    let b = run(&Model::from_parts(&config, WeightBytes::Owned(bf16)).unwrap());
    let err = common::rel_l2(&b, &a);
    assert!(err < 5e-2, "bf16 weights should be close to f32 ({err})");
}

#[test]
fn extra_tensors_are_ignored() {
    let (config, bytes) = fixture("tiny-rgb16");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    tensors.push((
        "ema.decay".into(),
        Dtype::F32,
        vec![1],
        0.999f32.to_le_bytes().to_vec(),
    ));
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let with_extra = safetensors::serialize(views, None).unwrap();
    let a = Model::from_parts(&config, WeightBytes::Owned(bytes)).unwrap();
    let b = Model::from_parts(&config, WeightBytes::Owned(with_extra)).unwrap();
    assert_eq!(run(&a), run(&b));
}

#[test]
fn bad_weights_name_the_tensor() {
    let (config, bytes) = fixture("tiny-rgb16");
    let missing = rewrite(&bytes, |n, d, s, b| {
        (n != "conv_in.bias").then(|| (n.to_string(), d, s.to_vec(), b.to_vec()))
    });
    assert_eq!(
        Model::from_parts(&config, WeightBytes::Owned(missing)).err(),
        Some(Error::MissingTensor {
            name: "conv_in.bias".into()
        })
    );
    let reshaped = rewrite(&bytes, |n, d, s, b| {
        let s = if n == "conv_out.weight" {
            vec![s[0], s[1], 9]
        } else {
            s.to_vec()
        };
        Some((n.to_string(), d, s, b.to_vec()))
    });
    match Model::from_parts(&config, WeightBytes::Owned(reshaped)) {
        Err(Error::ShapeMismatch { name, .. }) => assert_eq!(name, "conv_out.weight"),
        other => panic!("expected a shape mismatch, got {:?}", other.err()),
    }
    let nan = rewrite(&bytes, |n, d, s, b| {
        let mut b = b.to_vec();
        if n == "conv_in.weight" {
            b[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        Some((n.to_string(), d, s.to_vec(), b))
    });
    assert_eq!(
        Model::from_parts(&config, WeightBytes::Owned(nan.clone())).err(),
        Some(Error::NonFiniteWeight {
            name: "conv_in.weight".into()
        })
    );
    // Refusing non-finite weights is an option; without it the model loads.
    let cfg = UNetConfig::from_json(&config).unwrap();
    assert!(Model::new(
        cfg,
        WeightBytes::Owned(nan),
        LoadOptions {
            check_finite: false
        },
        Reuse::Shared
    )
    .is_ok());
    let int = rewrite(&bytes, |n, d, s, b| {
        let d = if n == "conv_in.bias" { Dtype::I32 } else { d };
        Some((n.to_string(), d, s.to_vec(), b.to_vec()))
    });
    assert!(matches!(
        Model::from_parts(&config, WeightBytes::Owned(int)),
        Err(Error::UnsupportedDtype { .. })
    ));
    assert!(matches!(
        Model::from_parts(
            &config,
            WeightBytes::Owned(bytes[..bytes.len() / 2].to_vec())
        ),
        Err(Error::InvalidSafetensors { .. })
    ));
}

#[test]
fn bad_configs_name_the_key() {
    let (config, _) = fixture("tiny-rgb16");
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut c = v.clone();
        c[key] = value;
        UNetConfig::from_json(&c.to_string())
    };
    let key_of = |r: Result<UNetConfig, Error>| match r {
        Err(Error::UnsupportedConfig { key, .. }) | Err(Error::InvalidConfig { key, .. }) => key,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(key_of(with("act_fn", "tanh".into())), "act_fn");
    assert_eq!(
        key_of(with("time_embedding_type", "gaussian".into())),
        "time_embedding_type"
    );
    // NCSN++: skip blocks all or none per path, a null norm_num_groups only with them.
    assert_eq!(
        key_of(with(
            "down_block_types",
            serde_json::json!(["SkipDownBlock2D", "AttnDownBlock2D"])
        )),
        "down_block_types"
    );
    assert_eq!(
        key_of(with(
            "up_block_types",
            serde_json::json!(["AttnSkipUpBlock2D", "UpBlock2D"])
        )),
        "up_block_types"
    );
    assert_eq!(
        key_of(with("norm_num_groups", serde_json::Value::Null)),
        "norm_num_groups"
    );
    assert_eq!(
        key_of(with(
            "down_block_types",
            serde_json::json!(["DownBlock2D", "CrossAttnDownBlock2D"])
        )),
        "down_block_types"
    );
    assert_eq!(key_of(with("norm_num_groups", 7.into())), "norm_num_groups");
    assert_eq!(
        key_of(with("block_out_channels", serde_json::json!([]))),
        "block_out_channels"
    );
    assert_eq!(key_of(with("in_channels", 0.into())), "in_channels");
    assert_eq!(key_of(with("sample_size", 15.into())), "sample_size");
    assert_eq!(
        key_of(with("resnet_time_scale_shift", "spatial".into())),
        "resnet_time_scale_shift"
    );
    assert_eq!(
        key_of(with("some_future_option", true.into())),
        "some_future_option"
    );
    v["sample_size"] = serde_json::json!([16, 32]);
    assert_eq!(
        UNetConfig::from_json(&v.to_string()).unwrap().sample_size,
        (16, 32)
    );
    assert!(matches!(
        UNetConfig::from_json("{not json"),
        Err(Error::InvalidJson { .. })
    ));
}

/// `describe_config` (no weights file) describes what loading builds: the same tensors, taps,
/// op structure and parameter list; `describe_weights` takes the names a file uses.
#[test]
fn descriptions_without_a_model_match_the_loaded_model() {
    use tinydiffusion::model::{describe_config, describe_weights};
    for m in [
        "tiny-rgb16",
        "tiny-gray8",
        "tiny-class16",
        "tiny-learnedvar8",
    ] {
        let (config, bytes) = fixture(m);
        let model = Model::from_parts(&config, WeightBytes::Owned(bytes.clone())).unwrap();
        let d = describe_config(&UNetConfig::from_json(&config).unwrap()).unwrap();
        assert_eq!(d.tensors, model.tensors(), "{m}");
        assert_eq!(d.taps, model.taps(), "{m}");
        assert_eq!(d.parameters, model.parameters(), "{m}");
        assert_eq!(d.flops_per_sample(), model.flops_per_sample(), "{m}");
        assert_eq!(
            (d.input_shape(), d.output_shape()),
            (model.input_shape(), model.output_shape())
        );
        assert_eq!(d.ops.len(), model.ops().len(), "{m}");
        for (a, b) in d.ops.iter().zip(model.ops()) {
            assert_eq!((a.reads(), a.writes()), (b.reads(), b.writes()), "{m}");
        }
        let names = |w: &[tinydiffusion::weights::NamedWeight]| -> Vec<(String, Vec<usize>)> {
            w.iter()
                .map(|w| (w.name.clone(), w.shape.clone()))
                .collect()
        };
        assert_eq!(names(&d.weights), names(&model.weights().named), "{m}");
        let from_file = describe_weights(&d.config, WeightBytes::Owned(bytes)).unwrap();
        assert_eq!(names(&from_file.weights), names(&d.weights), "{m}");
    }
    // A file with old attention names: the description records the names it found.
    let (config, bytes) = fixture("tiny-rgb16");
    let renamed = rewrite(&bytes, |n, d, s, b| {
        Some((n.replace(".to_q.", ".query."), d, s.to_vec(), b.to_vec()))
    });
    let cfg = UNetConfig::from_json(&config).unwrap();
    let old = describe_weights(&cfg, WeightBytes::Owned(renamed)).unwrap();
    let new = describe_config(&cfg).unwrap();
    let count = |d: &tinydiffusion::model::ModelDescription, part: &str| {
        d.weights.iter().filter(|w| w.name.contains(part)).count()
    };
    assert!(count(&new, ".to_q.") > 0);
    assert_eq!(count(&old, ".query."), count(&new, ".to_q."));
    assert_eq!((count(&old, ".to_q."), count(&new, ".query.")), (0, 0));
}

/// A fresh temporary pipeline folder whose `unet/` holds the tiny-rgb16 fixture.
fn pipeline_folder(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tinydiffusion-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(
            fixtures_dir().join("tiny-rgb16").join(f),
            dir.join("unet").join(f),
        )
        .unwrap();
    }
    dir
}

/// A pipeline folder is run only as a UNet2DModel and a scheduler: one that names a decoder,
/// a text encoder or another UNet class is refused with a typed error naming the component,
/// never sampled as a plain UNet pipeline; absent components (`[null, null]`) are fine.
#[test]
fn pipelines_with_other_components_are_refused() {
    let dir = pipeline_folder("pipe");
    let index = |extra: &str| {
        std::fs::write(
            dir.join("model_index.json"),
            format!(
                r#"{{"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
                    "unet": ["diffusers", "UNet2DModel"]{extra}}}"#
            ),
        )
        .unwrap();
    };
    index(r#", "safety_checker": [null, null], "feature_extractor": null"#);
    Model::load(&dir).expect("absent components load");
    // A VQModel or AutoencoderKL decoder is a latent pipeline's (tests/latent_parity.rs).
    let latent = fixtures_dir().join("latent");
    for (key, from) in [("vqvae", "ldm/vqvae"), ("vae", "kl/vae")] {
        std::fs::create_dir_all(dir.join(key)).unwrap();
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            std::fs::copy(latent.join(from).join(f), dir.join(key).join(f)).unwrap();
        }
    }
    index(r#", "vqvae": ["diffusers", "VQModel"]"#);
    let model = Model::load(&dir).expect("a VQModel decoder loads");
    assert_eq!(model.decoder().unwrap().config.class_name(), "VQModel");
    assert_eq!(model.image_shape(), (3, 32, 32));
    // The KL fixture takes 4-channel latents; this UNet samples 3.
    index(r#", "vae": ["diffusers", "AutoencoderKL"]"#);
    let e = Model::load(&dir)
        .err()
        .expect("a decoder of other latents is refused");
    assert!(
        matches!(e, Error::UnsupportedConfig { .. }) && e.to_string().contains("latents"),
        "{e}"
    );
    for (extra, culprit) in [
        (
            r#", "vae": ["diffusers", "AsymmetricAutoencoderKL"]"#,
            "vae",
        ),
        (
            r#", "vqvae": ["diffusers", "VQModel"], "vae": ["diffusers", "AutoencoderKL"]"#,
            "second decoder",
        ),
        (
            r#", "text_encoder": ["transformers", "CLIPTextModel"]"#,
            "text_encoder",
        ),
    ] {
        index(extra);
        match Model::load(&dir) {
            Err(e @ Error::UnsupportedConfig { .. }) => {
                assert!(e.to_string().contains(culprit), "{culprit}: {e}")
            }
            Err(e) => panic!("{culprit}: expected UnsupportedConfig, got {e}"),
            Ok(_) => panic!("{culprit}: a pipeline with a {culprit} was loaded as a UNet"),
        }
    }
    std::fs::write(
        dir.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}"#,
    )
    .unwrap();
    let e = Model::load(&dir)
        .err()
        .expect("a conditional UNet is refused");
    assert!(e.to_string().contains("UNet2DConditionModel"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// diffusers' `DDIMPipeline` and `PNDMPipeline` convert whatever scheduler they are given
/// (`DDIMScheduler.from_config(scheduler.config)`): a folder naming one of them samples with
/// that class and the saved schedule options; a `DDPMPipeline` keeps its scheduler's class.
#[test]
fn ddim_and_pndm_pipelines_force_their_scheduler_class() {
    use tinydiffusion::model::load::ModelFiles;
    use tinydiffusion::schedule::{BetaSchedule, SchedulerKind};
    let dir = pipeline_folder("forced");
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    std::fs::write(
        dir.join("scheduler").join("scheduler_config.json"),
        r#"{"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2",
            "num_train_timesteps": 500, "variance_type": "fixed_large"}"#,
    )
    .unwrap();
    for (pipeline, kind) in [
        ("DDPMPipeline", SchedulerKind::Ddpm),
        ("DDIMPipeline", SchedulerKind::Ddim),
        ("PNDMPipeline", SchedulerKind::Pndm),
    ] {
        std::fs::write(
            dir.join("model_index.json"),
            format!(
                r#"{{"_class_name": "{pipeline}", "scheduler": ["diffusers", "DDPMScheduler"],
                    "unet": ["diffusers", "UNet2DModel"]}}"#
            ),
        )
        .unwrap();
        let cfg = ModelFiles::find(&dir)
            .unwrap()
            .load_scheduler_config()
            .unwrap();
        assert_eq!(cfg.kind, kind, "{pipeline}");
        assert_eq!(cfg.num_train_timesteps, 500, "{pipeline}");
        assert_eq!(
            cfg.beta_schedule,
            BetaSchedule::SquaredcosCapV2,
            "{pipeline}"
        );
        Model::load(&dir).expect(pipeline);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
