//! The CUDA backend of the one walk of the op list: each op enqueues its kernel.

use super::backend::{attention_smem_bytes, grid1, Inner};
use crate::error::{invalid_arg, Result};
use crate::kernels::ConvShape;
use crate::model::backend::unsupported_op;
use crate::model::backend::{walk, Backend};
use crate::model::{
    Activation, ActivationOp, ResampleMode, ResampleOp, ScaleShiftOp, TimestepTableOp,
};
use crate::model::{
    AttentionOp, ClassEmbeddingOp, ConvOp, GroupNormOp, Input, InputOp, LinearOp, Model, OutputOp,
    SiluOp, SinusoidOp, TensorId,
};
use crate::model::{ClassVectorOp, FirResampleOp, FourierEmbeddingOp, TimestepDivideOp};

/// Matches `struct ConvParams` in kernels/conv.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct ConvParams {
    in_a: u64,
    in_b: u64,
    weight: u64,
    bias: u64,
    channel_add: u64,
    residual: u64,
    out: u64,
    batch: i32,
    in_h: i32,
    in_w: i32,
    ca: i32,
    cb: i32,
    out_c: i32,
    out_h: i32,
    out_w: i32,
    ksize: i32,
    stride: i32,
    pad_top: i32,
    pad_left: i32,
    upsample: i32,
    out_scale: f32,
    vec: i32,
}

impl Inner {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv(
        &self,
        shape: &ConvShape,
        in_a: u64,
        in_b: u64,
        w: &[u64],
        channel_add: u64,
        residual: u64,
        out: u64,
        out_scale: f32,
    ) -> Result<()> {
        let s = shape;
        let m = s.batch * s.out_h * s.out_w;
        if m > i32::MAX as usize || s.kernel * s.kernel * s.in_c() > i32::MAX as usize {
            return Err(invalid_arg("batch", "too large for the CUDA conv kernel"));
        }
        let vec = s.in_ca.is_multiple_of(8)
            && s.in_cb.is_multiple_of(8)
            && in_a.is_multiple_of(16)
            && (s.in_cb == 0 || in_b.is_multiple_of(16));
        let p = ConvParams {
            in_a,
            in_b,
            weight: w[0],
            bias: w[1],
            channel_add,
            residual,
            out,
            batch: s.batch as i32,
            in_h: s.in_h as i32,
            in_w: s.in_w as i32,
            ca: s.in_ca as i32,
            cb: s.in_cb as i32,
            out_c: s.out_c as i32,
            out_h: s.out_h as i32,
            out_w: s.out_w as i32,
            ksize: s.kernel as i32,
            stride: s.stride as i32,
            pad_top: s.pad_top as i32,
            pad_left: s.pad_left as i32,
            upsample: s.upsample as i32,
            out_scale,
            vec: vec as i32,
        };
        let grid = (m.div_ceil(64) as u32, s.out_c.div_ceil(64) as u32, 1);
        self.launch(&self.f.conv, grid, 128, 0, &mut kargs![p])
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear(
        &self,
        rows: usize,
        in_f: usize,
        out_f: usize,
        input: u64,
        w: &[u64],
        residual: u64,
        out: u64,
        out_scale: f32,
    ) -> Result<()> {
        let shape = ConvShape {
            batch: 1,
            in_h: rows,
            in_w: 1,
            in_ca: in_f,
            in_cb: 0,
            out_c: out_f,
            out_h: rows,
            out_w: 1,
            kernel: 1,
            stride: 1,
            pad_top: 0,
            pad_left: 0,
            upsample: false,
        };
        self.conv(&shape, input, 0, w, 0, residual, out, out_scale)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn group_norm(
        &self,
        batch: usize,
        pixels: usize,
        ca: usize,
        cb: usize,
        groups: usize,
        eps: f32,
        in_a: u64,
        in_b: u64,
        gamma_beta: &[u64],
        silu: bool,
        out: u64,
    ) -> Result<()> {
        let (px, a, b, g, si) = (
            pixels as i32,
            ca as i32,
            cb as i32,
            groups as i32,
            silu as i32,
        );
        self.launch(
            &self.f.group_norm,
            (groups as u32, batch as u32, 1),
            256,
            0,
            &mut kargs![
                in_a,
                in_b,
                gamma_beta[0],
                gamma_beta[1],
                out,
                px,
                a,
                b,
                g,
                eps,
                si
            ],
        )
    }

    /// The op list on the device. `x` (NCHW f32) in, `out` (NCHW f32 eps) out; the timestep of
    /// sample b is `ts[(*step if step != 0) + b * ts_per_sample]`; `labels` (i32, `n_labels`
    /// of them, 1 = broadcast) for class-conditional models.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn enqueue_forward(
        &self,
        model: &Model,
        batch: usize,
        x: u64,
        ts: u64,
        ts_per_sample: i32,
        step: u64,
        labels: u64,
        n_labels: i32,
        out: u64,
    ) -> Result<()> {
        let arena = self.session.as_ref().expect("session").arena;
        let mut launcher = CudaWalk {
            inner: self,
            model,
            batch,
            arena,
            x,
            ts,
            ts_per_sample,
            step,
            labels,
            n_labels,
            out,
        };
        walk(model.ops(), &mut launcher)
    }
}

/// The CUDA backend of the one walk: each op enqueues its kernel on the backend's stream.
/// Tensors live in the session's f16 arena at the memory plan's offsets (2 bytes an element).
pub(super) struct CudaWalk<'a> {
    pub(super) inner: &'a Inner,
    pub(super) model: &'a Model,
    pub(super) batch: usize,
    pub(super) arena: u64,
    pub(super) x: u64,
    pub(super) ts: u64,
    pub(super) ts_per_sample: i32,
    pub(super) step: u64,
    pub(super) labels: u64,
    pub(super) n_labels: i32,
    pub(super) out: u64,
}

impl CudaWalk<'_> {
    fn t(&self, id: TensorId) -> u64 {
        self.arena + 2 * self.model.plan.region(id, self.batch).0 as u64
    }
    fn opt(&self, id: Option<TensorId>) -> u64 {
        id.map_or(0, |id| self.t(id))
    }
    fn pair(&self, i: Input) -> (u64, u64) {
        (self.t(i.first()), self.opt(i.second()))
    }
    fn weights(&self, at: usize) -> &[u64] {
        &self.inner.wptr[at]
    }
}

impl Backend for CudaWalk<'_> {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn input(&mut self, _: usize, op: &InputOp) -> Result<()> {
        let (b32, c, hw, ce, dst) = (
            self.batch as i32,
            op.channels as i32,
            (op.height * op.width) as i32,
            op.center as i32,
            self.t(op.out),
        );
        let x = self.x;
        self.inner.launch(
            &self.inner.f.nchw_to_nhwc,
            grid1(self.batch * op.channels * op.height * op.width),
            256,
            0,
            &mut kargs![x, dst, b32, c, hw, ce],
        )
    }

    fn sinusoid(&mut self, _: usize, op: &SinusoidOp) -> Result<()> {
        let (ts, step, per, dst) = (self.ts, self.step, self.ts_per_sample, self.t(op.out));
        let (b32, dim, flip, shift) = (
            self.batch as i32,
            op.dim as i32,
            op.flip_sin_to_cos as i32,
            op.freq_shift,
        );
        self.inner.launch(
            &self.inner.f.timestep_sinusoid,
            grid1(self.batch * op.dim),
            256,
            0,
            &mut kargs![ts, step, per, dst, b32, dim, flip, shift],
        )
    }

    fn linear(&mut self, at: usize, op: &LinearOp) -> Result<()> {
        self.inner.linear(
            self.batch * op.rows,
            op.in_f,
            op.out_f,
            self.t(op.input),
            self.weights(at),
            self.opt(op.residual),
            self.t(op.out),
            op.out_scale,
        )
    }

    fn silu(&mut self, _: usize, op: &SiluOp) -> Result<()> {
        let (src, dst, n) = (
            self.t(op.input),
            self.t(op.out),
            (self.batch * op.len) as i64,
        );
        self.inner.launch(
            &self.inner.f.silu,
            grid1(self.batch * op.len),
            256,
            0,
            &mut kargs![src, dst, n],
        )
    }

    fn class_embedding(&mut self, at: usize, op: &ClassEmbeddingOp) -> Result<()> {
        let (src, dst, table) = (self.t(op.input), self.t(op.out), self.weights(at)[0]);
        let (labels, nl, b32, e32) = (self.labels, self.n_labels, self.batch as i32, op.dim as i32);
        self.inner.launch(
            &self.inner.f.class_embed_add,
            grid1(self.batch * op.dim),
            256,
            0,
            &mut kargs![src, dst, table, labels, nl, b32, e32],
        )
    }

    fn conv(&mut self, at: usize, op: &ConvOp) -> Result<()> {
        let (a, b) = self.pair(op.input);
        let shape = ConvShape {
            batch: self.batch,
            ..op.shape
        };
        self.inner.conv(
            &shape,
            a,
            b,
            self.weights(at),
            self.opt(op.channel_add),
            self.opt(op.residual),
            self.t(op.out),
            op.out_scale,
        )
    }

    fn group_norm(&mut self, at: usize, op: &GroupNormOp) -> Result<()> {
        let (a, b) = self.pair(op.input);
        self.inner.group_norm(
            self.batch,
            op.pixels,
            op.in_ca,
            op.in_cb,
            op.groups,
            op.eps,
            a,
            b,
            self.weights(at),
            op.silu,
            self.t(op.out),
        )
    }

    fn attention(&mut self, _: usize, op: &AttentionOp) -> Result<()> {
        if op.causal {
            // Only the text encoder masks; it runs on the CPU backend for now.
            return Err(unsupported_op("cuda", "attention (causal)"));
        }
        if op.kv_tokens != op.tokens {
            // Cross-attention (the conditional UNet's) has no device kernel yet.
            return Err(unsupported_op("cuda", "attention (cross)"));
        }
        let (q, k, v, attended) = (self.t(op.q), self.t(op.k), self.t(op.v), self.t(op.out));
        let d = op.channels / op.heads;
        let (nt, c32, h32, scale) = (
            op.tokens as i32,
            op.channels as i32,
            op.heads as i32,
            1.0 / (d as f32).sqrt(),
        );
        let f = &self.inner.f;
        let entry = match d {
            0..=128 => &f.attention[0],
            129..=256 => &f.attention[1],
            _ => &f.attention[2],
        };
        self.inner.launch(
            entry,
            (
                op.tokens.div_ceil(16) as u32,
                op.heads as u32,
                self.batch as u32,
            ),
            128,
            attention_smem_bytes(d),
            &mut kargs![q, k, v, attended, nt, c32, h32, scale],
        )
    }

    fn output(&mut self, _: usize, op: &OutputOp) -> Result<()> {
        let (src, out, b32, c, hw) = (
            self.t(op.input),
            self.out,
            self.batch as i32,
            op.channels as i32,
            (op.height * op.width) as i32,
        );
        self.inner.launch(
            &self.inner.f.nhwc_to_nchw,
            grid1(self.batch * op.channels * op.height * op.width),
            256,
            0,
            &mut kargs![src, out, b32, c, hw],
        )
    }

    fn scale_shift(&mut self, _: usize, op: &ScaleShiftOp) -> Result<()> {
        let (src, ss, dst) = (self.t(op.input), self.t(op.scale_shift), self.t(op.out));
        let n = self.batch * op.pixels * op.channels;
        let (b32, hw, c, silu) = (
            self.batch as i32,
            op.pixels as i32,
            op.channels as i32,
            op.silu as i32,
        );
        self.inner.launch(
            &self.inner.f.scale_shift,
            grid1(n),
            256,
            0,
            &mut kargs![src, ss, dst, b32, hw, c, silu],
        )
    }

    fn resample(&mut self, _: usize, op: &ResampleOp) -> Result<()> {
        let (src, dst) = (self.t(op.input), self.t(op.out));
        let (oh, ow) = op.out_hw();
        let n = self.batch * oh * ow * op.channels;
        let mode = match op.mode {
            ResampleMode::AvgPool2 => 0i32,
            ResampleMode::Nearest2 => 1,
        };
        let (b32, h, w, c) = (
            self.batch as i32,
            op.in_h as i32,
            op.in_w as i32,
            op.channels as i32,
        );
        self.inner.launch(
            &self.inner.f.resample2x,
            grid1(n),
            256,
            0,
            &mut kargs![src, dst, b32, h, w, c, mode],
        )
    }

    fn activation(&mut self, _: usize, op: &ActivationOp) -> Result<()> {
        let (src, dst, n) = (
            self.t(op.input),
            self.t(op.out),
            (self.batch * op.len) as i64,
        );
        let kind = match op.act {
            Activation::Silu => 0i32,
            Activation::Mish => 1,
            Activation::Gelu => 2,
            Activation::Relu => 3,
            Activation::QuickGelu => 4,
        };
        self.inner.launch(
            &self.inner.f.activation,
            grid1(self.batch * op.len),
            256,
            0,
            &mut kargs![src, dst, n, kind],
        )
    }

    fn timestep_table(&mut self, at: usize, op: &TimestepTableOp) -> Result<()> {
        // The host checked the timesteps (Model::forward, the sampler) before the walk.
        let (ts, step, per, table, dst) = (
            self.ts,
            self.step,
            self.ts_per_sample,
            self.weights(at)[0],
            self.t(op.out),
        );
        let (b32, dim, steps) = (self.batch as i32, op.dim as i32, op.steps as i32);
        self.inner.launch(
            &self.inner.f.timestep_table,
            grid1(self.batch * op.dim),
            256,
            0,
            &mut kargs![ts, step, per, table, dst, b32, dim, steps],
        )
    }

    fn class_sinusoid(&mut self, _: usize, op: &SinusoidOp) -> Result<()> {
        let (labels, nl, dst) = (self.labels, self.n_labels, self.t(op.out));
        let (b32, dim, flip, shift) = (
            self.batch as i32,
            op.dim as i32,
            op.flip_sin_to_cos as i32,
            op.freq_shift,
        );
        self.inner.launch(
            &self.inner.f.class_sinusoid,
            grid1(self.batch * op.dim),
            256,
            0,
            &mut kargs![labels, nl, dst, b32, dim, flip, shift],
        )
    }

    fn fourier_embedding(&mut self, at: usize, op: &FourierEmbeddingOp) -> Result<()> {
        let (ts, step, per, w, dst) = (
            self.ts,
            self.step,
            self.ts_per_sample,
            self.weights(at)[0],
            self.t(op.out),
        );
        let (b32, dim, log, flip) = (
            self.batch as i32,
            op.dim as i32,
            op.log as i32,
            op.flip_sin_to_cos as i32,
        );
        self.inner.launch(
            &self.inner.f.fourier_embedding,
            grid1(self.batch * 2 * op.dim),
            256,
            0,
            &mut kargs![ts, step, per, w, dst, b32, dim, log, flip],
        )
    }

    fn fir_resample(&mut self, _: usize, op: &FirResampleOp) -> Result<()> {
        let (src, dst) = (self.t(op.input), self.t(op.out));
        let (oh, ow) = op.out_hw();
        let (b32, c, h, w, up) = (
            self.batch as i32,
            op.channels as i32,
            op.in_h as i32,
            op.in_w as i32,
            op.up as i32,
        );
        self.inner.launch(
            &self.inner.f.fir_resample,
            grid1(self.batch * oh * ow * op.channels),
            256,
            0,
            &mut kargs![src, dst, b32, c, h, w, up],
        )
    }

    /// The accelerator's forward takes no class embeddings (`class_embed_type: "identity"`).
    fn class_vector(&mut self, _: usize, _: &ClassVectorOp) -> Result<()> {
        Err(unsupported_op("cuda", "class_vector"))
    }

    fn timestep_divide(&mut self, _: usize, op: &TimestepDivideOp) -> Result<()> {
        let (ts, step, per, src, dst) = (
            self.ts,
            self.step,
            self.ts_per_sample,
            self.t(op.input),
            self.t(op.out),
        );
        let (b32, len) = (self.batch as i32, op.len as i64);
        self.inner.launch(
            &self.inner.f.timestep_divide,
            grid1(self.batch * op.len),
            256,
            0,
            &mut kargs![ts, step, per, src, dst, b32, len],
        )
    }
}
