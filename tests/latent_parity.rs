//! Latent diffusion against diffusers 0.42 (fixtures: `tests/tools/make_latent_fixtures.py`):
//! the `VQModel` and `AutoencoderKL` decoders (output and per-block activations, <= 1e-4
//! relative L2 against float64 with the f16 weights) and whole pipeline runs through the
//! `Sampler` front end (an `LDMPipeline` folder with DDIM at eta 0 and 0.5, a UNet + KL
//! pipeline; <= 1e-3), plus the workspace the decoder shares with the UNet.

mod common;

use common::{fixtures_dir, read_json, rel_l2, tap_nchw, TensorFile};
use tinydiffusion::memory::Reuse;
use tinydiffusion::model::decoder::Decoder;
use tinydiffusion::model::load::ModelFiles;
use tinydiffusion::sampler::{SampleOptions, Sampler, SamplerKind};
use tinydiffusion::{Error, Model};

fn latent_dir() -> std::path::PathBuf {
    fixtures_dir().join("latent")
}

/// A run's pipeline folder; `tiny` is assembled from kl/unet, kl/scheduler and tiny_vae (a
/// UNet2DModel + AutoencoderTiny pipeline) so the fixture stores the UNet once.
fn run_dir(folder: &str) -> std::path::PathBuf {
    if folder != "tiny" {
        return latent_dir().join(folder);
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("latent-tiny-{}", std::process::id()));
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    copy(&latent_dir().join("kl/unet"), &dir.join("unet"));
    copy(&latent_dir().join("kl/scheduler"), &dir.join("scheduler"));
    copy(&latent_dir().join("tiny_vae"), &dir.join("vae"));
    std::fs::write(
        dir.join("model_index.json"),
        r#"{"_class_name": "DiffusionPipeline", "unet": ["diffusers", "UNet2DModel"],
            "vae": ["diffusers", "AutoencoderTiny"], "scheduler": ["diffusers", "DDIMScheduler"]}"#,
    )
    .unwrap();
    dir
}

#[test]
fn decoders_match_diffusers() {
    let meta = read_json(latent_dir().join("cases.json"));
    let t = TensorFile::open(latent_dir().join("cases.safetensors"));
    let mut report = String::new();
    let mut worst = 0.0f64;
    for case in meta["decoders"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let folder = latent_dir().join(case["folder"].as_str().unwrap());
        let shape = t.shape(&format!("{name}.z"));
        let (b, lh, lw) = (shape[0], shape[2], shape[3]);
        // Every tensor kept (Reuse::None) so the taps can be read after the pass.
        let dec = Decoder::load_with(&folder, (lh, lw), Default::default(), Reuse::None).unwrap();
        let mut z = t.f32s(&format!("{name}.z"));
        let (oc, oh, ow) = dec.image_shape();
        let mut out = vec![0.0f32; b * oc * oh * ow];
        let mut ws = vec![0.0f32; dec.workspace_len(b)];
        dec.decode(0, &mut ws, &mut z, &mut out).unwrap();
        let err = rel_l2(&out, &t.f64s(&format!("{name}.out")));
        report += &format!("{name} out {err:.2e}\n");
        worst = worst.max(err);
        let net = dec.net();
        for tap in net.taps() {
            let key = format!("{name}.act.{}", tap.name);
            let expected = t.f64s(&key);
            let ours = tap_nchw(net, &ws, tap, b);
            let err = rel_l2(&ours, &expected);
            report += &format!("  {:<28} {err:.2e}\n", tap.name);
            worst = worst.max(err);
        }
    }
    eprintln!("{report}");
    assert!(worst <= 1e-4, "decoder parity: worst {worst:.2e}\n{report}");
}

/// The decoder's resnets run as banded `norm_conv` ops, written over their input when the
/// plan shares memory: bands of one row (every band edge and halo case) and in place must give
/// the whole-map result, and diffusers' within the same bar.
#[test]
fn decoder_bands_and_in_place_change_nothing() {
    use tinydiffusion::model::decoder_config::{DecoderConfig, DecoderKind};
    use tinydiffusion::model::describe_decoder::DecoderLayout;
    use tinydiffusion::model::Op;
    use tinydiffusion::weights::WeightBytes;
    let meta = read_json(latent_dir().join("cases.json"));
    let t = TensorFile::open(latent_dir().join("cases.safetensors"));
    for case in meta["decoders"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let folder = latent_dir().join(case["folder"].as_str().unwrap());
        let cfg = std::fs::read_to_string(folder.join("config.json")).unwrap();
        let cfg = DecoderConfig::from_json(&cfg).unwrap();
        if cfg.kind == DecoderKind::Tiny {
            continue; // no GroupNorm, nothing banded
        }
        let weights = std::fs::read(folder.join("diffusion_pytorch_model.safetensors")).unwrap();
        let shape = t.shape(&format!("{name}.z"));
        let (b, lh, lw) = (shape[0], shape[2], shape[3]);
        let expected = t.f64s(&format!("{name}.out"));
        // The direct conv sums every output in one order whatever the band; Winograd (which
        // bands too small for its tiles skip) differs from it by about 3e-6.
        let decode = |reuse: Reuse, layout: DecoderLayout, winograd: bool| {
            let mut dec = Decoder::with_layout(
                cfg.clone(),
                WeightBytes::Owned(weights.clone()),
                Default::default(),
                (lh, lw),
                reuse,
                layout,
            )
            .unwrap();
            dec.net_mut().set_winograd(winograd);
            let banded = dec.net().ops().iter().any(|op| match op {
                Op::NormConv(n) => n.band_rows < n.shape.out_h,
                _ => false,
            });
            let mut z = t.f32s(&format!("{name}.z"));
            let (oc, oh, ow) = dec.image_shape();
            let mut out = vec![0.0f32; b * oc * oh * ow];
            let mut ws = vec![f32::NAN; dec.workspace_len(b)];
            dec.decode(0, &mut ws, &mut z, &mut out).unwrap();
            (out, banded, dec.workspace_len(b))
        };
        let whole = DecoderLayout {
            in_place: false,
            band_floats: usize::MAX,
        };
        let (reference, banded, _) = decode(Reuse::None, whole, false);
        assert!(!banded, "{name}: one band per map");
        for (reuse, in_place) in [
            (Reuse::None, false),
            (Reuse::Shared, false),
            (Reuse::Shared, true),
        ] {
            let rows = DecoderLayout {
                in_place,
                band_floats: 1,
            };
            let (out, banded, _) = decode(reuse, rows, false);
            assert!(banded, "{name}: bands of one row");
            let vs_whole = rel_l2(&out, &reference);
            let vs_diffusers = rel_l2(&decode(reuse, rows, true).0, &expected);
            eprintln!("{name} {reuse:?} in place {in_place}: {vs_whole:.2e} vs whole maps, {vs_diffusers:.2e} vs diffusers");
            assert!(
                vs_whole <= 1e-6,
                "{name}: bands changed the output by {vs_whole:.2e}"
            );
            assert!(
                vs_diffusers <= 1e-4,
                "{name}: {vs_diffusers:.2e} against diffusers"
            );
        }
        // In place the resnets' outputs need no maps of their own.
        let (_, _, shared) = decode(
            Reuse::Shared,
            DecoderLayout {
                in_place: false,
                band_floats: 1,
            },
            true,
        );
        let (_, _, in_place) = decode(
            Reuse::Shared,
            DecoderLayout {
                in_place: true,
                band_floats: 1,
            },
            true,
        );
        assert!(
            in_place < shared,
            "{name}: in place {in_place} floats, not below {shared}"
        );
    }
}

#[test]
fn latent_pipelines_match_diffusers() {
    let meta = read_json(latent_dir().join("cases.json"));
    let t = TensorFile::open(latent_dir().join("cases.safetensors"));
    let mut report = String::new();
    for run in meta["runs"].as_array().unwrap() {
        let name = run["name"].as_str().unwrap();
        let dir = run_dir(run["folder"].as_str().unwrap());
        let model = Model::load(&dir).unwrap();
        assert!(model.decoder().is_some(), "{name}: no decoder loaded");
        let cfg = ModelFiles::find(&dir)
            .unwrap()
            .load_scheduler_config()
            .unwrap();
        let steps = run["steps"].as_u64().unwrap() as usize;
        let eta = run["eta"].as_f64().unwrap();
        let sampler = Sampler::builder(SamplerKind::Ddim)
            .steps(steps)
            .eta(eta)
            .build(&cfg)
            .unwrap();
        let x_t = t.f32s(&format!("{name}.x_T"));
        let noise = t.f32s(&format!("{name}.noise"));
        let opts = SampleOptions {
            initial_noise: Some(&x_t),
            step_noise: (eta > 0.0).then_some(&noise[..]),
            ..SampleOptions::new(1, 0)
        };
        let (c, h, w) = model.image_shape();
        let mut out = vec![0.0f32; c * h * w];
        let len = sampler.workspace_len(&model, 1, false);
        // The decoder's arena overlaps the UNet's: the run needs no more than the larger of
        // the two plus the loop's buffers and the latents.
        let (lc, lh, lw) = model.input_shape();
        let dec = model.decoder().unwrap();
        let model_ws = model.workspace_len(1).max(dec.workspace_len(1));
        assert!(
            len <= model_ws + 8 * lc * lh * lw,
            "{name}: workspace {len}"
        );
        let mut short = vec![0.0f32; len - 1];
        assert!(matches!(
            sampler.sample(&model, &mut short, &opts, &mut out, None),
            Err(Error::BufferSize { .. })
        ));
        let mut ws = vec![f32::NAN; len];
        sampler
            .sample(&model, &mut ws, &opts, &mut out, None)
            .unwrap();
        let err = rel_l2(&out, &t.f64s(&format!("{name}.image")));
        report += &format!("{name}: {err:.2e}\n");
        assert!(err <= 1e-3, "{name}: {err:.2e}");
    }
    eprintln!("{report}");
}

/// A pipeline whose output is the decoded image takes an image-sized output buffer and a
/// latent-sized x_T; the wrong sizes are typed errors.
#[test]
fn latent_pipeline_buffers_are_checked() {
    let dir = latent_dir().join("ldm");
    let model = Model::load(&dir).unwrap();
    let cfg = ModelFiles::find(&dir)
        .unwrap()
        .load_scheduler_config()
        .unwrap();
    let sampler = Sampler::builder(SamplerKind::Ddim)
        .steps(2)
        .build(&cfg)
        .unwrap();
    let mut ws = vec![0.0f32; sampler.workspace_len(&model, 2, false)];
    let (c, h, w) = model.input_shape();
    let opts = SampleOptions::new(2, 7);
    let mut latent_sized = vec![0.0f32; 2 * c * h * w];
    assert!(matches!(
        sampler.sample(&model, &mut ws, &opts, &mut latent_sized, None),
        Err(Error::BufferSize {
            what: "sample output",
            ..
        })
    ));
    let (ic, ih, iw) = model.image_shape();
    let mut image = vec![0.0f32; 2 * ic * ih * iw];
    sampler
        .sample(&model, &mut ws, &opts, &mut image, None)
        .unwrap();
    assert!(image.iter().all(|x| x.is_finite()));
}

/// The C API loads an `LDMPipeline` folder, reports the decoded image's shape and returns the
/// decoded image from `td_sample` (the same numbers as diffusers).
#[test]
fn c_api_samples_latent_pipelines() {
    use tinydiffusion::capi::*;
    let meta = read_json(latent_dir().join("cases.json"));
    let t = TensorFile::open(latent_dir().join("cases.safetensors"));
    let run = &meta["runs"][0];
    let name = run["name"].as_str().unwrap();
    let path = std::ffi::CString::new(
        latent_dir()
            .join(run["folder"].as_str().unwrap())
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let x_t = t.f32s(&format!("{name}.x_T"));
    let mut model: *mut td_model = std::ptr::null_mut();
    // SAFETY: valid C string and out-pointers; buffers sized as the library reports.
    unsafe {
        assert_eq!(td_model_load(path.as_ptr(), &mut model), td_status::Ok);
        let mut info = td_model_info::default();
        assert_eq!(td_model_get_info(model, &mut info), td_status::Ok);
        assert_eq!(
            (
                info.image_channels,
                info.image_height,
                info.image_width,
                info.image_len
            ),
            (3, 16, 16, 768)
        );
        assert_eq!(info.sample_len, x_t.len());
        let desc = td_sampler_desc {
            batch: 1,
            initial_noise: x_t.as_ptr(),
            initial_noise_len: x_t.len(),
            scheduler: td_scheduler_desc {
                kind: td_scheduler_kind::Ddim as i32,
                steps: run["steps"].as_u64().unwrap() as usize,
                eta: 0.0,
                flags: 0,
            },
            ..td_sampler_desc_default()
        };
        let mut ws_len = 0;
        assert_eq!(
            td_sample_workspace_len(model, &desc, &mut ws_len),
            td_status::Ok
        );
        let mut ws = vec![0.0f32; ws_len];
        let mut latent_sized = vec![0.0f32; info.sample_len];
        assert_eq!(
            td_sample(
                model,
                &desc,
                ws.as_mut_ptr(),
                ws.len(),
                latent_sized.as_mut_ptr(),
                latent_sized.len()
            ),
            td_status::BufferTooSmall
        );
        let mut out = vec![0.0f32; info.image_len];
        assert_eq!(
            td_sample(
                model,
                &desc,
                ws.as_mut_ptr(),
                ws.len(),
                out.as_mut_ptr(),
                out.len()
            ),
            td_status::Ok
        );
        td_model_free(model);
        let err = rel_l2(&out, &t.f64s(&format!("{name}.image")));
        assert!(err <= 1e-3, "C API {name}: {err:.2e}");
    }
}

/// Decoder configs this project cannot run are typed errors naming the key; bad latents are
/// typed errors too.
#[test]
fn unsupported_decoder_configs_and_bad_latents_are_typed_errors() {
    use tinydiffusion::model::decoder_config::DecoderConfig;
    let base = std::fs::read_to_string(latent_dir().join("ldm/vqvae/config.json")).unwrap();
    let with = |key: &str, value: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        v.to_string()
    };
    for (key, value) in [
        ("norm_type", r#""spatial""#),
        ("act_fn", r#""gelu""#),
        (
            "up_block_types",
            r#"["AttnUpDecoderBlock2D", "UpDecoderBlock2D"]"#,
        ),
        ("_class_name", r#""AsymmetricAutoencoderKL""#),
        ("some_new_option", "1"),
    ] {
        match DecoderConfig::from_json(&with(key, value)) {
            Err(Error::UnsupportedConfig { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: expected UnsupportedConfig, got {other:?}"),
        }
    }
    for (key, value) in [
        ("norm_num_groups", "3"),
        ("scaling_factor", "0"),
        ("block_out_channels", "[]"),
    ] {
        assert!(
            matches!(
                DecoderConfig::from_json(&with(key, value)),
                Err(Error::InvalidConfig { .. })
            ),
            "{key}"
        );
    }
    let dec = Decoder::load_with(
        &latent_dir().join("ldm/vqvae"),
        (8, 8),
        Default::default(),
        Reuse::Shared,
    )
    .unwrap();
    let mut ws = vec![0.0f32; dec.workspace_len(1)];
    let mut out = vec![0.0f32; 3 * 16 * 16];
    let mut z = vec![0.0f32; 3 * 8 * 8];
    z[5] = f32::NAN;
    assert!(matches!(
        dec.decode(0, &mut ws, &mut z, &mut out),
        Err(Error::InvalidArgument { .. })
    ));
    let mut short = vec![0.0f32; 3 * 8 * 8 - 1];
    assert!(matches!(
        dec.decode(0, &mut ws, &mut short, &mut out),
        Err(Error::BufferSize { .. })
    ));
}
