//! The CLIP text encoder (transformers' `CLIPTextModel`, a Stable Diffusion pipeline's
//! `text_encoder/`): token ids in, `last_hidden_state` `[tokens, hidden]` out. Its op list runs
//! through the same walk and backends as the UNet (it is held as a [`Model`] of its own ops,
//! like the latent decoder), with the text ops: [`TokenEmbeddingOp`], [`LayerNormOp`], causal
//! [`AttentionOp`], [`Activation::QuickGelu`].
//!
//! One layer is `LayerNorm, Linear q, k, v, Attention (causal), Linear out_proj (+residual),
//! LayerNorm, Linear fc1, Activation, Linear fc2 (+residual)`; the model is `TokenEmbedding`,
//! the layers, the final `LayerNorm` and `Output`. `clip_skip` k (diffusers' pipelines) runs
//! the first `layers - k` layers and then the final LayerNorm: `final_layer_norm(
//! hidden_states[-(k + 1)])`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::describe::Described;
use super::forward::token_id_error;
use super::ops::{
    ActivationOp, AttentionOp, LayerNormOp, LinearOp, Op, OutputOp, TensorId, TensorSpec,
    TokenEmbeddingOp,
};
use super::text_encoder_config::TextEncoderConfig;
use super::{Model, Tap};
use crate::config::UNetConfig;
use crate::error::{invalid_arg, Error, Result};
use crate::memory::Reuse;
use crate::weights::{LoadOptions, WeightBytes, WeightLoader, WeightRef};

/// A loaded CLIP text encoder.
pub struct TextEncoder {
    pub config: TextEncoderConfig,
    /// diffusers' `clip_skip` the op list was built with (0: `last_hidden_state`).
    pub clip_skip: usize,
    /// Token ids per prompt the op list is built for (the tokenizer's `model_max_length`,
    /// at most `max_position_embeddings`).
    tokens: usize,
    net: Model,
}

struct Builder<'a> {
    loader: &'a mut WeightLoader,
    /// `text_model.` (transformers 4, every Stable Diffusion checkpoint) or empty
    /// (transformers 5 saves `CLIPTextModel` without it).
    prefix: &'static str,
    tokens: usize,
    tensors: Vec<TensorSpec>,
    ops: Vec<Op>,
    taps: Vec<Tap>,
    parameters: usize,
}

impl Builder<'_> {
    fn tensor(&mut self, name: String, len: usize) -> TensorId {
        self.tensors.push(TensorSpec { len, name });
        self.tensors.len() - 1
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<WeightRef> {
        let r = self
            .loader
            .take(&[&format!("{}{name}", self.prefix)], shape)?;
        self.parameters += shape.iter().product::<usize>();
        Ok(r)
    }

    fn tap(&mut self, name: &str, t: TensorId, dim: usize) {
        self.taps.push(Tap {
            name: name.into(),
            tensor: t,
            channels: dim,
            height: self.tokens,
            width: 1,
        });
    }

    fn layer_norm(&mut self, p: &str, x: TensorId, dim: usize, eps: f32) -> Result<TensorId> {
        let gamma = self.take(&format!("{p}.weight"), &[dim])?;
        let beta = self.take(&format!("{p}.bias"), &[dim])?;
        let out = self.tensor(p.into(), self.tokens * dim);
        self.ops.push(Op::LayerNorm(LayerNormOp {
            input: x,
            rows: self.tokens,
            dim,
            eps,
            gamma,
            beta,
            out,
        }));
        Ok(out)
    }

    /// `nn.Linear(in_f, out_f)` over the token rows, `+ residual`.
    fn linear(
        &mut self,
        p: &str,
        x: TensorId,
        in_f: usize,
        out_f: usize,
        residual: Option<TensorId>,
    ) -> Result<TensorId> {
        let name = format!("{}{p}.weight", self.prefix);
        let weight = self.loader.take_packed(&[&name], out_f, in_f, None)?;
        self.parameters += out_f * in_f;
        let bias = self.take(&format!("{p}.bias"), &[out_f])?;
        let out = self.tensor(p.into(), self.tokens * out_f);
        self.ops.push(Op::Linear(LinearOp {
            input: x,
            rows: self.tokens,
            in_f,
            out_f,
            weight,
            bias,
            residual,
            out_scale: 1.0,
            out,
        }));
        Ok(out)
    }

    /// `CLIPEncoderLayer`: `h = x + out_proj(attn(ln1(x)))`, `h + fc2(act(fc1(ln2(h))))`.
    fn layer(&mut self, cfg: &TextEncoderConfig, i: usize, x: TensorId) -> Result<TensorId> {
        let (c, n) = (cfg.hidden_size, self.tokens);
        let eps = cfg.layer_norm_eps;
        let p = format!("encoder.layers.{i}");
        let normed = self.layer_norm(&format!("{p}.layer_norm1"), x, c, eps)?;
        let q = self.linear(&format!("{p}.self_attn.q_proj"), normed, c, c, None)?;
        let k = self.linear(&format!("{p}.self_attn.k_proj"), normed, c, c, None)?;
        let v = self.linear(&format!("{p}.self_attn.v_proj"), normed, c, c, None)?;
        let scratch = self.tensor(format!("{p}.self_attn.scratch"), n);
        let attended = self.tensor(format!("{p}.self_attn.attended"), n * c);
        self.ops.push(Op::Attention(AttentionOp {
            q,
            k,
            v,
            tokens: n,
            kv_tokens: n,
            channels: c,
            heads: cfg.num_attention_heads,
            causal: true,
            scratch,
            out: attended,
        }));
        let h = self.linear(&format!("{p}.self_attn.out_proj"), attended, c, c, Some(x))?;
        let normed = self.layer_norm(&format!("{p}.layer_norm2"), h, c, eps)?;
        let f = cfg.intermediate_size;
        let up = self.linear(&format!("{p}.mlp.fc1"), normed, c, f, None)?;
        let act = self.tensor(format!("{p}.mlp.act"), n * f);
        self.ops.push(Op::Activation(ActivationOp {
            input: up,
            len: n * f,
            act: cfg.hidden_act,
            out: act,
        }));
        let out = self.linear(&format!("{p}.mlp.fc2"), act, f, c, Some(h))?;
        self.tap(&p, out, c);
        Ok(out)
    }
}

/// The op list of `cfg` with `clip_skip` (taps: `embeddings`, `encoder.layers.{i}` (the
/// hidden states `hidden_states[i + 1]`), `final_layer_norm`).
pub fn describe_text_encoder(
    cfg: &TextEncoderConfig,
    loader: &mut WeightLoader,
    clip_skip: usize,
    tokens: usize,
) -> Result<Described> {
    // The tokenizer's `model_max_length` may be below `max_position_embeddings` (the encoder
    // then sees the first `tokens` positions, as transformers does); above it, transformers
    // fails indexing the position table.
    if tokens == 0 || tokens > cfg.max_position_embeddings {
        return Err(Error::UnsupportedConfig {
            key: "model_max_length".into(),
            value: format!(
                "{tokens} token ids per prompt (the text encoder has {} positions)",
                cfg.max_position_embeddings
            ),
        });
    }
    if clip_skip > cfg.num_hidden_layers {
        return Err(invalid_arg(
            "clip_skip",
            format!(
                "{clip_skip} skips more than the {} layers",
                cfg.num_hidden_layers
            ),
        ));
    }
    let unprefixed = "embeddings.token_embedding.weight";
    let prefix =
        if loader.contains(unprefixed) && !loader.contains(&format!("text_model.{unprefixed}")) {
            ""
        } else {
            "text_model."
        };
    let c = cfg.hidden_size;
    let mut b = Builder {
        loader,
        prefix,
        tokens,
        tensors: Vec::new(),
        ops: Vec::new(),
        taps: Vec::new(),
        parameters: 0,
    };
    let table = b.take("embeddings.token_embedding.weight", &[cfg.vocab_size, c])?;
    // The whole table is checked; the first `tokens` rows are read.
    let positions = b.take(
        "embeddings.position_embedding.weight",
        &[cfg.max_position_embeddings, c],
    )?;
    let mut h = b.tensor("embeddings".into(), tokens * c);
    b.ops.push(Op::TokenEmbedding(TokenEmbeddingOp {
        table,
        vocab: cfg.vocab_size,
        positions,
        tokens,
        dim: c,
        out: h,
    }));
    b.tap("embeddings", h, c);
    for i in 0..cfg.num_hidden_layers - clip_skip {
        h = b.layer(cfg, i, h)?;
    }
    h = b.layer_norm("final_layer_norm", h, c, cfg.layer_norm_eps)?;
    b.tap("final_layer_norm", h, c);
    // `[tokens, hidden]` rows are the output as they are: one "pixel" of tokens * hidden
    // channels makes the NHWC-to-NCHW copy the identity.
    b.ops.push(Op::Output(OutputOp {
        input: h,
        channels: tokens * c,
        height: 1,
        width: 1,
    }));
    Ok(Described {
        tensors: b.tensors,
        ops: b.ops,
        taps: b.taps,
        parameters: b.parameters,
        dropout_sites: Vec::new(),
    })
}

impl TextEncoder {
    /// Builds the encoder of `config` from its safetensors weights (`model.safetensors`, f16
    /// used in place, f32/bf16 rounded once), for `clip_skip` (0: `last_hidden_state`).
    pub fn new(
        config: TextEncoderConfig,
        weights: WeightBytes,
        options: LoadOptions,
        clip_skip: usize,
        reuse: Reuse,
    ) -> Result<TextEncoder> {
        let tokens = config.max_position_embeddings;
        TextEncoder::new_for_tokens(config, weights, options, clip_skip, tokens, reuse)
    }

    /// [`TextEncoder::new`] for prompts of `tokens` ids (a pipeline's tokenizer pads to its
    /// `model_max_length`, which may be below `max_position_embeddings`; above it is a typed
    /// error naming `model_max_length`).
    pub fn new_for_tokens(
        config: TextEncoderConfig,
        weights: WeightBytes,
        options: LoadOptions,
        clip_skip: usize,
        tokens: usize,
        reuse: Reuse,
    ) -> Result<TextEncoder> {
        let mut loader = WeightLoader::new(weights, options)?;
        let described = describe_text_encoder(&config, &mut loader, clip_skip, tokens)?;
        // The net reads `tokens` ids and writes `tokens * hidden` floats.
        let shapes = UNetConfig::io_only((1, 1), tokens, tokens * config.hidden_size);
        let net = Model::assemble(shapes, described, loader.finish(), (1, 1), (1, 1), reuse)?;
        Ok(TextEncoder {
            config,
            clip_skip,
            tokens,
            net,
        })
    }

    /// [`TextEncoder::new`] from a `config.json` text, default load options, shared memory.
    pub fn from_parts(
        config_json: &str,
        weights: WeightBytes,
        clip_skip: usize,
    ) -> Result<TextEncoder> {
        let config = TextEncoderConfig::from_json(config_json)?;
        TextEncoder::new(
            config,
            weights,
            LoadOptions::default(),
            clip_skip,
            Reuse::Shared,
        )
    }

    /// Token ids per prompt (77 for Stable Diffusion): `max_position_embeddings`, or the
    /// tokenizer's `model_max_length` a pipeline built it for
    /// ([`TextEncoder::new_for_tokens`]).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Floats of output per prompt: `tokens * hidden_size`.
    pub fn output_len(&self) -> usize {
        self.tokens() * self.config.hidden_size
    }

    /// The encoder's op list, taps and memory plan, as a [`Model`] (inspection and tests).
    pub fn net(&self) -> &Model {
        &self.net
    }

    /// Mutable access to the net (kernel path, threads).
    pub fn net_mut(&mut self) -> &mut Model {
        &mut self.net
    }

    pub fn parameters(&self) -> usize {
        self.net.parameters()
    }

    /// f32 elements of workspace of [`TextEncoder::encode`] for `batch` prompts on at most
    /// `threads` threads (0: the net's thread count; see [`Model::workspace_len_for_threads`]).
    pub fn workspace_len_for_threads(&self, batch: usize, threads: usize) -> usize {
        self.net.workspace_len_for_threads(batch, threads)
    }

    /// Bytes of [`TextEncoder::workspace_len`]`(batch)`.
    pub fn workspace_bytes(&self, batch: usize) -> usize {
        self.net.workspace_bytes(batch)
    }

    /// [`TextEncoder::workspace_len_for_threads`] with `threads` 0.
    pub fn workspace_len(&self, batch: usize) -> usize {
        self.net.workspace_len(batch)
    }

    /// The hidden states of `ids` (`[batch, tokens]`, padded by the tokenizer) into `out`
    /// (`[batch, tokens, hidden]`): `last_hidden_state`, or with `clip_skip` k
    /// `final_layer_norm(hidden_states[-(k + 1)])`. `workspace`: at least
    /// [`TextEncoder::workspace_len_for_threads`]`(batch, threads)` floats. Allocates nothing.
    pub fn encode(
        &self,
        threads: usize,
        workspace: &mut [f32],
        ids: &[u32],
        out: &mut [f32],
    ) -> Result<()> {
        self.check(ids, out)?;
        self.net.forward_ids(threads, workspace, ids, out, None)
    }

    /// Runs only the ops `ops` of [`TextEncoder::net`] on a workspace that holds their inputs
    /// (a net built with [`Reuse::None`]), with [`TextEncoder::encode`]'s arguments: the
    /// per-op backend tests.
    pub fn encode_ops(
        &self,
        ops: core::ops::Range<usize>,
        workspace: &mut [f32],
        ids: &[u32],
        out: &mut [f32],
    ) -> Result<()> {
        self.check(ids, out)?;
        self.net.forward_ids(0, workspace, ids, out, Some(ops))
    }

    fn check(&self, ids: &[u32], out: &[f32]) -> Result<()> {
        let tokens = self.tokens();
        if ids.is_empty() || !ids.len().is_multiple_of(tokens) {
            return Err(Error::BufferSize {
                what: "token ids (the encoder's tokens() per prompt)",
                expected: tokens,
                found: ids.len(),
            });
        }
        let batch = ids.len() / tokens;
        if out.len() != batch * self.output_len() {
            return Err(Error::BufferSize {
                what: "text encoder output",
                expected: batch * self.output_len(),
                found: out.len(),
            });
        }
        let vocab = self.config.vocab_size;
        if let Some((at, &id)) = ids
            .iter()
            .enumerate()
            .find(|(_, id)| **id as usize >= vocab)
        {
            return Err(token_id_error(at, id as usize, vocab));
        }
        Ok(())
    }
}
