//! `StableDiffusionPipeline` folders end to end against diffusers 0.42 (fixtures:
//! `tests/tools/make_sd_pipeline_fixtures.py`): an SD 1.x-shaped folder (PNDM, epsilon,
//! quick_gelu, pad `<|endoftext|>`, a feature_extractor present) and an SD 2.x-shaped one (DDIM
//! and Euler ancestral, v_prediction, gelu, linear proj_in, pad `!`); prompts and negative
//! prompts, guidance on (7.5, 5) and off (1), one prompt for two images and two prompts, a
//! non-default height/width; each run <= 1e-3 relative L2 against the float64 pipeline. The
//! `sample` CLI replays a run to the library's bits. Typed errors for a bad height, `--prompt`
//! on a UNet2DModel and a missing tokenizer/text_encoder folder.

mod common;

use common::{fixtures_dir, read_json, rel_l2, TensorFile};
use std::path::{Path, PathBuf};
use tinydiffusion::memory::Reuse;
use tinydiffusion::model::load::ModelFiles;
use tinydiffusion::sampler::{SampleOptions, Sampler, SamplerKind, SamplerSpec, TextConditioning};
use tinydiffusion::text::ClipTokenizer;
use tinydiffusion::{Error, Model};

fn sd_dir() -> PathBuf {
    fixtures_dir().join("sd-pipeline")
}

struct Run {
    name: String,
    folder: PathBuf,
    prompts: Vec<String>,
    negative: Option<String>,
    guidance: f32,
    batch: usize,
    steps: usize,
    size: (usize, usize),
    scheduler: Option<String>,
}

fn runs() -> Vec<Run> {
    let meta = read_json(sd_dir().join("cases.json"));
    meta["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Run {
            name: r["name"].as_str().unwrap().into(),
            folder: sd_dir().join(r["folder"].as_str().unwrap()),
            prompts: r["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().into())
                .collect(),
            negative: r["negative"].as_str().map(Into::into),
            guidance: r["guidance"].as_f64().unwrap() as f32,
            batch: r["batch"].as_u64().unwrap() as usize,
            steps: r["steps"].as_u64().unwrap() as usize,
            size: (
                r["height"].as_u64().unwrap() as usize,
                r["width"].as_u64().unwrap() as usize,
            ),
            scheduler: r["scheduler"].as_str().map(Into::into),
        })
        .collect()
}

fn sampler(run: &Run) -> Sampler {
    let cfg = ModelFiles::find(&run.folder)
        .unwrap()
        .load_scheduler_config()
        .unwrap();
    let kind = run
        .scheduler
        .as_deref()
        .map(|c| SamplerKind::from_name(c).unwrap());
    Sampler::new(&SamplerSpec::new(kind).steps(run.steps), &cfg).unwrap()
}

/// The library run of `run`: the decoded images `[B, 3, H, W]` and the model.
fn library_run(run: &Run, t: &TensorFile) -> (Vec<f32>, Model) {
    let model = Model::load_sized(
        &run.folder,
        Default::default(),
        Reuse::Shared,
        Some(run.size),
    )
    .unwrap();
    assert!(model.text_encoder().is_some() && model.decoder().is_some());
    let tok = ClipTokenizer::from_dir(&run.folder).unwrap();
    let ids: Vec<u32> = run.prompts.iter().flat_map(|p| tok.encode(p)).collect();
    let neg = run.negative.as_deref().unwrap_or("");
    let neg_ids: Vec<u32> = run.prompts.iter().flat_map(|_| tok.encode(neg)).collect();
    // The tokenizer gives transformers' ids (checked here for the fixture's small vocabulary).
    let expected: Vec<u32> = t
        .i64s(&format!("{}.ids", run.name))
        .iter()
        .map(|&i| i as u32)
        .collect();
    assert_eq!(ids, expected, "{}: prompt ids", run.name);
    let expected_neg: Vec<u32> = t
        .i64s(&format!("{}.neg_ids", run.name))
        .iter()
        .map(|&i| i as u32)
        .collect();
    assert_eq!(neg_ids, expected_neg, "{}: negative ids", run.name);
    let sampler = sampler(run);
    let x_t = t.f32s(&format!("{}.x_T", run.name));
    let noise = t
        .has(&format!("{}.noise", run.name))
        .then(|| t.f32s(&format!("{}.noise", run.name)));
    let text = TextConditioning {
        prompt_ids: &ids,
        negative_ids: Some(&neg_ids),
        guidance_scale: run.guidance,
    };
    let opts = SampleOptions {
        initial_noise: Some(&x_t),
        step_noise: noise.as_deref(),
        text: Some(text),
        ..SampleOptions::new(run.batch, 0)
    };
    let mut ws = vec![f32::NAN; sampler.workspace_len(&model, run.batch, text.guided())];
    let (c, h, w) = model.image_shape();
    assert_eq!((h, w), run.size, "{}", run.name);
    let mut out = vec![0.0f32; run.batch * c * h * w];
    sampler
        .sample(&model, &mut ws, &opts, &mut out, None)
        .unwrap_or_else(|e| panic!("{}: {e}", run.name));
    // One float fewer is refused: the size is exact.
    let mut short = vec![0.0f32; ws.len() - 1];
    assert!(matches!(
        sampler.sample(&model, &mut short, &opts, &mut out.clone(), None),
        Err(Error::BufferSize { .. })
    ));
    (out, model)
}

#[test]
fn sd_pipeline_runs_match_diffusers() {
    let t = TensorFile::open(sd_dir().join("cases.safetensors"));
    let mut worst = 0.0f64;
    for run in runs() {
        let (out, _) = library_run(&run, &t);
        let expected = t.f64s(&format!("{}.image", run.name));
        let err = rel_l2(&out, &expected);
        eprintln!("{}: relative L2 {err:.3e}", run.name);
        assert!(err <= 1e-3, "{}: relative L2 {err:.3e}", run.name);
        worst = worst.max(err);
    }
    eprintln!("worst {worst:.3e}");
}

fn tmp(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sd-pipeline-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_tensor(path: &Path, name: &str, data: &[f32], shape: Vec<usize>) {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes).unwrap();
    safetensors::serialize_to_file([(name, view)], None, path).unwrap();
}

fn sample_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sample"))
        .args(args)
        .output()
        .unwrap()
}

/// `sample --model DIR --prompt ... --init-noise ... --save-tensor ...` gives the library's
/// numbers, for a guided run with a negative prompt at a non-default size and for an
/// ancestral run with injected step noise.
#[test]
fn cli_replays_the_library_run() {
    let t = TensorFile::open(sd_dir().join("cases.safetensors"));
    let dir = tmp("cli");
    for run in runs() {
        if run.prompts.len() != 1 {
            continue;
        }
        let (ours, _) = library_run(&run, &t);
        let (h, w) = run.size;
        let x_t = dir.join(format!("{}-x_T.safetensors", run.name));
        let vs = 2; // the fixtures' vae_scale_factor
        write_tensor(
            &x_t,
            "x_T",
            &t.f32s(&format!("{}.x_T", run.name)),
            vec![run.batch, 4, h / vs, w / vs],
        );
        let out = dir.join(format!("{}-out.safetensors", run.name));
        let (hs, ws, steps, gs, batch) = (
            h.to_string(),
            w.to_string(),
            run.steps.to_string(),
            run.guidance.to_string(),
            run.batch.to_string(),
        );
        let mut args = vec![
            "--model",
            run.folder.to_str().unwrap(),
            "--prompt",
            &run.prompts[0],
            "--guidance-scale",
            &gs,
            "--steps",
            &steps,
            "--batch",
            &batch,
            "--height",
            &hs,
            "--width",
            &ws,
            "--init-noise",
            x_t.to_str().unwrap(),
            "--save-tensor",
            out.to_str().unwrap(),
            "--out",
            "none",
            "--quiet",
        ];
        if let Some(n) = &run.negative {
            args.extend(["--negative-prompt", n]);
        }
        let noise_path = dir.join(format!("{}-noise.safetensors", run.name));
        let scheduler_name;
        if let Some(s) = &run.scheduler {
            let z = t.f32s(&format!("{}.noise", run.name));
            write_tensor(
                &noise_path,
                "noise",
                &z,
                vec![run.steps, run.batch, 4, h / vs, w / vs],
            );
            scheduler_name = s.clone();
            args.extend([
                "--step-noise",
                noise_path.to_str().unwrap(),
                "--scheduler",
                &scheduler_name,
            ]);
        }
        let o = sample_cli(&args);
        assert!(
            o.status.success(),
            "{}: {}",
            run.name,
            String::from_utf8_lossy(&o.stderr)
        );
        let cli = TensorFile::open(&out).f32s("x_0");
        assert_eq!(cli, ours, "{}: CLI and library differ", run.name);
    }
}

/// One image of a text run from the latents `x_t` (seed 3 for anything not injected).
fn one_image_run(
    model: &Model,
    sampler: &Sampler,
    text: TextConditioning,
    x_t: &[f32],
) -> Vec<f32> {
    let opts = SampleOptions {
        text: Some(text),
        initial_noise: Some(x_t),
        ..SampleOptions::new(1, 3)
    };
    let mut ws = vec![f32::NAN; sampler.workspace_len(model, 1, text.guided())];
    let (c, h, w) = model.image_shape();
    let mut out = vec![0.0f32; c * h * w];
    sampler
        .sample(model, &mut ws, &opts, &mut out, None)
        .unwrap();
    out
}

/// A copy of the SD 1.x fixture folder without `component`.
fn folder_without(component: &str) -> PathBuf {
    let dir = tmp(&format!("without-{component}"));
    let src = sd_dir().join("sd1");
    for e in walk(&src) {
        let rel = e.strip_prefix(&src).unwrap();
        if rel.starts_with(component) {
            continue;
        }
        let to = dir.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&e, &to).unwrap();
    }
    dir
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

#[test]
fn bad_text_to_image_inputs_are_typed_errors() {
    let sd1 = sd_dir().join("sd1");
    let load = |size| Model::load_sized(&sd1, Default::default(), Reuse::Shared, size);
    // Height and width: positive multiples of 8.
    for (size, culprit) in [
        ((20, 16), "height"),
        ((16, 12), "width"),
        ((0, 16), "height"),
    ] {
        match load(Some(size)) {
            Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, culprit),
            Err(e) => panic!("{size:?}: {e}"),
            Ok(_) => panic!("{size:?} accepted"),
        }
    }
    // A missing component folder names its path.
    for component in ["tokenizer", "text_encoder"] {
        let dir = folder_without(component);
        if component == "text_encoder" {
            let err = Model::load(&dir).map(|_| ()).unwrap_err();
            assert!(matches!(err, Error::Io { .. }), "{err}");
            assert!(err.to_string().contains("text_encoder"), "{err}");
        }
        // The tokenizer is read by the front ends: the CLI names it.
        let o = sample_cli(&[
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "a cat",
            "--steps",
            "1",
            "--out",
            "none",
            "--quiet",
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{component}: accepted");
        assert!(stderr.contains(component), "{component}: {stderr}");
    }
    // A UNet2DConditionModel named without its text encoder.
    let dir = folder_without("text_encoder");
    let index = std::fs::read_to_string(dir.join("model_index.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&index).unwrap();
    v["text_encoder"] = serde_json::json!([null, null]);
    std::fs::write(dir.join("model_index.json"), v.to_string()).unwrap();
    match Model::load(&dir) {
        Err(Error::UnsupportedConfig { key, .. }) => assert!(key.contains("text_encoder"), "{key}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a conditional UNet without text encoder loaded"),
    }
    // A text pipeline whose vae is absent: refused, not sampled as latents.
    let dir = folder_without("vae");
    let index = std::fs::read_to_string(dir.join("model_index.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&index).unwrap();
    v["vae"] = serde_json::json!([null, null]);
    std::fs::write(dir.join("model_index.json"), v.to_string()).unwrap();
    match Model::load(&dir) {
        Err(Error::UnsupportedConfig { key, .. }) => assert!(key.contains("vae"), "{key}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a text pipeline without vae loaded"),
    }
    // --prompt on a UNet2DModel folder.
    let unet = fixtures_dir().join("tiny-gray8");
    let o = sample_cli(&[
        "--model",
        unet.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "1",
        "--out",
        "none",
        "--quiet",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("--prompt"),
        "{stderr}"
    );
    // The core: prompt ids on a model without text encoder, none on a text pipeline, a
    // guided run without negative ids, a wrong id count.
    let model = load(None).unwrap();
    let sampler = Sampler::new(
        &SamplerSpec::new(None).steps(1),
        &ModelFiles::find(&sd1)
            .unwrap()
            .load_scheduler_config()
            .unwrap(),
    )
    .unwrap();
    let ids = vec![0u32; 77];
    let mut ws = vec![0.0f32; sampler.workspace_len(&model, 1, true)];
    let mut out = vec![0.0f32; 3 * 16 * 16];
    let run = |text: Option<TextConditioning<'_>>, ws: &mut [f32], out: &mut [f32]| {
        let opts = SampleOptions {
            text,
            ..SampleOptions::new(1, 0)
        };
        sampler.sample(&model, ws, &opts, out, None)
    };
    match run(None, &mut ws, &mut out) {
        Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, "prompt"),
        other => panic!("{other:?}"),
    }
    match run(Some(TextConditioning::new(&ids)), &mut ws, &mut out) {
        Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, "negative prompt ids"),
        other => panic!("{other:?}"),
    }
    let short = &ids[..76];
    match run(
        Some(TextConditioning {
            guidance_scale: 1.0,
            ..TextConditioning::new(short)
        }),
        &mut ws,
        &mut out,
    ) {
        Err(Error::BufferSize { .. }) => {}
        other => panic!("{other:?}"),
    }
    let big = vec![100_000u32; 77];
    match run(
        Some(TextConditioning {
            guidance_scale: 1.0,
            ..TextConditioning::new(&big)
        }),
        &mut ws,
        &mut out,
    ) {
        Err(e) => assert!(e.to_string().contains("100000"), "{e}"),
        Ok(()) => panic!("an id outside the vocabulary ran"),
    }
    let plain = Model::load(&unet).unwrap();
    let mut ws = vec![0.0f32; sampler.workspace_len(&plain, 1, false)];
    let (c, h, w) = plain.image_shape();
    let mut out = vec![0.0f32; c * h * w];
    let opts = SampleOptions {
        text: Some(TextConditioning::new(&ids)),
        ..SampleOptions::new(1, 0)
    };
    match sampler.sample(&plain, &mut ws, &opts, &mut out, None) {
        Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, "prompt"),
        other => panic!("{other:?}"),
    }
}

/// A tokenizer whose `model_max_length` (16) is below the text encoder's
/// `max_position_embeddings` (77): diffusers pads prompts to the tokenizer's length and the
/// encoder sees that many positions, so the pipeline builds the encoder and the UNet's
/// cross-attention for 16 tokens. The causal mask makes the 16-token states the first 16 rows
/// of the 77-token ones (checked against the 77-token encoder, itself checked against
/// transformers in tests/text_encoder_parity.rs), and a guided 3-step run on that folder
/// matches diffusers' (`tests/tools/make_sd_short_tokenizer_fixture.py`, float64) within 1e-3.
#[test]
fn a_shorter_tokenizer_sets_the_text_length() {
    use tinydiffusion::model::text_encoder::TextEncoder;
    let dir = folder_without("none");
    let config_path = dir.join("tokenizer/tokenizer_config.json");
    let mut config = read_json(&config_path);
    config["model_max_length"] = 16.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = Model::load(&dir).unwrap();
    let short = model.text_encoder().unwrap();
    assert_eq!(short.tokens(), 16);
    let prompt = "a photo of a cat";
    let ids16 = ClipTokenizer::from_dir(&dir).unwrap().encode(prompt);
    let ids77 = ClipTokenizer::from_dir(sd_dir().join("sd1"))
        .unwrap()
        .encode(prompt);
    assert_eq!((ids16.len(), &ids16[..]), (16, &ids77[..16]));
    let full = TextEncoder::load(sd_dir().join("sd1/text_encoder"), 0).unwrap();
    assert_eq!(full.tokens(), 77);
    let encode = |enc: &TextEncoder, ids: &[u32]| {
        let mut ws = vec![0.0f32; enc.workspace_len(1)];
        let mut out = vec![0.0f32; enc.output_len()];
        enc.encode(0, &mut ws, ids, &mut out).unwrap();
        out
    };
    let (s16, s77) = (encode(short, &ids16), encode(&full, &ids77));
    let err = rel_l2(&s16, &s77[..s16.len()]);
    assert!(err < 1e-6, "16-token states vs the 77-token rows: {err:e}");

    let cfg = ModelFiles::find(&dir)
        .unwrap()
        .load_scheduler_config()
        .unwrap();
    let sampler = Sampler::new(&SamplerSpec::new(None).steps(3), &cfg).unwrap();
    let neg = ClipTokenizer::from_dir(&dir).unwrap().encode("");
    let text = TextConditioning {
        prompt_ids: &ids16,
        negative_ids: Some(&neg),
        guidance_scale: 7.5,
    };
    let reference = TensorFile::open(sd_dir().join("short-tokenizer.safetensors"));
    let mut out = one_image_run(&model, &sampler, text, &reference.f32s("x_T"));
    let err = rel_l2(&out, &reference.f64s("image"));
    println!("16-token pipeline run vs diffusers: rel L2 {err:.2e}");
    assert!(err <= 1e-3, "16-token pipeline run vs diffusers: {err:.3e}");
    // 77 ids on the 16-token pipeline: a typed size error, not a silent truncation.
    let wrong = TextConditioning {
        prompt_ids: &ids77,
        negative_ids: None,
        guidance_scale: 1.0,
    };
    let opts = SampleOptions {
        text: Some(wrong),
        ..SampleOptions::new(1, 3)
    };
    let mut ws = vec![0.0f32; sampler.workspace_len(&model, 1, true)];
    assert!(matches!(
        sampler.sample(&model, &mut ws, &opts, &mut out, None),
        Err(Error::BufferSize { .. })
    ));
    // Longer than the position table: refused naming the key.
    config["model_max_length"] = 78.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    match Model::load(&dir) {
        Err(Error::UnsupportedConfig { key, .. }) => assert_eq!(key, "model_max_length"),
        other => panic!("model_max_length 78: {:?}", other.err()),
    }
}

/// diffusers' `clip_skip` (`tests/tools/make_sd_clip_skip_fixture.py`, float64, clip_skip 1):
/// the prompt's states are the second-to-last hidden state through the final LayerNorm, the
/// negative prompt's the last hidden state (diffusers' `encode_prompt` skips for the prompt
/// only); a guided 3-step run matches diffusers' within 1e-3. Back to 0 gives the plain
/// encoder; a skip past the layers is an error naming `clip_skip`.
#[test]
fn clip_skip_matches_diffusers() {
    let dir = sd_dir().join("sd1");
    let reference = TensorFile::open(sd_dir().join("clip-skip.safetensors"));
    let mut model = Model::load(&dir).unwrap();
    assert_eq!(model.clip_skip(), 0);
    model.set_clip_skip(1).unwrap();
    assert_eq!(model.clip_skip(), 1);
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    let (ids, neg) = (tok.encode("a photo of a cat"), tok.encode("blurry"));
    let encode = |enc: &tinydiffusion::model::TextEncoder, ids: &[u32]| {
        let mut ws = vec![0.0f32; enc.workspace_len(1)];
        let mut out = vec![0.0f32; enc.output_len()];
        enc.encode(0, &mut ws, ids, &mut out).unwrap();
        out
    };
    let cond = encode(model.prompt_encoder().unwrap(), &ids);
    let uncond = encode(model.text_encoder().unwrap(), &neg);
    for (name, ours) in [("cond", &cond), ("uncond", &uncond)] {
        let err = rel_l2(ours, &reference.f64s(name));
        println!("clip_skip 1 {name} states vs diffusers: {err:.2e}");
        assert!(err <= 1e-4, "clip_skip 1 {name} states: {err:.3e}");
    }
    let cfg = ModelFiles::find(&dir)
        .unwrap()
        .load_scheduler_config()
        .unwrap();
    let sampler = Sampler::new(&SamplerSpec::new(None).steps(3), &cfg).unwrap();
    let text = TextConditioning {
        prompt_ids: &ids,
        negative_ids: Some(&neg),
        guidance_scale: 7.5,
    };
    let x_t = reference.f32s("x_T");
    let out = one_image_run(&model, &sampler, text, &x_t);
    let (_, h, w) = model.image_shape();
    let err = rel_l2(&out, &reference.f64s("image"));
    println!("clip_skip 1 pipeline run vs diffusers: rel L2 {err:.2e}");
    assert!(err <= 1e-3, "clip_skip 1 pipeline run: {err:.3e}");
    // The CLI's --clip-skip gives the library's bits.
    let dir_tmp = tmp("clip-skip");
    let (x_path, out_path) = (
        dir_tmp.join("x_T.safetensors"),
        dir_tmp.join("out.safetensors"),
    );
    let vs = 2; // the fixture's vae_scale_factor
    write_tensor(&x_path, "x_T", &x_t, vec![1, 4, h / vs, w / vs]);
    let o = sample_cli(&[
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "a photo of a cat",
        "--negative-prompt",
        "blurry",
        "--clip-skip",
        "1",
        "--steps",
        "3",
        "--init-noise",
        x_path.to_str().unwrap(),
        "--save-tensor",
        out_path.to_str().unwrap(),
        "--out",
        "none",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cli = TensorFile::open(&out_path).f32s("x_0");
    assert_eq!(cli, out, "CLI --clip-skip vs the library");
    // Back to the last hidden state; past the layers is refused.
    model.set_clip_skip(0).unwrap();
    assert_eq!(model.clip_skip(), 0);
    let layers = model.text_encoder().unwrap().config.num_hidden_layers;
    match model.set_clip_skip(layers + 1) {
        Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, "clip_skip"),
        other => panic!("clip_skip past the layers: {:?}", other.err()),
    }
}
