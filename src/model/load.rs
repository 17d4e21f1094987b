//! Loading from a folder (std): a `UNet2DModel` folder (`config.json` +
//! `diffusion_pytorch_model.safetensors`) or a diffusers pipeline folder (`model_index.json`,
//! `unet/`, `scheduler/scheduler_config.json`). Weights are memory-mapped, never read whole.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

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
    /// A text-to-image pipeline's `text_encoder/` (a `CLIPTextModel`).
    pub text_encoder: Option<PathBuf>,
    /// A text-to-image pipeline's `tokenizer/` (read by the std front ends, not the core).
    pub tokenizer: Option<PathBuf>,
    /// Components the folder holds that are neither loaded nor run (`safety_checker`,
    /// `feature_extractor`, `image_encoder`): the front ends say so once.
    pub not_run: Vec<String>,
}

/// What `model_index.json` names, checked ([`check_pipeline_components`]).
struct Components {
    forced: Option<SchedulerKind>,
    decoder: Option<String>,
    /// `text_encoder` and `tokenizer` (both or neither).
    text: bool,
    not_run: Vec<String>,
}

fn io_err(path: &Path, e: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A pipeline folder runs here as a UNet, a scheduler, at most one decoder (`vqvae` or `vae`: a
/// `VQModel`, `AutoencoderKL` or `AutoencoderTiny`) and, for a `UNet2DConditionModel`, a
/// `CLIPTextModel` `text_encoder` and a `CLIPTokenizer` `tokenizer` (a `StableDiffusionPipeline`).
/// `safety_checker`, `feature_extractor` and `image_encoder` may be present: they are not
/// loaded nor run ([`ModelFiles::not_run`]). A folder whose `model_index.json` names any other
/// component or class, or a conditional UNet without its text encoder and tokenizer (or those
/// without it), is refused with a typed error naming it, never run as a plain UNet pipeline.
/// Components saved as `[null, null]` (absent) are fine.
fn check_pipeline_components(path: &Path, text: &str) -> Result<Components> {
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
    let culprit = |key: &str| std::format!("{key} (in {})", path.display());
    let mut decoder = None;
    let (mut conditional, mut text_encoder, mut tokenizer) = (false, false, false);
    let mut not_run = Vec::new();
    for (key, value) in obj {
        if key.starts_with('_') || key == "scheduler" || absent(value) {
            continue;
        }
        // Neither the flag `requires_safety_checker` nor a component.
        if value.is_boolean() {
            continue;
        }
        let class = value.get(1).and_then(|c| c.as_str()).unwrap_or("?");
        match (key.as_str(), class) {
            ("unet", "UNet2DModel") => continue,
            ("unet", "UNet2DConditionModel") => {
                conditional = true;
                continue;
            }
            ("text_encoder", "CLIPTextModel") => {
                text_encoder = true;
                continue;
            }
            ("tokenizer", "CLIPTokenizer" | "CLIPTokenizerFast") => {
                tokenizer = true;
                continue;
            }
            ("safety_checker" | "feature_extractor" | "image_encoder", _) => {
                not_run.push(key.clone());
                continue;
            }
            _ => {}
        }
        let decoder_class = matches!(class, "VQModel" | "AutoencoderKL" | "AutoencoderTiny");
        if (key == "vqvae" || key == "vae") && decoder_class {
            if let Some(first) = &decoder {
                return Err(crate::error::unsupported(
                    &culprit(key),
                    std::format!("{class} (a second decoder beside {first})"),
                ));
            }
            decoder = Some(key.clone());
            continue;
        }
        let what = match key.as_str() {
            "unet" => "only a UNet2DModel or UNet2DConditionModel runs here",
            "text_encoder" => "only a CLIPTextModel text encoder runs here",
            "tokenizer" => "only a CLIPTokenizer is read here",
            _ => {
                "this project runs a UNet, a scheduler, one VQModel, AutoencoderKL or \
                 AutoencoderTiny decoder and a CLIPTextModel text encoder with its CLIPTokenizer \
                 only"
            }
        };
        return Err(crate::error::unsupported(
            &culprit(key),
            std::format!("{class} ({what})"),
        ));
    }
    let text = text_encoder || tokenizer;
    if conditional || text {
        for (present, key) in [
            (conditional, "unet"),
            (text_encoder, "text_encoder"),
            (tokenizer, "tokenizer"),
        ] {
            if !present {
                return Err(crate::error::unsupported(
                    &culprit(key),
                    "absent (a text-to-image pipeline needs a UNet2DConditionModel unet, a \
                     CLIPTextModel text_encoder and a CLIPTokenizer tokenizer)",
                ));
            }
        }
        // Without a decoder the run would hand back latents as if they were the image.
        if decoder.is_none() {
            return Err(crate::error::unsupported(
                &culprit("vae"),
                "absent (a text-to-image pipeline decodes its latents with its vae)",
            ));
        }
    }
    let forced = match obj.get("_class_name").and_then(|c| c.as_str()) {
        Some("DDIMPipeline") => Some(SchedulerKind::Ddim),
        Some("PNDMPipeline") => Some(SchedulerKind::Pndm),
        _ => None,
    };
    Ok(Components {
        forced,
        decoder,
        text,
        not_run,
    })
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
        let (unet, scheduler_dir, parts) = if index.is_file() {
            let parts = check_pipeline_components(&index, &read_text(&index)?)?;
            (dir.join("unet"), dir.join("scheduler"), Some(parts))
        } else {
            (dir.to_path_buf(), dir.to_path_buf(), None)
        };
        let pipeline_scheduler = parts.as_ref().and_then(|p| p.forced);
        let decoder = parts
            .as_ref()
            .and_then(|p| p.decoder.as_ref())
            .map(|key| dir.join(key));
        let text = parts.as_ref().is_some_and(|p| p.text);
        let not_run = parts.map(|p| p.not_run).unwrap_or_default();
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
            text_encoder: text.then(|| dir.join("text_encoder")),
            tokenizer: text.then(|| dir.join("tokenizer")),
            not_run,
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
        Model::load_sized(dir, options, reuse, None)
    }

    /// [`Model::load_with`] for images of `image_size` (height, width) instead of the
    /// pipeline's default (`unet.config.sample_size` times the decoder's upscale, diffusers'
    /// `vae_scale_factor`): both multiples of 8, as diffusers' pipelines require (a typed error
    /// naming `height` or `width` otherwise). The UNet's and the decoder's op lists are built
    /// for the latents of that size.
    pub fn load_sized(
        dir: impl AsRef<Path>,
        options: LoadOptions,
        reuse: Reuse,
        image_size: Option<(usize, usize)>,
    ) -> Result<Model> {
        let files = ModelFiles::find(dir.as_ref())?;
        let mut config = UNetConfig::from_json(&read_text(&files.config)?)?;
        if let Some((h, w)) = image_size {
            let up = match &files.decoder {
                Some(d) => DecoderConfig::from_json(&read_text(&d.join("config.json"))?)?.upscale(),
                None => 1,
            };
            for (what, v) in [("height", h), ("width", w)] {
                if v == 0 || !v.is_multiple_of(8) || !v.is_multiple_of(up) {
                    return Err(crate::error::invalid_arg(
                        what,
                        std::format!("{v} is not a positive multiple of 8 (and of {up})"),
                    ));
                }
            }
            config.sample_size = (h / up, w / up);
        }
        let tokenizer = match &files.tokenizer {
            Some(t) => Some(crate::text::ClipTokenizer::from_dir(t)?),
            None => None,
        };
        let text_encoder = match &files.text_encoder {
            // diffusers pads every prompt to the tokenizer's `model_max_length` and the
            // encoder sees that many positions.
            Some(d) => {
                let tokens = tokenizer.as_ref().map(|t| t.max_length());
                Some(TextEncoder::load_for_tokens(d, 0, tokens, options, reuse)?)
            }
            None => None,
        };
        if let (Some(te), Some(cross)) = (&text_encoder, &mut config.cross_attention) {
            if te.config.hidden_size != cross.cross_attention_dim {
                return Err(Error::UnsupportedConfig {
                    key: "cross_attention_dim".into(),
                    value: std::format!(
                        "{} (the text encoder's hidden_size is {})",
                        cross.cross_attention_dim,
                        te.config.hidden_size
                    ),
                });
            }
            // The cross-attention takes as many text rows as the encoder gives.
            cross.text_tokens = te.tokens();
        }
        let mut model = Model::new(config, map_file(&files.weights)?, options, reuse)?;
        if let Some(dir) = &files.decoder {
            let (_, h, w) = model.input_shape();
            let decoder = Decoder::load_with(dir, (h, w), options, reuse)?;
            model.set_decoder(Some(decoder))?;
        }
        if let Some(te) = text_encoder {
            model.set_text_encoder(Some(te))?;
        }
        model.text_encoder_source = files.text_encoder.clone().map(|d| (d, options));
        model.tokenizer = tokenizer;
        // One thread team size for every net.
        let threads = model.threads();
        model.set_threads(threads)?;
        Ok(model)
    }
}

impl Model {
    /// diffusers' `clip_skip` for the prompts of a text-to-image pipeline loaded from a folder:
    /// their states become the text encoder's hidden state `skip` layers before the last,
    /// through the final LayerNorm; the negative prompts keep the last hidden state, as
    /// diffusers' `encode_prompt` does. 0 goes back to the last hidden state. Loads the text
    /// encoder again for that layer (mapped: f16 weights are not copied); `skip` past the
    /// encoder's layers is an error naming `clip_skip`.
    pub fn set_clip_skip(&mut self, skip: usize) -> Result<()> {
        let (Some((dir, options)), Some(text)) =
            (self.text_encoder_source.clone(), self.text_encoder())
        else {
            return Err(crate::error::invalid_arg(
                "clip_skip",
                "only a text-to-image pipeline loaded from a folder has a text encoder to skip layers of",
            ));
        };
        if skip == 0 {
            return self.set_prompt_encoder(None);
        }
        let tokens = text.tokens();
        let encoder =
            TextEncoder::load_for_tokens(&dir, skip, Some(tokens), options, Reuse::Shared)?;
        self.set_prompt_encoder(Some(encoder))
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
        TextEncoder::load_for_tokens(dir, clip_skip, None, options, reuse)
    }

    /// [`TextEncoder::load_with`] for prompts of `tokens` ids (a pipeline's tokenizer
    /// `model_max_length`; `None`: `max_position_embeddings`).
    pub fn load_for_tokens(
        dir: &Path,
        clip_skip: usize,
        tokens: Option<usize>,
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
        let tokens = tokens.unwrap_or(cfg.max_position_embeddings);
        TextEncoder::new_for_tokens(cfg, map_file(&weights)?, options, clip_skip, tokens, reuse)
    }
}
