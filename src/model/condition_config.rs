//! `UNet2DConditionModel` configuration (diffusers 0.42, the Stable Diffusion 1.x/2.x UNet):
//! the same [`UNetConfig`] as `UNet2DModel`, plus the cross-attention transformers' settings
//! ([`CrossAttentionConfig`]). Every key diffusers writes is understood or refused with an
//! error naming it; only the SD 1.x/2.x shapes run (no SDXL additions, ControlNet or
//! IP-adapter inputs).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::{Map, Value};

use super::config::{
    as_bool, as_f64, as_size, bad, DownBlockKind, MidBlockConfig, SharedKeys, UNetConfig,
    UpBlockKind, MAX_CHANNELS, MAX_LAYERS_PER_BLOCK,
};
use crate::error::{unsupported, Result};

/// Token rows of `encoder_hidden_states` a conditional UNet is built for by default: CLIP's
/// `max_position_embeddings`.
pub const DEFAULT_TEXT_TOKENS: usize = 77;

/// Most text tokens per sample.
pub const MAX_TEXT_TOKENS: usize = 1 << 12;

/// The `Transformer2DModel`s of a `UNet2DConditionModel`.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossAttentionConfig {
    /// Width of each `encoder_hidden_states` row (`cross_attention_dim`).
    pub cross_attention_dim: usize,
    /// `use_linear_projection`: `proj_in`/`proj_out` are `nn.Linear` (SD 2.x), not 1x1 convs.
    pub linear_projection: bool,
    /// Heads of down block `i`'s transformers. diffusers' naming quirk: for this model
    /// `attention_head_dim` is the head count (`num_attention_heads` must stay null). Up block
    /// `i` uses entry `n - 1 - i`, the mid block the last.
    pub heads: Vec<usize>,
    /// `BasicTransformerBlock`s per transformer of down block `i`
    /// (`transformer_layers_per_block`), reversed for the up blocks as `heads`.
    pub layers: Vec<usize>,
    /// Rows of `encoder_hidden_states` per sample the op list is built for (the cross-attention
    /// key count): [`DEFAULT_TEXT_TOKENS`]; set it before [`crate::Model::new`] for another.
    pub text_tokens: usize,
}

/// An int for every block, or a list of one per block.
fn per_block(key: &str, v: &Value, blocks: usize) -> Result<Vec<usize>> {
    match v {
        Value::Array(items) => {
            if items.len() != blocks {
                return Err(bad(
                    key,
                    format!("{} entries for {blocks} blocks", items.len()),
                ));
            }
            items.iter().map(|x| as_size(key, x)).collect()
        }
        _ => Ok(alloc::vec![as_size(key, v)?; blocks]),
    }
}

/// A key whose only supported value is `expected` (diffusers' default).
fn only(key: &str, v: &Value, ok: bool) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(unsupported(key, v))
    }
}

/// Parses a `UNet2DConditionModel` `config.json` object.
pub(crate) fn parse_condition(obj: &Map<String, Value>) -> Result<UNetConfig> {
    // diffusers' defaults for UNet2DConditionModel (SD 1.x's shape).
    let mut shared = SharedKeys {
        sample_size: None,
        in_channels: 4,
        out_channels: 4,
        center_input_sample: false,
        flip_sin_to_cos: true,
        freq_shift: 0.0,
        time_embedding_dim: None,
        down_types: ["CrossAttnDownBlock2D"; 3]
            .iter()
            .chain(&["DownBlock2D"])
            .map(|s| String::from(*s))
            .collect(),
        up_types: ["UpBlock2D"]
            .iter()
            .chain(&["CrossAttnUpBlock2D"; 3])
            .map(|s| String::from(*s))
            .collect(),
        block_out_channels: alloc::vec![320, 640, 1280, 1280],
        layers_per_block: 2,
        mid_scale: 1.0,
        downsample_padding: 1,
        norm_eps: 1e-5,
    };
    let mut mid_block = true;
    let mut norm_num_groups = 32;
    let mut cross_attention_dim = 1280;
    let mut linear_projection = false;
    // Parsed once the block count is known.
    let mut heads_value = Value::from(8);
    let mut layers_value = Value::from(1);

    for (key, v) in obj {
        let k = key.as_str();
        match k {
            _ if k.starts_with('_') => {}
            _ if shared.read(k, v)? => {}
            "mid_block_type" => {
                mid_block = match v {
                    Value::Null => false,
                    Value::String(s) if s == "UNetMidBlock2DCrossAttn" => true,
                    _ => return Err(unsupported(k, v)),
                }
            }
            "norm_num_groups" => {
                if v.is_null() {
                    return Err(unsupported(k, v));
                }
                norm_num_groups = as_size(k, v)?
            }
            "dropout" => {
                as_f64(k, v)?;
            }
            "act_fn" => only(k, v, matches!(v.as_str(), Some("silu" | "swish")))?,
            "cross_attention_dim" => cross_attention_dim = as_size(k, v)?,
            "attention_head_dim" => heads_value = v.clone(),
            "transformer_layers_per_block" => layers_value = v.clone(),
            "use_linear_projection" => linear_projection = as_bool(k, v)?,
            // The attention math is f32 (softmax statistics included) whatever it says.
            "upcast_attention" => {
                as_bool(k, v)?;
            }
            // diffusers itself refuses a non-null value (its naming quirk).
            "num_attention_heads" => only(k, v, v.is_null())?,
            "only_cross_attention" => only(
                k,
                v,
                v == &Value::Bool(false)
                    || v.as_array()
                        .is_some_and(|a| a.iter().all(|x| x == &Value::Bool(false))),
            )?,
            "dual_cross_attention" | "class_embeddings_concat" | "resnet_skip_time_act" => {
                only(k, v, v == &Value::Bool(false))?
            }
            "mid_block_only_cross_attention" => {
                only(k, v, v.is_null() || v == &Value::Bool(false))?
            }
            "class_embed_type"
            | "num_class_embeds"
            | "addition_embed_type"
            | "addition_time_embed_dim"
            | "encoder_hid_dim"
            | "encoder_hid_dim_type"
            | "time_cond_proj_dim"
            | "projection_class_embeddings_input_dim"
            | "cross_attention_norm"
            | "reverse_transformer_layers_per_block"
            | "time_embedding_act_fn"
            | "timestep_post_act" => only(k, v, v.is_null())?,
            // Read only with an addition embedding, which is refused above.
            "addition_embed_type_num_heads" => {
                as_size(k, v)?;
            }
            "attention_type" => only(k, v, v.as_str() == Some("default"))?,
            "conv_in_kernel" | "conv_out_kernel" => only(k, v, v.as_u64() == Some(3))?,
            "time_embedding_type" => only(k, v, v.as_str() == Some("positional"))?,
            "resnet_time_scale_shift" => only(k, v, v.as_str() == Some("default"))?,
            "resnet_out_scale_factor" => only(k, v, v.as_f64() == Some(1.0))?,
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
    let down_blocks = down_types
        .iter()
        .map(|s| match s.as_str() {
            "CrossAttnDownBlock2D" => Ok(DownBlockKind::CrossAttention),
            "DownBlock2D" => Ok(DownBlockKind::Plain),
            other => Err(unsupported("down_block_types", other)),
        })
        .collect::<Result<Vec<_>>>()?;
    let up_blocks = up_types
        .iter()
        .map(|s| match s.as_str() {
            "CrossAttnUpBlock2D" => Ok(UpBlockKind::CrossAttention),
            "UpBlock2D" => Ok(UpBlockKind::Plain),
            other => Err(unsupported("up_block_types", other)),
        })
        .collect::<Result<Vec<_>>>()?;
    let blocks = block_out_channels.len();
    let heads = per_block("attention_head_dim", &heads_value, blocks)?;
    let layers = per_block("transformer_layers_per_block", &layers_value, blocks)?;
    let time_embed_dim =
        time_embedding_dim.unwrap_or(block_out_channels.first().copied().unwrap_or(1) * 4);
    let cfg = UNetConfig {
        // Read and checked above; only the trainer uses it, and it refuses this model.
        dropout: 0.0,
        center_input_sample,
        flip_sin_to_cos,
        freq_shift,
        time_embed_dim,
        down_blocks,
        up_blocks,
        block_out_channels,
        layers_per_block,
        mid_block: mid_block.then_some(MidBlockConfig {
            add_attention: true,
            scale_factor: mid_scale,
            attn_groups: Some(norm_num_groups),
            resnet_groups: norm_num_groups,
        }),
        downsample_padding,
        norm_num_groups,
        norm_eps,
        cross_attention: Some(CrossAttentionConfig {
            cross_attention_dim,
            linear_projection,
            heads,
            layers,
            text_tokens: DEFAULT_TEXT_TOKENS,
        }),
        // No class embedding, AdaGN, resampling resnets or other time embeddings: the keys
        // that would ask for them are refused above.
        ..UNetConfig::io_only(sample_size, in_channels, out_channels)
    };
    cfg.validate()?;
    Ok(cfg)
}

impl CrossAttentionConfig {
    /// The relations diffusers needs: heads dividing each transformer's channels, sizes in
    /// bounds. `channels` is `block_out_channels`.
    pub(crate) fn validate(&self, channels: &[usize], mid: bool) -> Result<()> {
        if self.heads.len() != channels.len() {
            return Err(bad("attention_head_dim", "needs one entry per block"));
        }
        if self.layers.len() != channels.len() {
            return Err(bad(
                "transformer_layers_per_block",
                "needs one entry per block",
            ));
        }
        for (i, (&c, &h)) in channels.iter().zip(&self.heads).enumerate() {
            if h == 0 || !c.is_multiple_of(h) {
                let at = if mid && i + 1 == channels.len() {
                    " (and the mid block)"
                } else {
                    ""
                };
                return Err(bad(
                    "attention_head_dim",
                    format!("{h} heads do not divide block {i}'s {c} channels{at}"),
                ));
            }
        }
        for &l in &self.layers {
            if l == 0 || l > MAX_LAYERS_PER_BLOCK {
                return Err(bad(
                    "transformer_layers_per_block",
                    format!("{l} is out of range 1..={MAX_LAYERS_PER_BLOCK}"),
                ));
            }
        }
        if self.cross_attention_dim > MAX_CHANNELS {
            return Err(bad(
                "cross_attention_dim",
                format!(
                    "{} is above the supported maximum {MAX_CHANNELS}",
                    self.cross_attention_dim
                ),
            ));
        }
        if self.text_tokens == 0 || self.text_tokens > MAX_TEXT_TOKENS {
            return Err(bad(
                "text_tokens",
                format!("{} is out of range 1..={MAX_TEXT_TOKENS}", self.text_tokens),
            ));
        }
        Ok(())
    }
}
