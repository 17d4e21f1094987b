//! The model: a config turned into a flat list of ops over numbered tensors, with every op's
//! weights resolved at load, plus the memory plan that places those tensors in one arena.
//!
//! - [`describe`] builds the op list from a [`UNetConfig`], walking diffusers' `UNet2DModel`
//!   structure block by block and checking each weight's presence and shape.
//! - [`forward`] walks the op list once per model evaluation, calling a [`KernelTable`].
//! - [`description`]: the same op list and parameter list without loading a model (no weights
//!   file needed), for code that brings its own weights (the trainer).

use alloc::string::String;
use alloc::vec::Vec;

use crate::config::UNetConfig;
use crate::error::{invalid_arg, Error, Result};
use crate::kernels::{ConvShape, KernelPath, KernelTable};
use crate::memory::{MemoryPlan, Reuse};
use crate::weights::{LoadOptions, WeightBytes, WeightLoader, WeightRef, WeightStore};

pub mod describe;
pub mod description;
pub mod forward;
#[cfg(feature = "std")]
pub mod load;

pub use description::{describe_config, describe_weights, ModelDescription};

/// Index of a tensor in [`Model::tensors`].
pub type TensorId = usize;

/// An op's main input: one tensor, or the channel concatenation of two (the UNet skip
/// connection), which kernels read without materialising.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    One(TensorId),
    Concat(TensorId, TensorId),
}

impl Input {
    pub fn first(self) -> TensorId {
        match self {
            Input::One(a) | Input::Concat(a, _) => a,
        }
    }
    pub fn second(self) -> Option<TensorId> {
        match self {
            Input::One(_) => None,
            Input::Concat(_, b) => Some(b),
        }
    }
}

/// A tensor of the forward pass; its size is given per sample (f32 elements).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub len: usize,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConvOp {
    pub input: Input,
    pub shape: ConvShape,
    pub weight: WeightRef,
    pub bias: WeightRef,
    /// `[batch, out_c]` added per channel (time-embedding projection).
    pub channel_add: Option<TensorId>,
    pub residual: Option<TensorId>,
    pub out_scale: f32,
    pub out: TensorId,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupNormOp {
    pub input: Input,
    pub in_ca: usize,
    pub in_cb: usize,
    pub pixels: usize,
    pub groups: usize,
    pub eps: f32,
    pub gamma: WeightRef,
    pub beta: WeightRef,
    pub silu: bool,
    pub out: TensorId,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LinearOp {
    pub input: TensorId,
    /// Rows per sample (1 for embeddings, tokens for attention projections).
    pub rows: usize,
    pub in_f: usize,
    pub out_f: usize,
    pub weight: WeightRef,
    pub bias: WeightRef,
    pub residual: Option<TensorId>,
    pub out_scale: f32,
    pub out: TensorId,
}

/// Timestep (and class) embedding, ending with the SiLU every resnet applies before its
/// projection: `silu(linear_2(silu(linear_1(sinusoid(t)))) + class_embedding[y])`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeEmbeddingOp {
    /// Width of the sinusoidal embedding (`block_out_channels[0]`).
    pub sinusoid_dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub embed_dim: usize,
    pub linear_1: (WeightRef, WeightRef),
    pub linear_2: (WeightRef, WeightRef),
    /// `[num_classes, embed_dim]`.
    pub class_embedding: Option<(WeightRef, usize)>,
    /// Per sample: sinusoid then hidden layer.
    pub scratch: TensorId,
    pub out: TensorId,
}

/// Self-attention over a `[tokens, channels]` feature map: GroupNorm, Q/K/V projections,
/// multi-head softmax attention, output projection, residual add, rescale.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionOp {
    pub input: TensorId,
    pub tokens: usize,
    pub channels: usize,
    pub heads: usize,
    pub groups: usize,
    pub eps: f32,
    pub norm: (WeightRef, WeightRef),
    pub q: (WeightRef, WeightRef),
    pub k: (WeightRef, WeightRef),
    pub v: (WeightRef, WeightRef),
    pub o: (WeightRef, WeightRef),
    pub rescale: f32,
    /// Per sample `5 * tokens * channels + tokens` floats: normed, q, k, v, attended, scores.
    pub scratch: TensorId,
    pub out: TensorId,
}

/// One step of the forward walk.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Reads the caller's NCHW sample into the arena as NHWC (and centers it if configured).
    InputToNhwc {
        channels: usize,
        height: usize,
        width: usize,
        center: bool,
        out: TensorId,
    },
    TimeEmbedding(TimeEmbeddingOp),
    Linear(LinearOp),
    Conv(ConvOp),
    GroupNorm(GroupNormOp),
    Attention(AttentionOp),
    /// Writes the final NHWC tensor to the caller's NCHW output.
    OutputToNchw {
        input: TensorId,
        channels: usize,
        height: usize,
        width: usize,
    },
}

impl Op {
    /// Tensors this op reads.
    pub fn reads(&self) -> Vec<TensorId> {
        let mut r = Vec::new();
        let mut input = |i: Input| {
            r.push(i.first());
            r.extend(i.second());
        };
        match self {
            Op::InputToNhwc { .. } | Op::TimeEmbedding(_) => {}
            Op::Linear(l) => {
                input(Input::One(l.input));
                r.extend(l.residual);
            }
            Op::Conv(c) => {
                input(c.input);
                r.extend(c.channel_add);
                r.extend(c.residual);
            }
            Op::GroupNorm(g) => input(g.input),
            Op::Attention(a) => input(Input::One(a.input)),
            Op::OutputToNchw { input: i, .. } => input(Input::One(*i)),
        }
        r
    }

    /// Tensors this op writes (its output and its scratch).
    pub fn writes(&self) -> Vec<TensorId> {
        match self {
            Op::InputToNhwc { out, .. } => alloc::vec![*out],
            Op::TimeEmbedding(t) => alloc::vec![t.out, t.scratch],
            Op::Linear(l) => alloc::vec![l.out],
            Op::Conv(c) => alloc::vec![c.out],
            Op::GroupNorm(g) => alloc::vec![g.out],
            Op::Attention(a) => alloc::vec![a.out, a.scratch],
            Op::OutputToNchw { .. } => Vec::new(),
        }
    }

    pub fn flops_per_sample(&self) -> u64 {
        match self {
            Op::Conv(c) => ConvShape {
                batch: 1,
                ..c.shape
            }
            .flops(),
            Op::Linear(l) => 2 * (l.rows * l.in_f * l.out_f) as u64,
            Op::Attention(a) => {
                let (n, c) = (a.tokens as u64, a.channels as u64);
                // Saturating: n * n overflows u64 for absurd (but valid) sample sizes.
                (8 * n * c * c)
                    .saturating_add(4u64.saturating_mul(n).saturating_mul(n).saturating_mul(c))
            }
            Op::TimeEmbedding(t) => {
                let (s, e) = (t.sinusoid_dim as u64, t.embed_dim as u64);
                2 * (s * e + e * e)
            }
            _ => 0,
        }
    }
}

/// A named activation worth inspecting (diffusers module outputs, for parity debugging).
#[derive(Debug, Clone, PartialEq)]
pub struct Tap {
    pub name: String,
    pub tensor: TensorId,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// A loaded `UNet2DModel`: config, weights, op list and memory plan. Immutable once built, so
/// one model can serve several threads, each with its own workspace.
///
/// Under `std` a model owns a persistent team of threads (default: all cores, see
/// [`Model::set_threads`]) that splits each kernel call of a forward pass; it is built once, so
/// a forward pass spawns nothing and allocates nothing. Two forward passes running at the same
/// time on one model share the team: the second runs its kernels on its own thread.
pub struct Model {
    pub config: UNetConfig,
    pub(crate) weights: WeightStore,
    pub(crate) tensors: Vec<TensorSpec>,
    pub(crate) ops: Vec<Op>,
    pub(crate) taps: Vec<Tap>,
    pub(crate) plan: MemoryPlan,
    pub(crate) kernels: &'static KernelTable,
    /// Whether convolutions may take the Winograd path ([`Model::set_winograd`]).
    pub(crate) winograd: bool,
    #[cfg(feature = "std")]
    pub(crate) pool: Option<crate::kernels::threads::ThreadPool>,
    /// Threads a forward pass uses (1 without `std`).
    pub(crate) threads: usize,
    /// (height, width) the op list was built for.
    pub(crate) resolution: (usize, usize),
    pub(crate) parameters: usize,
    /// The GPU state when the model lives on a CUDA device ([`Model::to_device`]).
    #[cfg(feature = "cuda")]
    pub(crate) cuda: Option<std::boxed::Box<crate::cuda::CudaBackend>>,
}

impl Model {
    /// Builds a model from a `config.json` text and the bytes of its safetensors weights.
    /// This is the `no_std` entry point; under `std`, [`Model::load`] reads a folder.
    pub fn from_parts(config_json: &str, weights: WeightBytes) -> Result<Model> {
        let config = UNetConfig::from_json(config_json)?;
        Model::new(config, weights, LoadOptions::default(), Reuse::Shared)
    }

    /// Builds a model from a parsed config. `reuse` chooses between the shared-memory plan
    /// (inference) and one slot per tensor (inspection of every activation).
    pub fn new(
        config: UNetConfig,
        weights: WeightBytes,
        options: LoadOptions,
        reuse: Reuse,
    ) -> Result<Model> {
        let mut loader = WeightLoader::new(weights, options)?;
        let resolution = config.sample_size;
        let described = describe::describe(&config, &mut loader, resolution)?;
        let weights = loader.finish();
        let lifetimes = lifetimes(&described.ops, described.tensors.len());
        let lens: Vec<usize> = described.tensors.iter().map(|t| t.len).collect();
        let plan = MemoryPlan::new(&lens, &lifetimes, reuse);
        #[cfg_attr(not(feature = "std"), allow(unused_mut))]
        let mut model = Model {
            config,
            weights,
            tensors: described.tensors,
            ops: described.ops,
            taps: described.taps,
            plan,
            kernels: KernelPath::preferred()?.table()?,
            winograd: crate::kernels::winograd_default(),
            #[cfg(feature = "std")]
            pool: None,
            threads: 1,
            resolution,
            parameters: described.parameters,
            #[cfg(feature = "cuda")]
            cuda: None,
        };
        #[cfg(feature = "std")]
        model.set_threads(0)?;
        Ok(model)
    }

    /// The parameter tensors a config implies, in description order (diffusers names and shapes),
    /// without any weights file ([`describe_config`] gives them with the op list).
    pub fn parameter_specs(config: &UNetConfig) -> Result<Vec<crate::weights::NamedWeight>> {
        let mut loader = WeightLoader::shapes_only();
        describe::describe(config, &mut loader, config.sample_size)?;
        Ok(loader.finish().named)
    }

    /// Chooses the kernel implementation (for testing every path, or forcing the reference).
    /// A path this CPU cannot run is an error and leaves the model unchanged.
    pub fn set_kernels(&mut self, path: KernelPath) -> Result<()> {
        self.kernels = path.table()?;
        Ok(())
    }

    /// Lets 3x3 stride-1 convolutions take the Winograd F(4x4, 3x3) algorithm on the SIMD paths
    /// (on by default unless `TINYDIFFUSION_WINOGRAD=0`; about 3e-6 relative error per conv
    /// against the direct kernel's 4e-7, see the `kernels` module docs). Off, every conv runs the direct kernel, and the workspace shrinks
    /// by the transformed-weight region ([`Model::workspace_len`] changes).
    pub fn set_winograd(&mut self, on: bool) {
        self.winograd = on;
    }

    /// Whether convolutions may take the Winograd path.
    pub fn winograd(&self) -> bool {
        self.winograd
    }

    /// The kernel scratch layout of a forward pass at `batch` (its convolutions' algorithms
    /// depend on the batch: see the `kernels` module docs). Computed without allocating.
    pub(crate) fn scratch_layout(&self, batch: usize) -> crate::kernels::ScratchLayout {
        if !self.winograd {
            return crate::kernels::ScratchLayout::DIRECT;
        }
        let convs = self.ops.iter().filter_map(|op| match op {
            Op::Conv(c) => Some(crate::kernels::ConvShape { batch, ..c.shape }),
            _ => None,
        });
        self.kernels.scratch_layout(convs)
    }

    /// The kernel path in use.
    pub fn kernels(&self) -> KernelPath {
        self.kernels.path
    }

    pub fn kernels_name(&self) -> &'static str {
        self.kernels.name
    }

    /// Sets the number of threads a forward pass uses; 0 means all cores. The team is built
    /// here, once (this spawns `n - 1` threads); [`Model::workspace_len`] grows with `n`.
    #[cfg(feature = "std")]
    pub fn set_threads(&mut self, n: usize) -> Result<()> {
        let n = if n == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            n
        };
        if n > 1024 {
            return Err(invalid_arg(
                "threads",
                alloc::format!("{n} is more than 1024"),
            ));
        }
        if n == self.threads && (n == 1 || self.pool.is_some()) {
            return Ok(());
        }
        self.pool = None;
        self.threads = 1;
        if n > 1 {
            let pool = crate::kernels::threads::ThreadPool::new(n).map_err(|e| {
                invalid_arg("threads", alloc::format!("cannot start {n} threads: {e}"))
            })?;
            self.pool = Some(pool);
        }
        self.threads = n;
        Ok(())
    }

    /// Moves the model to `device`. [`Device::Cuda`] compiles the CUDA kernels and uploads the
    /// weights once (`cuda` feature; without it, or without a GPU, driver or NVRTC, this is an
    /// [`Error::Device`] and the model stays where it was). [`Model::forward`] and
    /// [`crate::sampler::sample`] then run there with the same arguments.
    pub fn to_device(&mut self, device: crate::Device) -> Result<()> {
        match device {
            crate::Device::Cpu => {
                #[cfg(feature = "cuda")]
                {
                    self.cuda = None;
                }
                Ok(())
            }
            #[cfg(feature = "cuda")]
            crate::Device::Cuda(i) => {
                let backend = crate::cuda::CudaBackend::new(self, i)?;
                self.cuda = Some(std::boxed::Box::new(backend));
                Ok(())
            }
            #[cfg(not(feature = "cuda"))]
            crate::Device::Cuda(_) => Err(crate::error::device_err(
                "this build has no CUDA backend (rebuild with `--features cuda`)",
            )),
        }
    }

    /// Where the model runs.
    pub fn device(&self) -> crate::Device {
        #[cfg(feature = "cuda")]
        if let Some(b) = &self.cuda {
            return crate::Device::Cuda(b.ordinal());
        }
        crate::Device::Cpu
    }

    /// The CUDA backend, when the model is on a GPU.
    #[cfg(feature = "cuda")]
    pub fn cuda_backend(&self) -> Option<&crate::cuda::CudaBackend> {
        self.cuda.as_deref()
    }

    /// Threads a forward pass uses.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// f32 elements of workspace one forward pass at `batch` needs: the activations
    /// (`batch` times the per-sample plan) followed by the kernel scratch (a region per thread
    /// of [`Model::threads`], then the Winograd conv's transformed weights; see
    /// [`crate::kernels::ScratchLayout`]).
    /// Saturates at `usize::MAX` for a batch too large to address (no buffer is that long,
    /// so every length check against it fails cleanly).
    pub fn workspace_len(&self, batch: usize) -> usize {
        self.plan
            .arena_len(batch)
            .saturating_add(self.scratch_len(batch))
    }

    /// Kernel scratch at the end of the workspace for a forward pass at `batch`.
    pub fn scratch_len(&self, batch: usize) -> usize {
        self.scratch_layout(batch).len(self.threads)
    }

    /// Bytes of workspace one forward pass at `batch` needs.
    pub fn workspace_bytes(&self, batch: usize) -> usize {
        self.workspace_len(batch)
            .saturating_mul(core::mem::size_of::<f32>())
    }

    /// (channels, height, width) of the model's input.
    pub fn input_shape(&self) -> (usize, usize, usize) {
        (
            self.config.in_channels,
            self.resolution.0,
            self.resolution.1,
        )
    }

    /// (channels, height, width) of the model's output.
    pub fn output_shape(&self) -> (usize, usize, usize) {
        (
            self.config.out_channels,
            self.resolution.0,
            self.resolution.1,
        )
    }

    /// Number of learned parameters.
    pub fn parameters(&self) -> usize {
        self.parameters
    }

    /// Floating-point operations of one forward pass per sample.
    pub fn flops_per_sample(&self) -> u64 {
        self.ops.iter().map(Op::flops_per_sample).sum()
    }

    /// Every tensor of the forward pass, in definition order.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// The op list, in execution order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The weights (f16), resolved through a [`crate::weights::WeightRef`].
    pub fn weights(&self) -> &WeightStore {
        &self.weights
    }

    pub fn taps(&self) -> &[Tap] {
        &self.taps
    }

    /// The per-sample planned memory of a tensor, for reading taps out of a workspace after a
    /// forward pass made with [`Reuse::None`].
    pub fn tensor_region(&self, id: TensorId, batch: usize) -> (usize, usize) {
        self.plan.region(id, batch)
    }

    /// Checks a class label against the model (and that the model takes labels at all).
    pub fn check_class_label(&self, label: i64) -> Result<()> {
        match self.config.num_class_embeds {
            None => Err(invalid_arg(
                "class label",
                "the model is not class-conditional",
            )),
            Some(n) if label >= 0 && (label as usize) < n => Ok(()),
            Some(n) => Err(Error::InvalidArgument {
                what: "class label",
                message: alloc::format!("{label} is out of range 0..{n}"),
            }),
        }
    }
}

/// (first op, last op) touching each tensor.
fn lifetimes(ops: &[Op], n: usize) -> Vec<(usize, usize)> {
    let mut life = alloc::vec![(usize::MAX, 0usize); n];
    for (i, op) in ops.iter().enumerate() {
        for t in op.reads().into_iter().chain(op.writes()) {
            life[t].0 = life[t].0.min(i);
            life[t].1 = life[t].1.max(i);
        }
    }
    for l in life.iter_mut() {
        if l.0 == usize::MAX {
            *l = (0, 0);
        }
    }
    life
}
