//! The `train` binary end to end on the shipped MNIST copy: a short class-conditional run, a
//! run interrupted and resumed with `--resume` giving byte-identical checkpoints (with every
//! original flag, and with only `--resume DIR --steps N`), a flag that contradicts the
//! checkpoint rejected, the same run on 1 and 3 threads giving byte-identical checkpoints, the
//! loss CSV, and `train eval` on held-out images.
#![cfg(feature = "train")]

use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIG: &str = r#"{"_class_name":"UNet2DModel","sample_size":32,"in_channels":1,"out_channels":1,
"block_out_channels":[8,16],"layers_per_block":1,"down_block_types":["DownBlock2D","AttnDownBlock2D"],
"up_block_types":["AttnUpBlock2D","UpBlock2D"],"norm_num_groups":4,"attention_head_dim":8,"num_class_embeds":11}"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn train(args: &[&str], kernels: Option<&str>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    if let Some(path) = kernels {
        cmd.env(tinydiffusion::kernels::KERNELS_ENV, path);
    }
    let out = cmd.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "train {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn train_resume_and_eval_cli() {
    let tmp = std::env::temp_dir().join(format!("tinydiffusion-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let config = tmp.join("config.json");
    std::fs::write(&config, CONFIG).unwrap();
    let data = root().join("data/mnist");
    let (a, b, c, d) = (tmp.join("a"), tmp.join("b"), tmp.join("c"), tmp.join("d"));
    let e = tmp.join("e");
    let g = tmp.join("g");
    let common = |out: &Path, steps: &str| -> Vec<String> {
        [
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--steps",
            steps,
            "--batch",
            "2",
            "--lr",
            "1e-3",
            "--seed",
            "7",
            "--save-every",
            "2",
            "--label-dropout",
            "0.1",
            "--warmup",
            "2",
            "--log-every",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run_on =
        |v: Vec<String>, kernels| train(&v.iter().map(String::as_str).collect::<Vec<_>>(), kernels);
    let run = |v: Vec<String>| run_on(v, None);
    run(common(&a, "4"));
    run(common(&b, "2"));
    let mut resume = common(&b, "4");
    resume.push("--resume".into());
    run(resume);
    // Resumed with only the folder and the step count: the rest comes from the checkpoint and
    // OUT/run.json.
    run(common(&g, "2"));
    train(&["--resume", g.to_str().unwrap(), "--steps", "4"], None);
    // A flag that contradicts the checkpoint is an error naming it.
    let bad = Command::new(env!("CARGO_BIN_EXE_train"))
        .args([
            "--resume",
            g.to_str().unwrap(),
            "--steps",
            "6",
            "--lr",
            "5e-4",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("--lr") && err.contains("checkpoint"),
        "{err}"
    );
    for (dir, threads) in [(&c, "1"), (&d, "3")] {
        let mut v = common(dir, "4");
        v.extend(["--threads".to_string(), threads.to_string()]);
        run(v);
    }
    // The AVX2 product kernel, where the default is AVX-512 (the same bits), or the portable one.
    let (other_path, other_what) = if tinydiffusion::kernels::KernelPath::Avx2.is_available() {
        ("avx2", "the AVX2 run")
    } else {
        ("scalar", "the scalar-path run")
    };
    run_on(common(&e, "4"), Some(other_path));
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "training_state.safetensors",
        "training_state.json",
    ] {
        let x = read(&a.join("checkpoint-00000004").join(f));
        for (other, what) in [
            (&b, "the resumed run"),
            (&g, "the run resumed with --resume DIR --steps N only"),
            (&c, "the 1-thread run"),
            (&d, "the 3-thread run"),
            (&e, other_what),
        ] {
            assert!(
                x == read(&other.join("checkpoint-00000004").join(f)),
                "{f} differs between the uninterrupted run and {what}"
            );
        }
    }
    let csv = String::from_utf8(read(&a.join("loss.csv"))).unwrap();
    assert_eq!(
        csv,
        String::from_utf8(read(&b.join("loss.csv"))).unwrap(),
        "loss logs differ"
    );
    assert_eq!(csv.lines().count(), 5, "{csv}");
    let ckpt = a.join("checkpoint-00000004");
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .args([
            "eval",
            "--model",
            ckpt.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args(["--range", "9000..9002", "--timesteps", "4", "--batch", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("bits/dim"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// `--beta-schedule` takes every schedule the core's parser does and writes it to the
/// checkpoint's scheduler config; an unknown schedule and x0 (`sample`) prediction are refused.
#[test]
fn schedule_and_prediction_flags() {
    use tinydiffusion::schedule::{BetaSchedule, PredictionType, SchedulerConfig};
    let tmp = std::env::temp_dir().join(format!("tinydiffusion-cli-flags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let config = tmp.join("config.json");
    std::fs::write(&config, CONFIG).unwrap();
    let data = root().join("data/mnist");
    let out = tmp.join("out");
    let args = |schedule: &str, prediction: &str| -> Vec<String> {
        [
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--steps",
            "1",
            "--batch",
            "1",
            "--beta-schedule",
            schedule,
            "--prediction",
            prediction,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let fails = |v: Vec<String>, what: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_train"))
            .args(&v)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && err.contains(what), "{v:?}: {err}");
    };
    fails(args("cosine", "epsilon"), "sigmoid | laplace");
    fails(args("linear", "sample"), "--prediction");
    train(
        &args("sigmoid", "v_prediction")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        None,
    );
    let written =
        std::fs::read_to_string(out.join("checkpoint-00000001/scheduler/scheduler_config.json"))
            .unwrap();
    let cfg = SchedulerConfig::from_json(&written).unwrap();
    assert_eq!(
        (cfg.beta_schedule, cfg.prediction_type),
        (BetaSchedule::Sigmoid, PredictionType::VPrediction)
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
