//! The `sample` binary end to end: replay of a diffusers run from a pipeline folder, PNG
//! output, seeded reproducibility, and one-line errors for bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixtures_dir, read_json, rel_l2, TensorFile};

fn sample(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sample"))
        .args(args)
        .output()
        .expect("run sample")
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinydiffusion-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A diffusers pipeline folder (model_index.json, unet/, scheduler/) made from a fixture model
/// and a case's scheduler config.
fn pipeline_folder(model: &str, scheduler: &serde_json::Value, dir: &Path) {
    let src = fixtures_dir().join(model);
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join(f), dir.join("unet").join(f)).unwrap();
    }
    std::fs::write(
        dir.join("scheduler/scheduler_config.json"),
        scheduler.to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("model_index.json"),
        r#"{"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1", "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}"#,
    )
    .unwrap();
}

fn write_f32(path: &Path, name: &str, shape: &[usize], data: &[f32]) {
    tinydiffusion::io::write_tensors(path, &[(name, shape, data)]).unwrap();
}

#[test]
fn replays_a_diffusers_run_from_a_pipeline_folder() {
    for (model, case_name, flags) in [
        (
            "tiny-gray8",
            "ddim20_eta1_trailing",
            &["--scheduler", "ddim", "--eta", "1"][..],
        ),
        (
            "tiny-rgb16",
            "ddpm50_fixed_small",
            &["--scheduler", "ddpm"][..],
        ),
    ] {
        let dir = scratch_dir(case_name);
        let cases = read_json(fixtures_dir().join(model).join("cases.json"));
        let case = cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == case_name)
            .unwrap();
        let tensors = TensorFile::open(fixtures_dir().join(model).join("cases.safetensors"));
        pipeline_folder(model, &case["scheduler"], &dir.join("pipe"));
        let x_t_name = case["inputs"]["x_T"].as_str().unwrap();
        let noise_name = case["inputs"]["noise"].as_str().unwrap();
        let shape = tensors.shape(x_t_name);
        write_f32(
            &dir.join("x_T.safetensors"),
            "x_T",
            &shape,
            &tensors.f32s(x_t_name),
        );
        write_f32(
            &dir.join("noise.safetensors"),
            "noise",
            &tensors.shape(noise_name),
            &tensors.f32s(noise_name),
        );
        let steps = case["num_inference_steps"].to_string();
        let batch = shape[0].to_string();
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let pipe = p("pipe");
        let mut args = vec![
            "--model", &pipe, "--steps", &steps, "--batch", &batch, "--quiet",
        ];
        args.extend_from_slice(flags);
        let (x_t, noise, x_0, png) = (
            p("x_T.safetensors"),
            p("noise.safetensors"),
            p("x_0.safetensors"),
            p("grid.png"),
        );
        args.extend_from_slice(&[
            "--init-noise",
            &x_t,
            "--step-noise",
            &noise,
            "--save-tensor",
            &x_0,
            "--out",
            &png,
        ]);
        let o = sample(&args);
        assert!(o.status.success(), "{case_name}: {}", stderr(&o));
        let ours = TensorFile::open(dir.join("x_0.safetensors")).f64s("x_0");
        let traj = tensors.f64s(case["expected"]["traj"].as_str().unwrap());
        let err = rel_l2(&ours, &traj[traj.len() - ours.len()..]);
        println!("{model}/{case_name} via CLI: {err:.2e}");
        assert!(err <= 1e-3, "{case_name}: {err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn png_grid_has_the_right_size_and_seeds_reproduce_bytes() {
    let dir = scratch_dir("png");
    let model = fixtures_dir().join("tiny-class16");
    let run = |out: &str, seed: &str, threads: &str| {
        let out = dir.join(out).to_string_lossy().into_owned();
        let m = model.to_string_lossy().into_owned();
        let o = sample(&[
            "--threads",
            threads,
            "--model",
            &m,
            "--scheduler",
            "ddim",
            "--steps",
            "5",
            "--batch",
            "3",
            "--grid",
            "2",
            "--seed",
            seed,
            "--class-label",
            "2",
            "--guidance",
            "1.5",
            "--out",
            &out,
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(out).unwrap()
    };
    let a = run("a.png", "11", "1");
    let b = run("b.png", "11", "3");
    let c = run("c.png", "12", "1");
    assert_eq!(
        a, b,
        "same seed and flags must give the same bytes, whatever --threads"
    );
    assert_ne!(a, c, "another seed must give another image");
    let decoder = png::Decoder::new(std::io::Cursor::new(&a));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    // 3 images of 16x16 in 2 columns with a 2-pixel gap: 34 x 34, RGB.
    assert_eq!(
        (info.width, info.height, info.color_type),
        (34, 34, png::ColorType::Rgb)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_gives_one_line_and_nonzero_exit() {
    let model = fixtures_dir()
        .join("tiny-rgb16")
        .to_string_lossy()
        .into_owned();
    let class = fixtures_dir()
        .join("tiny-class16")
        .to_string_lossy()
        .into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", "/nonexistent/folder"], "not a folder"),
        (vec!["--model", &model, "--steps", "abc"], "--steps"),
        (vec!["--model", &model, "--scheduler", "xyz"], "--scheduler"),
        (vec!["--model", &model, "--steps", "0"], "steps"),
        (vec!["--model", &model, "--steps", "5000"], "steps"),
        (vec!["--model", &model, "--batch", "0"], "--batch"),
        (vec!["--model", &model, "--bogus"], "unknown argument"),
        (
            vec!["--model", &model, "--class-label", "1"],
            "not class-conditional",
        ),
        (
            vec!["--model", &model, "--guidance", "2"],
            "not class-conditional",
        ),
        (
            vec!["--model", &class, "--class-label", "99"],
            "out of range",
        ),
        (vec!["--model", &model, "--height", "64"], "--height"),
        (
            vec!["--model", &model, "--kernels", "quantum"],
            "kernel path",
        ),
        (
            vec![
                "--model",
                &model,
                "--init-noise",
                "/nonexistent.safetensors",
            ],
            "nonexistent",
        ),
        (
            vec!["--model", &model, "--precision", "bf16"],
            "--precision",
        ),
    ];
    // f16 where the CPU has no f16 arithmetic: the typed refusal, naming the feature.
    let no_f16 = !tinydiffusion::kernels::KernelPath::F16
        .iter()
        .any(|p| p.is_available());
    let cases = cases
        .into_iter()
        .chain(no_f16.then(|| (vec!["--model", &model, "--precision", "f16"], "FEAT_FP16")));
    for (args, needle) in cases {
        let mut all = args.clone();
        all.push("--quiet");
        all.extend_from_slice(&["--out", "/dev/null"]);
        let o = sample(&all);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} should fail");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: expected one line, got:\n{err}"
        );
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: '{err}' lacks '{needle}'"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

#[test]
fn help_lists_the_flags() {
    let o = sample(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--model",
        "--scheduler",
        "--steps",
        "--eta",
        "--init-noise",
        "--step-noise",
        "--save-tensor",
        "--guidance",
        "--ode-solver",
        "--corrector-steps",
        "--snr",
        "--sde-eps",
        "sde | ode | pc",
        "--precision",
        "sample tokenize --model DIR --prompt TEXT",
    ] {
        assert!(text.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn sde_schedulers_sample_and_match_the_rust_api() {
    use tinydiffusion::sampler::{self, Method, SampleOptions};
    use tinydiffusion::schedule::{Predictor, SchedulerConfig, SdeConfig, SdeSampler};
    let dir = scratch_dir("sde");
    let model_dir = fixtures_dir().join("tiny-gray8");
    let m = model_dir.to_string_lossy().into_owned();
    let model = tinydiffusion::Model::load(&model_dir).unwrap();
    let cases: [(&[&str], SdeConfig); 4] = [
        (&["--scheduler", "sde", "--steps", "4"], SdeConfig::sde(4)),
        (
            &["--scheduler", "ode", "--steps", "3"],
            SdeConfig::ode(Predictor::OdeHeun, 3),
        ),
        (
            &[
                "--scheduler",
                "ode",
                "--ode-solver",
                "euler",
                "--steps",
                "3",
                "--sde-eps",
                "0.01",
            ],
            SdeConfig {
                t_eps: 0.01,
                ..SdeConfig::ode(Predictor::OdeEuler, 3)
            },
        ),
        (
            &[
                "--scheduler",
                "pc",
                "--steps",
                "2",
                "--corrector-steps",
                "2",
                "--snr",
                "0.1",
            ],
            SdeConfig {
                snr: 0.1,
                ..SdeConfig::pc(2, 2)
            },
        ),
    ];
    for (k, (flags, cfg)) in cases.iter().enumerate() {
        let out = dir.join(format!("{k}.safetensors"));
        let png = dir.join(format!("{k}.png"));
        let mut args = vec!["--model", &m, "--batch", "2", "--seed", "3", "--quiet"];
        let (o1, o2) = (
            out.to_string_lossy().into_owned(),
            png.to_string_lossy().into_owned(),
        );
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--save-tensor", &o1, "--out", &o2]);
        let o = sample(&args);
        assert!(o.status.success(), "{flags:?}: {}", stderr(&o));
        let got = TensorFile::open(&out).f32s("x_0");
        let sde = SdeSampler::new(&SchedulerConfig::ddpm_default(), *cfg).unwrap();
        let method = Method::Sde(&sde);
        let mut ws = vec![0.0f32; sampler::workspace_len_with(&model, method, 2, false)];
        let mut want = vec![0.0f32; got.len()];
        sampler::sample_with(
            &model,
            method,
            &mut ws,
            &SampleOptions::new(2, 3),
            &mut want,
            None,
        )
        .unwrap();
        assert_eq!(got, want, "{flags:?}");
    }
    let o = sample(&["--model", &m, "--scheduler", "ode", "--ode-solver", "rk4"]);
    assert!(!o.status.success() && stderr(&o).contains("--ode-solver"));
    let o = sample(&["--model", &m, "--scheduler", "sde", "--sde-eps", "1.5"]);
    assert!(!o.status.success() && stderr(&o).contains("--sde-eps"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A model with 2 channels (neither gray nor RGB): the tensor is written, the PNG shows each
/// image's channels as gray tiles, `--out none` writes no picture, and without `--batch` the
/// batch is the injected x_T's.
#[test]
fn any_channel_count_and_batch_from_init_noise() {
    let dir = scratch_dir("channels");
    let model = fixtures_dir().join("extra/options-a"); // 2 channels, 8x16
    let x_t: Vec<f32> = (0..3 * 2 * 8 * 16)
        .map(|i| ((i % 7) as f32 - 3.0) / 3.0)
        .collect();
    let init = dir.join("x_T.safetensors");
    write_f32(&init, "x_T", &[3, 2, 8, 16], &x_t);
    let (png, tensor) = (dir.join("grid.png"), dir.join("x_0.safetensors"));
    let o = sample(&[
        "--model",
        model.to_str().unwrap(),
        "--scheduler",
        "ddim",
        "--steps",
        "2",
        "--init-noise",
        init.to_str().unwrap(),
        "--save-tensor",
        tensor.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 channels"), "{}", stderr(&o));
    let t = TensorFile::open(&tensor);
    assert_eq!(t.shape("x_0"), vec![3, 2, 8, 16]);
    // Three rows (images) of two 16-wide tiles (channels), 2-pixel gaps, gray.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (2 * 16 + 2, 3 * 8 + 2 * 2));
    assert_eq!(info.color_type, png::ColorType::Grayscale);

    let none = dir.join("none-x_0.safetensors");
    let o = sample(&[
        "--model",
        model.to_str().unwrap(),
        "--scheduler",
        "ddim",
        "--steps",
        "2",
        "--init-noise",
        init.to_str().unwrap(),
        "--save-tensor",
        none.to_str().unwrap(),
        "--out",
        "none",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!Path::new("none").exists());
    // A preview that cannot be written is a one-line note, not an error after sampling.
    let kept = dir.join("kept-x_0.safetensors");
    let o = sample(&[
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "2",
        "--init-noise",
        init.to_str().unwrap(),
        "--save-tensor",
        kept.to_str().unwrap(),
        "--out",
        "/nonexistent-folder/grid.png",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let notes = err
        .lines()
        .filter(|l| l.contains("preview not written"))
        .count();
    assert_eq!(notes, 1, "{err}");
    assert_eq!(TensorFile::open(&kept).shape("x_0"), vec![3, 2, 8, 16]);
    assert_eq!(
        TensorFile::open(&none).f32s("x_0"),
        t.f32s("x_0"),
        "same run, same bits"
    );
}

/// `sample --model LDM_DIR --steps N --init-noise X [--step-noise Z] --save-tensor OUT` replays
/// diffusers' `LDMPipeline` (the saved tensor is the decoder's output, before the pipeline maps
/// it to [0, 1]); `sample decode` decodes a latents file with the pipeline's `vqvae`.
#[test]
fn latent_pipelines_replay_and_decode() {
    let latent = fixtures_dir().join("latent");
    let t = TensorFile::open(latent.join("cases.safetensors"));
    let dir = scratch_dir("latent");
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let model = latent.join("ldm");
    for (name, steps, eta) in [("ldm_eta0", "4", None), ("ldm_eta05", "5", Some("0.5"))] {
        let x_t = t.f32s(&format!("{name}.x_T"));
        write_f32(&dir.join("x_T.safetensors"), "x_T", &[1, 3, 8, 8], &x_t);
        let mut args = vec![
            "--model".to_string(),
            model.to_str().unwrap().into(),
            "--steps".into(),
            steps.into(),
            "--init-noise".into(),
            p("x_T.safetensors"),
            "--save-tensor".into(),
            p("out.safetensors"),
            "--out".into(),
            p("out.png"),
        ];
        if let Some(eta) = eta {
            let noise = t.f32s(&format!("{name}.noise"));
            let rows = noise.len() / x_t.len();
            write_f32(
                &dir.join("noise.safetensors"),
                "noise",
                &[rows, 1, 3, 8, 8],
                &noise,
            );
            args.extend(["--eta".into(), eta.into(), "--step-noise".into()]);
            args.push(p("noise.safetensors"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = sample(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let out = TensorFile::open(dir.join("out.safetensors"));
        assert_eq!(out.shape("x_0"), [1, 3, 16, 16]);
        let err = rel_l2(&out.f32s("x_0"), &t.f64s(&format!("{name}.image")));
        assert!(err <= 1e-3, "{name}: {err:.2e}");
    }
    write_f32(
        &dir.join("z.safetensors"),
        "z",
        &[2, 3, 8, 8],
        &t.f32s("vq.z"),
    );
    let vae = latent.join("ldm/vqvae");
    let o = sample(&[
        "decode",
        "--vae",
        vae.to_str().unwrap(),
        "--latents",
        &p("z.safetensors"),
        "--save-tensor",
        &p("dec.safetensors"),
        "--out",
        &p("dec.png"),
    ]);
    assert!(o.status.success(), "decode: {}", stderr(&o));
    let dec = TensorFile::open(dir.join("dec.safetensors"));
    let err = rel_l2(&dec.f32s("image"), &t.f64s("vq.out"));
    assert!(err <= 1e-4, "decode: {err:.2e}");
    // A decoder folder that is not one is a one-line error.
    let o = sample(&[
        "decode",
        "--vae",
        model.join("unet").to_str().unwrap(),
        "--latents",
        &p("z.safetensors"),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("_class_name"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}
