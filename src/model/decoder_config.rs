//! The decoder half of diffusers' autoencoders: a `VQModel` or `AutoencoderKL` `config.json`
//! parsed into a [`DecoderConfig`] (typed errors naming the key). Encoder-only keys are read
//! and checked for type, then ignored: only the decoder runs here.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::Value;

use crate::error::{unsupported, Error, Result};

const FILE: &str = "config.json";

/// Which autoencoder class the decoder comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    /// `VQModel`: the nearest-codebook-entry lookup (`quantize`), `post_quant_conv`, `decoder`.
    Vq {
        num_vq_embeddings: usize,
        vq_embed_dim: usize,
    },
    /// `AutoencoderKL`: optional `post_quant_conv`, `decoder`.
    Kl { use_post_quant_conv: bool },
    /// `AutoencoderTiny` (TAESD): `DecoderTiny`, the latent clamp `tanh(x / 3) * 3`, ReLU
    /// blocks, nearest upsampling; output mapped from [0, 1] to [-1, 1].
    Tiny,
}

/// A `VQModel` / `AutoencoderKL` decoder (diffusers' `Decoder` with `UNetMidBlock2D` and
/// `UpDecoderBlock2D`s, `norm_type` "group", `act_fn` "silu").
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub kind: DecoderKind,
    /// Image channels of the output.
    pub out_channels: usize,
    /// Channels of the decoder's input (after `post_quant_conv`).
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    /// Resnets per up block are `layers_per_block + 1`.
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub mid_block_add_attention: bool,
    /// `sample_size`: the image size the autoencoder was trained at (informative).
    pub sample_size: (usize, usize),
    /// Pipelines divide latents by it before decoding.
    pub scaling_factor: f64,
    /// `AutoencoderKL`'s `shift_factor` (added after the division), if set.
    pub shift_factor: Option<f64>,
    /// `AutoencoderTiny`: `num_decoder_blocks` (AutoencoderTinyBlocks per level); empty
    /// otherwise.
    pub tiny_blocks: Vec<usize>,
}

fn json_err(message: impl Into<String>) -> Error {
    Error::InvalidJson {
        file: FILE,
        message: message.into(),
    }
}

fn bad(key: &str, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        key: key.into(),
        message: message.into(),
    }
}

fn size(key: &str, v: &Value) -> Result<usize> {
    const MAX: u64 = 1 << 20;
    match v.as_u64() {
        Some(n) if (1..=MAX).contains(&n) => Ok(n as usize),
        _ => Err(bad(
            key,
            alloc::format!("expected an integer in 1..={MAX}, got {v}"),
        )),
    }
}

fn number(key: &str, v: &Value) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(bad(key, alloc::format!("expected a number, got {v}"))),
    }
}

fn flag(key: &str, v: &Value) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| bad(key, alloc::format!("expected true or false, got {v}")))
}

fn strings(key: &str, v: &Value) -> Result<Vec<String>> {
    let list = v
        .as_array()
        .ok_or_else(|| bad(key, alloc::format!("expected a list, got {v}")))?;
    list.iter()
        .map(|s| {
            s.as_str()
                .map(String::from)
                .ok_or_else(|| bad(key, alloc::format!("expected a string, got {s}")))
        })
        .collect()
}

impl DecoderConfig {
    /// Parses a `VQModel` or `AutoencoderKL` `config.json`; `_class_name` decides which
    /// (diffusers' defaults of that class for every key it does not give).
    pub fn from_json(text: &str) -> Result<DecoderConfig> {
        let root: Value = serde_json::from_str(text).map_err(|e| json_err(e.to_string()))?;
        let obj = root
            .as_object()
            .ok_or_else(|| json_err("top level is not an object"))?;
        let class = obj
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("_class_name", "missing (VQModel or AutoencoderKL)"))?;
        let vq = match class {
            "VQModel" => true,
            "AutoencoderKL" => false,
            "AutoencoderTiny" => return DecoderConfig::tiny_from_json(obj),
            other => {
                return Err(unsupported(
                    "_class_name",
                    alloc::format!("{other} (decoders: VQModel, AutoencoderKL, AutoencoderTiny)"),
                ))
            }
        };
        let mut out_channels = 3;
        let mut latent_channels = if vq { 3 } else { 4 };
        let mut up_types: Vec<String> = alloc::vec!["UpDecoderBlock2D".into()];
        let mut block_out_channels = alloc::vec![64];
        let mut layers_per_block = 1;
        let mut norm_num_groups = 32;
        let mut sample_size = (32, 32);
        let mut scaling_factor = 0.18215;
        let mut shift_factor = None;
        let mut num_vq_embeddings = 256;
        let mut vq_embed_dim = None;
        let mut mid_block_add_attention = true;
        let mut use_post_quant_conv = true;
        for (key, v) in obj {
            let k = key.as_str();
            match k {
                _ if k.starts_with('_') => {}
                "out_channels" => out_channels = size(k, v)?,
                "latent_channels" => latent_channels = size(k, v)?,
                "up_block_types" => up_types = strings(k, v)?,
                "block_out_channels" => {
                    block_out_channels = v
                        .as_array()
                        .ok_or_else(|| bad(k, alloc::format!("expected a list, got {v}")))?
                        .iter()
                        .map(|c| size(k, c))
                        .collect::<Result<_>>()?
                }
                "layers_per_block" => layers_per_block = size(k, v)?,
                "norm_num_groups" => norm_num_groups = size(k, v)?,
                "sample_size" => {
                    sample_size = match v {
                        Value::Array(hw) if hw.len() == 2 => (size(k, &hw[0])?, size(k, &hw[1])?),
                        _ => {
                            let s = size(k, v)?;
                            (s, s)
                        }
                    }
                }
                "scaling_factor" => {
                    scaling_factor = number(k, v)?;
                    if scaling_factor == 0.0 {
                        return Err(bad(k, "must not be 0 (latents are divided by it)"));
                    }
                }
                "mid_block_add_attention" => mid_block_add_attention = flag(k, v)?,
                "act_fn" if v.as_str() == Some("silu") => {}
                "norm_type" if vq && v.as_str() == Some("group") => {}
                "num_vq_embeddings" if vq => num_vq_embeddings = size(k, v)?,
                "vq_embed_dim" if vq => {
                    vq_embed_dim = if v.is_null() { None } else { Some(size(k, v)?) }
                }
                // Decoding with force_not_quantize (the codebook lookup variant) is not what
                // `decode` does by default; the flag only matters then.
                "lookup_from_codebook" if vq => {
                    flag(k, v)?;
                }
                "shift_factor" if !vq => {
                    shift_factor = if v.is_null() {
                        None
                    } else {
                        Some(number(k, v)?)
                    }
                }
                "use_post_quant_conv" if !vq => use_post_quant_conv = flag(k, v)?,
                // Encoder, training or precision options: no effect on the decoder.
                "in_channels" => {
                    size(k, v)?;
                }
                "down_block_types" => {
                    strings(k, v)?;
                }
                "force_upcast" | "use_quant_conv" => {
                    flag(k, v)?;
                }
                "latents_mean" | "latents_std" if !vq => {}
                _ => return Err(unsupported(k, v)),
            }
        }
        let levels = block_out_channels.len();
        if up_types.len() != levels {
            return Err(bad(
                "up_block_types",
                alloc::format!("{} blocks for {levels} block_out_channels", up_types.len()),
            ));
        }
        if let Some(t) = up_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(unsupported("up_block_types", t));
        }
        if levels == 0 || levels > crate::config::MAX_BLOCKS {
            return Err(bad("block_out_channels", alloc::format!("{levels} blocks")));
        }
        if let Some(c) = block_out_channels
            .iter()
            .find(|c| !(*c).is_multiple_of(norm_num_groups))
        {
            return Err(bad(
                "norm_num_groups",
                alloc::format!("{norm_num_groups} does not divide {c} channels"),
            ));
        }
        let kind = if vq {
            DecoderKind::Vq {
                num_vq_embeddings,
                vq_embed_dim: vq_embed_dim.unwrap_or(latent_channels),
            }
        } else {
            DecoderKind::Kl {
                use_post_quant_conv,
            }
        };
        Ok(DecoderConfig {
            kind,
            out_channels,
            latent_channels,
            block_out_channels,
            layers_per_block,
            norm_num_groups,
            mid_block_add_attention,
            sample_size,
            scaling_factor,
            shift_factor,
            tiny_blocks: Vec::new(),
        })
    }

    /// `AutoencoderTiny`'s keys (diffusers' defaults: TAESD's layout).
    fn tiny_from_json(obj: &serde_json::Map<String, Value>) -> Result<DecoderConfig> {
        let mut out_channels = 3;
        let mut latent_channels = 4;
        let mut block_out_channels = alloc::vec![64, 64, 64, 64];
        let mut tiny_blocks = alloc::vec![3, 3, 3, 1];
        let mut scaling_factor = 1.0;
        let mut shift_factor = 0.0;
        let sizes = |k: &str, v: &Value| -> Result<Vec<usize>> {
            v.as_array()
                .ok_or_else(|| bad(k, alloc::format!("expected a list, got {v}")))?
                .iter()
                .map(|c| size(k, c))
                .collect()
        };
        for (key, v) in obj {
            let k = key.as_str();
            match k {
                _ if k.starts_with('_') => {}
                "out_channels" => out_channels = size(k, v)?,
                "latent_channels" => latent_channels = size(k, v)?,
                "decoder_block_out_channels" => block_out_channels = sizes(k, v)?,
                "num_decoder_blocks" => {
                    tiny_blocks = v
                        .as_array()
                        .ok_or_else(|| bad(k, alloc::format!("expected a list, got {v}")))?
                        .iter()
                        .map(|n| match n.as_u64() {
                            Some(n) if n <= 64 => Ok(n as usize),
                            _ => Err(bad(k, alloc::format!("expected 0..=64, got {n}"))),
                        })
                        .collect::<Result<_>>()?
                }
                "scaling_factor" => {
                    scaling_factor = number(k, v)?;
                    if scaling_factor == 0.0 {
                        return Err(bad(k, "must not be 0 (latents are divided by it)"));
                    }
                }
                "shift_factor" => shift_factor = number(k, v)?,
                "act_fn" if v.as_str() == Some("relu") => {}
                "upsample_fn" if v.as_str() == Some("nearest") => {}
                "upsampling_scaling_factor" if v.as_u64() == Some(2) => {}
                // Encoder and encode-side options.
                "in_channels" => {
                    size(k, v)?;
                }
                // diffusers registers `block_out_channels` = the encoder's too.
                "encoder_block_out_channels" | "num_encoder_blocks" | "block_out_channels" => {
                    sizes(k, v)?;
                }
                "latent_magnitude" | "latent_shift" => {
                    number(k, v)?;
                }
                "force_upcast" => {
                    flag(k, v)?;
                }
                _ => return Err(unsupported(k, v)),
            }
        }
        let levels = block_out_channels.len();
        if levels == 0 || levels > crate::config::MAX_BLOCKS {
            return Err(bad(
                "decoder_block_out_channels",
                alloc::format!("{levels} blocks"),
            ));
        }
        if tiny_blocks.len() != levels {
            return Err(bad(
                "num_decoder_blocks",
                alloc::format!("{} entries for {levels} blocks", tiny_blocks.len()),
            ));
        }
        Ok(DecoderConfig {
            kind: DecoderKind::Tiny,
            out_channels,
            latent_channels,
            block_out_channels,
            layers_per_block: 0,
            norm_num_groups: 1,
            mid_block_add_attention: false,
            sample_size: (0, 0),
            scaling_factor,
            shift_factor: Some(shift_factor),
            tiny_blocks,
        })
    }

    /// Channels of the latents the decoder takes (`vq_embed_dim` for a VQ model).
    pub fn input_channels(&self) -> usize {
        match self.kind {
            DecoderKind::Vq { vq_embed_dim, .. } => vq_embed_dim,
            DecoderKind::Kl { .. } | DecoderKind::Tiny => self.latent_channels,
        }
    }

    /// How many times the decoder doubles height and width.
    pub fn upscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// diffusers' class name.
    pub fn class_name(&self) -> &'static str {
        match self.kind {
            DecoderKind::Vq { .. } => "VQModel",
            DecoderKind::Kl { .. } => "AutoencoderKL",
            DecoderKind::Tiny => "AutoencoderTiny",
        }
    }
}
