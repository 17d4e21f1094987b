//! `UNet2DModel` configuration: diffusers' `config.json`, parsed and validated.
//!
//! Every key diffusers writes is either understood or rejected with an error naming the key and
//! its value; nothing is silently ignored that would change the computation.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::Value;

use crate::error::{unsupported, Error, Result};
use crate::model::ops::Activation;

/// The kinds of down block diffusers' `UNet2DModel` can hold that this library runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlockKind {
    /// `DownBlock2D`: resnets only.
    Plain,
    /// `AttnDownBlock2D`: each resnet followed by a self-attention block.
    Attention,
    /// `ResnetDownsampleBlock2D`: resnets, downsampled by a resnet with `down=True`.
    ResnetDownsample,
    /// `SkipDownBlock2D` (NCSN++): resnets, then a FIR-downsampling resnet plus a 1x1 conv of
    /// the FIR-downsampled input image.
    Skip,
    /// `AttnSkipDownBlock2D`: as [`DownBlockKind::Skip`], each resnet followed by attention.
    AttentionSkip,
    /// `CrossAttnDownBlock2D` (`UNet2DConditionModel`): each resnet followed by a
    /// `Transformer2DModel` attending to the text states.
    CrossAttention,
}

/// The kinds of up block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBlockKind {
    /// `UpBlock2D`.
    Plain,
    /// `AttnUpBlock2D`.
    Attention,
    /// `ResnetUpsampleBlock2D`: resnets, upsampled by a resnet with `up=True`.
    ResnetUpsample,
    /// `SkipUpBlock2D` (NCSN++): resnets, then a FIR-upsampling resnet; the running output
    /// image is FIR-upsampled and gets a 3x3 conv of the block's features added.
    Skip,
    /// `AttnSkipUpBlock2D`: as [`UpBlockKind::Skip`], one attention block after the resnets.
    AttentionSkip,
    /// `CrossAttnUpBlock2D` (`UNet2DConditionModel`): each resnet followed by a
    /// `Transformer2DModel`.
    CrossAttention,
}

impl DownBlockKind {
    /// One of the NCSN++ skip blocks.
    pub fn is_skip(self) -> bool {
        matches!(self, DownBlockKind::Skip | DownBlockKind::AttentionSkip)
    }
}

impl UpBlockKind {
    /// One of the NCSN++ skip blocks.
    pub fn is_skip(self) -> bool {
        matches!(self, UpBlockKind::Skip | UpBlockKind::AttentionSkip)
    }
}

/// GroupNorm groups diffusers' NCSN++ blocks (and a null `norm_num_groups`) use for `channels`.
pub fn ncsnpp_groups(channels: usize) -> usize {
    (channels / 4).min(32)
}

/// A validated `UNet2DModel` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// (height, width) the model was trained at; sampling uses it.
    pub sample_size: (usize, usize),
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    /// Width of the sinusoidal embedding is `block_out_channels[0]`.
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    /// `time_embedding_dim`, default `4 * block_out_channels[0]`.
    pub time_embed_dim: usize,
    pub down_blocks: Vec<DownBlockKind>,
    pub up_blocks: Vec<UpBlockKind>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    /// `None` when `mid_block_type` is null.
    pub mid_block: Option<MidBlockConfig>,
    pub downsample_padding: usize,
    /// `None` means heads of width = the block's channels (one head).
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub num_class_embeds: Option<usize>,
    /// `resnet_time_scale_shift: "scale_shift"` (AdaGN): the time projection gives a
    /// per-channel scale and shift applied after `norm2`, instead of a bias before it.
    pub scale_shift: bool,
    /// `downsample_type: "resnet"`: `AttnDownBlock2D` downsamples with a resnet (`down=True`).
    pub resnet_downsample: bool,
    /// `upsample_type: "resnet"`: `AttnUpBlock2D` upsamples with a resnet (`up=True`).
    pub resnet_upsample: bool,
    /// `act_fn`: the resnets' nonlinearity (the time embedding MLP and `conv_act` are SiLU
    /// whatever it is, as in diffusers).
    pub act_fn: Activation,
    /// `time_embedding_type: "learned"`: an `nn.Embedding(num_train_timesteps, c0)` instead of
    /// the sinusoid; holds `num_train_timesteps`.
    pub learned_time_embedding: Option<usize>,
    /// `class_embed_type: "timestep"`: the class label goes through the sinusoid and a second
    /// `TimestepEmbedding` (`class_embedding.linear_1/2`) instead of a table. diffusers ignores
    /// `num_class_embeds` then; here it is required and bounds the labels (0..n), which the
    /// front ends need for their default labels and guidance's null class.
    pub timestep_class_embedding: bool,
    /// `class_embed_type: "identity"`: the caller passes a class embedding per sample (a
    /// `time_embed_dim` vector, diffusers' float `class_labels`), added to the time embedding
    /// ([`crate::Model::forward_with_class_embeddings`]). diffusers ignores
    /// `num_class_embeds` then; so does this (it is read as null).
    pub identity_class_embedding: bool,
    /// `time_embedding_type: "fourier"` (NCSN++): a Gaussian Fourier projection of
    /// `log(sigma)` (the model is called with sigmas) and the output divided by sigma.
    pub time_fourier: bool,
    /// `norm_num_groups: null`: the mid block and `conv_norm_out` take `min(channels / 4, 32)`
    /// groups (only the skip blocks, which choose their own groups, allow it).
    pub norm_groups_null: bool,
    /// `dropout`: the probability each `ResnetBlock2D` zeroes an input of its `conv2` while
    /// training (`nn.Dropout` after `norm2` and the activation). Identity at inference; the
    /// trainer applies it ([`crate::train::TrainGraph`]).
    pub dropout: f32,
    /// `UNet2DConditionModel` (text-conditional): its transformers' settings; `None` for a
    /// `UNet2DModel`.
    pub cross_attention: Option<super::condition_config::CrossAttentionConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MidBlockConfig {
    pub add_attention: bool,
    /// Output scale of the mid block's resnets and attention (`mid_block_scale_factor`).
    pub scale_factor: f64,
    /// Groups of the mid attention's GroupNorm (`attn_norm_num_groups`; by default
    /// `norm_num_groups` with `resnet_time_scale_shift` "default", else no GroupNorm at all).
    pub attn_groups: Option<usize>,
    /// Groups of the mid resnets' GroupNorms (`norm_num_groups`, or its null default).
    pub resnet_groups: usize,
}

const FILE: &str = "config.json";

pub(crate) fn json_err(message: impl Into<String>) -> Error {
    Error::InvalidJson {
        file: FILE,
        message: message.into(),
    }
}

pub(crate) fn bad(key: &str, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        key: key.into(),
        message: message.into(),
    }
}

/// Most blocks (`block_out_channels` entries) a config may have.
pub const MAX_BLOCKS: usize = 16;
/// Most resnets per block.
pub const MAX_LAYERS_PER_BLOCK: usize = 64;
/// Most channels of any block, input, output or embedding.
pub const MAX_CHANNELS: usize = 1 << 16;
/// Largest height or width.
pub const MAX_SAMPLE_SIZE: usize = 1 << 16;
/// Most f32 elements of one activation of one sample (height x width x channels): 2^32, or
/// all that a 32-bit target can index.
pub const MAX_TENSOR_ELEMS: usize = (u32::MAX as usize).saturating_add(1);

/// A positive integer that fits comfortably in memory arithmetic (no overflow later on).
pub(crate) fn as_size(key: &str, v: &Value) -> Result<usize> {
    const MAX: u64 = 1 << 20;
    match v.as_u64() {
        Some(n) if (1..=MAX).contains(&n) => Ok(n as usize),
        Some(n) => Err(bad(key, alloc::format!("{n} is out of range 1..={MAX}"))),
        None => Err(bad(
            key,
            alloc::format!("expected a positive integer, got {v}"),
        )),
    }
}

pub(crate) fn as_bool(key: &str, v: &Value) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| bad(key, alloc::format!("expected true or false, got {v}")))
}

pub(crate) fn as_f64(key: &str, v: &Value) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(bad(key, alloc::format!("expected a number, got {v}"))),
    }
}

pub(crate) fn as_str<'a>(key: &str, v: &'a Value) -> Result<&'a str> {
    v.as_str()
        .ok_or_else(|| bad(key, alloc::format!("expected a string, got {v}")))
}

pub(crate) fn as_list<'a>(key: &str, v: &'a Value) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| bad(key, alloc::format!("expected a list, got {v}")))
}

/// `null` or [`as_size`].
pub(crate) fn as_opt_size(key: &str, v: &Value) -> Result<Option<usize>> {
    if v.is_null() {
        Ok(None)
    } else {
        as_size(key, v).map(Some)
    }
}

/// A list of strings (block type names).
pub(crate) fn as_string_list(key: &str, v: &Value) -> Result<Vec<String>> {
    as_list(key, v)?
        .iter()
        .map(|s| as_str(key, s).map(String::from))
        .collect()
}

/// A list of [`as_size`] values (channels per block).
pub(crate) fn as_size_list(key: &str, v: &Value) -> Result<Vec<usize>> {
    as_list(key, v)?.iter().map(|c| as_size(key, c)).collect()
}

/// `sample_size`: one side or `[height, width]`; null is refused (the trained resolution is
/// needed for the memory plan).
pub(crate) fn as_sample_size(key: &str, v: &Value) -> Result<(usize, usize)> {
    match v {
        Value::Array(hw) if hw.len() == 2 => Ok((as_size(key, &hw[0])?, as_size(key, &hw[1])?)),
        Value::Null => Err(bad(key, "null: give the trained resolution")),
        _ => {
            let s = as_size(key, v)?;
            Ok((s, s))
        }
    }
}

/// The `config.json` keys `UNet2DModel` and `UNet2DConditionModel` read the same way: one
/// reader for both parsers, each starting from its class's diffusers defaults.
pub(crate) struct SharedKeys {
    pub sample_size: Option<(usize, usize)>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub time_embedding_dim: Option<usize>,
    pub down_types: Vec<String>,
    pub up_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_scale: f64,
    pub downsample_padding: usize,
    pub norm_eps: f64,
}

impl SharedKeys {
    /// Reads `key` if it is one of the shared keys (`true`), else leaves it to the caller
    /// (`false`). A bad value is a typed error naming the key.
    pub fn read(&mut self, key: &str, v: &Value) -> Result<bool> {
        let k = key;
        match k {
            "sample_size" => self.sample_size = Some(as_sample_size(k, v)?),
            "in_channels" => self.in_channels = as_size(k, v)?,
            "out_channels" => self.out_channels = as_size(k, v)?,
            "center_input_sample" => self.center_input_sample = as_bool(k, v)?,
            "flip_sin_to_cos" => self.flip_sin_to_cos = as_bool(k, v)?,
            "freq_shift" => self.freq_shift = as_f64(k, v)?,
            "time_embedding_dim" => self.time_embedding_dim = as_opt_size(k, v)?,
            "down_block_types" => self.down_types = as_string_list(k, v)?,
            "up_block_types" => self.up_types = as_string_list(k, v)?,
            "block_out_channels" => self.block_out_channels = as_size_list(k, v)?,
            "layers_per_block" => self.layers_per_block = as_size(k, v)?,
            "mid_block_scale_factor" => self.mid_scale = as_f64(k, v)?,
            "downsample_padding" => {
                self.downsample_padding = match v.as_u64() {
                    Some(p @ (0 | 1)) => p as usize,
                    _ => return Err(unsupported(k, v)),
                }
            }
            "norm_eps" => {
                self.norm_eps = as_f64(k, v)?;
                if self.norm_eps <= 0.0 {
                    return Err(bad(k, "must be positive"));
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl UNetConfig {
    /// The config of a net that is a [`crate::Model`] of its own ops but no UNet (the text
    /// encoder, the decoders): only what the forward pass checks is stated (input channels
    /// and size, output channels); there are no blocks, no classes and no time embedding.
    /// Also the base the conditional UNet's parser fills in (`..UNetConfig::io_only(..)`).
    pub(crate) fn io_only(
        sample_size: (usize, usize),
        in_channels: usize,
        out_channels: usize,
    ) -> UNetConfig {
        UNetConfig {
            sample_size,
            in_channels,
            out_channels,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            time_embed_dim: 1,
            down_blocks: Vec::new(),
            up_blocks: Vec::new(),
            block_out_channels: Vec::new(),
            layers_per_block: 0,
            mid_block: None,
            downsample_padding: 1,
            attention_head_dim: None,
            norm_num_groups: 1,
            norm_eps: 1e-6,
            num_class_embeds: None,
            scale_shift: false,
            resnet_downsample: false,
            resnet_upsample: false,
            act_fn: Activation::Silu,
            learned_time_embedding: None,
            timestep_class_embedding: false,
            identity_class_embedding: false,
            time_fourier: false,
            norm_groups_null: false,
            dropout: 0.0,
            cross_attention: None,
        }
    }

    /// Parses diffusers' `config.json` for a `UNet2DModel`.
    pub fn from_json(text: &str) -> Result<UNetConfig> {
        let root: Value = serde_json::from_str(text).map_err(|e| json_err(e.to_string()))?;
        let obj = root
            .as_object()
            .ok_or_else(|| json_err("top level is not an object"))?;
        if obj.get("_class_name").and_then(Value::as_str) == Some("UNet2DConditionModel") {
            return super::condition_config::parse_condition(obj);
        }

        // diffusers' defaults for UNet2DModel.
        let mut shared = SharedKeys {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            time_embedding_dim: None,
            down_types: [
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            up_types: [
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            block_out_channels: alloc::vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_scale: 1.0,
            downsample_padding: 1,
            norm_eps: 1e-5,
        };
        let mut mid_block_type = true;
        let mut attention_head_dim = Some(8);
        let mut norm_num_groups = 32;
        let mut attn_norm_num_groups = None;
        let mut add_attention = true;
        let mut num_class_embeds = None;
        let mut scale_shift = false;
        let mut resnet_downsample = false;
        let mut resnet_upsample = false;
        let mut act_fn = Activation::Silu;
        let mut learned_time = false;
        let mut num_train_timesteps = None;
        let mut timestep_class = false;
        let mut identity_class = false;
        let mut time_fourier = false;
        let mut norm_groups_null = false;
        let mut dropout = 0.0f32;

        for (key, v) in obj {
            let k = key.as_str();
            match k {
                _ if k.starts_with('_') => {} // _class_name, _diffusers_version, _name_or_path
                _ if shared.read(k, v)? => {}
                "mid_block_type" => {
                    mid_block_type = match v {
                        Value::Null => false,
                        Value::String(s) if s == "UNetMidBlock2D" => true,
                        _ => return Err(unsupported(k, v)),
                    }
                }
                "attention_head_dim" => attention_head_dim = as_opt_size(k, v)?,
                "norm_num_groups" => {
                    norm_groups_null = v.is_null();
                    if !norm_groups_null {
                        norm_num_groups = as_size(k, v)?
                    }
                }
                "attn_norm_num_groups" => attn_norm_num_groups = as_opt_size(k, v)?,
                "add_attention" => add_attention = as_bool(k, v)?,
                "num_class_embeds" => num_class_embeds = as_opt_size(k, v)?,
                // Options with one supported value.
                // diffusers' get_activation names.
                "act_fn" => {
                    act_fn = match v.as_str() {
                        Some("silu" | "swish") => Activation::Silu,
                        Some("mish") => Activation::Mish,
                        Some("gelu") => Activation::Gelu,
                        Some("relu") => Activation::Relu,
                        _ => return Err(unsupported(k, v)),
                    }
                }
                "time_embedding_type" => {
                    (learned_time, time_fourier) = match v.as_str() {
                        Some("positional") => (false, false),
                        Some("learned") => (true, false),
                        Some("fourier") => (false, true),
                        _ => return Err(unsupported(k, v)),
                    }
                }
                "downsample_type" => {
                    resnet_downsample = match v.as_str() {
                        Some("conv") => false,
                        Some("resnet") => true,
                        _ => return Err(unsupported(k, v)),
                    }
                }
                "upsample_type" => {
                    resnet_upsample = match v.as_str() {
                        Some("conv") => false,
                        Some("resnet") => true,
                        _ => return Err(unsupported(k, v)),
                    }
                }
                "resnet_time_scale_shift" => {
                    scale_shift = match v.as_str() {
                        Some("default") => false,
                        Some("scale_shift") => true,
                        _ => return Err(unsupported(k, v)),
                    }
                }
                "class_embed_type" => {
                    timestep_class = match v.as_str() {
                        None if v.is_null() => false,
                        Some("timestep") => true,
                        // nn.Identity: the caller passes embeddings, not labels.
                        Some("identity") => {
                            identity_class = true;
                            false
                        }
                        _ => return Err(unsupported(k, v)),
                    }
                }
                // Training-only: `nn.Dropout` itself refuses a probability outside 0..=1.
                "dropout" => {
                    let p = as_f64(k, v)?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(bad(k, alloc::format!("{p} is not a probability (0..=1)")));
                    }
                    dropout = p as f32;
                }
                // Only the learned time embedding uses it (checked there).
                "num_train_timesteps" => num_train_timesteps = Some(v.clone()),
                _ => return Err(unsupported(k, v)),
            }
        }

        let SharedKeys {
            sample_size,
            in_channels,
            out_channels,
            center_input_sample,
            flip_sin_to_cos,
            freq_shift,
            time_embedding_dim,
            down_types,
            up_types,
            block_out_channels,
            layers_per_block,
            mid_scale,
            downsample_padding,
            norm_eps,
        } = shared;
        let sample_size = sample_size.ok_or_else(|| bad("sample_size", "missing"))?;
        let parse_down = |s: &String| match s.as_str() {
            "DownBlock2D" => Ok(DownBlockKind::Plain),
            "AttnDownBlock2D" => Ok(DownBlockKind::Attention),
            "ResnetDownsampleBlock2D" => Ok(DownBlockKind::ResnetDownsample),
            "SkipDownBlock2D" => Ok(DownBlockKind::Skip),
            "AttnSkipDownBlock2D" => Ok(DownBlockKind::AttentionSkip),
            other => Err(unsupported("down_block_types", other)),
        };
        let parse_up = |s: &String| match s.as_str() {
            "UpBlock2D" => Ok(UpBlockKind::Plain),
            "AttnUpBlock2D" => Ok(UpBlockKind::Attention),
            "ResnetUpsampleBlock2D" => Ok(UpBlockKind::ResnetUpsample),
            "SkipUpBlock2D" => Ok(UpBlockKind::Skip),
            "AttnSkipUpBlock2D" => Ok(UpBlockKind::AttentionSkip),
            other => Err(unsupported("up_block_types", other)),
        };
        let down_blocks = down_types
            .iter()
            .map(parse_down)
            .collect::<Result<Vec<_>>>()?;
        let up_blocks = up_types.iter().map(parse_up).collect::<Result<Vec<_>>>()?;
        let time_embed_dim =
            time_embedding_dim.unwrap_or(block_out_channels.first().copied().unwrap_or(1) * 4);
        // diffusers' UNetMidBlock2D: a null norm_num_groups means min(channels / 4, 32).
        let mid_resnet_groups = if norm_groups_null {
            ncsnpp_groups(block_out_channels.last().copied().unwrap_or(0))
        } else {
            norm_num_groups
        };
        if norm_groups_null {
            // conv_norm_out's groups; the mid block's are above.
            norm_num_groups = ncsnpp_groups(block_out_channels.first().copied().unwrap_or(0));
        }

        let cfg = UNetConfig {
            sample_size,
            in_channels,
            out_channels,
            center_input_sample,
            flip_sin_to_cos,
            freq_shift,
            time_embed_dim,
            down_blocks,
            up_blocks,
            block_out_channels,
            layers_per_block,
            mid_block: mid_block_type.then(|| MidBlockConfig {
                add_attention,
                scale_factor: mid_scale,
                // diffusers' UNetMidBlock2D: no attention GroupNorm unless asked for, except
                // with the default time embedding norm.
                attn_groups: attn_norm_num_groups.or((!scale_shift).then_some(mid_resnet_groups)),
                resnet_groups: mid_resnet_groups,
            }),
            downsample_padding,
            attention_head_dim,
            norm_num_groups,
            norm_eps,
            // diffusers builds no table for "identity" and ignores num_class_embeds.
            num_class_embeds: num_class_embeds.filter(|_| !identity_class),
            identity_class_embedding: identity_class,
            time_fourier,
            norm_groups_null,
            dropout,
            cross_attention: None,
            scale_shift,
            resnet_downsample,
            resnet_upsample,
            act_fn,
            timestep_class_embedding: timestep_class,
            learned_time_embedding: match (learned_time, num_train_timesteps) {
                (false, _) => None,
                (true, Some(n)) if !n.is_null() => Some(as_size("num_train_timesteps", &n)?),
                (true, _) => {
                    return Err(bad(
                        "num_train_timesteps",
                        "time_embedding_type \"learned\" needs the table size",
                    ))
                }
            },
        };
        if cfg.timestep_class_embedding {
            if cfg.num_class_embeds.is_none() {
                return Err(bad(
                    "num_class_embeds",
                    "class_embed_type \"timestep\" needs it here: the number of class labels",
                ));
            }
            if cfg.learned_time_embedding.is_some() {
                return Err(unsupported(
                    "class_embed_type",
                    "\"timestep\" with time_embedding_type \"learned\"",
                ));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations between fields that diffusers would reject (or that would make the
    /// model ill-defined): matching block counts, channels divisible by groups and heads,
    /// even spatial sizes at every downsampling.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(bad("block_out_channels", "must not be empty"));
        }
        if self.down_blocks.len() != n {
            return Err(bad(
                "down_block_types",
                "needs one entry per block_out_channels",
            ));
        }
        if self.up_blocks.len() != n {
            return Err(bad(
                "up_block_types",
                "needs one entry per block_out_channels",
            ));
        }
        let g = self.norm_num_groups;
        // A null norm_num_groups leaves only conv_norm_out (over block 0) to these groups.
        let grouped = if self.norm_groups_null { 1 } else { n };
        for &c in &self.block_out_channels[..grouped] {
            if g == 0 || c % g != 0 {
                return Err(bad(
                    "norm_num_groups",
                    alloc::format!("{g} groups do not divide block channels {c}"),
                ));
            }
        }
        self.validate_skip_blocks()?;
        if let Some(mid) = &self.mid_block {
            let c = self.block_out_channels[n - 1];
            if mid.resnet_groups == 0 || !c.is_multiple_of(mid.resnet_groups) {
                return Err(bad(
                    "norm_num_groups",
                    alloc::format!("the mid block's groups do not divide {c}"),
                ));
            }
            if mid.add_attention && mid.attn_groups.is_some_and(|g| !c.is_multiple_of(g)) {
                return Err(bad(
                    "attn_norm_num_groups",
                    alloc::format!("does not divide {c}"),
                ));
            }
        }
        let attention_channels = self
            .down_blocks
            .iter()
            .zip(&self.block_out_channels)
            .filter(|(k, _)| matches!(k, DownBlockKind::Attention | DownBlockKind::AttentionSkip))
            .map(|(_, c)| *c)
            .chain(
                self.up_blocks
                    .iter()
                    .zip(self.block_out_channels.iter().rev())
                    .filter(|(k, _)| {
                        matches!(k, UpBlockKind::Attention | UpBlockKind::AttentionSkip)
                    })
                    .map(|(_, c)| *c),
            )
            .chain(
                self.mid_block
                    .iter()
                    .filter(|m| m.add_attention)
                    .map(|_| self.block_out_channels[n - 1]),
            );
        for c in attention_channels {
            if let Some(d) = self.attention_head_dim {
                if c % d != 0 {
                    return Err(bad(
                        "attention_head_dim",
                        alloc::format!("{d} does not divide {c} channels"),
                    ));
                }
            }
        }
        let (h, w) = self.sample_size;
        let scale = 1usize << (n - 1).min(20);
        if h % scale != 0 || w % scale != 0 {
            return Err(bad(
                "sample_size",
                alloc::format!(
                    "{h}x{w} is not divisible by {scale}, the total downsampling factor"
                ),
            ));
        }
        if let Some(cross) = &self.cross_attention {
            cross.validate(&self.block_out_channels, self.mid_block.is_some())?;
        }
        if self.time_embed_dim == 0 || self.block_out_channels[0] < 2 {
            return Err(bad(
                "block_out_channels",
                "first block needs at least 2 channels",
            ));
        }
        self.check_sizes()
    }

    /// Bounds on sizes that keep every later computation (tensor lengths, the memory plan,
    /// `workspace_len`, FLOP counts, parameter listing) far from `usize` overflow. Each is
    /// orders of magnitude above any diffusers `UNet2DModel` (the largest use <= 8 blocks,
    /// <= 4 layers per block, <= 2048 channels, <= 1024x1024 samples), so only files made to
    /// break the loader reach them.
    fn check_sizes(&self) -> Result<()> {
        let limit = |key: &str, v: usize, max: usize| {
            if v > max {
                Err(bad(
                    key,
                    alloc::format!("{v} is above the supported maximum {max}"),
                ))
            } else {
                Ok(())
            }
        };
        limit(
            "block_out_channels",
            self.block_out_channels.len(),
            MAX_BLOCKS,
        )?;
        limit(
            "layers_per_block",
            self.layers_per_block,
            MAX_LAYERS_PER_BLOCK,
        )?;
        limit("in_channels", self.in_channels, MAX_CHANNELS)?;
        limit("out_channels", self.out_channels, MAX_CHANNELS)?;
        limit("time_embedding_dim", self.time_embed_dim, MAX_CHANNELS)?;
        for &c in &self.block_out_channels {
            limit("block_out_channels", c, MAX_CHANNELS)?;
        }
        let (h, w) = self.sample_size;
        limit("sample_size", h.max(w), MAX_SAMPLE_SIZE)?;
        // The largest activation of one sample: full resolution at the widest block (the
        // real maximum is smaller, but this bound is simple and safe).
        let widest = self
            .block_out_channels
            .iter()
            .copied()
            .chain([self.in_channels, self.out_channels])
            .max()
            .unwrap_or(1);
        if (h * w)
            .checked_mul(widest)
            .is_none_or(|n| n > MAX_TENSOR_ELEMS)
        {
            return Err(bad(
                "sample_size",
                alloc::format!(
                    "{h}x{w} samples with {widest} channels are above the supported maximum of \
                     {MAX_TENSOR_ELEMS} floats per activation"
                ),
            ));
        }
        if let Some(n) = self.num_class_embeds {
            if n.checked_mul(self.time_embed_dim)
                .is_none_or(|elems| elems > MAX_TENSOR_ELEMS)
            {
                return Err(bad(
                    "num_class_embeds",
                    alloc::format!(
                        "{n} classes x {} embedding width is above {MAX_TENSOR_ELEMS}",
                        self.time_embed_dim
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The NCSN++ skip blocks' constraints: all down blocks skip blocks or none (the skip image
    /// must stay at the features' resolution), likewise the up blocks; they read and write a
    /// 3-channel image; a null `norm_num_groups` only with skip blocks throughout (diffusers'
    /// other blocks cannot take it); the groups each skip block's norms use must divide their
    /// channels (diffusers refuses to build the model otherwise).
    fn validate_skip_blocks(&self) -> Result<()> {
        let down_skip = self.down_blocks.iter().filter(|k| k.is_skip()).count();
        let up_skip = self.up_blocks.iter().filter(|k| k.is_skip()).count();
        if down_skip != 0 && down_skip != self.down_blocks.len() {
            return Err(bad(
                "down_block_types",
                "SkipDownBlock2D/AttnSkipDownBlock2D cannot be mixed with other down blocks",
            ));
        }
        if up_skip != 0 && up_skip != self.up_blocks.len() {
            return Err(bad(
                "up_block_types",
                "SkipUpBlock2D/AttnSkipUpBlock2D cannot be mixed with other up blocks",
            ));
        }
        if self.norm_groups_null && (down_skip == 0 || up_skip == 0) {
            return Err(unsupported("norm_num_groups", "null without skip blocks"));
        }
        // The skip blocks' resnets are the default-norm SiLU resnet here; diffusers would
        // build the other combinations, which this library does not run yet.
        if down_skip + up_skip > 0 || self.norm_groups_null {
            if self.scale_shift {
                return Err(unsupported(
                    "resnet_time_scale_shift",
                    "scale_shift together with skip blocks or a null norm_num_groups",
                ));
            }
            if self.act_fn != Activation::Silu {
                return Err(unsupported(
                    "act_fn",
                    "other than silu together with skip blocks or a null norm_num_groups",
                ));
            }
        }
        if self.time_fourier && self.timestep_class_embedding {
            return Err(unsupported(
                "class_embed_type",
                "timestep together with time_embedding_type fourier",
            ));
        }
        if self.time_fourier && (self.resnet_downsample || self.resnet_upsample) {
            return Err(unsupported(
                "time_embedding_type",
                "fourier together with resnet down/upsampling",
            ));
        }
        if down_skip > 0 && self.down_blocks.len() > 1 && self.in_channels != 3 {
            return Err(bad(
                "in_channels",
                "skip down blocks read a 3-channel image (their skip_conv is 3 -> C)",
            ));
        }
        if up_skip > 0 && self.up_blocks.len() > 1 && self.out_channels != 3 {
            return Err(bad(
                "out_channels",
                "skip up blocks write a 3-channel image (their skip_conv is C -> 3)",
            ));
        }
        let boc = &self.block_out_channels;
        let n = boc.len();
        let check = |key: &str, c: usize, g: usize| {
            if g == 0 || !c.is_multiple_of(g) {
                Err(bad(
                    key,
                    alloc::format!("{g} GroupNorm groups do not divide {c} channels"),
                ))
            } else {
                Ok(())
            }
        };
        if down_skip > 0 {
            for (i, kind) in self.down_blocks.iter().enumerate() {
                let c_in = if i == 0 { boc[0] } else { boc[i - 1] };
                check("block_out_channels", c_in, ncsnpp_groups(c_in))?;
                check("block_out_channels", boc[i], ncsnpp_groups(boc[i]))?;
                if *kind == DownBlockKind::AttentionSkip {
                    check("block_out_channels", boc[i], 32)?;
                }
            }
        }
        if up_skip > 0 {
            let skips = self.skip_channels();
            let mut taken = skips.len();
            for (i, kind) in self.up_blocks.iter().enumerate() {
                let out_c = boc[n - 1 - i];
                let mut prev = if i == 0 { boc[n - 1] } else { boc[n - i] };
                for _ in 0..=self.layers_per_block {
                    taken = taken.saturating_sub(1);
                    let skip = skips.get(taken).copied().unwrap_or(0);
                    // AttnSkipUpBlock2D computes its groups as `min(a + b // 4, 32)`.
                    let g = match kind {
                        UpBlockKind::AttentionSkip => (prev + skip / 4).min(32),
                        _ => ncsnpp_groups(prev + skip),
                    };
                    check("block_out_channels", prev + skip, g)?;
                    prev = out_c;
                }
                check("block_out_channels", out_c, ncsnpp_groups(out_c))?;
                if *kind == UpBlockKind::AttentionSkip {
                    check("block_out_channels", out_c, 32)?;
                }
            }
        }
        Ok(())
    }

    /// Channels of the skip connections the down path leaves, in push order.
    fn skip_channels(&self) -> Vec<usize> {
        let boc = &self.block_out_channels;
        let mut out = alloc::vec![boc[0]];
        for (i, &c) in boc.iter().enumerate() {
            out.extend(core::iter::repeat_n(c, self.layers_per_block));
            if i + 1 < boc.len() {
                out.push(c);
            }
        }
        out
    }

    /// Number of heads of an attention block over `channels`.
    pub fn heads(&self, channels: usize) -> usize {
        match self.attention_head_dim {
            Some(d) => channels / d,
            None => 1,
        }
    }
}
