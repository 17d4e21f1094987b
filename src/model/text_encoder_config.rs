//! The CLIP text encoder's `config.json` (transformers' `CLIPTextConfig`, as a Stable
//! Diffusion pipeline's `text_encoder/` holds it) parsed into a [`TextEncoderConfig`], typed
//! errors naming the key. transformers' generic `PretrainedConfig` keys (generation options,
//! labels, dtype...) are accepted and ignored: none changes `last_hidden_state`.

use alloc::string::{String, ToString};

use serde_json::Value;

use super::Activation;
use crate::error::{unsupported, Error, Result};

const FILE: &str = "text_encoder/config.json";

/// A `CLIPTextModel`: token + position embedding, `num_hidden_layers` pre-LayerNorm encoder
/// layers with causal multi-head self-attention, a final LayerNorm.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Rows of the position table; the encoder runs on this many tokens per prompt (77).
    pub max_position_embeddings: usize,
    /// `hidden_act`: `quick_gelu` ([`Activation::QuickGelu`]) or `gelu`.
    pub hidden_act: Activation,
    pub layer_norm_eps: f32,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl Default for TextEncoderConfig {
    /// transformers' `CLIPTextConfig()` defaults.
    fn default() -> Self {
        TextEncoderConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
            pad_token_id: Some(1),
        }
    }
}

fn bad(key: &str, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        key: key.into(),
        message: message.into(),
    }
}

fn size(key: &str, v: &Value, max: u64) -> Result<usize> {
    match v.as_u64() {
        Some(n) if (1..=max).contains(&n) => Ok(n as usize),
        _ => Err(bad(
            key,
            alloc::format!("expected an integer in 1..={max}, got {v}"),
        )),
    }
}

fn token_id(key: &str, v: &Value) -> Result<Option<u32>> {
    if v.is_null() {
        return Ok(None);
    }
    match v.as_u64() {
        Some(n) if n <= u32::MAX as u64 => Ok(Some(n as u32)),
        _ => Err(bad(key, alloc::format!("expected a token id, got {v}"))),
    }
}

fn number(key: &str, v: &Value) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(bad(key, alloc::format!("expected a number, got {v}"))),
    }
}

/// transformers' `PretrainedConfig` keys that do not change a `CLIPTextModel`'s hidden states.
const GENERIC_KEYS: &[&str] = &[
    "transformers_version",
    "torch_dtype",
    "dtype",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "pruned_heads",
    "tie_word_embeddings",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "is_decoder",
    "cross_attention_hidden_size",
    "add_cross_attention",
    "tie_encoder_decoder",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "finetuning_task",
    "id2label",
    "label2id",
    "tokenizer_class",
    "prefix",
    "sep_token_id",
    "decoder_start_token_id",
    "task_specific_params",
    "problem_type",
    // Training-only: dropout is off at inference, initialisation does not matter to a loaded
    // model.
    "attention_dropout",
    "dropout",
    "initializer_range",
    "initializer_factor",
];

impl TextEncoderConfig {
    /// Parses a `CLIPTextModel` `config.json` (transformers' defaults for every key it does
    /// not give). `architectures` other than `CLIPTextModel` (`CLIPTextModelWithProjection`:
    /// SDXL's second encoder) are refused, as is a `hidden_act` other than `quick_gelu` or
    /// `gelu`.
    pub fn from_json(text: &str) -> Result<TextEncoderConfig> {
        let root: Value = serde_json::from_str(text).map_err(|e| Error::InvalidJson {
            file: FILE,
            message: e.to_string(),
        })?;
        let obj = root.as_object().ok_or_else(|| Error::InvalidJson {
            file: FILE,
            message: "top level is not an object".into(),
        })?;
        let mut cfg = TextEncoderConfig::default();
        const MAX: u64 = 1 << 20;
        for (key, v) in obj {
            let k = key.as_str();
            match k {
                _ if k.starts_with('_') => {}
                "architectures" => {
                    let list = v
                        .as_array()
                        .ok_or_else(|| bad(k, alloc::format!("expected a list, got {v}")))?;
                    for a in list {
                        match a.as_str() {
                            Some("CLIPTextModel") => {}
                            Some(other) => {
                                return Err(unsupported(
                                    k,
                                    alloc::format!("{other} (only CLIPTextModel runs here)"),
                                ))
                            }
                            None => {
                                return Err(bad(k, alloc::format!("expected a string, got {a}")))
                            }
                        }
                    }
                }
                "model_type" => match v.as_str() {
                    Some("clip_text_model") => {}
                    _ => {
                        return Err(unsupported(
                            k,
                            alloc::format!("{v} (a CLIPTextModel is clip_text_model)"),
                        ))
                    }
                },
                "vocab_size" => cfg.vocab_size = size(k, v, 1 << 24)?,
                "hidden_size" => cfg.hidden_size = size(k, v, MAX)?,
                "intermediate_size" => cfg.intermediate_size = size(k, v, MAX)?,
                "num_hidden_layers" => cfg.num_hidden_layers = size(k, v, 1024)?,
                "num_attention_heads" => cfg.num_attention_heads = size(k, v, 1024)?,
                "max_position_embeddings" => cfg.max_position_embeddings = size(k, v, 1 << 16)?,
                "hidden_act" => {
                    cfg.hidden_act = match v.as_str() {
                        Some("quick_gelu") => Activation::QuickGelu,
                        Some("gelu") => Activation::Gelu,
                        _ => return Err(unsupported(k, alloc::format!("{v} (quick_gelu, gelu)"))),
                    }
                }
                "layer_norm_eps" => {
                    let eps = number(k, v)?;
                    if eps <= 0.0 {
                        return Err(bad(k, alloc::format!("must be positive, got {eps}")));
                    }
                    cfg.layer_norm_eps = eps as f32;
                }
                "bos_token_id" => cfg.bos_token_id = token_id(k, v)?,
                "eos_token_id" => cfg.eos_token_id = token_id(k, v)?,
                "pad_token_id" => cfg.pad_token_id = token_id(k, v)?,
                // The projection belongs to CLIPTextModelWithProjection / CLIPModel only.
                "projection_dim" => {
                    size(k, v, MAX)?;
                }
                // diffusers passes the padding mask to the encoder when this is set; the
                // encoder here applies the causal mask only.
                "use_attention_mask" => {
                    if v.as_bool() != Some(false) {
                        return Err(unsupported(k, v));
                    }
                }
                _ if GENERIC_KEYS.contains(&k) => {}
                _ => return Err(unsupported(k, v)),
            }
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(bad(
                "num_attention_heads",
                alloc::format!(
                    "{} does not divide hidden_size {}",
                    cfg.num_attention_heads,
                    cfg.hidden_size
                ),
            ));
        }
        let per_prompt =
            cfg.max_position_embeddings as u64 * cfg.hidden_size.max(cfg.intermediate_size) as u64;
        if per_prompt > crate::config::MAX_TENSOR_ELEMS as u64 {
            return Err(bad(
                "max_position_embeddings",
                alloc::format!(
                    "{} tokens of {} features is too large",
                    cfg.max_position_embeddings,
                    cfg.hidden_size.max(cfg.intermediate_size)
                ),
            ));
        }
        Ok(cfg)
    }
}
