//! The forward walk: one pass over the op list, every tensor at its planned place in the
//! caller's workspace, no allocation.

use super::{Input, Model, Op, TensorId, TimeEmbeddingOp};
use crate::error::{invalid_arg, Error, Result};
use crate::kernels::{
    silu, AttentionArgs, ConvArgs, Exec, GroupNormArgs, LinearArgs, Parallel, Sequential,
};
use crate::memory::carve;

const EMPTY: (usize, usize) = (0, 0);

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
        self.forward_impl(workspace, x, timesteps, class_labels, out, None)
    }

    fn forward_impl(
        &self,
        workspace: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
        op_seconds: Option<(&mut [f64], &dyn Fn() -> f64)>,
    ) -> Result<()> {
        let (c_in, h, w) = self.input_shape();
        let per_sample = c_in * h * w;
        if x.is_empty() || x.len() % per_sample != 0 {
            return Err(Error::BufferSize {
                what: "model input x",
                expected: per_sample,
                found: x.len(),
            });
        }
        let batch = x.len() / per_sample;
        let (c_out, _, _) = self.output_shape();
        if out.len() != batch * c_out * h * w {
            return Err(Error::BufferSize {
                what: "model output",
                expected: batch * c_out * h * w,
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
        let need = self.workspace_len(batch);
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.cuda {
            if op_seconds.is_some() {
                return Err(invalid_arg(
                    "forward_profiled",
                    "per-op timing is CPU only (profile the GPU with Nsight Systems)",
                ));
            }
            if workspace.len() < need {
                return Err(Error::BufferSize {
                    what: "workspace",
                    expected: need,
                    found: workspace.len(),
                });
            }
            return gpu.forward(self, batch, x, timesteps, class_labels, out);
        }
        if workspace.len() < need {
            return Err(Error::BufferSize {
                what: "workspace",
                expected: need,
                found: workspace.len(),
            });
        }
        let (ws, scratch) = workspace[..need].split_at_mut(self.plan.arena_len(batch));
        #[cfg(feature = "std")]
        let par: &dyn Parallel = match &self.pool {
            Some(pool) => pool,
            None => &Sequential,
        };
        #[cfg(not(feature = "std"))]
        let par: &dyn Parallel = &Sequential;
        let exec = Exec::with_layout(par, scratch, self.scratch_layout(batch));
        match op_seconds {
            None => {
                for op in &self.ops {
                    self.run_op(op, batch, ws, x, timesteps, class_labels, out, &exec)?;
                }
            }
            Some((times, clock)) => {
                for (op, t) in self.ops.iter().zip(times.iter_mut()) {
                    let t0 = clock();
                    self.run_op(op, batch, ws, x, timesteps, class_labels, out, &exec)?;
                    *t += clock() - t0;
                }
            }
        }
        Ok(())
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
        assert_eq!(op_seconds.len(), self.ops.len(), "one time slot per op");
        self.forward_impl(
            workspace,
            x,
            timesteps,
            class_labels,
            out,
            Some((op_seconds, clock)),
        )
    }

    fn region(&self, t: TensorId, batch: usize) -> (usize, usize) {
        self.plan.region(t, batch)
    }

    fn opt_region(&self, t: Option<TensorId>, batch: usize) -> (usize, usize) {
        t.map_or(EMPTY, |t| self.region(t, batch))
    }

    /// Regions of an op's main input. A concatenation of a tensor with itself (the UNet
    /// without a mid block concatenates the bottom feature map with its own skip) is carved
    /// once; the caller reads the first half twice.
    fn input_regions(&self, i: Input, batch: usize) -> ([(usize, usize); 2], bool) {
        match i {
            Input::Concat(a, b) if a == b => ([self.region(a, batch), EMPTY], true),
            _ => (
                [
                    self.region(i.first(), batch),
                    self.opt_region(i.second(), batch),
                ],
                false,
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_op(
        &self,
        op: &Op,
        batch: usize,
        ws: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
        exec: &Exec<'_>,
    ) -> Result<()> {
        let k = self.kernels;
        let wt = |r| self.weights.get(r);
        match op {
            Op::InputToNhwc {
                channels,
                height,
                width,
                center,
                out: t,
            } => {
                let (s, l) = self.region(*t, batch);
                let dst = &mut ws[s..s + l];
                let (c, hw) = (*channels, height * width);
                for b in 0..batch {
                    for ch in 0..c {
                        let src = &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                        for (p, v) in src.iter().enumerate() {
                            dst[(b * hw + p) * c + ch] = if *center { 2.0 * v - 1.0 } else { *v };
                        }
                    }
                }
            }
            Op::TimeEmbedding(te) => {
                self.time_embedding(te, batch, ws, timesteps, class_labels, exec)?
            }
            Op::Linear(l) => {
                let [input, residual, dst] = carve(
                    ws,
                    [
                        self.region(l.input, batch),
                        self.opt_region(l.residual, batch),
                        self.region(l.out, batch),
                    ],
                )?;
                let args = LinearArgs {
                    rows: batch * l.rows,
                    in_f: l.in_f,
                    out_f: l.out_f,
                    input,
                    weight: wt(l.weight),
                    bias: wt(l.bias),
                    residual,
                    out_scale: l.out_scale,
                };
                (k.linear)(&args, dst, exec);
            }
            Op::Conv(c) => {
                let ([a, b], self_concat) = self.input_regions(c.input, batch);
                let [in_a, in_b, channel_add, residual, dst] = carve(
                    ws,
                    [
                        a,
                        b,
                        self.opt_region(c.channel_add, batch),
                        self.opt_region(c.residual, batch),
                        self.region(c.out, batch),
                    ],
                )?;
                let in_b: &[f32] = if self_concat { in_a } else { in_b };
                let args = ConvArgs {
                    shape: crate::kernels::ConvShape { batch, ..c.shape },
                    in_a,
                    in_b,
                    weight: wt(c.weight),
                    bias: wt(c.bias),
                    channel_add,
                    residual,
                    out_scale: c.out_scale,
                };
                (k.conv2d)(&args, dst, exec);
            }
            Op::GroupNorm(g) => {
                let ([a, b], self_concat) = self.input_regions(g.input, batch);
                let [in_a, in_b, dst] = carve(ws, [a, b, self.region(g.out, batch)])?;
                let in_b: &[f32] = if self_concat { in_a } else { in_b };
                let args = GroupNormArgs {
                    batch,
                    pixels: g.pixels,
                    in_ca: g.in_ca,
                    in_cb: g.in_cb,
                    groups: g.groups,
                    eps: g.eps,
                    in_a,
                    in_b,
                    gamma: wt(g.gamma),
                    beta: wt(g.beta),
                    silu: g.silu,
                };
                (k.group_norm)(&args, dst, exec);
            }
            Op::Attention(a) => {
                let [input, scratch, dst] = carve(
                    ws,
                    [
                        self.region(a.input, batch),
                        self.region(a.scratch, batch),
                        self.region(a.out, batch),
                    ],
                )?;
                let n = batch * a.tokens * a.channels;
                let (normed, rest) = scratch.split_at_mut(n);
                let (q, rest) = rest.split_at_mut(n);
                let (kk, rest) = rest.split_at_mut(n);
                let (v, rest) = rest.split_at_mut(n);
                let (attended, scores) = rest.split_at_mut(n);
                let norm = GroupNormArgs {
                    batch,
                    pixels: a.tokens,
                    in_ca: a.channels,
                    in_cb: 0,
                    groups: a.groups,
                    eps: a.eps,
                    in_a: input,
                    in_b: &[],
                    gamma: wt(a.norm.0),
                    beta: wt(a.norm.1),
                    silu: false,
                };
                (k.group_norm)(&norm, normed, exec);
                let project = |(w, b): (crate::weights::WeightRef, crate::weights::WeightRef),
                               src: &[f32],
                               residual: &[f32],
                               scale: f32,
                               dst: &mut [f32]| {
                    let args = LinearArgs {
                        rows: batch * a.tokens,
                        in_f: a.channels,
                        out_f: a.channels,
                        input: src,
                        weight: wt(w),
                        bias: wt(b),
                        residual,
                        out_scale: scale,
                    };
                    (k.linear)(&args, dst, exec);
                };
                project(a.q, normed, &[], 1.0, q);
                project(a.k, normed, &[], 1.0, kk);
                project(a.v, normed, &[], 1.0, v);
                let args = AttentionArgs {
                    batch,
                    tokens: a.tokens,
                    channels: a.channels,
                    heads: a.heads,
                    q,
                    k: kk,
                    v,
                };
                // `normed` is dead once projected: it is the kernel's scratch (K^T, or score rows).
                let _ = scores;
                (k.attention)(&args, normed, attended, exec);
                project(a.o, attended, input, a.rescale, dst);
            }
            Op::OutputToNchw {
                input,
                channels,
                height,
                width,
            } => {
                let (s, l) = self.region(*input, batch);
                let src = &ws[s..s + l];
                let (c, hw) = (*channels, height * width);
                for b in 0..batch {
                    for ch in 0..c {
                        let dst = &mut out[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                        for (p, o) in dst.iter_mut().enumerate() {
                            *o = src[(b * hw + p) * c + ch];
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Sinusoidal embedding as diffusers' `get_timestep_embedding` computes it (in f32, which
    /// matters at t ~ 1000), then the two linears, the class embedding and the resnets' SiLU.
    fn time_embedding(
        &self,
        te: &TimeEmbeddingOp,
        batch: usize,
        ws: &mut [f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        exec: &Exec<'_>,
    ) -> Result<()> {
        let k = self.kernels;
        let wt = |r| self.weights.get(r);
        let [scratch, dst] = carve(
            ws,
            [self.region(te.scratch, batch), self.region(te.out, batch)],
        )?;
        let (c0, e) = (te.sinusoid_dim, te.embed_dim);
        let (sinusoid, rest) = scratch.split_at_mut(batch * c0);
        let hidden = &mut rest[..batch * e];
        let half = c0 / 2;
        let ln_max_period = -libm::logf(10000.0);
        for b in 0..batch {
            let t = if timesteps.len() == 1 {
                timesteps[0]
            } else {
                timesteps[b]
            };
            let row = &mut sinusoid[b * c0..(b + 1) * c0];
            row.fill(0.0); // an odd width leaves the last entry zero, as diffusers pads
            for i in 0..half {
                let exponent = ln_max_period * i as f32 / (half as f32 - te.freq_shift);
                let arg = t * libm::expf(exponent);
                let (sin, cos) = (libm::sin(arg as f64) as f32, libm::cos(arg as f64) as f32);
                let (first, second) = if te.flip_sin_to_cos {
                    (cos, sin)
                } else {
                    (sin, cos)
                };
                row[i] = first;
                row[half + i] = second;
            }
        }
        let linear = |(w, bias), input: &[f32], in_f: usize, dst: &mut [f32]| {
            let args = LinearArgs {
                rows: batch,
                in_f,
                out_f: e,
                input,
                weight: wt(w),
                bias: wt(bias),
                residual: &[],
                out_scale: 1.0,
            };
            (k.linear)(&args, dst, exec);
        };
        linear(te.linear_1, sinusoid, c0, hidden);
        for v in hidden.iter_mut() {
            *v = silu(*v);
        }
        linear(te.linear_2, hidden, e, dst);
        if let (Some((table, _)), Some(labels)) = (te.class_embedding, class_labels) {
            let table = wt(table);
            for b in 0..batch {
                let label = if labels.len() == 1 {
                    labels[0]
                } else {
                    labels[b]
                } as usize;
                let row = &table[label * e..(label + 1) * e];
                for (d, c) in dst[b * e..(b + 1) * e].iter_mut().zip(row) {
                    *d += c.to_f32();
                }
            }
        }
        for v in dst.iter_mut() {
            *v = silu(*v);
        }
        Ok(())
    }
}
