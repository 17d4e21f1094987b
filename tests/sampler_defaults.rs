//! The sampler defaults are one set, valid for any model: on a model trained with only 20
//! timesteps, `sample --scheduler ddim` (and every other kind) without `--steps` works, and the
//! `sample` tool and the C API (`steps` 0) choose the same step counts, the ones of
//! `sampler::default_steps`. Into a log (stderr not a terminal) the progress line is printed
//! at most about ten times.

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixtures_dir;
use tinydiffusion::capi::*;
use tinydiffusion::sampler::{default_steps, SamplerKind};

const TRAIN_TIMESTEPS: usize = 20;

/// tiny-rgb16 with a DDPM scheduler config of `TRAIN_TIMESTEPS` training timesteps.
fn short_schedule_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let src = fixtures_dir().join("tiny-rgb16");
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("scheduler_config.json"),
        format!(r#"{{"_class_name": "DDPMScheduler", "num_train_timesteps": {TRAIN_TIMESTEPS}}}"#),
    )
    .unwrap();
}

/// The step count the `sample` tool reports for `--scheduler kind` (None: the folder's class)
/// without `--steps`, and its progress lines.
fn cli_steps(dir: &Path, kind: Option<SamplerKind>, out: &Path) -> (usize, usize) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sample"));
    cmd.args(["--model", dir.to_str().unwrap(), "--batch", "1", "--out"])
        .arg(out);
    if let Some(k) = kind {
        cmd.args(["--scheduler", k.name()]);
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{kind:?}: {err}");
    assert!(
        !err.contains('\r'),
        "{kind:?}: a log gets no carriage returns: {err:?}"
    );
    let progress = err.lines().filter(|l| l.starts_with("step ")).count();
    let summary = err.lines().last().unwrap();
    let steps = summary
        .split(" steps (")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{kind:?}: no step count in {summary:?}"));
    (steps, progress)
}

fn c_steps(model: *const td_model, kind: td_scheduler_kind) -> usize {
    let desc = td_scheduler_desc {
        kind: kind as i32,
        ..td_scheduler_desc_default()
    };
    assert_eq!(
        desc.steps, 0,
        "the default description asks for the default steps"
    );
    let mut sched = std::ptr::null_mut();
    let mut steps = 0;
    // SAFETY: live model, readable description, valid out-pointers; the scheduler is freed once.
    unsafe {
        assert_eq!(td_scheduler_new(model, &desc, &mut sched), td_status::Ok);
        assert_eq!(td_scheduler_num_steps(sched, &mut steps), td_status::Ok);
        td_scheduler_free(sched);
    }
    steps
}

#[test]
fn cli_and_c_api_defaults_agree_on_a_short_schedule() {
    let tmp: PathBuf =
        std::env::temp_dir().join(format!("tinydiffusion-defaults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let dir = tmp.join("model");
    short_schedule_model(&dir);
    let path = CString::new(dir.to_str().unwrap()).unwrap();
    let mut model = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    assert_eq!(
        unsafe { td_model_load(path.as_ptr(), &mut model) },
        td_status::Ok
    );
    let cases = [
        (None, td_scheduler_kind::FromConfig, SamplerKind::Ddpm),
        (
            Some(SamplerKind::Ddpm),
            td_scheduler_kind::Ddpm,
            SamplerKind::Ddpm,
        ),
        (
            Some(SamplerKind::Ddim),
            td_scheduler_kind::Ddim,
            SamplerKind::Ddim,
        ),
        (
            Some(SamplerKind::Sde),
            td_scheduler_kind::Sde,
            SamplerKind::Sde,
        ),
        (
            Some(SamplerKind::Ode),
            td_scheduler_kind::Ode,
            SamplerKind::Ode,
        ),
        (
            Some(SamplerKind::Pc),
            td_scheduler_kind::Pc,
            SamplerKind::Pc,
        ),
    ];
    for (cli_kind, c_kind, kind) in cases {
        let want = default_steps(kind, TRAIN_TIMESTEPS);
        assert!(want <= TRAIN_TIMESTEPS);
        let (cli, progress) = cli_steps(&dir, cli_kind, &tmp.join("out.png"));
        assert_eq!(cli, want, "sample --scheduler {kind:?}");
        assert_eq!(c_steps(model, c_kind), want, "C API {kind:?}");
        assert!(
            (1..=11).contains(&progress),
            "{kind:?}: {progress} progress lines for {want} steps"
        );
    }
    // DDIM's default of 50 steps would not fit 20 training timesteps: it is min(50, T).
    assert_eq!(
        default_steps(SamplerKind::Ddim, TRAIN_TIMESTEPS),
        TRAIN_TIMESTEPS
    );
    // SAFETY: no other user.
    unsafe { td_model_free(model) };
    let _ = std::fs::remove_dir_all(&tmp);
}
