//! Whole-family pipeline folders against diffusers 0.42's own pipelines
//! (`tests/fixtures/unet-c/`, made by `tests/tools/make_unet_c_fixtures.py`): a
//! `ScoreSdeVePipeline` with a tiny NCSN++ UNet, a `ConsistencyModelPipeline` with an OpenAI
//! consistency-model-shaped UNet (1 and 2 steps), and a `DDPMPipeline` with an improved-DDPM UNet
//! (learned variance, `learned_range`). Each run is replayed as the held-out folders are, by
//! `sample --model DIR --steps N --init-noise X [--step-noise Z] --save-tensor OUT` (the folder's
//! pipeline and scheduler decide what runs), and through the library's `Sampler` front end;
//! x_0 <= 1e-3 relative L2 of diffusers' float64 run.

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures_dir, read_json, rel_l2, TensorFile};
use tinydiffusion::model::load::ModelFiles;
use tinydiffusion::sampler::{SampleOptions, SamplerSpec};
use tinydiffusion::Model;

struct Run {
    name: String,
    dir: PathBuf,
    steps: usize,
    labels: Option<Vec<i64>>,
    x_t: Vec<f32>,
    noise: Option<Vec<f32>>,
    x_0: Vec<f64>,
    image: Vec<f64>,
}

fn runs() -> (Vec<Run>, TensorFile) {
    let root = fixtures_dir().join("unet-c");
    let meta = read_json(root.join("runs.json"));
    let t = TensorFile::open(root.join("runs.safetensors"));
    let runs = meta["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = r["name"].as_str().unwrap().to_string();
            let noise_key = format!("{name}.noise");
            Run {
                dir: root.join(r["folder"].as_str().unwrap()),
                steps: r["steps"].as_u64().unwrap() as usize,
                labels: r["class_labels"]
                    .as_array()
                    .map(|l| l.iter().map(|v| v.as_i64().unwrap()).collect()),
                x_t: t.f32s(&format!("{name}.x_T")),
                noise: t.has(&noise_key).then(|| t.f32s(&noise_key)),
                x_0: t.f64s(&format!("{name}.x_0")),
                image: t.f64s(&format!("{name}.image")),
                name,
            }
        })
        .collect();
    (runs, t)
}

#[test]
fn pipeline_folders_match_diffusers_through_the_library() {
    let (runs, _) = runs();
    assert_eq!(runs.len(), 4);
    let mut report = String::new();
    let mut worst = 0.0f64;
    for run in &runs {
        let model = Model::load(&run.dir).unwrap();
        let cfg = ModelFiles::find(&run.dir)
            .unwrap()
            .load_scheduler_config()
            .unwrap();
        let sampler = SamplerSpec::new(None).steps(run.steps).build(&cfg).unwrap();
        let n = run.x_t.len();
        let (c, h, w) = model.image_shape();
        let batch = n / (c * h * w);
        // diffusers' draws: DDPMPipeline draws none at t = 0 (N - 1 rows for N steps).
        let rows = run.noise.as_ref().map_or(0, |z| z.len() / n);
        assert_eq!(sampler.method().noise_draws(), rows, "{}: draws", run.name);
        assert!(sampler.method().accepts_noise_rows(rows), "{}", run.name);
        let opts = SampleOptions {
            initial_noise: Some(&run.x_t),
            step_noise: run.noise.as_deref(),
            class_labels: run.labels.as_deref(),
            ..SampleOptions::new(batch, 0)
        };
        let mut ws = vec![f32::NAN; sampler.workspace_len(&model, batch, false)];
        let mut out = vec![0.0f32; n];
        sampler
            .sample(&model, &mut ws, &opts, &mut out, None)
            .unwrap();
        // DDPM/DDIM also take one row per step (the project's own layout; no draw at t = 0):
        // the same run.
        let rows_per_step = sampler.noise_rows();
        if rows_per_step != rows {
            let mut padded = run.noise.clone().unwrap();
            padded.resize(rows_per_step * n, f32::NAN);
            let mut again = vec![0.0f32; n];
            let opts = SampleOptions {
                step_noise: Some(&padded),
                ..opts
            };
            sampler
                .sample(&model, &mut ws, &opts, &mut again, None)
                .unwrap();
            assert_eq!(again, out, "{}: rows per step", run.name);
        }
        let err = rel_l2(&out, &run.x_0);
        // The pipeline's post-processing of our x_0 against its output image.
        let post: Vec<f32> = if run.name.starts_with("ve") {
            out.iter().map(|v| v.clamp(0.0, 1.0)).collect()
        } else {
            out.iter()
                .map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
                .collect()
        };
        let err_image = rel_l2(&post, &run.image);
        report += &format!(
            "{:<8} {:?}: x_0 {err:.2e}, image {err_image:.2e}\n",
            run.name,
            sampler.kind()
        );
        worst = worst.max(err).max(err_image);
    }
    println!("{report}");
    assert!(worst <= 1e-3, "worst {worst:.2e}\n{report}");
}

fn write_tensor(path: &Path, name: &str, data: &[f32], shape: &[usize]) {
    tinydiffusion::io::write_tensors(path, &[(name, shape, data)]).unwrap();
}

#[test]
fn cli_replays_pipeline_folders() {
    let (runs, t) = runs();
    let scratch = std::env::temp_dir().join(format!("tinydiffusion-unet-c-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut report = String::new();
    let mut failures = Vec::new();
    for run in &runs {
        let x_t = scratch.join(format!("{}-x_T.safetensors", run.name));
        let out = scratch.join(format!("{}-x_0.safetensors", run.name));
        write_tensor(
            &x_t,
            "x_T",
            &run.x_t,
            &t.shape(&format!("{}.x_T", run.name)),
        );
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sample"));
        cmd.args(["--model", run.dir.to_str().unwrap()])
            .args(["--steps", &run.steps.to_string()])
            .args(["--init-noise", x_t.to_str().unwrap()])
            .args(["--save-tensor", out.to_str().unwrap()])
            .args(["--out", "none", "--quiet"]);
        if let Some(z) = &run.noise {
            let p = scratch.join(format!("{}-noise.safetensors", run.name));
            write_tensor(&p, "noise", z, &t.shape(&format!("{}.noise", run.name)));
            cmd.args(["--step-noise", p.to_str().unwrap()]);
        }
        if let Some(l) = &run.labels {
            let l: Vec<String> = l.iter().map(|v| v.to_string()).collect();
            cmd.args(["--class-label", &l.join(",")]);
        }
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            run.name,
            String::from_utf8_lossy(&o.stderr)
        );
        let got = TensorFile::open(&out).f32s("x_0");
        let err = rel_l2(&got, &run.x_0);
        report += &format!("cli {:<8} x_0 {err:.2e}\n", run.name);
        if err.is_nan() || err > 1e-3 {
            failures.push(format!("{}: {err:.3e}", run.name));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{report}");
    assert!(failures.is_empty(), "{failures:?}\n{report}");
}

/// `class_embed_type: "identity"`: the caller's float class embeddings `[batch,
/// time_embed_dim]` added to the time embedding, against diffusers in float64 (<= 1e-4).
#[test]
fn identity_class_embeddings_match_diffusers() {
    let dir = fixtures_dir().join("unet-c/identity8");
    let t = TensorFile::open(dir.join("forward.safetensors"));
    let model = Model::load(&dir).unwrap();
    assert!(model.config.identity_class_embedding);
    // diffusers ignores num_class_embeds with "identity": no table, no labels.
    assert_eq!(model.config.num_class_embeds, None);
    let (x, ts, emb) = (t.f32s("x"), t.f32s("t"), t.f32s("class_embeddings"));
    let mut out = vec![0.0f32; x.len()];
    let mut ws = vec![f32::NAN; model.workspace_len(3)];
    model
        .forward_with_class_embeddings(&mut ws, &x, &ts, &emb, &mut out)
        .unwrap();
    let err = rel_l2(&out, &t.f64s("out"));
    println!("identity8 forward: {err:.2e}");
    assert!(err <= 1e-4, "{err:.2e}");
    // One row is every sample's.
    let e = model.config.time_embed_dim;
    let repeated: Vec<f32> = emb[..e].iter().cycle().take(3 * e).copied().collect();
    let (mut one, mut all) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
    model
        .forward_with_class_embeddings(&mut ws, &x, &ts, &emb[..e], &mut one)
        .unwrap();
    model
        .forward_with_class_embeddings(&mut ws, &x, &ts, &repeated, &mut all)
        .unwrap();
    assert_eq!(one, all);

    // Typed errors, never a panic.
    let key = |r: tinydiffusion::Result<()>| format!("{}", r.unwrap_err());
    let e1 = key(model.forward(&mut ws, &x, &ts, None, &mut out));
    assert!(e1.contains("class embeddings"), "{e1}");
    let e2 = key(model.forward_with_class_embeddings(&mut ws, &x, &ts, &emb[..5], &mut out));
    assert!(e2.contains("class embeddings"), "{e2}");
    let plain = Model::load(fixtures_dir().join("unet-a/gelu8")).unwrap();
    let (x2, mut out2) = (vec![0.0f32; 128], vec![0.0f32; 128]);
    let mut ws2 = vec![0.0f32; plain.workspace_len(1)];
    let e3 = key(plain.forward_with_class_embeddings(&mut ws2, &x2, &[1.0], &[0.0; 24], &mut out2));
    assert!(e3.contains("class embeddings"), "{e3}");
    // No sampler supplies embeddings: the front end refuses the model, naming the key.
    let cfg = tinydiffusion::schedule::SchedulerConfig::ddpm_default();
    let sampler = SamplerSpec::new(None).steps(2).build(&cfg).unwrap();
    let mut ws = vec![0.0f32; sampler.workspace_len(&model, 1, false)];
    let mut img = vec![0.0f32; 128];
    let e4 = sampler
        .sample(&model, &mut ws, &SampleOptions::new(1, 0), &mut img, None)
        .unwrap_err();
    assert!(
        matches!(&e4, tinydiffusion::Error::UnsupportedConfig { key, .. } if key == "class_embed_type"),
        "{e4}"
    );
    // The CLI says so in one line.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sample"))
        .args([
            "--model",
            dir.to_str().unwrap(),
            "--steps",
            "2",
            "--out",
            "none",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("class_embed_type"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The trainer's forward and backward of `class_embed_type: "identity"` (float class
/// embeddings added to the time embedding) against PyTorch float64 autograd
/// (`tests/tools/make_identity_grad_fixture.py`): loss and every parameter's gradient within
/// 1e-3 relative L2. The `Trainer` (integer-labelled datasets) refuses the model by name.
#[cfg(feature = "train")]
#[test]
fn trainer_gradients_with_identity_class_embeddings_match_pytorch() {
    use common::simple_loss;
    use tinydiffusion::model::describe_config;
    use tinydiffusion::schedule::SchedulerConfig;
    use tinydiffusion::train::loss::NoiseSchedule;
    use tinydiffusion::train::{Dropout, TrainGraph};
    let dir = fixtures_dir().join("unet-c/identity8");
    let model = Model::load(&dir).unwrap();
    let graph = TrainGraph::new(&describe_config(&model.config).unwrap()).unwrap();
    assert_eq!(
        graph.class_embedding_dim(),
        Some(model.config.time_embed_dim)
    );
    let table = &graph.params;
    let mut params = vec![0.0f32; table.buffer_len()];
    let weights = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    table.read_safetensors(&weights, "", &mut params).unwrap();
    let g = TensorFile::open(dir.join("grad.safetensors"));
    let (x0, eps, x_t, emb) = (
        g.f32s("x0"),
        g.f32s("eps"),
        g.f32s("x_t"),
        g.f32s("class_embeddings"),
    );
    let t: Vec<usize> = g.i64s("t").iter().map(|&v| v as usize).collect();
    let tf: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let mut ws = graph.workspace(t.len());
    // Labels or no embeddings are typed errors naming the argument.
    let no_emb = graph
        .forward(&params, &mut ws, &x_t, &tf, None)
        .unwrap_err();
    assert!(format!("{no_emb}").contains("class embeddings"), "{no_emb}");
    let short = graph
        .forward_with_class_embeddings(&params, &mut ws, &x_t, &tf, &emb[..3], Dropout::Off)
        .unwrap_err();
    assert!(format!("{short}").contains("class embeddings"), "{short}");
    graph
        .forward_with_class_embeddings(&params, &mut ws, &x_t, &tf, &emb, Dropout::Off)
        .unwrap();
    let sched = NoiseSchedule::new(&SchedulerConfig::ddpm_default()).unwrap();
    let (c, h, w) = model.input_shape();
    let loss = simple_loss(&mut ws, &sched, c, h * w, &x0, &eps, &x_t, &t);
    let want = g.f64s("loss")[0];
    let loss_err = (loss.total - want).abs() / want.abs();
    println!("identity8 loss {} vs {want} ({loss_err:.1e})", loss.total);
    assert!(loss_err <= 1e-4);
    let mut grads = vec![0.0f32; table.buffer_len()];
    graph.backward(&params, &mut grads, &mut ws, None).unwrap();
    let mut worst = (0.0f64, String::new());
    for spec in table.specs() {
        let expected = g.f64s(&format!("param.{}", spec.name));
        if expected.iter().map(|v| v * v).sum::<f64>().sqrt() < 1e-8 {
            continue;
        }
        let err = rel_l2(&table.export(spec, &grads), &expected);
        assert!(err <= 1e-3, "{}: {err:.2e}", spec.name);
        if err > worst.0 {
            worst = (err, spec.name.clone());
        }
    }
    println!("identity8 gradients: worst {:.2e} ({})", worst.0, worst.1);
    let n_params = g.names().iter().filter(|n| n.starts_with("param.")).count();
    assert_eq!(n_params, table.specs().len());

    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let data = tinydiffusion::train::data::Dataset {
        channels: c,
        height: h,
        width: w,
        images: vec![0.0; c * h * w],
        labels: None,
    };
    let err = tinydiffusion::train::Trainer::new(
        &config,
        tinydiffusion::train::trainer::Init::Seeded(1),
        data,
        Default::default(),
    )
    .err()
    .unwrap();
    assert!(format!("{err}").contains("class_embed_type"), "{err}");
}
