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

use super::layers::{
    activation, attention, conv, dropout, embedding, group_norm, linear, ncsnpp, resample,
};
use super::params::ParamTable;
use super::rng::{Purpose, Stream};
use crate::error::{Error, Result};
use crate::kernels::{nchw_to_nhwc, nhwc_to_nchw, ConvShape};
use crate::memory::{carve, MemoryPlan, Reuse};
use crate::model::backend::{walk, Backend};
use crate::model::forward::{activation as act_forward, timestep_index};
use crate::model::DropoutSite;
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
    /// `class_embed_type: "identity"`: the width of the class embedding each sample is given.
    class_embedding_dim: Option<usize>,
    /// Floats per sample of the largest tensor read concatenated with itself (0: none).
    self_concat_len: usize,
    /// The config's `dropout` probability.
    dropout_p: f32,
    /// Where dropout acts (none when `dropout_p` is 0); each site's mask is its op's saved
    /// values.
    dropout_sites: Vec<DropoutSite>,
    /// Per op: whether it is a dropout site.
    is_dropout_site: Vec<bool>,
}

/// Which dropout masks a training forward pass applies (config `dropout`, `ResnetBlock2D`).
#[derive(Debug, Clone, Copy)]
pub enum Dropout<'a> {
    /// None: diffusers' `eval()` behaviour, what inference computes.
    Off,
    /// Masks drawn from the run's counter-based RNG stream for `(seed, step)`.
    Seeded { seed: u64, step: u64 },
    /// The caller's keep flags (`1` keep, `0` drop), every site of
    /// [`TrainGraph::dropout_sites`] in order, each `[batch, pixels, channels]` (NHWC) of the
    /// site's input ([`TrainGraph::dropout_site_shape`]).
    Masks(&'a [f32]),
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
    /// Whether the last forward pass applied dropout masks (its backward then applies them).
    dropout_on: bool,
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
        let ops = model.ops.clone();
        let tensors = model.tensors.clone();
        let n_ops = ops.len();
        let dropout_p = model.config.dropout;
        let dropout_sites = if dropout_p > 0.0 {
            model.dropout_sites.clone()
        } else {
            Vec::new()
        };
        let mut is_dropout_site = alloc::vec![false; n_ops];
        for site in &dropout_sites {
            dropout_site_input(&ops, site)?;
            is_dropout_site[site.op] = true;
        }
        // Activation plan: model tensors, then one "saved" tensor per op that has any (a
        // dropout site's mask: its input's length).
        let mut lens: Vec<usize> = tensors.iter().map(|t| t.len).collect();
        let mut saved = Vec::with_capacity(n_ops);
        for (i, op) in ops.iter().enumerate() {
            let l = match op {
                Op::Conv(c) if is_dropout_site[i] => tensors[c.input.first()].len,
                _ => saved_len(op),
            };
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
            class_embedding_dim: (model.config.identity_class_embedding)
                .then_some(model.config.time_embed_dim),
            dropout_p,
            dropout_sites,
            is_dropout_site,
        })
    }

    /// Where training applies dropout, in op order (empty when the config's `dropout` is 0).
    pub fn dropout_sites(&self) -> &[DropoutSite] {
        &self.dropout_sites
    }

    /// (channels, height, width) of a dropout site's input.
    pub fn dropout_site_shape(&self, site: &DropoutSite) -> (usize, usize, usize) {
        match &self.ops[site.op] {
            Op::Conv(c) => (c.shape.in_ca, c.shape.in_h, c.shape.in_w),
            _ => (0, 0, 0),
        }
    }

    /// Fills every site's mask for `dropout` into the workspace; returns whether the forward
    /// pass applies them.
    fn set_dropout_masks(&self, ws: &mut TrainWorkspace, dropout: Dropout) -> Result<bool> {
        let batch = ws.batch;
        match dropout {
            Dropout::Off => Ok(false),
            // Nothing to draw (`dropout` 0): exactly the undropped numbers.
            Dropout::Seeded { .. } if self.dropout_sites.is_empty() => Ok(false),
            Dropout::Seeded { seed, step } => {
                let mut draws = Stream::new(seed, Purpose::Dropout, step);
                for site in &self.dropout_sites {
                    let (s, l) = self.saved_region(site.op, batch);
                    dropout::draw(self.dropout_p, &mut draws, &mut ws.acts[s..s + l]);
                }
                Ok(true)
            }
            Dropout::Masks(flags) => {
                let total: usize = (self.dropout_sites.iter())
                    .map(|site| self.saved_region(site.op, batch).1)
                    .sum();
                if flags.len() != total {
                    return Err(Error::BufferSize {
                        what: "dropout masks",
                        expected: total,
                        found: flags.len(),
                    });
                }
                if let Some(f) = flags.iter().find(|&&f| f != 0.0 && f != 1.0) {
                    return Err(crate::error::invalid_arg(
                        "dropout masks",
                        alloc::format!("keep flags are 0 or 1, found {f}"),
                    ));
                }
                let mut at = 0;
                for site in &self.dropout_sites {
                    let (s, l) = self.saved_region(site.op, batch);
                    let mask = &mut ws.acts[s..s + l];
                    dropout::from_flags(self.dropout_p, &flags[at..at + l], mask);
                    at += l;
                }
                Ok(!self.dropout_sites.is_empty())
            }
        }
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

    /// `class_embed_type: "identity"`: the floats of the class embedding each sample takes
    /// ([`TrainGraph::forward_with_class_embeddings`]).
    pub fn class_embedding_dim(&self) -> Option<usize> {
        self.class_embedding_dim
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
            dropout_on: false,
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
        class_embeddings: Option<&[f32]>,
    ) -> Result<()> {
        let b = ws.batch;
        match (self.class_embedding_dim, class_embeddings) {
            (Some(e), Some(v)) if v.len() == b * e => {
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(crate::error::invalid_arg(
                        "class embeddings",
                        "must be finite",
                    ));
                }
            }
            (Some(e), Some(v)) => {
                return Err(Error::BufferSize {
                    what: "class embeddings [batch, time_embed_dim]",
                    expected: b * e,
                    found: v.len(),
                })
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(crate::error::invalid_arg(
                    "class embeddings",
                    "class_embed_type \"identity\": give one time_embed_dim vector per sample \
                     (TrainGraph::forward_with_class_embeddings)",
                ))
            }
            (None, Some(_)) => {
                return Err(crate::error::invalid_arg(
                    "class embeddings",
                    "only a class_embed_type \"identity\" model takes them",
                ))
            }
        }
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
    /// `ws.out` (NCHW) and keeps every activation for [`TrainGraph::backward`]. No dropout
    /// (what inference computes); [`TrainGraph::forward_with_dropout`] applies it.
    pub fn forward(
        &self,
        params: &[f32],
        ws: &mut TrainWorkspace,
        x: &[f32],
        t: &[f32],
        labels: Option<&[i64]>,
    ) -> Result<()> {
        self.forward_with_dropout(params, ws, x, t, labels, Dropout::Off)
    }

    /// [`TrainGraph::forward`] with the config's `dropout` applied as `dropout` says; the
    /// following [`TrainGraph::backward`] applies the same masks.
    pub fn forward_with_dropout(
        &self,
        params: &[f32],
        ws: &mut TrainWorkspace,
        x: &[f32],
        t: &[f32],
        labels: Option<&[i64]>,
        dropout: Dropout,
    ) -> Result<()> {
        self.forward_impl(params, ws, x, t, labels, None, dropout)
    }

    /// [`TrainGraph::forward_with_dropout`] of a `class_embed_type: "identity"` model:
    /// `class_embeddings` are diffusers' float `class_labels`, `[batch, time_embed_dim]`, added
    /// to the time embedding. They are inputs: no gradient flows into them, and the time
    /// embedding's gradient flows through the sum unchanged.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_class_embeddings(
        &self,
        params: &[f32],
        ws: &mut TrainWorkspace,
        x: &[f32],
        t: &[f32],
        class_embeddings: &[f32],
        dropout: Dropout,
    ) -> Result<()> {
        self.forward_impl(params, ws, x, t, None, Some(class_embeddings), dropout)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_impl(
        &self,
        params: &[f32],
        ws: &mut TrainWorkspace,
        x: &[f32],
        t: &[f32],
        labels: Option<&[i64]>,
        class_embeddings: Option<&[f32]>,
        dropout: Dropout,
    ) -> Result<()> {
        self.check(ws, x, t, labels, class_embeddings)?;
        ws.dropout_on = false;
        ws.dropout_on = self.set_dropout_masks(ws, dropout)?;
        ws.timesteps.copy_from_slice(t);
        let TrainWorkspace {
            batch,
            acts,
            out,
            scratch,
            dropout_on,
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
            class_embeddings: class_embeddings.unwrap_or(&[]),
            dropout_on: *dropout_on,
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
                    if ws.dropout_on && self.is_dropout_site[i] {
                        dropout::backward(saved(i), d_a);
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
                // `out = in + embedding`: the gradient passes to the time embedding unchanged
                // (the embeddings are inputs).
                Op::ClassVector(o) => {
                    let [d_in, d_out] = carve(
                        &mut ws.grads,
                        [self.grad(o.input, batch), self.grad(o.out, batch)],
                    )?;
                    embedding::class_vector_backward(d_out, d_in);
                }
                // Only decoders and the text encoder emit these; the trainer builds UNets (its
                // forward refuses them too).
                Op::Elementwise(_)
                | Op::LayerNorm(_)
                | Op::TokenEmbedding(_)
                | Op::Geglu(_)
                | Op::EncoderStates(_)
                | Op::NormConv(_) => {
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

/// A dropout site's input tensor, after checking that the site is a conv reading one tensor
/// that no other op reads (so the mask may be applied to it in place).
fn dropout_site_input(ops: &[Op], site: &DropoutSite) -> Result<TensorId> {
    let bad = || {
        crate::error::invalid_arg(
            "dropout",
            alloc::format!(
                "{}: conv2 does not read the activated norm2 output alone",
                site.resnet
            ),
        )
    };
    let input = match ops.get(site.op) {
        Some(Op::Conv(ConvOp {
            input: Input::One(t),
            ..
        })) => *t,
        _ => return Err(bad()),
    };
    let readers = ops.iter().filter(|op| op.reads().contains(&input)).count();
    // Its producer's backward must not read it (it holds the dropped values after the forward).
    let produced_by_a_norm_or_activation = ops.iter().any(|op| match op {
        Op::GroupNorm(g) => g.out == input,
        Op::ScaleShift(o) => o.out == input,
        Op::Activation(o) => o.out == input,
        _ => false,
    });
    if readers != 1 || !produced_by_a_norm_or_activation {
        return Err(bad());
    }
    Ok(input)
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
    /// `[batch, dim]` class embeddings (`class_embed_type: "identity"`; else empty).
    class_embeddings: &'a [f32],
    /// Apply the dropout masks (saved values of the site ops).
    dropout_on: bool,
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

    fn conv(&mut self, at: usize, op: &ConvOp) -> Result<()> {
        if self.dropout_on && self.graph.is_dropout_site[at] {
            // In place on the input: only this conv reads it (checked in `TrainGraph::new`).
            let regions = [
                self.graph.saved_region(at, self.batch),
                self.act(op.input.first()),
            ];
            let [mask, input] = carve(self.acts, regions)?;
            dropout::forward(mask, input);
        }
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

    fn class_vector(&mut self, _: usize, op: &ClassVectorOp) -> Result<()> {
        let [input, out] = carve(self.acts, [self.act(op.input), self.act(op.out)])?;
        embedding::class_vector_forward(input, self.class_embeddings, out);
        Ok(())
    }

    fn timestep_divide(&mut self, _: usize, op: &TimestepDivideOp) -> Result<()> {
        let [input, out] = carve(self.acts, [self.act(op.input), self.act(op.out)])?;
        ncsnpp::timestep_divide_forward(input, self.t, op.len, out);
        Ok(())
    }
}
