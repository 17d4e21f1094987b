//! Checkpoints: a diffusers `DDPMPipeline` folder plus the training state beside it.
//!
//! ```text
//! OUT/checkpoint-00001000/
//!   model_index.json                        DDPMPipeline
//!   unet/config.json                        the UNet2DModel config
//!   unet/diffusion_pytorch_model.safetensors the EMA weights (f16 by default, diffusers names)
//!   scheduler/scheduler_config.json         DDPMScheduler with the training schedule
//!   training_state.json                     step, seed, options
//!   training_state.safetensors              f32 params, EMA, Adam moments (diffusers names,
//!                                           prefixed `param.`, `ema.`, `adam_m.`, `adam_v.`)
//! OUT/latest                                name of the newest complete checkpoint
//! ```
//!
//! Atomicity: a checkpoint is written whole into `OUT/.tmp-checkpoint-N/` (files synced), then
//! renamed to its final name, then `OUT/latest` is replaced by write-to-temp + rename. Killing
//! the trainer at any moment leaves `latest` naming a complete checkpoint; a stale temporary
//! folder is removed by the next save.

use std::path::{Path, PathBuf};
use std::string::{String, ToString};

use serde_json::{json, Value};

use crate::error::{Error, Result};

fn io_err(path: &Path, e: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `data` to `path` via a temporary file in the same folder, synced, then renamed.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(std::format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(data).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// The files of one checkpoint, as bytes, before they are written.
pub struct CheckpointFiles {
    pub step: u64,
    pub unet_config: String,
    pub unet_weights: Vec<u8>,
    pub scheduler_config: String,
    /// The pipeline and scheduler classes of `model_index.json`.
    pub pipeline: (&'static str, &'static str),
    pub state_json: String,
    pub state_tensors: Vec<u8>,
}

/// `model_index.json` of a `DDPMPipeline` (`ScoreSdeVePipeline` for a fourier model).
pub fn model_index((pipeline, scheduler): (&str, &str)) -> String {
    let v = json!({
        "_class_name": pipeline,
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", scheduler],
        "unet": ["diffusers", "UNet2DModel"],
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// The UNet config as diffusers writes it: the given config with `_class_name` set.
pub fn unet_config(config_json: &str) -> Result<String> {
    let mut v: Value = serde_json::from_str(config_json).map_err(|e| Error::InvalidJson {
        file: "config.json",
        message: e.to_string(),
    })?;
    if let Some(o) = v.as_object_mut() {
        o.insert("_class_name".into(), json!("UNet2DModel"));
        o.entry("_diffusers_version").or_insert(json!("0.42.1"));
    }
    Ok(serde_json::to_string_pretty(&v).unwrap_or_default())
}

pub fn checkpoint_name(step: u64) -> String {
    std::format!("checkpoint-{step:08}")
}

/// Writes a checkpoint into `out` atomically, points `out/latest` at it, and keeps only the
/// newest `keep` checkpoints. Returns the checkpoint's folder.
pub fn save(out: &Path, files: &CheckpointFiles, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let name = checkpoint_name(files.step);
    let tmp = out.join(std::format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    for sub in ["unet", "scheduler"] {
        std::fs::create_dir_all(tmp.join(sub)).map_err(|e| io_err(&tmp, e))?;
    }
    write_atomic(
        &tmp.join("model_index.json"),
        model_index(files.pipeline).as_bytes(),
    )?;
    write_atomic(&tmp.join("unet/config.json"), files.unet_config.as_bytes())?;
    write_atomic(
        &tmp.join("unet/diffusion_pytorch_model.safetensors"),
        &files.unet_weights,
    )?;
    write_atomic(
        &tmp.join("scheduler/scheduler_config.json"),
        files.scheduler_config.as_bytes(),
    )?;
    write_atomic(
        &tmp.join("training_state.safetensors"),
        &files.state_tensors,
    )?;
    write_atomic(
        &tmp.join("training_state.json"),
        files.state_json.as_bytes(),
    )?;
    let dst = out.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(|e| io_err(&dst, e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| io_err(&dst, e))?;
    write_atomic(&out.join("latest"), name.as_bytes())?;
    prune(out, keep)?;
    Ok(dst)
}

/// Removes all but the newest `keep` checkpoints (never the one `latest` names).
fn prune(out: &Path, keep: usize) -> Result<()> {
    let latest = std::fs::read_to_string(out.join("latest")).unwrap_or_default();
    let mut names: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| io_err(out, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep.max(1));
    for n in names.iter().take(excess) {
        if *n != latest.trim() {
            let p = out.join(n);
            std::fs::remove_dir_all(&p).map_err(|e| io_err(&p, e))?;
        }
    }
    Ok(())
}

/// The newest complete checkpoint of a training output folder.
pub fn latest(out: &Path) -> Result<PathBuf> {
    let p = out.join("latest");
    let name = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
    let dir = out.join(name.trim());
    if !dir.join("training_state.json").is_file() {
        return Err(io_err(&dir, "checkpoint named by `latest` is incomplete"));
    }
    Ok(dir)
}
