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
