//! Config → op list: diffusers' `UNet2DModel`, block by block.
//!
//! The walk mirrors `UNet2DModel.forward`: time embedding, `conv_in`, down blocks (resnets,
//! optional attention, stride-2 conv), mid block, up blocks (resnets over the skip concat,
//! optional attention, nearest-2x upsample folded into a conv), GroupNorm+SiLU, `conv_out`.
//! Each weight is looked up by its diffusers name once, here, and each block is spelled out
//! as primitive ops ([`super::ops`]): nothing downstream knows what a resnet, an attention
//! block or the time embedding is.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::description::DropoutSite;
use super::ops::{
    Activation, ActivationOp, ResampleMode, ResampleOp, ScaleShiftOp, TimestepTableOp,
};
use super::ops::{
    AttentionOp, ClassEmbeddingOp, ConvOp, GroupNormOp, Input, InputOp, LinearOp, Op, OutputOp,
    SiluOp, SinusoidOp, TensorId, TensorSpec,
};
use super::ops::{ClassVectorOp, FirResampleOp, FourierEmbeddingOp, TimestepDivideOp};
use super::ops::{EncoderStatesOp, GegluOp, LayerNormOp};
use super::Tap;
use crate::config::{ncsnpp_groups, DownBlockKind, UNetConfig, UpBlockKind};
use crate::error::{unsupported, Result};
use crate::kernels::ConvShape;
use crate::weights::{WeightLoader, WeightRef};

pub struct Described {
    pub tensors: Vec<TensorSpec>,
    pub ops: Vec<Op>,
    pub taps: Vec<Tap>,
    pub parameters: usize,
    /// Every `ResnetBlock2D`'s `conv2`, where training applies the `dropout` of its input.
    pub dropout_sites: Vec<DropoutSite>,
}

/// A feature map in the walk: which tensor, and its (channels, height, width).
#[derive(Clone, Copy)]
struct Map {
    input: Input,
    ca: usize,
    cb: usize,
    h: usize,
    w: usize,
}

impl Map {
    fn one(t: TensorId, c: usize, h: usize, w: usize) -> Map {
        Map {
            input: Input::One(t),
            ca: c,
            cb: 0,
            h,
            w,
        }
    }
    fn channels(&self) -> usize {
        self.ca + self.cb
    }
    fn tensor(&self) -> TensorId {
        self.input.first()
    }
}

struct Builder<'a> {
    cfg: &'a UNetConfig,
    loader: &'a mut WeightLoader,
    tensors: Vec<TensorSpec>,
    ops: Vec<Op>,
    taps: Vec<Tap>,
    parameters: usize,
    dropout_sites: Vec<DropoutSite>,
    /// Silu'd time embedding, `[embed_dim]` per sample.
    temb: TensorId,
    /// A conditional UNet's text states, `[text_tokens, cross_attention_dim]` per sample.
    context: Option<TensorId>,
}

impl Builder<'_> {
    fn tensor(&mut self, name: String, len: usize) -> TensorId {
        self.tensors.push(TensorSpec { len, name });
        self.tensors.len() - 1
    }

    fn weight(&mut self, names: &[&str], shape: &[usize]) -> Result<WeightRef> {
        let r = self.loader.take(names, shape)?;
        self.parameters += r.len();
        Ok(r)
    }

    /// A conv (`kernel = Some(k)`) or linear (`None`) weight in the kernels' packed layout,
    /// found under the first present of `names`.
    fn packed(
        &mut self,
        names: &[&str],
        out: usize,
        inp: usize,
        kernel: Option<usize>,
    ) -> Result<WeightRef> {
        let r = self.loader.take_packed(names, out, inp, kernel)?;
        let k = kernel.unwrap_or(1);
        self.parameters += out * inp * k * k;
        Ok(r)
    }

    /// Packed `{prefix}.weight` and `{prefix}.bias`.
    fn packed_bias(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
        kernel: Option<usize>,
    ) -> Result<(WeightRef, WeightRef)> {
        let w = self.packed(&[&format!("{prefix}.weight")], out, inp, kernel)?;
        let b = self.weight(&[&format!("{prefix}.bias")], &[out])?;
        Ok((w, b))
    }

    /// `{prefix}.weight` and `{prefix}.bias`.
    fn weight_bias(&mut self, prefix: &str, shape: &[usize]) -> Result<(WeightRef, WeightRef)> {
        let w = self.weight(&[&format!("{prefix}.weight")], shape)?;
        let b = self.weight(&[&format!("{prefix}.bias")], &shape[..1])?;
        Ok((w, b))
    }

    fn tap(&mut self, name: &str, m: Map) {
        self.taps.push(Tap {
            name: name.into(),
            tensor: m.tensor(),
            channels: m.channels(),
            height: m.h,
            width: m.w,
        });
    }

    fn group_norm(&mut self, prefix: &str, x: Map, groups: usize, silu: bool) -> Result<Map> {
        let c = x.channels();
        let (gamma, beta) = self.weight_bias(prefix, &[c])?;
        let out = self.tensor(prefix.into(), c * x.h * x.w);
        self.ops.push(Op::GroupNorm(GroupNormOp {
            input: x.input,
            in_ca: x.ca,
            in_cb: x.cb,
            pixels: x.h * x.w,
            groups,
            eps: self.cfg.norm_eps as f32,
            gamma,
            beta,
            silu,
            out,
        }));
        Ok(Map::one(out, c, x.h, x.w))
    }

    /// A convolution; `stride_pad` is (stride, padding) with diffusers' padding semantics
    /// (padding 0 at stride 2 means one row/column of zeros at the bottom/right).
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        prefix: &str,
        x: Map,
        out_c: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        upsample: bool,
        channel_add: Option<TensorId>,
        residual: Option<TensorId>,
        out_scale: f64,
    ) -> Result<Map> {
        let (weight, bias) = self.packed_bias(prefix, out_c, x.channels(), Some(kernel))?;
        let (vh, vw) = if upsample {
            (2 * x.h, 2 * x.w)
        } else {
            (x.h, x.w)
        };
        // diffusers' Downsample2D with padding 0 pads (0, 1, 0, 1) before a stride-2 conv.
        let extra = if stride == 2 && padding == 0 { 1 } else { 0 };
        let out_h = (vh + 2 * padding + extra - kernel) / stride + 1;
        let out_w = (vw + 2 * padding + extra - kernel) / stride + 1;
        let out = self.tensor(prefix.into(), out_c * out_h * out_w);
        let shape = ConvShape {
            batch: 1,
            in_h: x.h,
            in_w: x.w,
            in_ca: x.ca,
            in_cb: x.cb,
            out_c,
            out_h,
            out_w,
            kernel,
            stride,
            pad_top: padding,
            pad_left: padding,
            upsample,
        };
        self.ops.push(Op::Conv(ConvOp {
            input: x.input,
            shape,
            weight,
            bias,
            channel_add,
            residual,
            out_scale: out_scale as f32,
            out,
        }));
        Ok(Map::one(out, out_c, out_h, out_w))
    }

    /// A linear layer over `rows` rows per sample.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        name: String,
        input: TensorId,
        rows: usize,
        in_f: usize,
        out_f: usize,
        (weight, bias): (WeightRef, WeightRef),
        residual: Option<TensorId>,
        out_scale: f32,
    ) -> TensorId {
        let out = self.tensor(name, rows * out_f);
        self.ops.push(Op::Linear(LinearOp {
            input,
            rows,
            in_f,
            out_f,
            weight,
            bias,
            residual,
            out_scale,
            out,
        }));
        out
    }

    /// Elementwise SiLU of a `len`-float tensor into a new one.
    fn silu(&mut self, name: String, input: TensorId, len: usize) -> TensorId {
        let out = self.tensor(name, len);
        self.ops.push(Op::Silu(SiluOp { input, len, out }));
        out
    }

    /// `act_fn` of a `len`-float tensor: SiLU as its own op, the others as an activation op.
    fn act(&mut self, name: String, input: TensorId, len: usize) -> TensorId {
        match self.cfg.act_fn {
            Activation::Silu => self.silu(name, input, len),
            act => {
                let out = self.tensor(name, len);
                self.ops.push(Op::Activation(ActivationOp {
                    input,
                    len,
                    act,
                    out,
                }));
                out
            }
        }
    }

    /// GroupNorm then the resnets' `act_fn` (SiLU fused into the norm).
    fn norm_act(&mut self, prefix: &str, x: Map, groups: usize) -> Result<Map> {
        let silu = self.cfg.act_fn == Activation::Silu;
        let n = self.group_norm(prefix, x, groups, silu)?;
        if silu {
            return Ok(n);
        }
        let len = n.channels() * n.h * n.w;
        let out = self.act(format!("{prefix}+act"), n.tensor(), len);
        Ok(Map::one(out, n.channels(), n.h, n.w))
    }

    /// A plain 2x resample of a one-tensor map (the `down=True` / `up=True` resnet's paths).
    fn resample(&mut self, name: String, x: Map, mode: ResampleMode) -> Result<Map> {
        let input = match x.input {
            Input::One(t) => t,
            Input::Concat(..) => {
                return Err(unsupported(
                    "up_block_types",
                    format!("{name}: resampling a skip concatenation"),
                ))
            }
        };
        let c = x.channels();
        let op = ResampleOp {
            input,
            channels: c,
            in_h: x.h,
            in_w: x.w,
            mode,
            out: 0,
        };
        let (h, w) = op.out_hw();
        let out = self.tensor(name, c * h * w);
        self.ops.push(Op::Resample(ResampleOp { out, ..op }));
        Ok(Map::one(out, c, h, w))
    }

    /// diffusers' `ResnetBlock2D`:
    /// `(shortcut(x) + conv2(silu(norm2'(conv1(silu(norm1(x))))))) / scale`, where `norm2'` is
    /// `norm2(h + proj(silu(temb)))` ("default") or `norm2(h) * (1 + scale) + shift` with
    /// `scale, shift = proj(silu(temb))` ("scale_shift"). With `resample` (`down=True`:
    /// average pool, `up=True`: nearest 2x) both `silu(norm1(x))` and `x` are resampled
    /// before `conv1` and the shortcut; the nearest upsample of the former is folded into
    /// `conv1`.
    fn resnet(
        &mut self,
        p: &str,
        x: Map,
        out_c: usize,
        scale: f64,
        resample: Option<ResampleMode>,
    ) -> Result<Map> {
        let groups = self.cfg.norm_num_groups;
        let scale_shift = self.cfg.scale_shift;
        let h = self.norm_act(&format!("{p}.norm1"), x, groups)?;
        let e = self.cfg.time_embed_dim;
        let proj_c = if scale_shift { 2 * out_c } else { out_c };
        let proj_w = self.packed_bias(&format!("{p}.time_emb_proj"), proj_c, e, None)?;
        let proj = self.linear(
            format!("{p}.time_emb_proj"),
            self.temb,
            1,
            e,
            proj_c,
            proj_w,
            None,
            1.0,
        );
        let (h, x, upsample_h) = match resample {
            None => (h, x, false),
            Some(ResampleMode::AvgPool2) => (
                self.resample(format!("{p}.downsample(h)"), h, ResampleMode::AvgPool2)?,
                self.resample(format!("{p}.downsample(x)"), x, ResampleMode::AvgPool2)?,
                false,
            ),
            Some(ResampleMode::Nearest2) => (
                h,
                self.resample(format!("{p}.upsample(x)"), x, ResampleMode::Nearest2)?,
                true,
            ),
        };
        let h = self.conv(
            &format!("{p}.conv1"),
            h,
            out_c,
            3,
            1,
            1,
            upsample_h,
            (!scale_shift).then_some(proj),
            None,
            1.0,
        )?;
        let h = if scale_shift {
            let n = self.group_norm(&format!("{p}.norm2"), h, groups, false)?;
            let len = out_c * n.h * n.w;
            let out = self.tensor(format!("{p}.norm2+scale_shift"), len);
            let silu = self.cfg.act_fn == Activation::Silu;
            self.ops.push(Op::ScaleShift(ScaleShiftOp {
                input: n.tensor(),
                scale_shift: proj,
                channels: out_c,
                pixels: n.h * n.w,
                silu,
                out,
            }));
            let out = if silu {
                out
            } else {
                self.act(format!("{p}.norm2+scale_shift+act"), out, len)
            };
            Map::one(out, out_c, n.h, n.w)
        } else {
            self.norm_act(&format!("{p}.norm2"), h, groups)?
        };
        let shortcut = if x.channels() != out_c {
            self.conv(
                &format!("{p}.conv_shortcut"),
                x,
                out_c,
                1,
                1,
                0,
                false,
                None,
                None,
                1.0,
            )?
            .tensor()
        } else {
            match x.input {
                Input::One(t) => t,
                Input::Concat(..) => {
                    return Err(unsupported(
                        "up_block_types",
                        format!("{p}: identity shortcut over a skip concatenation"),
                    ))
                }
            }
        };
        let out = self.conv(
            &format!("{p}.conv2"),
            h,
            out_c,
            3,
            1,
            1,
            false,
            None,
            Some(shortcut),
            scale,
        )?;
        self.dropout_sites.push(DropoutSite {
            op: self.ops.len() - 1,
            resnet: p.into(),
        });
        Ok(out)
    }

    /// diffusers' `Attention` with a residual connection, as used by the Attn*Block2D blocks and
    /// the mid block. Accepts both the current (`to_q`, `to_out.0`) and the older
    /// (`query`, `proj_attn`) tensor names.
    /// `groups` `None`: no GroupNorm (diffusers' `norm_num_groups=None`).
    fn attention(&mut self, p: &str, x: Map, groups: Option<usize>, rescale: f64) -> Result<Map> {
        let c = x.channels();
        let heads = self.cfg.heads(c);
        let norm = match groups {
            Some(g) => Some((g, self.weight_bias(&format!("{p}.group_norm"), &[c])?)),
            None => None,
        };
        let mut proj = |new: &str, old: &str| -> Result<(WeightRef, WeightRef)> {
            let w = self.packed(
                &[&format!("{p}.{new}.weight"), &format!("{p}.{old}.weight")],
                c,
                c,
                None,
            )?;
            let b = self.weight(
                &[&format!("{p}.{new}.bias"), &format!("{p}.{old}.bias")],
                &[c],
            )?;
            Ok((w, b))
        };
        let q = proj("to_q", "query")?;
        let k = proj("to_k", "key")?;
        let v = proj("to_v", "value")?;
        let o = proj("to_out.0", "proj_attn")?;
        let tokens = x.h * x.w;
        let n = tokens * c;
        let normed = match norm {
            Some((groups, (gamma, beta))) => {
                let normed = self.tensor(format!("{p}.group_norm"), n);
                self.ops.push(Op::GroupNorm(GroupNormOp {
                    input: x.input,
                    in_ca: x.ca,
                    in_cb: x.cb,
                    pixels: tokens,
                    groups,
                    eps: self.cfg.norm_eps as f32,
                    gamma,
                    beta,
                    silu: false,
                    out: normed,
                }));
                normed
            }
            None => x.tensor(),
        };
        // V, K, Q in this order: the outputs are independent, and the trainer's reverse walk
        // then accumulates the norm's input gradient as Q, K, V.
        let v = self.linear(format!("{p}.to_v"), normed, tokens, c, c, v, None, 1.0);
        let k = self.linear(format!("{p}.to_k"), normed, tokens, c, c, k, None, 1.0);
        let q = self.linear(format!("{p}.to_q"), normed, tokens, c, c, q, None, 1.0);
        let scratch = self.tensor(format!("{p}.scratch"), tokens);
        let attended = self.tensor(format!("{p}.attended"), n);
        self.ops.push(Op::Attention(AttentionOp {
            q,
            k,
            v,
            tokens,
            kv_tokens: tokens,
            channels: c,
            heads,
            causal: false,
            scratch,
            out: attended,
        }));
        let out = self.linear(
            format!("{p}.to_out"),
            attended,
            tokens,
            c,
            c,
            o,
            Some(x.tensor()),
            rescale as f32,
        );
        Ok(Map::one(out, c, x.h, x.w))
    }
}

/// The `UNet2DConditionModel` pieces: `Transformer2DModel` and its `BasicTransformerBlock`s.
impl Builder<'_> {
    /// `nn.LayerNorm(dim)` over `rows` rows (diffusers' default eps 1e-5).
    fn layer_norm(&mut self, p: &str, x: TensorId, rows: usize, dim: usize) -> Result<TensorId> {
        let (gamma, beta) = self.weight_bias(p, &[dim])?;
        let out = self.tensor(p.into(), rows * dim);
        self.ops.push(Op::LayerNorm(LayerNormOp {
            input: x,
            rows,
            dim,
            eps: 1e-5,
            gamma,
            beta,
            out,
        }));
        Ok(out)
    }

    /// `nn.Linear(in_f, out_f)` over `rows` rows, `{p}.weight` and (if `bias`) `{p}.bias`;
    /// without one (the attention projections' `bias=False`) the op adds zeros.
    #[allow(clippy::too_many_arguments)]
    fn dense(
        &mut self,
        p: &str,
        x: TensorId,
        rows: usize,
        in_f: usize,
        out_f: usize,
        bias: bool,
        residual: Option<TensorId>,
    ) -> Result<TensorId> {
        let weights = if bias {
            self.packed_bias(p, out_f, in_f, None)?
        } else {
            let w = self.packed(&[&format!("{p}.weight")], out_f, in_f, None)?;
            (w, self.loader.zeros(out_f))
        };
        Ok(self.linear(p.into(), x, rows, in_f, out_f, weights, residual, 1.0))
    }

    /// diffusers' `Attention` inside a `BasicTransformerBlock` (`attn1`: self, `attn2`: to the
    /// text states): `to_q/k/v` without bias, `to_out.0` with, `+ residual`.
    #[allow(clippy::too_many_arguments)]
    fn transformer_attention(
        &mut self,
        p: &str,
        normed: TensorId,
        tokens: usize,
        c: usize,
        heads: usize,
        kv: Option<(TensorId, usize, usize)>,
        residual: TensorId,
    ) -> Result<TensorId> {
        // Keys and values from the text states (rows, width) or the normed tokens.
        let (kv_in, kv_tokens, kv_dim) = kv.unwrap_or((normed, tokens, c));
        let v = self.dense(
            &format!("{p}.to_v"),
            kv_in,
            kv_tokens,
            kv_dim,
            c,
            false,
            None,
        )?;
        let k = self.dense(
            &format!("{p}.to_k"),
            kv_in,
            kv_tokens,
            kv_dim,
            c,
            false,
            None,
        )?;
        let q = self.dense(&format!("{p}.to_q"), normed, tokens, c, c, false, None)?;
        let scratch = self.tensor(format!("{p}.scratch"), kv_tokens);
        let attended = self.tensor(format!("{p}.attended"), tokens * c);
        self.ops.push(Op::Attention(AttentionOp {
            q,
            k,
            v,
            tokens,
            kv_tokens,
            channels: c,
            heads,
            causal: false,
            scratch,
            out: attended,
        }));
        let p = format!("{p}.to_out.0");
        self.dense(&p, attended, tokens, c, c, true, Some(residual))
    }

    /// diffusers' `Transformer2DModel` (continuous input) after a resnet of cross-attention
    /// block `level` (down-block numbering): GroupNorm (eps 1e-6), `proj_in` (1x1 conv, or
    /// linear with `use_linear_projection`), `BasicTransformerBlock`s (LayerNorm,
    /// self-attention, LayerNorm, cross-attention to the text states, LayerNorm, GEGLU
    /// feed-forward, each `+ residual`), `proj_out`, `+ the input`.
    fn transformer(&mut self, p: &str, x: Map, level: usize) -> Result<Map> {
        let missing = || {
            unsupported(
                "down_block_types",
                "cross-attention blocks outside a UNet2DConditionModel",
            )
        };
        let cross = self.cfg.cross_attention.as_ref().ok_or_else(missing)?;
        let context = self.context.ok_or_else(missing)?;
        let (heads, layers) = (cross.heads[level], cross.layers[level]);
        let (text_tokens, text_dim) = (cross.text_tokens, cross.cross_attention_dim);
        let linear_projection = cross.linear_projection;
        let Input::One(input) = x.input else {
            return Err(unsupported(
                "up_block_types",
                format!("{p}: a transformer over a skip concatenation"),
            ));
        };
        let (c, tokens) = (x.channels(), x.h * x.w);
        let (gamma, beta) = self.weight_bias(&format!("{p}.norm"), &[c])?;
        let normed = self.tensor(format!("{p}.norm"), tokens * c);
        self.ops.push(Op::GroupNorm(GroupNormOp {
            input: x.input,
            in_ca: x.ca,
            in_cb: x.cb,
            pixels: tokens,
            groups: self.cfg.norm_num_groups,
            eps: 1e-6,
            gamma,
            beta,
            silu: false,
            out: normed,
        }));
        // NHWC: a 1x1 conv is the same product as a linear layer over the pixel rows; only the
        // weight's saved shape differs.
        let project = |b: &mut Self, name: &str, from: TensorId, residual: Option<TensorId>| {
            if linear_projection {
                b.dense(name, from, tokens, c, c, true, residual)
            } else {
                let m = Map::one(from, c, x.h, x.w);
                Ok(b.conv(name, m, c, 1, 1, 0, false, None, residual, 1.0)?
                    .tensor())
            }
        };
        let mut h = project(self, &format!("{p}.proj_in"), normed, None)?;
        for k in 0..layers {
            let q = format!("{p}.transformer_blocks.{k}");
            let n1 = self.layer_norm(&format!("{q}.norm1"), h, tokens, c)?;
            h = self.transformer_attention(&format!("{q}.attn1"), n1, tokens, c, heads, None, h)?;
            let n2 = self.layer_norm(&format!("{q}.norm2"), h, tokens, c)?;
            let kv = Some((context, text_tokens, text_dim));
            h = self.transformer_attention(&format!("{q}.attn2"), n2, tokens, c, heads, kv, h)?;
            let n3 = self.layer_norm(&format!("{q}.norm3"), h, tokens, c)?;
            // FeedForward(dim, mult 4, "geglu"): proj to 2 x 4c, hidden * gelu(gate), 4c -> c.
            let inner = 4 * c;
            let proj = format!("{q}.ff.net.0.proj");
            let gates = self.dense(&proj, n3, tokens, c, 2 * inner, true, None)?;
            let gated = self.tensor(format!("{q}.ff.net.0"), tokens * inner);
            self.ops.push(Op::Geglu(GegluOp {
                input: gates,
                rows: tokens,
                dim: inner,
                out: gated,
            }));
            h = self.dense(
                &format!("{q}.ff.net.2"),
                gated,
                tokens,
                inner,
                c,
                true,
                Some(h),
            )?;
        }
        let out = project(self, &format!("{p}.proj_out"), h, Some(input))?;
        Ok(Map::one(out, c, x.h, x.w))
    }
}

/// The output scale of every resnet and attention block of diffusers' skip blocks.
const SKIP_BLOCK_SCALE: f64 = core::f64::consts::SQRT_2;

/// NCSN++ (score-SDE) pieces: the Fourier time embedding, FIR resampling, the skip blocks'
/// resnets.
impl Builder<'_> {
    /// `time_proj` of `time_embedding_type: "fourier"`: diffusers' `GaussianFourierProjection`
    /// as `UNet2DModel` builds it (`embedding_size = block_out_channels[0]`, `log=True`,
    /// `flip_sin_to_cos=False` whatever the config says); `2 * dim` floats per sample.
    fn fourier_embedding(&mut self, dim: usize) -> Result<TensorId> {
        let weight = self.weight(&["time_proj.weight", "time_proj.W"], &[dim])?;
        let out = self.tensor("time_proj".into(), 2 * dim);
        self.ops.push(Op::FourierEmbedding(FourierEmbeddingOp {
            dim,
            weight,
            log: true,
            flip_sin_to_cos: false,
            out,
        }));
        Ok(out)
    }

    /// `upsample_2d` / `downsample_2d` with the `[1, 3, 3, 1]` kernel.
    fn fir(&mut self, name: String, x: Map, up: bool) -> Result<Map> {
        let Input::One(input) = x.input else {
            return Err(unsupported(
                "up_block_types",
                "FIR resampling of a concatenation",
            ));
        };
        if !up && (!x.h.is_multiple_of(2) || !x.w.is_multiple_of(2)) {
            return Err(unsupported(
                "sample_size",
                format!("{name}: FIR downsampling of odd size {}x{}", x.h, x.w),
            ));
        }
        let op = FirResampleOp {
            input,
            channels: x.channels(),
            in_h: x.h,
            in_w: x.w,
            up,
            out: 0,
        };
        let (h, w) = op.out_hw();
        let out = self.tensor(name, x.channels() * h * w);
        self.ops.push(Op::FirResample(FirResampleOp { out, ..op }));
        Ok(Map::one(out, x.channels(), h, w))
    }

    /// diffusers' `ResnetBlock2D` as the skip blocks build it: their own GroupNorm groups,
    /// output scale (sqrt(2) in the skip blocks), a 1x1 shortcut when `force_shortcut` (`use_in_shortcut=True`) or
    /// the channels change, and with `fir_up = Some(up)` (`kernel="fir"`) both paths FIR-
    /// resampled after `norm1` + SiLU.
    #[allow(clippy::too_many_arguments)]
    fn skip_block_resnet(
        &mut self,
        p: &str,
        x: Map,
        out_c: usize,
        groups: usize,
        groups_out: usize,
        scale: f64,
        fir_up: Option<bool>,
        force_shortcut: bool,
    ) -> Result<Map> {
        let mut h = self.group_norm(&format!("{p}.norm1"), x, groups, true)?;
        let mut x = x;
        if let Some(up) = fir_up {
            h = self.fir(format!("{p}.fir(norm1)"), h, up)?;
            x = self.fir(format!("{p}.fir(input)"), x, up)?;
        }
        let e = self.cfg.time_embed_dim;
        let proj_w = self.packed_bias(&format!("{p}.time_emb_proj"), out_c, e, None)?;
        let proj = self.linear(
            format!("{p}.time_emb_proj"),
            self.temb,
            1,
            e,
            out_c,
            proj_w,
            None,
            1.0,
        );
        let h = self.conv(
            &format!("{p}.conv1"),
            h,
            out_c,
            3,
            1,
            1,
            false,
            Some(proj),
            None,
            1.0,
        )?;
        let h = self.group_norm(&format!("{p}.norm2"), h, groups_out, true)?;
        let shortcut = match x.input {
            Input::One(t) if !force_shortcut && x.channels() == out_c => t,
            _ => self
                .conv(
                    &format!("{p}.conv_shortcut"),
                    x,
                    out_c,
                    1,
                    1,
                    0,
                    false,
                    None,
                    None,
                    1.0,
                )?
                .tensor(),
        };
        let out = self.conv(
            &format!("{p}.conv2"),
            h,
            out_c,
            3,
            1,
            1,
            false,
            None,
            Some(shortcut),
            scale,
        )?;
        self.dropout_sites.push(DropoutSite {
            op: self.ops.len() - 1,
            resnet: p.into(),
        });
        Ok(out)
    }

    /// `SkipDownBlock2D` / `AttnSkipDownBlock2D` `i`: returns the features and the running
    /// skip image (FIR-downsampled when the block downsamples).
    fn skip_down_block(
        &mut self,
        i: usize,
        mut h: Map,
        image: Map,
        skips: &mut Vec<Map>,
    ) -> Result<(Map, Map)> {
        let cfg = self.cfg;
        let out_c = cfg.block_out_channels[i];
        for j in 0..cfg.layers_per_block {
            let groups = ncsnpp_groups(h.channels());
            let p = format!("down_blocks.{i}.resnets.{j}");
            let g_out = ncsnpp_groups(out_c);
            h =
                self.skip_block_resnet(&p, h, out_c, groups, g_out, SKIP_BLOCK_SCALE, None, false)?;
            if cfg.down_blocks[i] == DownBlockKind::AttentionSkip {
                let p = format!("down_blocks.{i}.attentions.{j}");
                h = self.attention(&p, h, Some(32), SKIP_BLOCK_SCALE)?;
            }
            skips.push(h);
        }
        if i + 1 == cfg.block_out_channels.len() {
            return Ok((h, image));
        }
        let g = ncsnpp_groups(out_c);
        let p = format!("down_blocks.{i}.resnet_down");
        h = self.skip_block_resnet(&p, h, out_c, g, g, SKIP_BLOCK_SCALE, Some(false), true)?;
        let image = self.fir(format!("down_blocks.{i}.downsamplers.0"), image, false)?;
        let p = format!("down_blocks.{i}.skip_conv");
        h = self.conv(
            &p,
            image,
            out_c,
            1,
            1,
            0,
            false,
            None,
            Some(h.tensor()),
            1.0,
        )?;
        skips.push(h);
        Ok((h, image))
    }

    /// `SkipUpBlock2D` / `AttnSkipUpBlock2D` `i`: returns the features and the running output
    /// image (`None` before the first block that writes one, diffusers' `skip_sample = 0`).
    fn skip_up_block(
        &mut self,
        i: usize,
        mut h: Map,
        image: Option<Map>,
        skips: &mut Vec<Map>,
    ) -> Result<(Map, Option<Map>)> {
        let cfg = self.cfg;
        let levels = cfg.block_out_channels.len();
        let out_c = cfg.block_out_channels[levels - 1 - i];
        let kind = cfg.up_blocks[i];
        for j in 0..=cfg.layers_per_block {
            let skip = skips
                .pop()
                .ok_or_else(|| unsupported("layers_per_block", "skip connections exhausted"))?;
            if skip.h != h.h || skip.w != h.w {
                return Err(unsupported("sample_size", "skip sizes do not match"));
            }
            let (a, b) = (h.channels(), skip.channels());
            // AttnSkipUpBlock2D computes `min(a + b // 4, 32)` (sic).
            let groups = match kind {
                UpBlockKind::AttentionSkip => (a + b / 4).min(32),
                _ => ncsnpp_groups(a + b),
            };
            let cat = Map {
                input: Input::Concat(h.tensor(), skip.tensor()),
                ca: a,
                cb: b,
                h: h.h,
                w: h.w,
            };
            let p = format!("up_blocks.{i}.resnets.{j}");
            let g_out = ncsnpp_groups(out_c);
            h = self.skip_block_resnet(
                &p,
                cat,
                out_c,
                groups,
                g_out,
                SKIP_BLOCK_SCALE,
                None,
                false,
            )?;
        }
        if kind == UpBlockKind::AttentionSkip {
            h = self.attention(
                &format!("up_blocks.{i}.attentions.0"),
                h,
                Some(32),
                SKIP_BLOCK_SCALE,
            )?;
        }
        let mut image = match image {
            Some(m) => Some(self.fir(format!("up_blocks.{i}.upsampler"), m, true)?),
            None => None,
        };
        if i + 1 < levels {
            let g = ncsnpp_groups(out_c);
            let s = self.group_norm(&format!("up_blocks.{i}.skip_norm"), h, g, true)?;
            let residual = image.map(|m| m.tensor());
            let p = format!("up_blocks.{i}.skip_conv");
            image = Some(self.conv(&p, s, 3, 3, 1, 1, false, None, residual, 1.0)?);
            let p = format!("up_blocks.{i}.resnet_up");
            h = self.skip_block_resnet(&p, h, out_c, g, g, SKIP_BLOCK_SCALE, Some(true), true)?;
        }
        Ok((h, image))
    }
}

/// Builds the op list of `cfg` at resolution `(height, width)`.
pub fn describe(
    cfg: &UNetConfig,
    loader: &mut WeightLoader,
    (height, width): (usize, usize),
) -> Result<Described> {
    let mut b = Builder {
        cfg,
        loader,
        tensors: Vec::new(),
        ops: Vec::new(),
        taps: Vec::new(),
        parameters: 0,
        dropout_sites: Vec::new(),
        temb: 0,
        context: None,
    };
    let boc = &cfg.block_out_channels;
    let levels = boc.len();
    let groups = cfg.norm_num_groups;

    // Input, time embedding.
    let x_in = b.tensor("sample".into(), cfg.in_channels * height * width);
    b.ops.push(Op::Input(InputOp {
        channels: cfg.in_channels,
        height,
        width,
        center: cfg.center_input_sample,
        out: x_in,
    }));
    if let Some(cross) = &cfg.cross_attention {
        let (tokens, dim) = (cross.text_tokens, cross.cross_attention_dim);
        let out = b.tensor("encoder_hidden_states".into(), tokens * dim);
        b.ops
            .push(Op::EncoderStates(EncoderStatesOp { tokens, dim, out }));
        b.context = Some(out);
    }
    let (c0, e) = (boc[0], cfg.time_embed_dim);
    // The embedding MLP's input: the sinusoid's c0 floats, or the Fourier projection's 2 c0.
    let t_in = if cfg.time_fourier { 2 * c0 } else { c0 };
    let linear_1 = b.packed_bias("time_embedding.linear_1", e, t_in, None)?;
    let linear_2 = b.packed_bias("time_embedding.linear_2", e, e, None)?;
    let class_embedding = match cfg.num_class_embeds {
        Some(n) if !cfg.timestep_class_embedding => {
            Some((b.weight(&["class_embedding.weight"], &[n, e])?, n))
        }
        _ => None,
    };
    let class_mlp = if cfg.timestep_class_embedding {
        Some((
            b.packed_bias("class_embedding.linear_1", e, c0, None)?,
            b.packed_bias("class_embedding.linear_2", e, e, None)?,
        ))
    } else {
        None
    };
    let sinusoid = match cfg.learned_time_embedding {
        _ if cfg.time_fourier => b.fourier_embedding(c0)?,
        None => {
            let sinusoid = b.tensor("time_proj".into(), c0);
            b.ops.push(Op::Sinusoid(SinusoidOp {
                dim: c0,
                flip_sin_to_cos: cfg.flip_sin_to_cos,
                freq_shift: cfg.freq_shift as f32,
                out: sinusoid,
            }));
            sinusoid
        }
        Some(steps) => {
            let sinusoid = b.tensor("time_proj".into(), c0);
            let table = b.weight(&["time_proj.weight"], &[steps, c0])?;
            b.ops.push(Op::TimestepTable(TimestepTableOp {
                table,
                steps,
                dim: c0,
                out: sinusoid,
            }));
            sinusoid
        }
    };
    let h = b.linear(
        "time_embedding.linear_1".into(),
        sinusoid,
        1,
        t_in,
        e,
        linear_1,
        None,
        1.0,
    );
    let h = b.silu("time_embedding.act".into(), h, e);
    let mut emb = b.linear(
        "time_embedding.linear_2".into(),
        h,
        1,
        e,
        e,
        linear_2,
        None,
        1.0,
    );
    if let Some((linear_1, linear_2)) = class_mlp {
        // emb += TimestepEmbedding(sinusoid(label)).
        let sinusoid = b.tensor("class_proj".into(), c0);
        b.ops.push(Op::ClassSinusoid(SinusoidOp {
            dim: c0,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift as f32,
            out: sinusoid,
        }));
        let h = b.linear(
            "class_embedding.linear_1".into(),
            sinusoid,
            1,
            c0,
            e,
            linear_1,
            None,
            1.0,
        );
        let h = b.silu("class_embedding.act".into(), h, e);
        emb = b.linear(
            "class_embedding.linear_2+time_embedding".into(),
            h,
            1,
            e,
            e,
            linear_2,
            Some(emb),
            1.0,
        );
    }
    if cfg.identity_class_embedding {
        let out = b.tensor("class_embedding(identity)".into(), e);
        b.ops.push(Op::ClassVector(ClassVectorOp {
            input: emb,
            dim: e,
            out,
        }));
        emb = out;
    }
    if let Some((table, classes)) = class_embedding {
        let out = b.tensor("class_embedding".into(), e);
        b.ops.push(Op::ClassEmbedding(ClassEmbeddingOp {
            input: emb,
            table,
            classes,
            dim: e,
            out,
        }));
        emb = out;
    }
    // The nonlinearity every resnet applies to the embedding before its projection, done once.
    let act = match cfg.act_fn {
        Activation::Silu => "silu",
        Activation::Mish => "mish",
        Activation::Gelu => "gelu",
        Activation::Relu => "relu",
        Activation::QuickGelu => "quick_gelu",
    };
    b.temb = b.act(format!("time_embedding+{act}"), emb, e);
    // diffusers' `time_embedding` module output excludes the class embedding.
    let tap = if cfg.num_class_embeds.is_some() || cfg.identity_class_embedding {
        format!("embedding+class+{act}")
    } else {
        format!("time_embedding+{act}")
    };
    b.tap(&tap, Map::one(b.temb, e, 1, 1));

    let mut h = b.conv(
        "conv_in",
        Map::one(x_in, cfg.in_channels, height, width),
        c0,
        3,
        1,
        1,
        false,
        None,
        None,
        1.0,
    )?;
    b.tap("conv_in", h);
    let mut skips: Vec<Map> = alloc::vec![h];
    // NCSN++'s skip image: the input sample, FIR-downsampled along the skip down blocks.
    let mut down_image = Map::one(x_in, cfg.in_channels, height, width);

    for (i, kind) in cfg.down_blocks.iter().enumerate() {
        if kind.is_skip() {
            (h, down_image) = b.skip_down_block(i, h, down_image, &mut skips)?;
            b.tap(&format!("down_blocks.{i}"), h);
            continue;
        }
        let out_c = boc[i];
        for j in 0..cfg.layers_per_block {
            h = b.resnet(&format!("down_blocks.{i}.resnets.{j}"), h, out_c, 1.0, None)?;
            if *kind == DownBlockKind::Attention {
                let p = format!("down_blocks.{i}.attentions.{j}");
                h = b.attention(&p, h, Some(groups), 1.0)?;
            }
            if *kind == DownBlockKind::CrossAttention {
                let p = format!("down_blocks.{i}.attentions.{j}");
                h = b.transformer(&p, h, i)?;
            }
            skips.push(h);
        }
        let resnet_down = *kind == DownBlockKind::ResnetDownsample
            || (*kind == DownBlockKind::Attention && cfg.resnet_downsample);
        if i + 1 < levels && resnet_down {
            let p = format!("down_blocks.{i}.downsamplers.0");
            h = b.resnet(&p, h, out_c, 1.0, Some(ResampleMode::AvgPool2))?;
            skips.push(h);
        } else if i + 1 < levels {
            let p = format!("down_blocks.{i}.downsamplers.0.conv");
            h = b.conv(
                &p,
                h,
                out_c,
                3,
                2,
                cfg.downsample_padding,
                false,
                None,
                None,
                1.0,
            )?;
            skips.push(h);
        }
        b.tap(&format!("down_blocks.{i}"), h);
    }

    if let Some(mid) = cfg.mid_block.as_ref().filter(|_| cfg.norm_groups_null) {
        // diffusers' null norm_num_groups: the mid block's own groups (otherwise the same
        // resnets as below).
        let (c, g, scale) = (boc[levels - 1], mid.resnet_groups, mid.scale_factor);
        let p = "mid_block.resnets.0";
        h = b.skip_block_resnet(p, h, c, g, g, scale, None, false)?;
        if mid.add_attention {
            h = b.attention("mid_block.attentions.0", h, mid.attn_groups, scale)?;
        }
        let p = "mid_block.resnets.1";
        h = b.skip_block_resnet(p, h, c, g, g, scale, None, false)?;
        b.tap("mid_block", h);
    }
    if let Some(mid) = cfg.mid_block.as_ref().filter(|_| !cfg.norm_groups_null) {
        let c = boc[levels - 1];
        h = b.resnet("mid_block.resnets.0", h, c, mid.scale_factor, None)?;
        if cfg.cross_attention.is_some() {
            h = b.transformer("mid_block.attentions.0", h, levels - 1)?;
        } else if mid.add_attention {
            h = b.attention(
                "mid_block.attentions.0",
                h,
                mid.attn_groups,
                mid.scale_factor,
            )?;
        }
        h = b.resnet("mid_block.resnets.1", h, c, mid.scale_factor, None)?;
        b.tap("mid_block", h);
    }

    // NCSN++'s output image, built up along the skip up blocks and added to conv_out.
    let mut up_image: Option<Map> = None;
    for (i, kind) in cfg.up_blocks.iter().enumerate() {
        if kind.is_skip() {
            (h, up_image) = b.skip_up_block(i, h, up_image, &mut skips)?;
            b.tap(&format!("up_blocks.{i}"), h);
            continue;
        }
        let out_c = boc[levels - 1 - i];
        for j in 0..=cfg.layers_per_block {
            let skip = skips
                .pop()
                .ok_or_else(|| unsupported("layers_per_block", "skip connections exhausted"))?;
            if skip.h != h.h || skip.w != h.w {
                return Err(unsupported(
                    "sample_size",
                    format!("{height}x{width}: skip sizes do not match"),
                ));
            }
            let cat = Map {
                input: Input::Concat(h.tensor(), skip.tensor()),
                ca: h.channels(),
                cb: skip.channels(),
                h: h.h,
                w: h.w,
            };
            h = b.resnet(&format!("up_blocks.{i}.resnets.{j}"), cat, out_c, 1.0, None)?;
            if *kind == UpBlockKind::Attention {
                let p = format!("up_blocks.{i}.attentions.{j}");
                h = b.attention(&p, h, Some(groups), 1.0)?;
            }
            if *kind == UpBlockKind::CrossAttention {
                let p = format!("up_blocks.{i}.attentions.{j}");
                h = b.transformer(&p, h, levels - 1 - i)?;
            }
        }
        let resnet_up = *kind == UpBlockKind::ResnetUpsample
            || (*kind == UpBlockKind::Attention && cfg.resnet_upsample);
        if i + 1 < levels && resnet_up {
            let p = format!("up_blocks.{i}.upsamplers.0");
            h = b.resnet(&p, h, out_c, 1.0, Some(ResampleMode::Nearest2))?;
        } else if i + 1 < levels {
            h = b.conv(
                &format!("up_blocks.{i}.upsamplers.0.conv"),
                h,
                out_c,
                3,
                1,
                1,
                true,
                None,
                None,
                1.0,
            )?;
        }
        b.tap(&format!("up_blocks.{i}"), h);
    }

    h = b.group_norm("conv_norm_out", h, groups, true)?;
    b.tap("conv_norm_out+silu", h);
    h = b.conv(
        "conv_out",
        h,
        cfg.out_channels,
        3,
        1,
        1,
        false,
        None,
        up_image.map(|m| m.tensor()),
        1.0,
    )?;
    b.tap("conv_out", h);
    if cfg.time_fourier {
        // diffusers' `sample / timesteps` of the Fourier (sigma-conditioned) model.
        let len = h.channels() * h.h * h.w;
        let out = b.tensor("sample / timesteps".into(), len);
        b.ops.push(Op::TimestepDivide(TimestepDivideOp {
            input: h.tensor(),
            len,
            out,
        }));
        h = Map::one(out, h.channels(), h.h, h.w);
    }
    b.ops.push(Op::Output(OutputOp {
        input: h.tensor(),
        channels: cfg.out_channels,
        height,
        width,
    }));

    Ok(Described {
        tensors: b.tensors,
        ops: b.ops,
        taps: b.taps,
        parameters: b.parameters,
        dropout_sites: b.dropout_sites,
    })
}
