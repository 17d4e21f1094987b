//! The training walk: the model's own op list, run forward on f32 master weights while keeping
//! every activation, then backward in reverse order.
//!
//! Memory, all planned up front (sizes per sample, times the batch) and allocated once per run
//! in a [`TrainWorkspace`]:
//! - **activations**: every tensor of the op list in its own slot ([`Reuse::None`]), plus per
//!   op the few values its backward needs that are not tensors of the op list ("saved": norm
//!   statistics, pre-activations of the embedding MLP, attention probabilities);
//! - **gradients**: one slot per tensor, placed by the same planner with lifetimes taken over the
//!   *reversed* op list, so a gradient's memory is reused as soon as the backward of the op that
//!   wrote its tensor has consumed it. Each gradient is zeroed just before its first
//!   contribution. The gradient slot of an op's scratch tensor is that op's backward scratch.

use alloc::vec::Vec;

use super::layers::{activation, attention, conv, embedding, group_norm, linear, ncsnpp, resample};
use super::params::ParamTable;
use crate::error::{Error, Result};
use crate::kernels::{nchw_to_nhwc, nhwc_to_nchw, ConvShape};
use crate::memory::{carve, MemoryPlan, Reuse};
use crate::model::backend::{walk, Backend};
use crate::model::forward::{activation as act_forward, timestep_index};
use crate::model::Input;
use crate::model::{ActivationOp, ResampleMode, ResampleOp, ScaleShiftOp, TimestepTableOp};
use crate::model::{
    AttentionOp, ClassEmbeddingOp, ConvOp, GroupNormOp, InputOp, LinearOp, ModelDescription, Op,
    OutputOp, SiluOp, SinusoidOp, TensorId, TensorSpec,
};
use crate::model::{ClassVectorOp, FirResampleOp, FourierEmbeddingOp, TimestepDivideOp};
use crate::weights::WeightRef;

/// The training graph of one model: op list, parameter table and memory plans.
pub struct TrainGraph {
    ops: Vec<Op>,
    tensors: Vec<TensorSpec>,
    /// Per op, the id (in the activation plan) of its saved values.
    saved: Vec<Option<usize>>,
    acts: MemoryPlan,
    grads: MemoryPlan,
    /// Per op, the tensors whose gradient gets its first contribution in that op's backward.
    zero_at: Vec<Vec<TensorId>>,
    /// False for tensors whose gradient nobody needs (the model input).
    needs_grad: Vec<bool>,
    pub params: ParamTable,
    in_shape: (usize, usize, usize),
    out_channels: usize,
    class_conditional: bool,
    /// Floats per sample of the largest tensor read concatenated with itself (0: none).
    self_concat_len: usize,
}

/// Everything one training step touches besides the weights, allocated once per batch size.
pub struct TrainWorkspace {
    batch: usize,
    acts: Vec<f32>,
    grads: Vec<f32>,
    /// Model output, NCHW.
    pub out: Vec<f32>,
    /// dLoss/d(out), NCHW: the loss writes it, the backward reads it.
    pub d_out: Vec<f32>,
    /// Kernel scratch (the convolutions' gathered tiles), independent of the batch.
    scratch: Vec<f32>,
    /// The forward pass's timesteps, for the backward of the division by sigma.
    timesteps: Vec<f32>,
    /// Without a mid block the first up resnet reads the bottom map concatenated with itself
    /// (`Input::Concat(a, a)`): the second half's gradient lands here, then is added to `a`'s.
    self_concat_grad: Vec<f32>,
}

impl TrainWorkspace {
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Bytes held (activations, gradients, output and its gradient).
    pub fn bytes(&self) -> usize {
        4 * (self.acts.len()
            + self.grads.len()
            + self.out.len()
            + self.d_out.len()
            + self.scratch.len())
    }
}

/// Floats per sample an op's backward needs beyond the op list's tensors.
fn saved_len(op: &Op) -> usize {
    match op {
        Op::GroupNorm(g) => group_norm::saved_len(g.groups),
        Op::Attention(a) => attention::saved_len(a.tokens, a.heads),
        // The row each sample looked up.
        Op::TimestepTable(_) => 1,
        _ => 0,
    }
}

const EMPTY: (usize, usize) = (0, 0);

/// The tensor an input reads twice (`Concat(a, a)`: the first up block's skip of a UNet
/// without a mid block).
fn self_concat(input: Input) -> Option<TensorId> {
    match input {
        Input::Concat(a, b) if a == b => Some(a),
        _ => None,
    }
}

impl TrainGraph {
    /// The training graph of a described model ([`crate::model::describe_config`], or
    /// [`crate::model::describe_weights`] to take the parameter names a weights file uses).
    pub fn new(model: &ModelDescription) -> Result<TrainGraph> {
        if model.ops.iter().any(|op| matches!(op, Op::ClassVector(_))) {
            return Err(crate::error::unsupported(
                "class_embed_type",
                "identity: the trainer takes integer class labels, not class embeddings",
            ));
        }
        let ops = model.ops.clone();
        let tensors = model.tensors.clone();
        let n_ops = ops.len();
        // Activation plan: model tensors, then one "saved" tensor per op that has any.
        let mut lens: Vec<usize> = tensors.iter().map(|t| t.len).collect();
        let mut saved = Vec::with_capacity(n_ops);
        for op in &ops {
            let l = saved_len(op);
            saved.push(if l > 0 {
                lens.push(l);
                Some(lens.len() - 1)
            } else {
                None
            });
        }
        let acts = MemoryPlan::new(&lens, &alloc::vec![(0, n_ops); lens.len()], Reuse::None);
        // Gradient plan: liveness over the reversed op list.
        let mut touched = alloc::vec![(usize::MAX, 0usize); tensors.len()];
        for (i, op) in ops.iter().enumerate() {
            for t in op.reads().into_iter().chain(op.writes()) {
                touched[t].0 = touched[t].0.min(i);
                touched[t].1 = touched[t].1.max(i);
            }
        }
        let mut zero_at = alloc::vec![Vec::new(); n_ops];
        let reversed: Vec<(usize, usize)> = touched
            .iter()
            .enumerate()
            .map(|(t, &(lo, hi))| {
                if lo == usize::MAX {
                    (0, 0)
                } else {
                    zero_at[hi].push(t);
                    (n_ops - 1 - hi, n_ops - 1 - lo)
                }
            })
            .collect();
        let grads = MemoryPlan::new(
            &tensors.iter().map(|t| t.len).collect::<Vec<_>>(),
            &reversed,
            Reuse::Shared,
        );
        let mut needs_grad = alloc::vec![true; tensors.len()];
        // No gradient flows into the model's inputs (the sample and the timestep).
        for op in &ops {
            if let Op::Input(InputOp { out, .. })
            | Op::Sinusoid(SinusoidOp { out, .. })
            | Op::ClassSinusoid(SinusoidOp { out, .. })
            | Op::FourierEmbedding(FourierEmbeddingOp { out, .. }) = op
            {
                needs_grad[*out] = false;
            }
        }
        let params = ParamTable::new(model)?;
        // The largest tensor read concatenated with itself (no mid block), per sample.
        let self_concat_len = ops
            .iter()
            .filter_map(|op| match op {
                Op::Conv(c) => self_concat(c.input),
                Op::GroupNorm(g) => self_concat(g.input),
                _ => None,
            })
            .map(|t| tensors[t].len)
            .max()
            .unwrap_or(0);
        Ok(TrainGraph {
            self_concat_len,
            ops,
            tensors,
            saved,
            acts,
            grads,
            zero_at,
            needs_grad,
            params,
            in_shape: model.input_shape(),
            out_channels: model.output_shape().0,
            class_conditional: model.config.num_class_embeds.is_some(),
        })
    }

    /// Floats of activations (incl. saved values) per sample.
    pub fn activation_len(&self, batch: usize) -> usize {
        self.acts.arena_len(batch)
    }

    /// Floats of activation gradients per sample.
    pub fn gradient_len(&self, batch: usize) -> usize {
        self.grads.arena_len(batch)
    }

    pub fn input_len(&self) -> usize {
        self.in_shape.0 * self.in_shape.1 * self.in_shape.2
    }

    pub fn output_len(&self) -> usize {
        self.out_channels * self.in_shape.1 * self.in_shape.2
    }

    pub fn class_conditional(&self) -> bool {
        self.class_conditional
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Floats of kernel scratch (any batch).
    pub fn scratch_len(&self) -> usize {
        self.ops
            .iter()
            .map(|op| {
                if let Op::Conv(c) = op {
                    conv::scratch_len(&c.shape)
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0)
    }

    /// Allocates the workspace for `batch`: every activation, gradient and saved value of a
    /// step. Beside it the layers keep per-thread scratch that grows to its largest size in the
    /// first step (`layers::gemm::with_scratch`), and GroupNorm a few per-channel vectors per
    /// call (kilobytes).
    pub fn workspace(&self, batch: usize) -> TrainWorkspace {
        TrainWorkspace {
            batch,
            acts: alloc::vec![0.0; self.acts.arena_len(batch)],
            grads: alloc::vec![0.0; self.grads.arena_len(batch)],
            out: alloc::vec![0.0; batch * self.output_len()],
            d_out: alloc::vec![0.0; batch * self.output_len()],
            scratch: alloc::vec![0.0; self.scratch_len()],
            timesteps: alloc::vec![0.0; batch],
            self_concat_grad: alloc::vec![0.0; batch * self.self_concat_len],
        }
    }

    fn act(&self, t: TensorId, batch: usize) -> (usize, usize) {
        self.acts.region(t, batch)
    }
    fn opt_act(&self, t: Option<TensorId>, batch: usize) -> (usize, usize) {
        t.map_or(EMPTY, |t| self.act(t, batch))
    }
    fn grad(&self, t: TensorId, batch: usize) -> (usize, usize) {
        if self.needs_grad[t] {
            self.grads.region(t, batch)
        } else {
            EMPTY
        }
    }
    fn opt_grad(&self, t: Option<TensorId>, batch: usize) -> (usize, usize) {
        t.map_or(EMPTY, |t| self.grad(t, batch))
    }
    fn saved_region(&self, op: usize, batch: usize) -> (usize, usize) {
        self.saved[op].map_or(EMPTY, |s| self.acts.region(s, batch))
    }

    fn check(
        &self,
        ws: &TrainWorkspace,
        x: &[f32],
        t: &[f32],
        labels: Option<&[i64]>,
    ) -> Result<()> {
        let b = ws.batch;
        if x.len() != b * self.input_len() {
            return Err(Error::BufferSize {
                what: "training input",
                expected: b * self.input_len(),
                found: x.len(),
            });
        }
        if t.len() != b {
            return Err(Error::BufferSize {
                what: "timesteps",
                expected: b,
                found: t.len(),
            });
        }
        match (self.class_conditional, labels) {
            (true, Some(l)) if l.len() == b => Ok(()),
            (false, None) => Ok(()),
            _ => Err(crate::error::invalid_arg(
                "class labels",
                "one per sample exactly when the model is class-conditional",
            )),
        }
    }

    /// Forward pass on the f32 weights in `params` (the flat buffer of [`ParamTable`]): writes
    /// `ws.out` (NCHW) and keeps every activation for [`TrainGraph::backward`].
    pub fn forward(
        &self,
        params: &[f32],
        ws: &mut TrainWorkspace,
        x: &[f32],
        t: &[f32],
        labels: Option<&[i64]>,
    ) -> Result<()> {
        self.check(ws, x, t, labels)?;
        ws.timesteps.copy_from_slice(t);
        let TrainWorkspace {
            batch,
            acts,
            out,
            scratch,
            ..
        } = ws;
        let mut fwd = TrainForward {
            graph: self,
            params,
            batch: *batch,
            acts,
            out,
            scratch,
            x,
            t,
            labels: labels.unwrap_or(&[]),
        };
        walk(&self.ops, &mut fwd)
    }

    /// Backward pass after [`TrainGraph::forward`] and after the loss filled `ws.d_out`:
    /// accumulates every parameter's gradient into `param_grads` (same layout as `params`; the
    /// caller zeroes it between steps). The op list in reverse, each op's backward beside its
    /// forward in [`super::layers`].
    pub fn backward(
        &self,
        params: &[f32],
        param_grads: &mut [f32],
        ws: &mut TrainWorkspace,
        labels: Option<&[i64]>,
    ) -> Result<()> {
        let batch = ws.batch;
        let labels = labels.unwrap_or(&[]);
        let p = |r| &params[self.params.range(r)];
        let pr = |r| self.params.region(r);
        let acts = &ws.acts;
        let a = |t: TensorId| {
            let (s, l) = self.act(t, batch);
            &acts[s..s + l]
        };
        let opt_a = |t: Option<TensorId>| {
            let (s, l) = self.opt_act(t, batch);
            &acts[s..s + l]
        };
        let saved = |i: usize| {
            let (s, l) = self.saved_region(i, batch);
            &acts[s..s + l]
        };
        let t = &ws.timesteps[..];
        for (i, op) in self.ops.iter().enumerate().rev() {
            for &t in &self.zero_at[i] {
                let (s, l) = self.grads.region(t, batch);
                ws.grads[s..s + l].fill(0.0);
            }
            match op {
                // Nothing to learn, and no gradient flows into the inputs.
                Op::Input(_) | Op::Sinusoid(_) => {}
                Op::Output(o) => {
                    let (s, l) = self.grad(o.input, batch);
                    let dst = &mut ws.grads[s..s + l];
                    let (c, hw) = (o.channels, o.height * o.width);
                    for b in 0..batch {
                        for ch in 0..c {
                            for (q, d) in ws.d_out[(b * c + ch) * hw..(b * c + ch + 1) * hw]
                                .iter()
                                .enumerate()
                            {
                                dst[(b * hw + q) * c + ch] += d;
                            }
                        }
                    }
                }
                Op::Conv(c) => {
                    let twice = self_concat(c.input).is_some();
                    let [d_a, d_b, d_chan, d_res, d_out] = carve(
                        &mut ws.grads,
                        [
                            self.grad(c.input.first(), batch),
                            if twice {
                                EMPTY
                            } else {
                                self.opt_grad(c.input.second(), batch)
                            },
                            self.opt_grad(c.channel_add, batch),
                            self.opt_grad(c.residual, batch),
                            self.grad(c.out, batch),
                        ],
                    )?;
                    let [d_w, d_bias] = carve(param_grads, [pr(c.weight), pr(c.bias)])?;
                    let args = conv::Conv {
                        shape: ConvShape { batch, ..c.shape },
                        in_a: a(c.input.first()),
                        in_b: opt_a(c.input.second()),
                        weight: p(c.weight),
                        bias: p(c.bias),
                        channel_add: opt_a(c.channel_add),
                        residual: opt_a(c.residual),
                        out_scale: c.out_scale,
                    };
                    let d_twice = &mut ws.self_concat_grad[..if twice { d_a.len() } else { 0 }];
                    d_twice.fill(0.0);
                    let g = conv::ConvGrads {
                        in_b: if twice { &mut *d_twice } else { d_b },
                        in_a: &mut *d_a,
                        weight: d_w,
                        bias: d_bias,
                        channel_add: d_chan,
                        residual: d_res,
                    };
                    conv::backward(&args, d_out, g, &mut ws.scratch);
                    for (d, g) in d_a.iter_mut().zip(d_twice.iter()) {
                        *d += g;
                    }
                }
                Op::Linear(l) => {
                    let [d_in, d_res, d_out] = carve(
                        &mut ws.grads,
                        [
                            self.grad(l.input, batch),
                            self.opt_grad(l.residual, batch),
                            self.grad(l.out, batch),
                        ],
                    )?;
                    let [d_w, d_bias] = carve(param_grads, [pr(l.weight), pr(l.bias)])?;
                    let args = linear_args(l, batch, a(l.input), p, opt_a(l.residual));
                    linear::backward(
                        &args,
                        d_out,
                        linear::LinearGrads {
                            input: d_in,
                            weight: d_w,
                            bias: d_bias,
                            residual: d_res,
                        },
                    );
                }
                Op::Silu(si) => {
                    let [d_in, d_out] = carve(
                        &mut ws.grads,
                        [self.grad(si.input, batch), self.grad(si.out, batch)],
                    )?;
                    activation::backward(a(si.input), d_out, d_in);
                }
                // TrainGraph::new refuses a model with it.
                Op::ClassVector(_) => {
                    return Err(crate::model::backend::unsupported_op(
                        "train",
                        "class_vector",
                    ))
                }
                // Only decoders and the text encoder emit these; the trainer builds UNets (its
                // forward refuses them too).
                Op::Elementwise(_)
                | Op::LayerNorm(_)
                | Op::TokenEmbedding(_)
                | Op::Geglu(_)
                | Op::EncoderStates(_) => {
                    return Err(crate::model::backend::unsupported_op("train", op.kind()))
                }
                Op::ClassEmbedding(ce) => {
                    let [d_in, d_out] = carve(
                        &mut ws.grads,
                        [self.grad(ce.input, batch), self.grad(ce.out, batch)],
                    )?;
                    let [d_table] = carve(param_grads, [pr(ce.table)])?;
                    embedding::class_backward(d_out, labels, ce.dim, d_table);
                    for (d, g) in d_in.iter_mut().zip(d_out.iter()) {
                        *d += g;
                    }
                }
                Op::GroupNorm(g) => {
                    let twice = self_concat(g.input).is_some();
                    let [d_a, d_b, d_out] = carve(
                        &mut ws.grads,
                        [
                            self.grad(g.input.first(), batch),
                            if twice {
                                EMPTY
                            } else {
                                self.opt_grad(g.input.second(), batch)
                            },
                            self.grad(g.out, batch),
                        ],
                    )?;
                    let [d_gamma, d_beta] = carve(param_grads, [pr(g.gamma), pr(g.beta)])?;
                    let args =
                        group_norm_args(g, batch, a(g.input.first()), opt_a(g.input.second()), p);
                    let d_twice = &mut ws.self_concat_grad[..if twice { d_a.len() } else { 0 }];
                    d_twice.fill(0.0);
                    let grads = group_norm::GroupNormGrads {
                        in_b: if twice { &mut *d_twice } else { d_b },
                        in_a: &mut *d_a,
                        gamma: d_gamma,
                        beta: d_beta,
                    };
                    group_norm::backward(&args, saved(i), d_out, grads);
                    for (d, g) in d_a.iter_mut().zip(d_twice.iter()) {
                        *d += g;
                    }
                }
                Op::ScaleShift(o) => {
                    let [d_in, d_ss, d_out] = carve(
                        &mut ws.grads,
                        [
                            self.grad(o.input, batch),
                            self.grad(o.scale_shift, batch),
                            self.grad(o.out, batch),
                        ],
                    )?;
                    resample::scale_shift_backward(
                        a(o.input),
                        a(o.scale_shift),
                        batch,
                        o.pixels,
                        o.channels,
                        o.silu,
                        d_out,
                        d_in,
                        d_ss,
                    );
                }
                Op::Resample(o) => {
                    let [d_in, d_out] = carve(
                        &mut ws.grads,
                        [self.grad(o.input, batch), self.grad(o.out, batch)],
                    )?;
                    let backward = match o.mode {
                        ResampleMode::AvgPool2 => resample::avg_pool2_backward,
                        ResampleMode::Nearest2 => resample::nearest2_backward,
                    };
                    backward(d_out, batch, o.in_h, o.in_w, o.channels, d_in);
                }
                // No gradient flows into the labels.
                Op::ClassSinusoid(_) => {}
                Op::Activation(o) => {
                    let [d_in, d_out] = carve(
                        &mut ws.grads,
                        [self.grad(o.input, batch), self.grad(o.out, batch)],
                    )?;
                    activation::act_backward(o.act, a(o.input), d_out, d_in);
                }
                Op::TimestepTable(o) => {
                    let [d_out] = carve(&mut ws.grads, [self.grad(o.out, batch)])?;
                    let [d_table] = carve(param_grads, [pr(o.table)])?;
                    for (row, &index) in d_out.chunks_exact(o.dim).zip(saved(i)) {
                        let at = index as usize * o.dim;
                        for (t, d) in d_table[at..at + o.dim].iter_mut().zip(row) {
                            *t += d;
                        }
                    }
                }
                Op::Attention(at) => {
                    let [dq, dk, dv, d_out] = carve(
                        &mut ws.grads,
                        [
                            self.grad(at.q, batch),
                            self.grad(at.k, batch),
                            self.grad(at.v, batch),
                            self.grad(at.out, batch),
                        ],
                    )?;
                    attention::core_backward(
                        heads(at, batch),
                        a(at.q),
                        a(at.k),
                        a(at.v),
                        saved(i),
                        d_out,
                        dq,
                        dk,
                        dv,
                        &mut [],
                    );
                }
                // No gradient into the timestep, and `W` is fixed.
                Op::FourierEmbedding(_) => {}
                Op::FirResample(f) => {
                    let [d_in, d_out] = carve(
                        &mut ws.grads,
                        [self.grad(f.input, batch), self.grad(f.out, batch)],
                    )?;
                    let hw = (f.in_h, f.in_w);
                    ncsnpp::fir_backward(batch, f.channels, hw, f.up, d_out, d_in);
                }
                Op::TimestepDivide(d) => {
                    let [d_in, d_out] = carve(
                        &mut ws.grads,
                        [self.grad(d.input, batch), self.grad(d.out, batch)],
                    )?;
                    ncsnpp::timestep_divide_backward(d_out, t, d.len, d_in);
                }
            }
        }
        Ok(())
    }
}

fn heads(a: &AttentionOp, batch: usize) -> attention::Heads {
    attention::Heads {
        batch,
        tokens: a.tokens,
        channels: a.channels,
        heads: a.heads,
    }
}

fn linear_args<'a>(
    l: &LinearOp,
    batch: usize,
    input: &'a [f32],
    p: impl Fn(WeightRef) -> &'a [f32],
    residual: &'a [f32],
) -> linear::Linear<'a> {
    linear::Linear {
        rows: batch * l.rows,
        in_f: l.in_f,
        out_f: l.out_f,
        input,
        weight: p(l.weight),
        bias: p(l.bias),
        residual,
        out_scale: l.out_scale,
    }
}

fn group_norm_args<'a>(
    g: &GroupNormOp,
    batch: usize,
    in_a: &'a [f32],
    in_b: &'a [f32],
    p: impl Fn(WeightRef) -> &'a [f32],
) -> group_norm::GroupNorm<'a> {
    group_norm::GroupNorm {
        batch,
        pixels: g.pixels,
        in_ca: g.in_ca,
        in_cb: g.in_cb,
        groups: g.groups,
        eps: g.eps,
        in_a,
        in_b,
        gamma: p(g.gamma),
        beta: p(g.beta),
        silu: g.silu,
    }
}

/// The trainer's forward pass as a backend of the one walk: f32 weights from the flat
/// parameter buffer, every tensor in its own slot of the activation arena, and each op's
/// saved values beside them for the backward.
struct TrainForward<'a> {
    graph: &'a TrainGraph,
    params: &'a [f32],
    batch: usize,
    acts: &'a mut [f32],
    out: &'a mut [f32],
    scratch: &'a mut [f32],
    x: &'a [f32],
    t: &'a [f32],
    labels: &'a [i64],
}

impl TrainForward<'_> {
    fn act(&self, t: TensorId) -> (usize, usize) {
        self.graph.act(t, self.batch)
    }
    fn opt_act(&self, t: Option<TensorId>) -> (usize, usize) {
        self.graph.opt_act(t, self.batch)
    }
}

impl Backend for TrainForward<'_> {
    fn name(&self) -> &'static str {
        "train"
    }

    fn input(&mut self, _: usize, op: &InputOp) -> Result<()> {
        let (s, l) = self.act(op.out);
        let pixels = op.height * op.width;
        nchw_to_nhwc(
            self.x,
            &mut self.acts[s..s + l],
            self.batch,
            op.channels,
            pixels,
            op.center,
        );
        Ok(())
    }

    fn sinusoid(&mut self, _: usize, op: &SinusoidOp) -> Result<()> {
        let (s, l) = self.act(op.out);
        let dst = &mut self.acts[s..s + l];
        for b in 0..self.batch {
            let row = &mut dst[b * op.dim..(b + 1) * op.dim];
            embedding::sinusoid(self.t[b], op.flip_sin_to_cos, op.freq_shift, row);
        }
        Ok(())
    }

    fn linear(&mut self, _: usize, op: &LinearOp) -> Result<()> {
        let regions = [
            self.act(op.input),
            self.opt_act(op.residual),
            self.act(op.out),
        ];
        let [input, residual, out] = carve(self.acts, regions)?;
        let (g, params) = (self.graph, self.params);
        let args = linear_args(
            op,
            self.batch,
            input,
            |r| &params[g.params.range(r)],
            residual,
        );
        linear::forward(&args, out);
        Ok(())
    }

    fn silu(&mut self, _: usize, op: &SiluOp) -> Result<()> {
        let [input, out] = carve(self.acts, [self.act(op.input), self.act(op.out)])?;
        activation::forward(input, out);
        Ok(())
    }

    fn class_embedding(&mut self, _: usize, op: &ClassEmbeddingOp) -> Result<()> {
        let [input, out] = carve(self.acts, [self.act(op.input), self.act(op.out)])?;
        out.copy_from_slice(input);
        let table = &self.params[self.graph.params.range(op.table)];
        embedding::class_forward(table, self.labels, op.dim, out);
        Ok(())
    }

    fn conv(&mut self, _: usize, op: &ConvOp) -> Result<()> {
        let twice = self_concat(op.input).is_some();
        let regions = [
            self.act(op.input.first()),
            if twice {
                EMPTY
            } else {
                self.opt_act(op.input.second())
            },
            self.opt_act(op.channel_add),
            self.opt_act(op.residual),
            self.act(op.out),
        ];
        let [in_a, in_b, chan, residual, out] = carve(self.acts, regions)?;
        let in_a: &[f32] = in_a;
        let in_b: &[f32] = if twice { in_a } else { in_b };
        let p = |r| &self.params[self.graph.params.range(r)];
        let args = conv::Conv {
            shape: ConvShape {
                batch: self.batch,
                ..op.shape
            },
            in_a,
            in_b,
            weight: p(op.weight),
            bias: p(op.bias),
            channel_add: chan,
            residual,
            out_scale: op.out_scale,
        };
        conv::forward(&args, out, self.scratch);
        Ok(())
    }

    fn group_norm(&mut self, at: usize, op: &GroupNormOp) -> Result<()> {
        let twice = self_concat(op.input).is_some();
        let regions = [
            self.act(op.input.first()),
            if twice {
                EMPTY
            } else {
                self.opt_act(op.input.second())
            },
            self.graph.saved_region(at, self.batch),
            self.act(op.out),
        ];
        let [in_a, in_b, saved, out] = carve(self.acts, regions)?;
        let in_a: &[f32] = in_a;
        let in_b: &[f32] = if twice { in_a } else { in_b };
        let (g, params) = (self.graph, self.params);
        let args = group_norm_args(op, self.batch, in_a, in_b, |r| &params[g.params.range(r)]);
        group_norm::forward(&args, out, saved);
        Ok(())
    }

    fn attention(&mut self, at: usize, op: &AttentionOp) -> Result<()> {
        let regions = [
            self.act(op.q),
            self.act(op.k),
            self.act(op.v),
            self.graph.saved_region(at, self.batch),
            self.act(op.out),
        ];
        if op.causal || op.kv_tokens != op.tokens {
            // Only the text encoder masks, and the trainer builds unconditional UNets.
            return Err(crate::model::backend::unsupported_op(
                "train",
                "attention (causal or cross)",
            ));
        }
        let [q, k, v, probs, out] = carve(self.acts, regions)?;
        attention::core_forward(heads(op, self.batch), q, k, v, probs, out);
        Ok(())
    }

    fn output(&mut self, _: usize, op: &OutputOp) -> Result<()> {
        let (s, l) = self.act(op.input);
        let pixels = op.height * op.width;
        nhwc_to_nchw(
            &self.acts[s..s + l],
            self.out,
            self.batch,
            op.channels,
            pixels,
        );
        Ok(())
    }

    fn scale_shift(&mut self, _: usize, op: &ScaleShiftOp) -> Result<()> {
        let regions = [
            self.act(op.input),
            self.act(op.scale_shift),
            self.act(op.out),
        ];
        let [input, ss, out] = carve(self.acts, regions)?;
        let (c, batch) = (op.channels, self.batch);
        resample::scale_shift_forward(input, ss, batch, op.pixels, c, op.silu, out);
        Ok(())
    }

    fn resample(&mut self, _: usize, op: &ResampleOp) -> Result<()> {
        let [input, out] = carve(self.acts, [self.act(op.input), self.act(op.out)])?;
        let forward = match op.mode {
            ResampleMode::AvgPool2 => resample::avg_pool2,
            ResampleMode::Nearest2 => resample::nearest2,
        };
        forward(input, self.batch, op.in_h, op.in_w, op.channels, out);
        Ok(())
    }

    fn activation(&mut self, _: usize, op: &ActivationOp) -> Result<()> {
        let [input, out] = carve(self.acts, [self.act(op.input), self.act(op.out)])?;
        act_forward(op.act, input, out);
        Ok(())
    }

    fn class_sinusoid(&mut self, _: usize, op: &SinusoidOp) -> Result<()> {
        let (s, l) = self.act(op.out);
        let dst = &mut self.acts[s..s + l];
        for (row, &label) in dst.chunks_exact_mut(op.dim).zip(self.labels) {
            embedding::sinusoid(label as f32, op.flip_sin_to_cos, op.freq_shift, row);
        }
        Ok(())
    }

    fn timestep_table(&mut self, at: usize, op: &TimestepTableOp) -> Result<()> {
        let regions = [self.graph.saved_region(at, self.batch), self.act(op.out)];
        let [rows, out] = carve(self.acts, regions)?;
        let table = &self.params[self.graph.params.range(op.table)];
        for ((o, row), &t) in out
            .chunks_exact_mut(op.dim)
            .zip(rows.iter_mut())
            .zip(self.t)
        {
            let index = timestep_index(t, op.steps)?;
            *row = index as f32;
            o.copy_from_slice(&table[index * op.dim..(index + 1) * op.dim]);
        }
        Ok(())
    }

    fn fourier_embedding(&mut self, _: usize, op: &FourierEmbeddingOp) -> Result<()> {
        let (s, l) = self.act(op.out);
        let dst = &mut self.acts[s..s + l];
        let w = &self.params[self.graph.params.range(op.weight)];
        for (b, row) in dst.chunks_exact_mut(2 * op.dim).enumerate() {
            let weight = w.iter().copied();
            crate::model::forward::fourier_embedding(
                self.t[b],
                weight,
                op.log,
                op.flip_sin_to_cos,
                row,
            );
        }
        Ok(())
    }

    fn fir_resample(&mut self, _: usize, op: &FirResampleOp) -> Result<()> {
        let [input, out] = carve(self.acts, [self.act(op.input), self.act(op.out)])?;
        let args = crate::kernels::scalar::FirArgs {
            batch: self.batch,
            channels: op.channels,
            in_h: op.in_h,
            in_w: op.in_w,
            up: op.up,
            input,
        };
        ncsnpp::fir_forward(&args, out);
        Ok(())
    }

    fn class_vector(&mut self, _: usize, _: &ClassVectorOp) -> Result<()> {
        Err(crate::model::backend::unsupported_op(
            "train",
            "class_vector",
        ))
    }

    fn timestep_divide(&mut self, _: usize, op: &TimestepDivideOp) -> Result<()> {
        let [input, out] = carve(self.acts, [self.act(op.input), self.act(op.out)])?;
        ncsnpp::timestep_divide_forward(input, self.t, op.len, out);
        Ok(())
    }
}
