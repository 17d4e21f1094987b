//! Loading from a folder (std): a `UNet2DModel` folder (`config.json` +
//! `diffusion_pytorch_model.safetensors`) or a diffusers pipeline folder (`model_index.json`,
//! `unet/`, `scheduler/scheduler_config.json`). Weights are memory-mapped, never read whole.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::string::ToString;

use super::decoder::Decoder;
use super::decoder_config::DecoderConfig;
use super::text_encoder::TextEncoder;
use super::text_encoder_config::TextEncoderConfig;
use super::Model;
use crate::config::UNetConfig;
use crate::error::{Error, Result};
use crate::memory::Reuse;
use crate::schedule::{SchedulerConfig, SchedulerKind};
use crate::weights::{LoadOptions, WeightBytes};

/// The files of a model folder, resolved.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
    /// `scheduler/scheduler_config.json` of a pipeline folder, or `scheduler_config.json`
    /// beside the UNet's config, if present.
    pub scheduler_config: Option<PathBuf>,
    /// The scheduler class the folder's pipeline forces, whatever its scheduler config names:
    /// diffusers' `DDIMPipeline` and `PNDMPipeline` convert their scheduler with
    /// `from_config` when they are built (`model_index.json`'s `_class_name`).
    pub pipeline_scheduler: Option<SchedulerKind>,
    /// A latent pipeline's decoder folder (`vqvae/` of an `LDMPipeline`: a `VQModel`; or
    /// `vae/`: an `AutoencoderKL`), holding `config.json` and its safetensors weights.
    pub decoder: Option<PathBuf>,
}

fn io_err(path: &Path, e: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A pipeline folder runs here as a UNet2DModel, a scheduler and at most one decoder (`vqvae`
/// or `vae`: a `VQModel` or `AutoencoderKL`): a folder whose `model_index.json` names any other
/// component (a text encoder, a tokenizer, another autoencoder class...) or a UNet of another
/// class is refused with a typed error naming it, never run as a plain UNet pipeline (its
/// latents would come out as if they were images). Components saved as `[null, null]`
/// (absent) are fine.
///
/// Returns the scheduler class the pipeline class forces ([`ModelFiles::pipeline_scheduler`])
/// and the decoder component's key.
fn check_pipeline_components(
    path: &Path,
    text: &str,
) -> Result<(Option<SchedulerKind>, Option<std::string::String>)> {
    let root: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::InvalidJson {
        file: "model_index.json",
        message: e.to_string(),
    })?;
    let obj = root.as_object().ok_or_else(|| Error::InvalidJson {
        file: "model_index.json",
        message: "top level is not an object".into(),
    })?;
    let absent = |v: &serde_json::Value| match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.iter().all(serde_json::Value::is_null),
        _ => false,
    };
    let mut decoder = None;
    for (key, value) in obj {
        if key.starts_with('_') || key == "scheduler" || absent(value) {
            continue;
        }
        let class = value.get(1).and_then(|c| c.as_str()).unwrap_or("?");
        if key == "unet" && class == "UNet2DModel" {
            continue;
        }
        let decoder_class = matches!(class, "VQModel" | "AutoencoderKL" | "AutoencoderTiny");
        if (key == "vqvae" || key == "vae") && decoder_class {
            if let Some(first) = &decoder {
                return Err(crate::error::unsupported(
                    &std::format!("{key} (in {})", path.display()),
                    std::format!("{class} (a second decoder beside {first})"),
                ));
            }
            decoder = Some(key.clone());
            continue;
        }
        let what = if key == "unet" {
            "only a UNet2DModel runs here"
        } else {
            "this project runs a UNet2DModel, a scheduler and one VQModel, AutoencoderKL or \
             AutoencoderTiny decoder only"
        };
        return Err(crate::error::unsupported(
            &std::format!("{key} (in {})", path.display()),
            std::format!("{class} ({what})"),
        ));
    }
    let forced = match obj.get("_class_name").and_then(|c| c.as_str()) {
        Some("DDIMPipeline") => Some(SchedulerKind::Ddim),
        Some("PNDMPipeline") => Some(SchedulerKind::Pndm),
        _ => None,
    };
    Ok((forced, decoder))
}

impl ModelFiles {
    pub fn find(dir: &Path) -> Result<ModelFiles> {
        if !dir.is_dir() {
            return Err(io_err(
                dir,
                "not a folder (give a UNet2DModel or diffusers pipeline folder)",
            ));
        }
        let index = dir.join("model_index.json");
        let (unet, scheduler_dir, pipeline_scheduler, decoder) = if index.is_file() {
            let (forced, decoder) = check_pipeline_components(&index, &read_text(&index)?)?;
            let decoder = decoder.map(|key| dir.join(key));
            (dir.join("unet"), dir.join("scheduler"), forced, decoder)
        } else {
            (dir.to_path_buf(), dir.to_path_buf(), None, None)
        };
        let config = unet.join("config.json");
        if !config.is_file() {
            return Err(io_err(
                &config,
                "missing (a UNet2DModel folder holds config.json)",
            ));
        }
        let weights = unet.join("diffusion_pytorch_model.safetensors");
        if !weights.is_file() {
            return Err(io_err(
                &weights,
                "missing (only safetensors weights are read)",
            ));
        }
        let scheduler_config =
            Some(scheduler_dir.join("scheduler_config.json")).filter(|p| p.is_file());
        Ok(ModelFiles {
            config,
            weights,
            scheduler_config,
            pipeline_scheduler,
            decoder,
        })
    }

    /// The folder's scheduler config ([`ModelFiles::scheduler_config`]), or diffusers'
    /// `DDPMScheduler()` defaults when it has none, converted to the class the pipeline forces
    /// (`DDIMPipeline`: DDIM, `PNDMPipeline`: PNDM, keeping the schedule options, as
    /// `from_config` does): what every front end builds its sampler from
    /// ([`crate::sampler::Sampler::new`]).
    pub fn load_scheduler_config(&self) -> Result<SchedulerConfig> {
        let cfg = match &self.scheduler_config {
            Some(path) => SchedulerConfig::from_json(&read_text(path)?)?,
            None => SchedulerConfig::ddpm_default(),
        };
        Ok(match self.pipeline_scheduler {
            Some(kind) => cfg.with_kind(kind)?,
            None => cfg,
        })
    }
}

pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| io_err(path, e))
}

/// Memory-maps a weights file.
pub fn map_file(path: &Path) -> Result<WeightBytes> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the map is read-only and private to this process. Another process truncating or
    // rewriting the file while it is mapped is outside what any mmap-based loader can defend
    // against (the same contract as llama.cpp's and safetensors' own mmap loading).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    Ok(WeightBytes::Mapped(map))
}

impl Model {
    /// Loads a model folder (UNet or pipeline) with memory-mapped weights.
    pub fn load(dir: impl AsRef<Path>) -> Result<Model> {
        Model::load_with(dir, LoadOptions::default(), Reuse::Shared)
    }

    pub fn load_with(dir: impl AsRef<Path>, options: LoadOptions, reuse: Reuse) -> Result<Model> {
        let files = ModelFiles::find(dir.as_ref())?;
        let config = UNetConfig::from_json(&read_text(&files.config)?)?;
        let mut model = Model::new(config, map_file(&files.weights)?, options, reuse)?;
        if let Some(dir) = &files.decoder {
            let (_, h, w) = model.input_shape();
            let decoder = Decoder::load_with(dir, (h, w), options, reuse)?;
            model.set_decoder(Some(decoder))?;
            // One thread team size for both nets.
            let threads = model.threads();
            model.set_threads(threads)?;
        }
        Ok(model)
    }
}

impl Decoder {
    /// Loads a `VQModel` / `AutoencoderKL` folder (`config.json` +
    /// `diffusion_pytorch_model.safetensors`, memory-mapped) as the decoder of
    /// `(height, width)` latents.
    pub fn load_with(
        dir: &Path,
        latent_size: (usize, usize),
        options: LoadOptions,
        reuse: Reuse,
    ) -> Result<Decoder> {
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(io_err(
                &config,
                "missing (a VQModel or AutoencoderKL folder holds config.json)",
            ));
        }
        let weights = dir.join("diffusion_pytorch_model.safetensors");
        if !weights.is_file() {
            return Err(io_err(
                &weights,
                "missing (only safetensors weights are read)",
            ));
        }
        let cfg = DecoderConfig::from_json(&read_text(&config)?)?;
        Decoder::new(cfg, map_file(&weights)?, options, latent_size, reuse)
    }
}

impl TextEncoder {
    /// Loads a `CLIPTextModel` folder (a pipeline's `text_encoder/`: `config.json` +
    /// `model.safetensors`, memory-mapped) for `clip_skip` (0: `last_hidden_state`).
    pub fn load(dir: impl AsRef<Path>, clip_skip: usize) -> Result<TextEncoder> {
        TextEncoder::load_with(
            dir.as_ref(),
            clip_skip,
            LoadOptions::default(),
            Reuse::Shared,
        )
    }

    pub fn load_with(
        dir: &Path,
        clip_skip: usize,
        options: LoadOptions,
        reuse: Reuse,
    ) -> Result<TextEncoder> {
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(io_err(
                &config,
                "missing (a CLIPTextModel folder holds config.json)",
            ));
        }
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(io_err(
                &weights,
                "missing (only safetensors weights are read)",
            ));
        }
        let cfg = TextEncoderConfig::from_json(&read_text(&config)?)?;
        TextEncoder::new(cfg, map_file(&weights)?, options, clip_skip, reuse)
    }
}
