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

use super::layers::{attention, conv, embedding, group_norm, linear};
use super::params::ParamTable;
use crate::error::{Error, Result};
use crate::kernels::ConvShape;
use crate::memory::{carve, MemoryPlan, Reuse};
use crate::model::{ModelDescription, Op, TensorId, TensorSpec};

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

fn saved_len(op: &Op) -> usize {
    match op {
        Op::TimeEmbedding(t) => embedding::saved_len(t.embed_dim),
        Op::GroupNorm(g) => group_norm::saved_len(g.groups),
        Op::Attention(a) => attention::saved_len(a.tokens, a.heads, a.groups),
        _ => 0,
    }
}

const EMPTY: (usize, usize) = (0, 0);

impl TrainGraph {
    /// The training graph of a described model ([`crate::model::describe_config`], or
    /// [`crate::model::describe_weights`] to take the parameter names a weights file uses).
    pub fn new(model: &ModelDescription) -> Result<TrainGraph> {
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
        for op in &ops {
            if let Op::InputToNhwc { out, .. } = op {
                needs_grad[*out] = false;
            }
        }
        let params = ParamTable::new(model)?;
        Ok(TrainGraph {
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
        let batch = ws.batch;
        let p = |r| &params[self.params.range(r)];
        for (i, op) in self.ops.iter().enumerate() {
            match op {
                Op::InputToNhwc {
                    channels,
                    height,
                    width,
                    center,
                    out,
                } => {
                    let (s, l) = self.act(*out, batch);
                    let dst = &mut ws.acts[s..s + l];
                    let (c, hw) = (*channels, height * width);
                    for b in 0..batch {
                        for ch in 0..c {
                            for (q, v) in x[(b * c + ch) * hw..(b * c + ch + 1) * hw]
                                .iter()
                                .enumerate()
                            {
                                dst[(b * hw + q) * c + ch] =
                                    if *center { 2.0 * v - 1.0 } else { *v };
                            }
                        }
                    }
                }
                Op::TimeEmbedding(te) => {
                    let [scratch, saved, out] = carve(
                        &mut ws.acts,
                        [
                            self.act(te.scratch, batch),
                            self.saved_region(i, batch),
                            self.act(te.out, batch),
                        ],
                    )?;
                    let (sinusoids, rest) = scratch.split_at_mut(batch * te.sinusoid_dim);
                    for b in 0..batch {
                        let row = &mut sinusoids[b * te.sinusoid_dim..(b + 1) * te.sinusoid_dim];
                        embedding::sinusoid(t[b], te.flip_sin_to_cos, te.freq_shift, row);
                    }
                    let mlp = self.time_mlp(te, params, batch, labels);
                    embedding::forward(
                        &mlp,
                        sinusoids,
                        &mut rest[..batch * te.embed_dim],
                        saved,
                        out,
                    );
                }
                Op::Linear(l) => {
                    let [input, residual, out] = carve(
                        &mut ws.acts,
                        [
                            self.act(l.input, batch),
                            self.opt_act(l.residual, batch),
                            self.act(l.out, batch),
                        ],
                    )?;
                    let args = linear::Linear {
                        rows: batch * l.rows,
                        in_f: l.in_f,
                        out_f: l.out_f,
                        input,
                        weight: p(l.weight),
                        bias: p(l.bias),
                        residual,
                        out_scale: l.out_scale,
                    };
                    linear::forward(&args, out);
                }
                Op::Conv(c) => {
                    let [in_a, in_b, chan, residual, out] = carve(
                        &mut ws.acts,
                        [
                            self.act(c.input.first(), batch),
                            self.opt_act(c.input.second(), batch),
                            self.opt_act(c.channel_add, batch),
                            self.opt_act(c.residual, batch),
                            self.act(c.out, batch),
                        ],
                    )?;
                    let args = conv::Conv {
                        shape: ConvShape { batch, ..c.shape },
                        in_a,
                        in_b,
                        weight: p(c.weight),
                        bias: p(c.bias),
                        channel_add: chan,
                        residual,
                        out_scale: c.out_scale,
                    };
                    conv::forward(&args, out, &mut ws.scratch);
                }
                Op::GroupNorm(g) => {
                    let [in_a, in_b, saved, out] = carve(
                        &mut ws.acts,
                        [
                            self.act(g.input.first(), batch),
                            self.opt_act(g.input.second(), batch),
                            self.saved_region(i, batch),
                            self.act(g.out, batch),
                        ],
                    )?;
                    let args = group_norm::GroupNorm {
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
                    };
                    group_norm::forward(&args, out, saved);
                }
                Op::Attention(a) => {
                    let [input, scratch, saved, out] = carve(
                        &mut ws.acts,
                        [
                            self.act(a.input, batch),
                            self.act(a.scratch, batch),
                            self.saved_region(i, batch),
                            self.act(a.out, batch),
                        ],
                    )?;
                    let blk = self.attention_block(a, params, batch, input);
                    attention::forward(&blk, scratch, saved, out);
                }
                Op::OutputToNchw {
                    input,
                    channels,
                    height,
                    width,
                } => {
                    let (s, l) = self.act(*input, batch);
                    let src = &ws.acts[s..s + l];
                    let (c, hw) = (*channels, height * width);
                    for b in 0..batch {
                        for ch in 0..c {
                            for (q, o) in ws.out[(b * c + ch) * hw..(b * c + ch + 1) * hw]
                                .iter_mut()
                                .enumerate()
                            {
                                *o = src[(b * hw + q) * c + ch];
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn time_mlp<'a>(
        &self,
        te: &crate::model::TimeEmbeddingOp,
        params: &'a [f32],
        batch: usize,
        labels: Option<&'a [i64]>,
    ) -> embedding::TimeMlp<'a> {
        let p = |r| &params[self.params.range(r)];
        embedding::TimeMlp {
            batch,
            sinusoid_dim: te.sinusoid_dim,
            embed_dim: te.embed_dim,
            w1: p(te.linear_1.0),
            b1: p(te.linear_1.1),
            w2: p(te.linear_2.0),
            b2: p(te.linear_2.1),
            class_table: te.class_embedding.map_or(&[][..], |(r, _)| p(r)),
            labels: labels.unwrap_or(&[]),
        }
    }

    fn attention_block<'a>(
        &self,
        a: &crate::model::AttentionOp,
        params: &'a [f32],
        batch: usize,
        input: &'a [f32],
    ) -> attention::AttentionBlock<'a> {
        let p = |(w, b)| (&params[self.params.range(w)], &params[self.params.range(b)]);
        attention::AttentionBlock {
            heads: attention::Heads {
                batch,
                tokens: a.tokens,
                channels: a.channels,
                heads: a.heads,
            },
            groups: a.groups,
            eps: a.eps,
            input,
            norm: p(a.norm),
            q: p(a.q),
            k: p(a.k),
            v: p(a.v),
            o: p(a.o),
            rescale: a.rescale,
        }
    }

    /// Backward pass after [`TrainGraph::forward`] and after the loss filled `ws.d_out`:
    /// accumulates every parameter's gradient into `param_grads` (same layout as `params`; the
    /// caller zeroes it between steps).
    pub fn backward(
        &self,
        params: &[f32],
        param_grads: &mut [f32],
        ws: &mut TrainWorkspace,
        labels: Option<&[i64]>,
    ) -> Result<()> {
        let batch = ws.batch;
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
        for (i, op) in self.ops.iter().enumerate().rev() {
            for &t in &self.zero_at[i] {
                let (s, l) = self.grads.region(t, batch);
                ws.grads[s..s + l].fill(0.0);
            }
            match op {
                Op::InputToNhwc { .. } => {}
                Op::OutputToNchw {
                    input,
                    channels,
                    height,
                    width,
                } => {
                    let (s, l) = self.grad(*input, batch);
                    let dst = &mut ws.grads[s..s + l];
                    let (c, hw) = (*channels, height * width);
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
                    let [d_a, d_b, d_chan, d_res, d_out] = carve(
                        &mut ws.grads,
                        [
                            self.grad(c.input.first(), batch),
                            self.opt_grad(c.input.second(), batch),
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
                    let g = conv::ConvGrads {
                        in_a: d_a,
                        in_b: d_b,
                        weight: d_w,
                        bias: d_bias,
                        channel_add: d_chan,
                        residual: d_res,
                    };
                    conv::backward(&args, d_out, g, &mut ws.scratch);
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
                    let args = linear::Linear {
                        rows: batch * l.rows,
                        in_f: l.in_f,
                        out_f: l.out_f,
                        input: a(l.input),
                        weight: p(l.weight),
                        bias: p(l.bias),
                        residual: opt_a(l.residual),
                        out_scale: l.out_scale,
                    };
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
                Op::GroupNorm(g) => {
                    let [d_a, d_b, d_out] = carve(
                        &mut ws.grads,
                        [
                            self.grad(g.input.first(), batch),
                            self.opt_grad(g.input.second(), batch),
                            self.grad(g.out, batch),
                        ],
                    )?;
                    let [d_gamma, d_beta] = carve(param_grads, [pr(g.gamma), pr(g.beta)])?;
                    let args = group_norm::GroupNorm {
                        batch,
                        pixels: g.pixels,
                        in_ca: g.in_ca,
                        in_cb: g.in_cb,
                        groups: g.groups,
                        eps: g.eps,
                        in_a: a(g.input.first()),
                        in_b: opt_a(g.input.second()),
                        gamma: p(g.gamma),
                        beta: p(g.beta),
                        silu: g.silu,
                    };
                    let grads = group_norm::GroupNormGrads {
                        in_a: d_a,
                        in_b: d_b,
                        gamma: d_gamma,
                        beta: d_beta,
                    };
                    group_norm::backward(&args, saved(i), d_out, grads);
                }
                Op::Attention(at) => {
                    let [d_in, d_scratch, d_out] = carve(
                        &mut ws.grads,
                        [
                            self.grad(at.input, batch),
                            self.grad(at.scratch, batch),
                            self.grad(at.out, batch),
                        ],
                    )?;
                    let [nw, nb, qw, qb, kw, kb, vw, vb, ow, ob] = carve(
                        param_grads,
                        [
                            pr(at.norm.0),
                            pr(at.norm.1),
                            pr(at.q.0),
                            pr(at.q.1),
                            pr(at.k.0),
                            pr(at.k.1),
                            pr(at.v.0),
                            pr(at.v.1),
                            pr(at.o.0),
                            pr(at.o.1),
                        ],
                    )?;
                    let blk = self.attention_block(at, params, batch, a(at.input));
                    let g = attention::AttentionGrads {
                        input: d_in,
                        norm: (nw, nb),
                        q: (qw, qb),
                        k: (kw, kb),
                        v: (vw, vb),
                        o: (ow, ob),
                    };
                    attention::backward(&blk, a(at.scratch), saved(i), d_out, d_scratch, g);
                }
                Op::TimeEmbedding(te) => {
                    let [d_scratch, d_out] = carve(
                        &mut ws.grads,
                        [self.grad(te.scratch, batch), self.grad(te.out, batch)],
                    )?;
                    let class = te.class_embedding.map_or(EMPTY, |(r, _)| pr(r));
                    let [w1, b1, w2, b2, d_class] = carve(
                        param_grads,
                        [
                            pr(te.linear_1.0),
                            pr(te.linear_1.1),
                            pr(te.linear_2.0),
                            pr(te.linear_2.1),
                            class,
                        ],
                    )?;
                    let mlp = self.time_mlp(te, params, batch, labels);
                    let scratch = a(te.scratch);
                    let (sinusoids, hidden) = scratch.split_at(batch * te.sinusoid_dim);
                    let grads = embedding::TimeMlpGrads {
                        w1,
                        b1,
                        w2,
                        b2,
                        class_table: d_class,
                    };
                    embedding::backward(
                        &mlp,
                        sinusoids,
                        &hidden[..batch * te.embed_dim],
                        saved(i),
                        d_out,
                        &mut d_scratch[..batch * te.embed_dim],
                        grads,
                    );
                }
            }
        }
        Ok(())
    }
}
