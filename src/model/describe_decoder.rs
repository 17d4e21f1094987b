//! Decoder config → op list: diffusers' `post_quant_conv` and `Decoder` (vae.py) with
//! `norm_type` "group": `conv_in`, `UNetMidBlock2D` (resnet, single-head attention, resnet),
//! `UpDecoderBlock2D`s (`layers_per_block + 1` resnets, then a nearest-2x upsample folded into
//! a conv), GroupNorm+SiLU, `conv_out`. The same primitive ops as the UNet: the resnets have
//! no time embedding, every GroupNorm has eps 1e-6. The VQ lookup runs before the walk
//! ([`super::decoder::Decoder::decode`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::decoder_config::{DecoderConfig, DecoderKind};
use super::describe::Described;
use super::ops::{
    AttentionOp, ConvOp, ElementwiseKind, ElementwiseOp, GroupNormOp, Input, InputOp, LinearOp,
    NormConvOp, Op, OutputOp, TensorId, TensorSpec,
};
use super::Tap;
use crate::error::Result;
use crate::kernels::ConvShape;
use crate::weights::{WeightLoader, WeightRef};

/// diffusers' `Decoder` builds every norm with eps 1e-6.
const EPS: f32 = 1e-6;

/// Normalised-input floats a resnet conv's band holds ([`NormConvOp`]): 4 Mi (16 MiB), 24
/// rows of SD's 256-channel 512-pixel-wide maps.
pub const BAND_FLOATS: usize = 1 << 22;

/// How the decoder's resnets use memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLayout {
    /// A resnet writes its output over its input (inference); off, every resnet output gets
    /// its own tensor (taps, op-by-op checks).
    pub in_place: bool,
    /// Normalised-input floats per band (rows are whole; at least one row per band).
    pub band_floats: usize,
}

impl DecoderLayout {
    /// The layout for a memory plan: in place when tensors share memory.
    pub fn for_reuse(reuse: crate::memory::Reuse) -> DecoderLayout {
        DecoderLayout {
            in_place: reuse == crate::memory::Reuse::Shared,
            band_floats: BAND_FLOATS,
        }
    }
}

/// A feature map: tensor, channels, height, width.
#[derive(Clone, Copy)]
struct Map {
    t: TensorId,
    c: usize,
    h: usize,
    w: usize,
}

/// A stride-1 conv of `x` with padding `kernel / 2` (output as large as the, optionally
/// nearest-2x upsampled, input).
fn same_conv(x: Map, out_c: usize, kernel: usize, upsample: bool) -> ConvShape {
    let f = if upsample { 2 } else { 1 };
    ConvShape {
        batch: 1,
        in_h: x.h,
        in_w: x.w,
        in_ca: x.c,
        in_cb: 0,
        out_c,
        out_h: x.h * f,
        out_w: x.w * f,
        kernel,
        stride: 1,
        pad_top: kernel / 2,
        pad_left: kernel / 2,
        upsample,
    }
}

struct Builder<'a> {
    loader: &'a mut WeightLoader,
    layout: DecoderLayout,
    groups: usize,
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

    fn vector(&mut self, name: &str, n: usize) -> Result<WeightRef> {
        let r = self.loader.take(&[name], &[n])?;
        self.parameters += n;
        Ok(r)
    }

    fn tap(&mut self, name: &str, m: Map) {
        self.taps.push(Tap {
            name: name.into(),
            tensor: m.t,
            channels: m.c,
            height: m.h,
            width: m.w,
        });
    }

    fn group_norm(&mut self, p: &str, x: Map, silu: bool) -> Result<Map> {
        let gamma = self.vector(&format!("{p}.weight"), x.c)?;
        let beta = self.vector(&format!("{p}.bias"), x.c)?;
        let out = self.tensor(p.into(), x.c * x.h * x.w);
        self.ops.push(Op::GroupNorm(GroupNormOp {
            input: Input::One(x.t),
            in_ca: x.c,
            in_cb: 0,
            pixels: x.h * x.w,
            groups: self.groups,
            eps: EPS,
            gamma,
            beta,
            silu,
            out,
        }));
        Ok(Map { t: out, ..x })
    }

    /// A stride-1 conv with padding `kernel / 2`, optionally over the nearest-2x upsampled
    /// input, with `+ residual` in its epilogue.
    fn conv(
        &mut self,
        p: &str,
        x: Map,
        out_c: usize,
        kernel: usize,
        upsample: bool,
        residual: Option<TensorId>,
    ) -> Result<Map> {
        let weight =
            self.loader
                .take_packed(&[&format!("{p}.weight")], out_c, x.c, Some(kernel))?;
        self.parameters += out_c * x.c * kernel * kernel;
        let bias = self.vector(&format!("{p}.bias"), out_c)?;
        Ok(self.push_conv(p, x, out_c, kernel, upsample, residual, weight, bias))
    }

    /// The conv op of [`Builder::conv`] with its weights already taken.
    #[allow(clippy::too_many_arguments)]
    fn push_conv(
        &mut self,
        p: &str,
        x: Map,
        out_c: usize,
        kernel: usize,
        upsample: bool,
        residual: Option<TensorId>,
        weight: WeightRef,
        bias: WeightRef,
    ) -> Map {
        let f = if upsample { 2 } else { 1 };
        let (h, w) = (x.h * f, x.w * f);
        let out = self.tensor(p.into(), out_c * h * w);
        self.ops.push(Op::Conv(ConvOp {
            input: Input::One(x.t),
            shape: same_conv(x, out_c, kernel, upsample),
            weight,
            bias,
            channel_add: None,
            residual,
            out_scale: 1.0,
            out,
        }));
        Map {
            t: out,
            c: out_c,
            h,
            w,
        }
    }

    /// `ResnetBlock2D` without a time embedding:
    /// `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`, as two [`NormConvOp`]s: no
    /// normalised map is ever whole, and (in place) the output is written over `x`.
    fn resnet(&mut self, p: &str, x: Map, out_c: usize) -> Result<Map> {
        let h = self.norm_conv(p, ("norm1", "conv1"), x, out_c, None)?;
        self.norm_conv(p, ("norm2", "conv2"), h, out_c, Some(x))
    }

    /// `conv(silu(norm(x)))` of resnet `p` in bands, plus `residual` (through the resnet's
    /// `conv_shortcut` when its channels differ) when given.
    fn norm_conv(
        &mut self,
        p: &str,
        (norm, conv): (&str, &str),
        x: Map,
        out_c: usize,
        residual: Option<Map>,
    ) -> Result<Map> {
        let gamma = self.vector(&format!("{p}.{norm}.weight"), x.c)?;
        let beta = self.vector(&format!("{p}.{norm}.bias"), x.c)?;
        let shortcut = match residual {
            Some(r) if r.c != out_c => {
                let name = format!("{p}.conv_shortcut");
                let w =
                    self.loader
                        .take_packed(&[&format!("{name}.weight")], out_c, r.c, Some(1))?;
                self.parameters += out_c * r.c;
                Some((w, self.vector(&format!("{name}.bias"), out_c)?))
            }
            _ => None,
        };
        let weight =
            self.loader
                .take_packed(&[&format!("{p}.{conv}.weight")], out_c, x.c, Some(3))?;
        self.parameters += out_c * x.c * 9;
        let bias = self.vector(&format!("{p}.{conv}.bias"), out_c)?;
        let row = x.w * x.c;
        let band_rows = (self.layout.band_floats / row).saturating_sub(2);
        // Whole multiples of 8 rows keep the Winograd tiles full.
        let band_rows = if band_rows >= 8 {
            band_rows / 8 * 8
        } else {
            band_rows
        }
        .clamp(1, x.h);
        let out = match residual {
            // Over the residual: its rows are read before a band overwrites them.
            Some(r) if self.layout.in_place && r.c >= out_c => r.t,
            _ => self.tensor(format!("{p}.{conv}"), out_c * x.h * x.w),
        };
        let mut op = NormConvOp {
            input: x.t,
            groups: self.groups,
            eps: EPS,
            gamma,
            beta,
            silu: true,
            shape: same_conv(x, out_c, 3, false),
            weight,
            bias,
            residual: residual.map(|r| r.t),
            residual_c: residual.map_or(0, |r| r.c),
            shortcut,
            band_rows,
            scratch: 0,
            out,
        };
        op.scratch = self.tensor(format!("{p}.{conv}.bands"), op.scratch_len());
        self.ops.push(Op::NormConv(op));
        Ok(Map {
            t: out,
            c: out_c,
            ..x
        })
    }

    /// The mid block's single-head `Attention` with its residual (current or legacy names).
    fn attention(&mut self, p: &str, x: Map) -> Result<Map> {
        let c = x.c;
        let tokens = x.h * x.w;
        let normed = self.group_norm(&format!("{p}.group_norm"), x, false)?;
        let mut proj = |new: &str, old: &str| -> Result<(WeightRef, WeightRef)> {
            let w = self.loader.take_packed(
                &[&format!("{p}.{new}.weight"), &format!("{p}.{old}.weight")],
                c,
                c,
                None,
            )?;
            let b = self.loader.take(
                &[&format!("{p}.{new}.bias"), &format!("{p}.{old}.bias")],
                &[c],
            )?;
            self.parameters += c * c + c;
            Ok((w, b))
        };
        let q = proj("to_q", "query")?;
        let k = proj("to_k", "key")?;
        let v = proj("to_v", "value")?;
        let o = proj("to_out.0", "proj_attn")?;
        let linear = |b: &mut Self, name: String, input, (weight, bias), residual| {
            let out = b.tensor(name, tokens * c);
            b.ops.push(Op::Linear(LinearOp {
                input,
                rows: tokens,
                in_f: c,
                out_f: c,
                weight,
                bias,
                residual,
                out_scale: 1.0,
                out,
            }));
            out
        };
        let v = linear(self, format!("{p}.to_v"), normed.t, v, None);
        let k = linear(self, format!("{p}.to_k"), normed.t, k, None);
        let q = linear(self, format!("{p}.to_q"), normed.t, q, None);
        let scratch = self.tensor(format!("{p}.scratch"), tokens);
        let attended = self.tensor(format!("{p}.attended"), tokens * c);
        self.ops.push(Op::Attention(AttentionOp {
            q,
            k,
            v,
            tokens,
            kv_tokens: tokens,
            channels: c,
            heads: 1,
            causal: false,
            scratch,
            out: attended,
        }));
        let out = linear(self, format!("{p}.to_out"), attended, o, Some(x.t));
        Ok(Map { t: out, ..x })
    }
}

/// The op list of `cfg`'s decoding of `(height, width)` latents (taps named after diffusers'
/// modules: `post_quant_conv`, `decoder.conv_in`, `decoder.mid_block`, `decoder.up_blocks.i`,
/// `decoder.conv_act`, `decoder.conv_out`).
pub fn describe_decoder(
    cfg: &DecoderConfig,
    loader: &mut WeightLoader,
    (height, width): (usize, usize),
    layout: DecoderLayout,
) -> Result<Described> {
    let mut b = Builder {
        loader,
        layout,
        groups: cfg.norm_num_groups,
        tensors: Vec::new(),
        ops: Vec::new(),
        taps: Vec::new(),
        parameters: 0,
    };
    if cfg.kind == DecoderKind::Tiny {
        return describe_tiny(cfg, b, (height, width));
    }
    let c_in = cfg.input_channels();
    let x = b.tensor("latents".into(), c_in * height * width);
    b.ops.push(Op::Input(InputOp {
        channels: c_in,
        height,
        width,
        center: false,
        out: x,
    }));
    let mut h = Map {
        t: x,
        c: c_in,
        h: height,
        w: width,
    };
    let post_quant = match cfg.kind {
        DecoderKind::Vq { .. } => true,
        DecoderKind::Kl {
            use_post_quant_conv,
        } => use_post_quant_conv,
        DecoderKind::Tiny => false,
    };
    if post_quant {
        h = b.conv("post_quant_conv", h, cfg.latent_channels, 1, false, None)?;
        b.tap("post_quant_conv", h);
    }
    let boc = &cfg.block_out_channels;
    let levels = boc.len();
    let top = boc[levels - 1];
    h = b.conv("decoder.conv_in", h, top, 3, false, None)?;
    b.tap("decoder.conv_in", h);
    h = b.resnet("decoder.mid_block.resnets.0", h, top)?;
    if cfg.mid_block_add_attention {
        h = b.attention("decoder.mid_block.attentions.0", h)?;
    }
    h = b.resnet("decoder.mid_block.resnets.1", h, top)?;
    b.tap("decoder.mid_block", h);
    for i in 0..levels {
        let out_c = boc[levels - 1 - i];
        for j in 0..=cfg.layers_per_block {
            h = b.resnet(&format!("decoder.up_blocks.{i}.resnets.{j}"), h, out_c)?;
        }
        if i + 1 < levels {
            let p = format!("decoder.up_blocks.{i}.upsamplers.0.conv");
            h = b.conv(&p, h, out_c, 3, true, None)?;
        }
        b.tap(&format!("decoder.up_blocks.{i}"), h);
    }
    h = b.group_norm("decoder.conv_norm_out", h, true)?;
    b.tap("decoder.conv_act", h);
    h = b.conv("decoder.conv_out", h, cfg.out_channels, 3, false, None)?;
    b.tap("decoder.conv_out", h);
    b.ops.push(Op::Output(OutputOp {
        input: h.t,
        channels: cfg.out_channels,
        height: h.h,
        width: h.w,
    }));
    Ok(Described {
        tensors: b.tensors,
        ops: b.ops,
        taps: b.taps,
        parameters: b.parameters,
        dropout_sites: Vec::new(),
    })
}

impl Builder<'_> {
    fn elementwise(&mut self, name: String, x: Map, kind: ElementwiseKind) -> Map {
        let len = x.c * x.h * x.w;
        let out = self.tensor(name, len);
        self.ops.push(Op::Elementwise(ElementwiseOp {
            input: x.t,
            len,
            kind,
            out,
        }));
        Map { t: out, ..x }
    }

    /// A 3x3 conv saved without a bias (`bias=False`): the op adds zeros.
    fn conv_no_bias(&mut self, p: &str, x: Map, out_c: usize, upsample: bool) -> Result<Map> {
        let weight = self
            .loader
            .take_packed(&[&format!("{p}.weight")], out_c, x.c, Some(3))?;
        self.parameters += out_c * x.c * 9;
        let bias = self.loader.zeros(out_c);
        Ok(self.push_conv(p, x, out_c, 3, upsample, None, weight, bias))
    }
}

/// `AutoencoderTiny`'s `DecoderTiny`: `tanh(x / 3) * 3`, conv + ReLU, per level
/// `num_decoder_blocks` AutoencoderTinyBlocks (`relu(conv(relu(conv(relu(conv(x))))) + x)`),
/// then (but the last level) nearest-2x + a conv without bias, the last level's conv to the
/// image channels, and `x * 2 - 1`. Weights are `decoder.layers.{k}` in `nn.Sequential`
/// order; taps are named after those indices.
fn describe_tiny(
    cfg: &DecoderConfig,
    mut b: Builder<'_>,
    (height, width): (usize, usize),
) -> Result<Described> {
    let c_in = cfg.latent_channels;
    let x = b.tensor("latents".into(), c_in * height * width);
    b.ops.push(Op::Input(InputOp {
        channels: c_in,
        height,
        width,
        center: false,
        out: x,
    }));
    let mut h = Map {
        t: x,
        c: c_in,
        h: height,
        w: width,
    };
    h = b.elementwise("decoder.clamp".into(), h, ElementwiseKind::TanhClamp(3.0));
    let boc = &cfg.block_out_channels;
    let levels = boc.len();
    h = b.conv("decoder.layers.0", h, boc[0], 3, false, None)?;
    h = b.elementwise("decoder.layers.1".into(), h, ElementwiseKind::Relu);
    b.tap("decoder.layers.1", h);
    let mut k = 2;
    for (i, &blocks) in cfg.tiny_blocks.iter().enumerate() {
        let c = boc[i];
        if h.c != c {
            // diffusers' blocks map c -> c; a width change comes from the previous conv.
            return Err(crate::error::unsupported(
                "decoder_block_out_channels",
                format!("level {i}: {} channels into a {c}-channel block", h.c),
            ));
        }
        for _ in 0..blocks {
            let p = format!("decoder.layers.{k}");
            let y = b.conv(&format!("{p}.conv.0"), h, c, 3, false, None)?;
            let y = b.elementwise(format!("{p}.conv.1"), y, ElementwiseKind::Relu);
            let y = b.conv(&format!("{p}.conv.2"), y, c, 3, false, None)?;
            let y = b.elementwise(format!("{p}.conv.3"), y, ElementwiseKind::Relu);
            let y = b.conv(&format!("{p}.conv.4"), y, c, 3, false, Some(h.t))?;
            h = b.elementwise(format!("{p}.fuse"), y, ElementwiseKind::Relu);
            b.tap(&p, h);
            k += 1;
        }
        if i + 1 < levels {
            // layers.{k} is the nn.Upsample, folded into the conv after it.
            k += 1;
            h = b.conv_no_bias(&format!("decoder.layers.{k}"), h, c, true)?;
        } else {
            h = b.conv(
                &format!("decoder.layers.{k}"),
                h,
                cfg.out_channels,
                3,
                false,
                None,
            )?;
        }
        b.tap(&format!("decoder.layers.{k}"), h);
        k += 1;
    }
    h = b.elementwise(
        "decoder.out".into(),
        h,
        ElementwiseKind::Affine {
            mul: 2.0,
            add: -1.0,
        },
    );
    b.tap("decoder", h);
    b.ops.push(Op::Output(OutputOp {
        input: h.t,
        channels: cfg.out_channels,
        height: h.h,
        width: h.w,
    }));
    Ok(Described {
        tensors: b.tensors,
        ops: b.ops,
        taps: b.taps,
        parameters: b.parameters,
        dropout_sites: Vec::new(),
    })
}
