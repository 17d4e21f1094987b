//! The forward walk: one pass over the op list, every tensor at its planned place in the
//! caller's workspace, no allocation.

use super::backend::{walk, walk_range, walk_timed, Backend};
use super::ops::{
    Activation, ActivationOp, ResampleMode, ResampleOp, ScaleShiftOp, TimestepTableOp,
};
use super::ops::{
    AttentionOp, ClassEmbeddingOp, ConvOp, ElementwiseOp, GroupNormOp, Input, InputOp, LinearOp,
    OutputOp, SiluOp, SinusoidOp, TensorId,
};
use super::ops::{ClassVectorOp, FirResampleOp, FourierEmbeddingOp, TimestepDivideOp};
use super::ops::{EncoderStatesOp, GegluOp, LayerNormOp, NormConvOp, TokenEmbeddingOp};
use super::Model;
use crate::error::{invalid_arg, Error, Result};
use crate::kernels::scalar;
use crate::kernels::scalar::{fir_resample, FirArgs};
use crate::kernels::{
    group_norm_stats, nchw_to_nhwc, nhwc_to_nchw, silu, AttentionArgs, ConvArgs, ConvShape, Exec,
    GroupNormArgs, LinearArgs, Parallel, Sequential,
};
use crate::memory::carve;

const EMPTY: (usize, usize) = (0, 0);

/// Rows per task of the row-wise ops the CPU backend spreads over its threads (LayerNorm,
/// GEGLU).
const ROWS_PER_TASK: usize = 64;

/// What a forward pass reads besides its workspace: the UNet's sample, timesteps and labels,
/// or the text encoder's token ids.
struct Inputs<'a> {
    x: &'a [f32],
    ids: &'a [u32],
    timesteps: &'a [f32],
    class_labels: Option<&'a [i64]>,
    class_embeddings: Option<&'a [f32]>,
    /// A conditional UNet's `encoder_hidden_states`, `[batch, tokens, dim]`.
    context: Option<&'a [f32]>,
}

impl<'a> Inputs<'a> {
    /// A UNet's sample and timesteps, without labels, class embeddings or text states.
    fn sample(x: &'a [f32], timesteps: &'a [f32]) -> Inputs<'a> {
        Inputs {
            x,
            ids: &[],
            timesteps,
            class_labels: None,
            class_embeddings: None,
            context: None,
        }
    }
}

/// Which ops a forward call runs.
enum Walk<'a> {
    All,
    Range(core::ops::Range<usize>),
    /// All, adding each op's time as measured by the clock to its slot.
    Timed(&'a mut [f64], &'a dyn Fn() -> f64),
}

impl Model {
    /// One model evaluation: `out = eps_theta(x, t[, class_labels])`.
    ///
    /// - `x`: `[batch, in_channels, height, width]` (NCHW, as diffusers), batch inferred.
    /// - `timesteps`: one per sample, or a single one for all (diffusers broadcasts it too).
    ///   Fractional timesteps are allowed (continuous-time samplers use them).
    /// - `class_labels`: one per sample (or a single one for all), required exactly when the
    ///   model is class-conditional.
    /// - `out`: `[batch, out_channels, height, width]`.
    /// - `workspace`: at least [`Model::workspace_len`]`(batch)` floats.
    pub fn forward(
        &self,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
    ) -> Result<()> {
        self.forward_impl(
            workspace,
            Inputs {
                class_labels,
                ..Inputs::sample(x, timesteps)
            },
            out,
            Walk::All,
            0,
        )
    }

    /// [`Model::forward`] of a `class_embed_type: "identity"` model: `class_embeddings` are
    /// diffusers' float `class_labels`, `[batch, time_embed_dim]` (or one row for all), added
    /// to the time embedding. Such a model takes no integer labels; any other model takes no
    /// embeddings (typed errors naming the argument).
    pub fn forward_with_class_embeddings(
        &self,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        class_embeddings: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.forward_impl(
            workspace,
            Inputs {
                class_embeddings: Some(class_embeddings),
                ..Inputs::sample(x, timesteps)
            },
            out,
            Walk::All,
            0,
        )
    }

    /// One evaluation of a text-conditional UNet (`UNet2DConditionModel`):
    /// `out = eps_theta(x, t, encoder_hidden_states)`, arguments as [`Model::forward`] plus
    /// `encoder_hidden_states`, `[batch, text_tokens, cross_attention_dim]` (the text
    /// encoder's last hidden state; `text_tokens` as the model was built,
    /// [`crate::model::condition_config::CrossAttentionConfig::text_tokens`]). Allocates
    /// nothing; the workspace is [`Model::workspace_len`]`(batch)` as for any model. Any other
    /// model refuses the states, and a conditional one refuses [`Model::forward`] (typed
    /// errors naming `encoder_hidden_states`).
    pub fn forward_conditional(
        &self,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        encoder_hidden_states: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.forward_impl(
            workspace,
            Inputs {
                context: Some(encoder_hidden_states),
                ..Inputs::sample(x, timesteps)
            },
            out,
            Walk::All,
            0,
        )
    }

    /// [`Model::forward_conditional`] on at most `threads` threads (0: [`Model::threads`]),
    /// with a workspace of [`Model::workspace_len_for_threads`]`(batch, threads)` floats.
    pub fn forward_conditional_with_threads(
        &self,
        threads: usize,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        encoder_hidden_states: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.forward_impl(
            workspace,
            Inputs {
                context: Some(encoder_hidden_states),
                ..Inputs::sample(x, timesteps)
            },
            out,
            Walk::All,
            threads,
        )
    }

    /// `encoder_hidden_states` against the model: given exactly when it is text-conditional,
    /// `batch * text_tokens * cross_attention_dim` finite floats.
    fn check_context(&self, batch: usize, context: Option<&[f32]>) -> Result<()> {
        const WHAT: &str = "encoder_hidden_states";
        match (&self.config.cross_attention, context) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(invalid_arg(
                WHAT,
                "only a text-conditional UNet (UNet2DConditionModel) takes them",
            )),
            (Some(_), None) => Err(invalid_arg(
                WHAT,
                "the model is text-conditional (UNet2DConditionModel): give [batch, tokens, \
                 cross_attention_dim] states (Model::forward_conditional)",
            )),
            (Some(cross), Some(c)) => {
                let expected = batch * cross.text_tokens * cross.cross_attention_dim;
                if c.len() != expected {
                    return Err(Error::BufferSize {
                        what: "encoder_hidden_states [batch, text_tokens, cross_attention_dim]",
                        expected,
                        found: c.len(),
                    });
                }
                if c.iter().any(|v| !v.is_finite()) {
                    return Err(invalid_arg(WHAT, "must be finite"));
                }
                Ok(())
            }
        }
    }

    /// [`Model::forward`] on at most `threads` threads (0: [`Model::threads`]), with a workspace
    /// of at least [`Model::workspace_len_for_threads`]`(batch, threads)` floats: the size
    /// depends only on `threads`, not on the machine. It runs on min(`threads`,
    /// [`Model::threads`]) threads of the model's team; the output is the same bits for any
    /// thread count.
    pub fn forward_with_threads(
        &self,
        threads: usize,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
    ) -> Result<()> {
        self.forward_impl(
            workspace,
            Inputs {
                class_labels,
                ..Inputs::sample(x, timesteps)
            },
            out,
            Walk::All,
            threads,
        )
    }

    /// Runs only the ops `ops` (a range of indices into [`Model::ops`]) on a workspace that
    /// holds their inputs, with [`Model::forward`]'s arguments and checks: the per-op backend
    /// tests (`tests/backend_ops.rs`) feed every backend one op's reference inputs this way.
    /// Meaningful on a model built with [`crate::memory::Reuse::None`], where every tensor
    /// keeps its own place in the workspace. On a GPU the activation part of the workspace is
    /// copied to the device (as f16) before and back after.
    pub fn forward_ops(
        &self,
        ops: core::ops::Range<usize>,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
    ) -> Result<()> {
        self.check_op_range(&ops)?;
        self.forward_impl(
            workspace,
            Inputs {
                class_labels,
                ..Inputs::sample(x, timesteps)
            },
            out,
            Walk::Range(ops),
            0,
        )
    }

    /// [`Model::forward_ops`] of a `class_embed_type: "identity"` model: its arguments are
    /// [`Model::forward_with_class_embeddings`]'s.
    pub fn forward_ops_with_class_embeddings(
        &self,
        ops: core::ops::Range<usize>,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        class_embeddings: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.check_op_range(&ops)?;
        self.forward_impl(
            workspace,
            Inputs {
                class_embeddings: Some(class_embeddings),
                ..Inputs::sample(x, timesteps)
            },
            out,
            Walk::Range(ops),
            0,
        )
    }

    fn check_op_range(&self, ops: &core::ops::Range<usize>) -> Result<()> {
        if ops.start > ops.end || ops.end > self.ops.len() {
            return Err(invalid_arg(
                "ops",
                alloc::format!(
                    "{}..{} is not a range of the {} ops",
                    ops.start,
                    ops.end,
                    self.ops.len()
                ),
            ));
        }
        Ok(())
    }

    /// [`Model::forward_ops`] of a text-conditional UNet: the ops `ops` alone, with
    /// [`Model::forward_conditional`]'s arguments and checks (the per-op backend tests).
    pub fn forward_ops_conditional(
        &self,
        ops: core::ops::Range<usize>,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        encoder_hidden_states: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.check_op_range(&ops)?;
        self.forward_impl(
            workspace,
            Inputs {
                context: Some(encoder_hidden_states),
                ..Inputs::sample(x, timesteps)
            },
            out,
            Walk::Range(ops),
            0,
        )
    }

    /// `threads`: the most threads the call may use, and the count its workspace is sized for
    /// (0: [`Model::threads`]).
    fn forward_impl(
        &self,
        workspace: &mut [f32],
        inputs: Inputs<'_>,
        out: &mut [f32],
        walk_mode: Walk<'_>,
        threads: usize,
    ) -> Result<()> {
        let Inputs {
            x,
            timesteps,
            class_labels,
            class_embeddings,
            context,
            ..
        } = inputs;
        let (c_in, h, w) = self.input_shape();
        let per_sample = c_in * h * w;
        if x.is_empty() || !x.len().is_multiple_of(per_sample) {
            return Err(Error::BufferSize {
                what: "model input x",
                expected: per_sample,
                found: x.len(),
            });
        }
        let batch = x.len() / per_sample;
        let (c_out, out_h, out_w) = self.output_shape();
        if out.len() != batch * c_out * out_h * out_w {
            return Err(Error::BufferSize {
                what: "model output",
                expected: batch * c_out * out_h * out_w,
                found: out.len(),
            });
        }
        if timesteps.len() != batch && timesteps.len() != 1 {
            return Err(Error::BufferSize {
                what: "timesteps",
                expected: batch,
                found: timesteps.len(),
            });
        }
        if timesteps.iter().any(|t| !t.is_finite()) {
            return Err(invalid_arg("timestep", "must be finite"));
        }
        if self.config.time_fourier && timesteps.iter().any(|t| *t <= 0.0) {
            return Err(invalid_arg(
                "timestep",
                "must be positive: a fourier time embedding takes sigmas (and their log)",
            ));
        }
        // Checked here too (not only by the CPU op) so that a device walk, which cannot check
        // them on the device, gets the same typed error.
        if let Some(steps) = self.config.learned_time_embedding {
            for &t in timesteps {
                timestep_index(t, steps)?;
            }
        }
        match (self.config.num_class_embeds, class_labels) {
            (Some(_), None) => {
                return Err(invalid_arg(
                    "class labels",
                    "the model is class-conditional: give one label per sample",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid_arg(
                    "class labels",
                    "the model is not class-conditional",
                ))
            }
            (Some(_), Some(labels)) => {
                if labels.len() != batch && labels.len() != 1 {
                    return Err(Error::BufferSize {
                        what: "class labels",
                        expected: batch,
                        found: labels.len(),
                    });
                }
                for &l in labels {
                    self.check_class_label(l)?;
                }
            }
            (None, None) => {}
        }
        let e = self.config.time_embed_dim;
        match (self.config.identity_class_embedding, class_embeddings) {
            (true, None) => {
                return Err(invalid_arg(
                    "class embeddings",
                    "class_embed_type \"identity\": give a time_embed_dim vector per sample \
                     (Model::forward_with_class_embeddings)",
                ))
            }
            (false, Some(_)) => {
                return Err(invalid_arg(
                    "class embeddings",
                    "only a class_embed_type \"identity\" model takes them",
                ))
            }
            (true, Some(v)) => {
                if v.len() != batch * e && v.len() != e {
                    return Err(Error::BufferSize {
                        what: "class embeddings [batch, time_embed_dim]",
                        expected: batch * e,
                        found: v.len(),
                    });
                }
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(invalid_arg("class embeddings", "must be finite"));
                }
            }
            (false, None) => {}
        }
        self.check_context(batch, context)?;
        self.execute(batch, inputs, workspace, out, walk_mode, threads)
    }

    /// A forward pass over token ids (the text encoder's net, whose input is `ids`: its
    /// `input_shape` channels are the tokens per sample): `ops` all, or a range of them (the
    /// per-op backend tests). The caller checked `ids` (length, range) and `out`'s length.
    pub(crate) fn forward_ids(
        &self,
        threads: usize,
        workspace: &mut [f32],
        ids: &[u32],
        out: &mut [f32],
        ops: Option<core::ops::Range<usize>>,
    ) -> Result<()> {
        let tokens = self.input_shape().0;
        let batch = ids.len() / tokens.max(1);
        let walk_mode = match ops {
            None => Walk::All,
            Some(r) => {
                self.check_op_range(&r)?;
                Walk::Range(r)
            }
        };
        let inputs = Inputs {
            ids,
            ..Inputs::sample(&[], &[0.0])
        };
        self.execute(batch, inputs, workspace, out, walk_mode, threads)
    }

    /// The walk of a checked forward call, on the model's accelerator or the CPU backend.
    fn execute(
        &self,
        batch: usize,
        inputs: Inputs<'_>,
        workspace: &mut [f32],
        out: &mut [f32],
        walk_mode: Walk<'_>,
        threads: usize,
    ) -> Result<()> {
        let Inputs {
            x,
            ids,
            timesteps,
            class_labels,
            class_embeddings,
            context,
        } = inputs;
        let need = self.workspace_len_for_threads(batch, threads);
        if workspace.len() < need {
            return Err(Error::BufferSize {
                what: "workspace",
                expected: need,
                found: workspace.len(),
            });
        }
        // The arena and scratch start on a cache line (`WORKSPACE_SLACK`).
        let start = crate::memory::aligned_start(workspace);
        let workspace = &mut workspace[start..start + need - crate::memory::WORKSPACE_SLACK];
        if let Some(gpu) = &self.accelerator {
            if class_embeddings.is_some() {
                return Err(crate::model::backend::unsupported_op(
                    gpu.device_kind(),
                    "class_vector",
                ));
            }
            if self.config.cross_attention.is_some() {
                return Err(crate::model::backend::unsupported_op(
                    gpu.device_kind(),
                    "encoder_states",
                ));
            }
            return match walk_mode {
                Walk::All => gpu.forward(self, batch, x, timesteps, class_labels, out),
                Walk::Range(ops) => {
                    let arena = &mut workspace[..self.plan.arena_len(batch)];
                    gpu.forward_ops(self, ops, batch, arena, x, timesteps, class_labels, out)
                }
                Walk::Timed(..) => Err(invalid_arg(
                    "forward_profiled",
                    "per-op timing is CPU only (profile the GPU with Nsight Systems)",
                )),
            };
        }
        let (arena, scratch) = workspace.split_at_mut(self.plan.arena_len(batch));
        #[cfg(feature = "std")]
        let run_threads = self.run_threads(threads);
        #[cfg(not(feature = "std"))]
        let _ = threads; // one thread without `std`
        #[cfg(feature = "std")]
        let limited;
        #[cfg(feature = "std")]
        let par: &dyn Parallel = match &self.pool {
            Some(pool) if run_threads >= pool.size() => pool,
            Some(pool) if run_threads > 1 => {
                limited = crate::kernels::threads::Limited::new(pool, run_threads);
                &limited
            }
            _ => &Sequential,
        };
        #[cfg(not(feature = "std"))]
        let par: &dyn Parallel = &Sequential;
        let exec = Exec::with_layout(par, scratch, self.scratch_layout(batch));
        let mut cpu = CpuBackend {
            model: self,
            batch,
            arena,
            exec: &exec,
            x,
            ids,
            timesteps,
            class_labels,
            class_embeddings,
            context: context.unwrap_or(&[]),
            out,
        };
        match walk_mode {
            Walk::All => walk(&self.ops, &mut cpu),
            Walk::Range(ops) => walk_range(&self.ops, ops, &mut cpu),
            Walk::Timed(times, clock) => walk_timed(&self.ops, &mut cpu, times, clock),
        }
    }

    /// [`Model::forward`], adding each op's time as measured by `clock` (seconds, e.g. wall or
    /// CPU time) to `op_seconds[i]` (one entry per [`Model::ops`]); for profiling.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_profiled(
        &self,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
        op_seconds: &mut [f64],
        clock: &dyn Fn() -> f64,
    ) -> Result<()> {
        let inputs = Inputs {
            class_labels,
            ..Inputs::sample(x, timesteps)
        };
        self.forward_timed(workspace, inputs, out, op_seconds, clock)
    }

    /// [`Model::forward_conditional`] with per-op times, as [`Model::forward_profiled`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_conditional_profiled(
        &self,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        encoder_hidden_states: &[f32],
        out: &mut [f32],
        op_seconds: &mut [f64],
        clock: &dyn Fn() -> f64,
    ) -> Result<()> {
        let inputs = Inputs {
            context: Some(encoder_hidden_states),
            ..Inputs::sample(x, timesteps)
        };
        self.forward_timed(workspace, inputs, out, op_seconds, clock)
    }

    /// The profiled forward passes: `op_seconds` has one slot per op.
    fn forward_timed(
        &self,
        workspace: &mut [f32],
        inputs: Inputs<'_>,
        out: &mut [f32],
        op_seconds: &mut [f64],
        clock: &dyn Fn() -> f64,
    ) -> Result<()> {
        if op_seconds.len() != self.ops.len() {
            return Err(Error::BufferSize {
                what: "op_seconds (one slot per op)",
                expected: self.ops.len(),
                found: op_seconds.len(),
            });
        }
        self.forward_impl(workspace, inputs, out, Walk::Timed(op_seconds, clock), 0)
    }
}

/// The CPU backend: tensors are regions of the caller's workspace (the memory plan's
/// offsets times the batch), ops run through the model's [`crate::kernels::KernelTable`].
struct CpuBackend<'a, 'e> {
    model: &'a Model,
    batch: usize,
    arena: &'a mut [f32],
    exec: &'a Exec<'e>,
    x: &'a [f32],
    /// Token ids, `tokens` per sample (text encoder only).
    ids: &'a [u32],
    timesteps: &'a [f32],
    class_labels: Option<&'a [i64]>,
    class_embeddings: Option<&'a [f32]>,
    /// `encoder_hidden_states` (conditional UNet only).
    context: &'a [f32],
    out: &'a mut [f32],
}

impl CpuBackend<'_, '_> {
    /// Sample b's timestep (one for all is broadcast).
    fn timestep(&self, b: usize) -> f32 {
        self.timesteps[if self.timesteps.len() == 1 { 0 } else { b }]
    }

    fn region(&self, t: TensorId) -> (usize, usize) {
        self.model.plan.region(t, self.batch)
    }

    fn opt_region(&self, t: Option<TensorId>) -> (usize, usize) {
        t.map_or(EMPTY, |t| self.region(t))
    }

    /// Regions of an op's main input. A concatenation of a tensor with itself (the UNet
    /// without a mid block concatenates the bottom feature map with its own skip) is carved
    /// once; the caller reads the first half twice.
    fn input_regions(&self, i: Input) -> ([(usize, usize); 2], bool) {
        match i {
            Input::Concat(a, b) if a == b => ([self.region(a), EMPTY], true),
            _ => ([self.region(i.first()), self.opt_region(i.second())], false),
        }
    }
}

/// The GroupNorm of a [`NormConvOp`] over `batch` samples of `x`, normalising input rows
/// `rows` (with the given statistics, or computing them when `stats` is empty).
fn band_norm_args<'a>(
    op: &NormConvOp,
    x: &'a [f32],
    batch: usize,
    stats: &'a [f32],
    rows: (usize, usize),
    (gamma, beta): (&'a [half::f16], &'a [half::f16]),
) -> GroupNormArgs<'a> {
    let s = &op.shape;
    GroupNormArgs {
        batch,
        pixels: s.in_h * s.in_w,
        in_ca: s.in_ca,
        in_cb: 0,
        groups: op.groups,
        eps: op.eps,
        in_a: x,
        in_b: &[],
        gamma,
        beta,
        silu: op.silu,
        stats,
        out_pixels: (rows.0 * s.in_w, rows.1 * s.in_w),
    }
}

impl Backend for CpuBackend<'_, '_> {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn input(&mut self, _: usize, op: &InputOp) -> Result<()> {
        let (s, l) = self.region(op.out);
        let pixels = op.height * op.width;
        nchw_to_nhwc(
            self.x,
            &mut self.arena[s..s + l],
            self.batch,
            op.channels,
            pixels,
            op.center,
        );
        Ok(())
    }

    fn sinusoid(&mut self, _: usize, op: &SinusoidOp) -> Result<()> {
        let (s, l) = self.region(op.out);
        let dst = &mut self.arena[s..s + l];
        for (b, row) in dst.chunks_exact_mut(op.dim.max(1)).enumerate() {
            let t = if self.timesteps.len() == 1 {
                self.timesteps[0]
            } else {
                self.timesteps[b]
            };
            sinusoid(t, op.flip_sin_to_cos, op.freq_shift, row);
        }
        Ok(())
    }

    fn linear(&mut self, _: usize, op: &LinearOp) -> Result<()> {
        let regions = [
            self.region(op.input),
            self.opt_region(op.residual),
            self.region(op.out),
        ];
        let [input, residual, dst] = carve(self.arena, regions)?;
        let wt = |r| self.model.weights.get(r);
        let args = LinearArgs {
            rows: self.batch * op.rows,
            in_f: op.in_f,
            out_f: op.out_f,
            input,
            weight: wt(op.weight),
            bias: wt(op.bias),
            residual,
            out_scale: op.out_scale,
        };
        (self.model.kernels.linear)(&args, dst, self.exec);
        Ok(())
    }

    fn silu(&mut self, _: usize, op: &SiluOp) -> Result<()> {
        let [input, dst] = carve(self.arena, [self.region(op.input), self.region(op.out)])?;
        for (d, v) in dst.iter_mut().zip(input.iter()) {
            *d = silu(*v);
        }
        Ok(())
    }

    fn class_embedding(&mut self, _: usize, op: &ClassEmbeddingOp) -> Result<()> {
        let [input, dst] = carve(self.arena, [self.region(op.input), self.region(op.out)])?;
        // Model::forward checked the labels against the model before the walk.
        let labels = self.class_labels.unwrap_or(&[]);
        let table = self.model.weights.get(op.table);
        let e = op.dim;
        for b in 0..self.batch {
            let label = if labels.len() == 1 {
                labels[0]
            } else {
                labels[b]
            } as usize;
            let row = &table[label * e..(label + 1) * e];
            let (src, out) = (&input[b * e..(b + 1) * e], &mut dst[b * e..(b + 1) * e]);
            for ((d, s), c) in out.iter_mut().zip(src).zip(row) {
                *d = *s + c.to_f32();
            }
        }
        Ok(())
    }

    fn conv(&mut self, _: usize, op: &ConvOp) -> Result<()> {
        let ([a, b], self_concat) = self.input_regions(op.input);
        let regions = [
            a,
            b,
            self.opt_region(op.channel_add),
            self.opt_region(op.residual),
            self.region(op.out),
        ];
        let [in_a, in_b, channel_add, residual, dst] = carve(self.arena, regions)?;
        let in_b: &[f32] = if self_concat { in_a } else { in_b };
        let wt = |r| self.model.weights.get(r);
        let args = ConvArgs {
            shape: ConvShape {
                batch: self.batch,
                ..op.shape
            },
            in_a,
            in_b,
            weight: wt(op.weight),
            bias: wt(op.bias),
            channel_add,
            residual,
            out_scale: op.out_scale,
        };
        (self.model.kernels.conv2d)(&args, dst, self.exec);
        Ok(())
    }

    fn group_norm(&mut self, _: usize, op: &GroupNormOp) -> Result<()> {
        let ([a, b], self_concat) = self.input_regions(op.input);
        let [in_a, in_b, dst] = carve(self.arena, [a, b, self.region(op.out)])?;
        let in_b: &[f32] = if self_concat { in_a } else { in_b };
        let wt = |r| self.model.weights.get(r);
        let args = GroupNormArgs {
            batch: self.batch,
            pixels: op.pixels,
            in_ca: op.in_ca,
            in_cb: op.in_cb,
            groups: op.groups,
            eps: op.eps,
            in_a,
            in_b,
            gamma: wt(op.gamma),
            beta: wt(op.beta),
            silu: op.silu,
            stats: &[],
            out_pixels: (0, op.pixels),
        };
        (self.model.kernels.group_norm)(&args, dst, self.exec);
        Ok(())
    }

    fn norm_conv(&mut self, _: usize, op: &NormConvOp) -> Result<()> {
        let s = &op.shape;
        let (in_c, out_c, res_c) = (s.in_ca, s.out_c, op.residual_c);
        let in_place = op.residual == Some(op.out);
        if in_place && res_c < out_c {
            // A band would overwrite residual rows a later band still reads.
            return Err(invalid_arg(
                "norm_conv",
                alloc::format!("{out_c} output channels over a {res_c}-channel residual"),
            ));
        }
        let residual_region = if in_place {
            EMPTY
        } else {
            self.opt_region(op.residual)
        };
        let regions = [
            self.region(op.input),
            residual_region,
            self.region(op.scratch),
            self.region(op.out),
        ];
        let [input, residual, scratch, dst] = carve(self.arena, regions)?;
        let (kernels, exec, batch) = (self.model.kernels, self.exec, self.batch);
        let wt = |r| self.model.weights.get(r);
        let (in_px, out_px) = (s.in_h * s.in_w, s.out_h * s.out_w);
        let (gamma, beta) = (wt(op.gamma), wt(op.beta));
        let norm_args = |x, b, stats, rows: (usize, usize)| {
            band_norm_args(op, x, b, stats, rows, (gamma, beta))
        };
        // Statistics over the whole input first (GroupNorm's), then the bands.
        let (stats, rest) = scratch.split_at_mut(batch * op.groups * 2);
        group_norm_stats(&norm_args(input, batch, &[], (0, s.in_h)), stats);
        let band = op.band_rows.min(s.out_h).max(1);
        let norm_max = (band + 2 * op.halo()) * s.in_w * in_c;
        let (norm, rest) = rest.split_at_mut(norm_max);
        let (conv_out, shortcut_out) = rest.split_at_mut(band * s.out_w * out_c);
        for b in 0..batch {
            let x = &input[b * in_px * in_c..(b + 1) * in_px * in_c];
            let stats_b = &stats[b * op.groups * 2..(b + 1) * op.groups * 2];
            let mut r0 = 0;
            while r0 < s.out_h {
                let r1 = (r0 + band).min(s.out_h);
                let (shape, lo, hi) = op.band_shape(r0, r1);
                let normed = &mut norm[..(hi - lo) * s.in_w * in_c];
                (kernels.group_norm)(&norm_args(x, 1, stats_b, (lo, hi)), normed, exec);
                let band_px = (r1 - r0) * s.out_w;
                let at = b * out_px + r0 * s.out_w;
                let conv_band = &mut conv_out[..band_px * out_c];
                {
                    // The band's residual rows: the output tensor itself when in place.
                    let res_rows: &[f32] = match op.residual {
                        None => &[],
                        Some(_) => {
                            let src: &[f32] = if in_place { dst } else { residual };
                            &src[at * res_c..(at + band_px) * res_c]
                        }
                    };
                    let res_band: &[f32] = match op.shortcut {
                        Some((w, bias)) => {
                            let sc = &mut shortcut_out[..band_px * out_c];
                            let args = ConvArgs {
                                shape: op.shortcut_shape(r1 - r0),
                                in_a: res_rows,
                                in_b: &[],
                                weight: wt(w),
                                bias: wt(bias),
                                channel_add: &[],
                                residual: &[],
                                out_scale: 1.0,
                            };
                            (kernels.conv2d)(&args, sc, exec);
                            sc
                        }
                        None => res_rows,
                    };
                    let args = ConvArgs {
                        shape,
                        in_a: normed,
                        in_b: &[],
                        weight: wt(op.weight),
                        bias: wt(op.bias),
                        channel_add: &[],
                        residual: res_band,
                        out_scale: 1.0,
                    };
                    (kernels.conv2d)(&args, conv_band, exec);
                }
                // Every residual row this band covers has been read (see `NormConvOp`).
                dst[at * out_c..(at + band_px) * out_c].copy_from_slice(conv_band);
                r0 = r1;
            }
        }
        Ok(())
    }

    fn attention(&mut self, _: usize, op: &AttentionOp) -> Result<()> {
        let regions = [
            self.region(op.q),
            self.region(op.k),
            self.region(op.v),
            self.region(op.scratch),
            self.region(op.out),
        ];
        let [q, k, v, scratch, dst] = carve(self.arena, regions)?;
        let args = AttentionArgs {
            batch: self.batch,
            tokens: op.tokens,
            kv_tokens: op.kv_tokens,
            channels: op.channels,
            heads: op.heads,
            causal: op.causal,
            q,
            k,
            v,
        };
        (self.model.kernels.attention)(&args, scratch, dst, self.exec);
        Ok(())
    }

    fn output(&mut self, _: usize, op: &OutputOp) -> Result<()> {
        let (s, l) = self.region(op.input);
        let pixels = op.height * op.width;
        nhwc_to_nchw(
            &self.arena[s..s + l],
            self.out,
            self.batch,
            op.channels,
            pixels,
        );
        Ok(())
    }

    fn scale_shift(&mut self, _: usize, op: &ScaleShiftOp) -> Result<()> {
        let regions = [
            self.region(op.input),
            self.region(op.scale_shift),
            self.region(op.out),
        ];
        let [input, scale_shift, dst] = carve(self.arena, regions)?;
        scalar::scale_shift(
            input,
            scale_shift,
            self.batch,
            op.pixels,
            op.channels,
            op.silu,
            dst,
        );
        Ok(())
    }

    fn resample(&mut self, _: usize, op: &ResampleOp) -> Result<()> {
        let [input, dst] = carve(self.arena, [self.region(op.input), self.region(op.out)])?;
        let kernel = match op.mode {
            ResampleMode::AvgPool2 => scalar::avg_pool2,
            ResampleMode::Nearest2 => scalar::nearest2,
        };
        kernel(input, self.batch, op.in_h, op.in_w, op.channels, dst);
        Ok(())
    }

    fn activation(&mut self, _: usize, op: &ActivationOp) -> Result<()> {
        let [input, dst] = carve(self.arena, [self.region(op.input), self.region(op.out)])?;
        activation(op.act, input, dst);
        Ok(())
    }

    fn class_sinusoid(&mut self, _: usize, op: &SinusoidOp) -> Result<()> {
        self.class_sinusoid_impl(op)
    }

    fn timestep_table(&mut self, _: usize, op: &TimestepTableOp) -> Result<()> {
        let (s, l) = self.region(op.out);
        let dst = &mut self.arena[s..s + l];
        let table = self.model.weights.get(op.table);
        for (b, row) in dst.chunks_exact_mut(op.dim).enumerate() {
            let t = self.timesteps[if self.timesteps.len() == 1 { 0 } else { b }];
            let index = timestep_index(t, op.steps)?;
            for (o, w) in row
                .iter_mut()
                .zip(&table[index * op.dim..(index + 1) * op.dim])
            {
                *o = w.to_f32();
            }
        }
        Ok(())
    }

    fn fourier_embedding(&mut self, _: usize, op: &FourierEmbeddingOp) -> Result<()> {
        let (s, l) = self.region(op.out);
        let weight = self.model.weights.get(op.weight);
        for b in 0..self.batch {
            let t = self.timestep(b);
            let row = &mut self.arena[s + b * 2 * op.dim..s + (b + 1) * 2 * op.dim];
            let w = weight.iter().map(|w| w.to_f32());
            fourier_embedding(t, w, op.log, op.flip_sin_to_cos, row);
        }
        debug_assert_eq!(l, self.batch * 2 * op.dim);
        Ok(())
    }

    fn fir_resample(&mut self, _: usize, op: &FirResampleOp) -> Result<()> {
        let [input, dst] = carve(self.arena, [self.region(op.input), self.region(op.out)])?;
        let args = FirArgs {
            batch: self.batch,
            channels: op.channels,
            in_h: op.in_h,
            in_w: op.in_w,
            up: op.up,
            input,
        };
        fir_resample(&args, dst);
        Ok(())
    }

    fn class_vector(&mut self, _: usize, op: &ClassVectorOp) -> Result<()> {
        let [input, dst] = carve(self.arena, [self.region(op.input), self.region(op.out)])?;
        // Model::forward checked their length: one row per sample, or one for all.
        let vectors = self.class_embeddings.unwrap_or(&[]);
        let e = op.dim;
        for b in 0..self.batch {
            let row = if vectors.len() == e { 0 } else { b };
            let v = &vectors[row * e..(row + 1) * e];
            let range = b * e..(b + 1) * e;
            for ((d, x), c) in dst[range.clone()].iter_mut().zip(&input[range]).zip(v) {
                *d = x + c;
            }
        }
        Ok(())
    }

    fn timestep_divide(&mut self, _: usize, op: &TimestepDivideOp) -> Result<()> {
        let regions = [self.region(op.input), self.region(op.out)];
        let timesteps = self.timesteps;
        let [input, dst] = carve(self.arena, regions)?;
        for b in 0..self.batch {
            let t = timesteps[if timesteps.len() == 1 { 0 } else { b }];
            let range = b * op.len..(b + 1) * op.len;
            for (d, v) in dst[range.clone()].iter_mut().zip(&input[range]) {
                *d = v / t;
            }
        }
        Ok(())
    }

    fn elementwise(&mut self, _: usize, op: &ElementwiseOp) -> Result<()> {
        let [input, dst] = carve(self.arena, [self.region(op.input), self.region(op.out)])?;
        for (d, v) in dst.iter_mut().zip(input.iter()) {
            *d = op.kind.apply(*v);
        }
        Ok(())
    }

    fn layer_norm(&mut self, _: usize, op: &LayerNormOp) -> Result<()> {
        let [input, dst] = carve(self.arena, [self.region(op.input), self.region(op.out)])?;
        let (gamma, beta) = (
            self.model.weights.get(op.gamma),
            self.model.weights.get(op.beta),
        );
        let (dim, eps) = (op.dim, op.eps);
        let layer_norm = self.model.kernels.layer_norm;
        // Rows are independent: 64 per task over the team.
        self.exec
            .for_each_chunk(dst, ROWS_PER_TASK * dim, &|i, out| {
                let x = &input[i * ROWS_PER_TASK * dim..][..out.len()];
                layer_norm(x, dim, eps, gamma, beta, out)
            });
        Ok(())
    }

    fn geglu(&mut self, _: usize, op: &GegluOp) -> Result<()> {
        let [input, dst] = carve(self.arena, [self.region(op.input), self.region(op.out)])?;
        let (dim, geglu) = (op.dim, self.model.kernels.geglu);
        self.exec
            .for_each_chunk(dst, ROWS_PER_TASK * dim, &|i, out| {
                let x = &input[i * ROWS_PER_TASK * 2 * dim..][..2 * out.len()];
                geglu(x, dim, out)
            });
        Ok(())
    }

    fn encoder_states(&mut self, _: usize, op: &EncoderStatesOp) -> Result<()> {
        let (s, l) = self.region(op.out);
        // Model::forward_conditional checked the length: batch * tokens * dim.
        let src = self.context.get(..l).ok_or(Error::BufferSize {
            what: "encoder_hidden_states [batch, tokens, cross_attention_dim]",
            expected: l,
            found: self.context.len(),
        })?;
        self.arena[s..s + l].copy_from_slice(src);
        Ok(())
    }

    fn token_embedding(&mut self, _: usize, op: &TokenEmbeddingOp) -> Result<()> {
        let (s, l) = self.region(op.out);
        let dst = &mut self.arena[s..s + l];
        token_embedding(
            self.model.weights.get(op.table),
            self.model.weights.get(op.positions),
            op.vocab,
            op.tokens,
            op.dim,
            self.ids,
            dst,
        )
    }
}

/// diffusers' `GaussianFourierProjection` of one timestep: `row[i] = sin(2 pi W[i] log t)`,
/// `row[dim + i] = cos(...)` (swapped when `flip_sin_to_cos`; `t` itself when not `log`). In
/// f64: the argument reaches the hundreds of radians, where f32 would lose about 1e-5. The
/// trainer uses it too.
pub fn fourier_embedding(
    t: f32,
    weight: impl ExactSizeIterator<Item = f32>,
    log: bool,
    flip_sin_to_cos: bool,
    row: &mut [f32],
) {
    let dim = weight.len();
    let x = if log { libm::log(t as f64) } else { t as f64 };
    for (i, w) in weight.enumerate() {
        let arg = x * w as f64 * 2.0 * core::f64::consts::PI;
        let (sin, cos) = (libm::sin(arg) as f32, libm::cos(arg) as f32);
        let (first, second) = if flip_sin_to_cos {
            (cos, sin)
        } else {
            (sin, cos)
        };
        row[i] = first;
        row[dim + i] = second;
    }
}

impl CpuBackend<'_, '_> {
    fn class_sinusoid_impl(&mut self, op: &SinusoidOp) -> Result<()> {
        let (s, l) = self.region(op.out);
        let dst = &mut self.arena[s..s + l];
        // Model::forward checked the labels against the model before the walk.
        let labels = self.class_labels.unwrap_or(&[]);
        for (b, row) in dst.chunks_exact_mut(op.dim.max(1)).enumerate() {
            let label = labels[if labels.len() == 1 { 0 } else { b }];
            sinusoid(label as f32, op.flip_sin_to_cos, op.freq_shift, row);
        }
        Ok(())
    }
}

/// `out[r] = table[ids[r]] + positions[r % tokens]` for every id (`tokens` per sample): the
/// text encoder's token plus position embedding. An id outside `0..vocab` is a typed error
/// naming it.
pub fn token_embedding(
    table: &[half::f16],
    positions: &[half::f16],
    vocab: usize,
    tokens: usize,
    dim: usize,
    ids: &[u32],
    out: &mut [f32],
) -> Result<()> {
    let rows = out.len() / dim.max(1);
    if ids.len() != rows {
        return Err(Error::BufferSize {
            what: "token ids",
            expected: rows,
            found: ids.len(),
        });
    }
    for (r, (row, &id)) in out.chunks_exact_mut(dim).zip(ids).enumerate() {
        let id = id as usize;
        if id >= vocab {
            return Err(token_id_error(r, id, vocab));
        }
        let pos = r % tokens.max(1);
        let e = &table[id * dim..(id + 1) * dim];
        let p = &positions[pos * dim..(pos + 1) * dim];
        for ((o, a), b) in row.iter_mut().zip(e).zip(p) {
            *o = a.to_f32() + b.to_f32();
        }
    }
    Ok(())
}

/// The error for token id `id` at flat index `at` of the ids, outside `0..vocab`.
pub fn token_id_error(at: usize, id: usize, vocab: usize) -> Error {
    Error::InvalidArgument {
        what: "token id",
        message: alloc::format!("{id} (at index {at}) is out of range 0..{vocab} (vocab_size)"),
    }
}

/// `out = act(x)` elementwise (the [`ActivationOp`]; the trainer's forward uses it too).
pub fn activation(act: Activation, x: &[f32], out: &mut [f32]) {
    let f: fn(f32) -> f32 = match act {
        Activation::Silu => silu,
        Activation::Mish => scalar::mish,
        Activation::Gelu => scalar::gelu,
        Activation::Relu => |v| v.max(0.0),
        Activation::QuickGelu => scalar::quick_gelu,
    };
    for (o, v) in out.iter_mut().zip(x) {
        *o = f(*v);
    }
}

/// The row of a learned time embedding table for timestep `t`: torch's `nn.Embedding` takes
/// only integer indices in range, so a fractional (continuous-time sampler) or out-of-range
/// timestep is an error naming it.
pub fn timestep_index(t: f32, steps: usize) -> Result<usize> {
    if libm::truncf(t) != t || t < 0.0 || t >= steps as f32 {
        return Err(Error::InvalidArgument {
            what: "timestep",
            message: alloc::format!(
                "{t}: a learned time embedding (time_embedding_type \"learned\") takes integer \
                 timesteps in 0..{steps}"
            ),
        });
    }
    Ok(t as usize)
}

/// diffusers' `get_timestep_embedding` for one timestep, in f32 as diffusers computes it (it
/// matters at t ~ 1000): `row[i] = sin(t * exp(-ln(10000) * i / (half - shift)))`,
/// `row[half + i] = cos(...)` (swapped when `flip_sin_to_cos`); an odd width leaves the last
/// entry zero, as diffusers pads. The trainer uses it too.
pub fn sinusoid(t: f32, flip_sin_to_cos: bool, freq_shift: f32, row: &mut [f32]) {
    let half = row.len() / 2;
    let ln_max_period = -libm::logf(10000.0);
    row.fill(0.0);
    for i in 0..half {
        let exponent = ln_max_period * i as f32 / (half as f32 - freq_shift);
        let arg = t * libm::expf(exponent);
        let (sin, cos) = (libm::sin(arg as f64) as f32, libm::cos(arg as f64) as f32);
        let (first, second) = if flip_sin_to_cos {
            (cos, sin)
        } else {
            (sin, cos)
        };
        row[i] = first;
        row[half + i] = second;
    }
}
