//! The backend seam: one method per primitive op, and the one walk of the op list that drives
//! any backend.
//!
//! A backend owns its memory (the CPU backend: slices of the caller's workspace; the CUDA
//! backend: device pointers into its arena) and turns an op's [`TensorId`]s into it. The walk
//! knows nothing of memory: it hands each op, with its index in the list, to the method of
//! its kind. The CPU inference path ([`super::forward`]), the CUDA backend (`crate::cuda`) and
//! the trainer's forward pass (`crate::train::graph`) all implement [`Backend`] and run
//! through [`walk`]; the trainer's backward is the same list walked in reverse.
//!
//! Adding an op: a variant in [`super::ops`], a method here, a kernel in every backend (or
//! the default [`unsupported_op`] error, typed and naming the backend), a backward in the
//! trainer, and a case in `tests/backend_ops.rs`.

use super::ops::{ActivationOp, ResampleOp, ScaleShiftOp, TimestepTableOp};
use super::ops::{
    AttentionOp, ClassEmbeddingOp, ConvOp, ElementwiseOp, GroupNormOp, InputOp, LinearOp, Op,
    OutputOp, SiluOp, SinusoidOp,
};
use super::ops::{ClassVectorOp, FirResampleOp, FourierEmbeddingOp, TimestepDivideOp};
use super::ops::{EncoderStatesOp, GegluOp, LayerNormOp, NormConvOp, TokenEmbeddingOp};
use super::Model;
use crate::error::{Error, Result};
use crate::schedule::{SampleOptions, Scheduler, StepInfo};

/// The error a backend returns for an op it has no kernel for.
pub fn unsupported_op(backend: &'static str, op: &'static str) -> Error {
    Error::UnsupportedConfig {
        key: alloc::format!("op {op}"),
        value: alloc::format!("not implemented on the {backend} backend"),
    }
}

/// One method per primitive op. `at` is the op's index in the list (backends key per-op state
/// on it: the CUDA backend's uploaded weights, the trainer's saved values).
pub trait Backend {
    /// Name for error messages (`cpu`, `cuda`, `train`).
    fn name(&self) -> &'static str;

    fn input(&mut self, at: usize, op: &InputOp) -> Result<()>;
    fn sinusoid(&mut self, at: usize, op: &SinusoidOp) -> Result<()>;
    fn linear(&mut self, at: usize, op: &LinearOp) -> Result<()>;
    fn silu(&mut self, at: usize, op: &SiluOp) -> Result<()>;
    fn class_embedding(&mut self, at: usize, op: &ClassEmbeddingOp) -> Result<()>;
    fn conv(&mut self, at: usize, op: &ConvOp) -> Result<()>;
    fn group_norm(&mut self, at: usize, op: &GroupNormOp) -> Result<()>;
    fn attention(&mut self, at: usize, op: &AttentionOp) -> Result<()>;
    fn output(&mut self, at: usize, op: &OutputOp) -> Result<()>;
    fn scale_shift(&mut self, at: usize, op: &ScaleShiftOp) -> Result<()>;
    fn resample(&mut self, at: usize, op: &ResampleOp) -> Result<()>;
    fn activation(&mut self, at: usize, op: &ActivationOp) -> Result<()>;
    fn timestep_table(&mut self, at: usize, op: &TimestepTableOp) -> Result<()>;
    /// The sinusoid of the class labels (`class_embed_type: "timestep"`).
    fn class_sinusoid(&mut self, at: usize, op: &SinusoidOp) -> Result<()>;
    fn fourier_embedding(&mut self, at: usize, op: &FourierEmbeddingOp) -> Result<()>;
    fn fir_resample(&mut self, at: usize, op: &FirResampleOp) -> Result<()>;
    fn timestep_divide(&mut self, at: usize, op: &TimestepDivideOp) -> Result<()>;
    /// The caller's class embeddings added (`class_embed_type: "identity"`).
    fn class_vector(&mut self, at: usize, op: &ClassVectorOp) -> Result<()>;
    /// Only the decoders emit it (`AutoencoderTiny`); a backend without it refuses it typed.
    fn elementwise(&mut self, _at: usize, _op: &ElementwiseOp) -> Result<()> {
        Err(unsupported_op(self.name(), "elementwise"))
    }
    /// Only the text encoder emits it; a backend without it refuses it typed.
    fn layer_norm(&mut self, _at: usize, _op: &LayerNormOp) -> Result<()> {
        Err(unsupported_op(self.name(), "layer_norm"))
    }
    /// Only the text encoder emits it; a backend without it refuses it typed.
    fn token_embedding(&mut self, _at: usize, _op: &TokenEmbeddingOp) -> Result<()> {
        Err(unsupported_op(self.name(), "token_embedding"))
    }
    /// For the conditional UNet's feed-forward; a backend without it refuses it typed.
    fn geglu(&mut self, _at: usize, _op: &GegluOp) -> Result<()> {
        Err(unsupported_op(self.name(), "geglu"))
    }
    fn encoder_states(&mut self, _at: usize, _op: &EncoderStatesOp) -> Result<()> {
        Err(unsupported_op(self.name(), "encoder_states"))
    }
    /// Only the VAE decoders emit it (they run on the CPU); a backend without it refuses it
    /// typed.
    fn norm_conv(&mut self, _at: usize, _op: &NormConvOp) -> Result<()> {
        Err(unsupported_op(self.name(), "norm_conv"))
    }
}

/// Runs op `at` of a list on `backend`.
#[inline]
pub fn run_op<B: Backend + ?Sized>(backend: &mut B, at: usize, op: &Op) -> Result<()> {
    match op {
        Op::Input(o) => backend.input(at, o),
        Op::Sinusoid(o) => backend.sinusoid(at, o),
        Op::Linear(o) => backend.linear(at, o),
        Op::Silu(o) => backend.silu(at, o),
        Op::ClassEmbedding(o) => backend.class_embedding(at, o),
        Op::Conv(o) => backend.conv(at, o),
        Op::GroupNorm(o) => backend.group_norm(at, o),
        Op::Attention(o) => backend.attention(at, o),
        Op::Output(o) => backend.output(at, o),
        Op::ScaleShift(o) => backend.scale_shift(at, o),
        Op::Resample(o) => backend.resample(at, o),
        Op::Activation(o) => backend.activation(at, o),
        Op::TimestepTable(o) => backend.timestep_table(at, o),
        Op::ClassSinusoid(o) => backend.class_sinusoid(at, o),
        Op::FourierEmbedding(o) => backend.fourier_embedding(at, o),
        Op::FirResample(o) => backend.fir_resample(at, o),
        Op::TimestepDivide(o) => backend.timestep_divide(at, o),
        Op::Elementwise(o) => backend.elementwise(at, o),
        Op::ClassVector(o) => backend.class_vector(at, o),
        Op::LayerNorm(o) => backend.layer_norm(at, o),
        Op::TokenEmbedding(o) => backend.token_embedding(at, o),
        Op::Geglu(o) => backend.geglu(at, o),
        Op::EncoderStates(o) => backend.encoder_states(at, o),
        Op::NormConv(o) => backend.norm_conv(at, o),
    }
}

/// The forward walk: every op of `ops` in order, on `backend`.
pub fn walk<B: Backend + ?Sized>(ops: &[Op], backend: &mut B) -> Result<()> {
    walk_range(ops, 0..ops.len(), backend)
}

/// Ops `range` of `ops` in order (indices stay those of the whole list); the caller checked
/// the range.
pub fn walk_range<B: Backend + ?Sized>(
    ops: &[Op],
    range: core::ops::Range<usize>,
    backend: &mut B,
) -> Result<()> {
    for at in range {
        run_op(backend, at, &ops[at])?;
    }
    Ok(())
}

/// [`walk`], adding each op's time as measured by `clock` (seconds) to `op_seconds[at]`.
pub fn walk_timed<B: Backend + ?Sized>(
    ops: &[Op],
    backend: &mut B,
    op_seconds: &mut [f64],
    clock: &dyn Fn() -> f64,
) -> Result<()> {
    for ((at, op), t) in ops.iter().enumerate().zip(op_seconds.iter_mut()) {
        let t0 = clock();
        run_op(backend, at, op)?;
        *t += clock() - t0;
    }
    Ok(())
}

/// A device that runs whole forward passes (and whole sampling loops) itself instead of the
/// CPU walk: the CUDA backend (`crate::cuda`) implements it. A [`Model`] holds one behind
/// this trait, so the model names no device module; `crate::device` attaches one
/// (`Model::to_device`).
pub trait Accelerator: Send + Sync {
    /// Device family (`cuda`) and ordinal.
    fn device_kind(&self) -> &'static str;
    fn ordinal(&self) -> usize;

    /// [`Model::forward`] on the device (arguments already checked by the model).
    fn forward(
        &self,
        model: &Model,
        batch: usize,
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
    ) -> Result<()>;

    /// [`Model::forward_ops`] on the device: `arena` is the activation part of the host
    /// workspace, copied in before and back after.
    #[allow(clippy::too_many_arguments)]
    fn forward_ops(
        &self,
        model: &Model,
        ops: core::ops::Range<usize>,
        batch: usize,
        arena: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
    ) -> Result<()>;

    /// A whole DDPM/DDIM sampling loop on the device (after the sampler checked its
    /// arguments).
    fn sample(
        &self,
        model: &Model,
        scheduler: &Scheduler,
        opts: &SampleOptions<'_>,
        out: &mut [f32],
        on_step: Option<&mut dyn FnMut(&StepInfo<'_>)>,
    ) -> Result<()>;

    /// For downcasting to the concrete backend (`Model::cuda_backend`).
    fn as_any(&self) -> &dyn core::any::Any;
}
