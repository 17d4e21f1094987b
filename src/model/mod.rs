//! The model: a config turned into a flat list of ops over numbered tensors, with every op's
//! weights resolved at load, plus the memory plan that places those tensors in one arena.
//!
//! Reading order:
//! - [`config`] parses and validates diffusers' `config.json` into a [`UNetConfig`] (also
//!   reachable as `crate::config`).
//! - [`describe`] builds the op list from a [`UNetConfig`], walking diffusers' `UNet2DModel`
//!   structure block by block and checking each weight's presence and shape.
//! - [`forward`] walks the op list once per model evaluation, calling a [`KernelTable`].
//! - [`description`]: the same op list and parameter list without loading a model (no weights
//!   file needed), for code that brings its own weights (the trainer).

use alloc::string::String;
use alloc::vec::Vec;

use crate::config::UNetConfig;
use crate::error::{invalid_arg, Error, Result};
use crate::kernels::{KernelPath, KernelTable, Precision};
use crate::memory::{MemoryPlan, Reuse};
use crate::weights::{LoadOptions, WeightBytes, WeightLoader, WeightStore};

pub mod backend;
pub mod condition_config;
pub mod config;
#[cfg(feature = "std")]
pub mod convert;
pub mod decoder;
pub mod decoder_config;
pub mod describe;
pub mod describe_decoder;
pub mod description;
pub mod forward;
#[cfg(feature = "std")]
pub mod load;
pub mod ops;
pub mod text_encoder;
pub mod text_encoder_config;

pub use description::{describe_config, describe_weights, DropoutSite, ModelDescription};
pub use ops::{
    AttentionOp, ClassEmbeddingOp, ConvOp, ElementwiseKind, ElementwiseOp, GroupNormOp, Input,
    InputOp, LinearOp, Op, OutputOp, SiluOp, SinusoidOp, TensorId, TensorSpec,
};
pub use ops::{ClassVectorOp, FirResampleOp, FourierEmbeddingOp, TimestepDivideOp};
pub use ops::{EncoderStatesOp, GegluOp, LayerNormOp, NormConvOp, TokenEmbeddingOp, KINDS};
pub use text_encoder::TextEncoder;
pub use text_encoder_config::TextEncoderConfig;

pub use ops::{Activation, ActivationOp, ResampleMode, ResampleOp, ScaleShiftOp, TimestepTableOp};

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
    /// The device the model runs on when not the CPU (`crate::device`'s `Model::to_device`).
    pub(crate) accelerator: Option<alloc::boxed::Box<dyn backend::Accelerator>>,
    /// (height, width) of the output (a decoder's is larger than its input).
    pub(crate) out_resolution: (usize, usize),
    /// A latent pipeline's decoder, run after the sampling loop ([`Model::decoder`]).
    pub(crate) decoder: Option<alloc::boxed::Box<decoder::Decoder>>,
    /// A text-to-image pipeline's text encoder, run by the sampler before its first step
    /// ([`Model::text_encoder`]).
    pub(crate) text_encoder: Option<alloc::boxed::Box<TextEncoder>>,
    /// The prompts' encoder when it differs from the negative prompts' (diffusers'
    /// `clip_skip`, [`Model::prompt_encoder`]).
    pub(crate) prompt_encoder: Option<alloc::boxed::Box<TextEncoder>>,
    /// A text-to-image pipeline's tokenizer, read once at load ([`Model::tokenizer`]).
    #[cfg(feature = "std")]
    pub(crate) tokenizer: Option<crate::text::ClipTokenizer>,
    /// Where the text encoder was loaded from, and how ([`Model::set_clip_skip`] loads it
    /// again for another layer).
    #[cfg(feature = "std")]
    pub(crate) text_encoder_source: Option<(std::path::PathBuf, LoadOptions)>,
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
        Model::assemble(
            config,
            described,
            loader.finish(),
            resolution,
            resolution,
            reuse,
        )
    }

    /// A model of a described op list: its memory plan, kernels and thread team.
    pub(crate) fn assemble(
        config: UNetConfig,
        described: describe::Described,
        weights: WeightStore,
        resolution: (usize, usize),
        out_resolution: (usize, usize),
        reuse: Reuse,
    ) -> Result<Model> {
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
            accelerator: None,
            out_resolution,
            decoder: None,
            text_encoder: None,
            prompt_encoder: None,
            #[cfg(feature = "std")]
            tokenizer: None,
            #[cfg(feature = "std")]
            text_encoder_source: None,
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
        let kernels = self.kernels;
        for net in self.sub_nets_mut() {
            net.kernels = kernels;
        }
        Ok(())
    }

    /// Chooses the arithmetic of the CPU forward pass: [`Precision::F32`] (the default) or
    /// [`Precision::F16`] (f16 arithmetic in convolutions and linears where the CPU has it, see
    /// [`Precision`]). F16 on a CPU without f16 arithmetic is an
    /// [`crate::Error::UnsupportedConfig`] naming the feature it needs, and leaves the model
    /// unchanged; back to F32 restores the f32 path this machine prefers. F16 runs no Winograd
    /// convolutions, so [`Model::workspace_len`] may shrink (a workspace sized before still
    /// fits); [`Model::workspace_len_for_threads`] does not change. The CPU kernels only: a
    /// model moved to a GPU ([`Model::to_device`]) computes as its device does.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        let path = precision.kernel_path(self.kernels.path)?;
        self.set_kernels(path)
    }

    /// The arithmetic of the CPU forward pass.
    pub fn precision(&self) -> Precision {
        self.kernels.path.precision()
    }

    /// Lets 3x3 stride-1 convolutions take the Winograd F(4x4, 3x3) algorithm on the SIMD paths
    /// (on by default unless `TINYDIFFUSION_WINOGRAD=0`; about 3e-6 relative error per conv
    /// against the direct kernel's 4e-7, see the `kernels` module docs). Off, every conv runs the direct kernel, and the workspace shrinks
    /// by the transformed-weight region ([`Model::workspace_len`] changes).
    pub fn set_winograd(&mut self, on: bool) {
        self.winograd = on;
        for net in self.sub_nets_mut() {
            net.winograd = on;
        }
    }

    /// The nets a pipeline runs besides the UNet (decoder, text encoders): they follow its
    /// kernels, Winograd switch and threads.
    fn sub_nets_mut(&mut self) -> impl Iterator<Item = &mut Model> {
        let decoder = self.decoder.as_deref_mut().map(|d| &mut d.net);
        let text = self.text_encoder.as_deref_mut().map(TextEncoder::net_mut);
        let prompt = self.prompt_encoder.as_deref_mut().map(TextEncoder::net_mut);
        decoder.into_iter().chain(text).chain(prompt)
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
        let convs = self
            .ops
            .iter()
            .flat_map(|op| op.conv_shapes(batch))
            .flatten();
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
        for net in self.sub_nets_mut() {
            net.set_threads(n)?;
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

    /// The device backend the model runs on, if not the CPU.
    pub fn accelerator(&self) -> Option<&dyn backend::Accelerator> {
        self.accelerator.as_deref()
    }

    /// Threads a forward pass uses.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// f32 elements of workspace one forward pass at `batch` needs: the activations
    /// (`batch` times the per-sample plan) followed by the kernel scratch (a region per thread
    /// of [`Model::threads`], then the Winograd conv's transformed inputs; see
    /// [`crate::kernels::ScratchLayout`]), plus [`crate::memory::WORKSPACE_SLACK`] floats so
    /// the activations can start on a cache line wherever the buffer is.
    /// Saturates at `usize::MAX` for a batch too large to address (no buffer is that long,
    /// so every length check against it fails cleanly).
    pub fn workspace_len(&self, batch: usize) -> usize {
        self.plan
            .arena_len(batch)
            .saturating_add(self.scratch_len(batch))
            .saturating_add(crate::memory::WORKSPACE_SLACK)
    }

    /// Kernel scratch at the end of the workspace for a forward pass at `batch`.
    pub fn scratch_len(&self, batch: usize) -> usize {
        self.scratch_layout(batch).len(self.threads)
    }

    /// f32 elements of workspace of a forward pass at `batch` that uses at most `threads`
    /// threads ([`Model::forward_with_threads`]). 0 means [`Model::workspace_len`]: the
    /// model's thread count (by default the cores this process may use) and the kernel path
    /// this CPU runs, so it differs between machines. For `threads` >= 1 the size depends
    /// only on the model, the batch and `threads`: not on the cores, the CPU's SIMD
    /// extensions, the kernel path or the Winograd switch (it fits the largest scratch of
    /// every kernel path of the target architecture), so a size computed once holds on every
    /// machine of that architecture.
    pub fn workspace_len_for_threads(&self, batch: usize, threads: usize) -> usize {
        if threads == 0 {
            return self.workspace_len(batch);
        }
        let convs = self
            .ops
            .iter()
            .flat_map(|op| op.conv_shapes(batch))
            .flatten();
        self.plan
            .arena_len(batch)
            .saturating_add(crate::kernels::portable_scratch_layout(convs).len(threads))
            .saturating_add(crate::memory::WORKSPACE_SLACK)
    }

    /// Threads a forward pass capped at `threads` (0: no cap) runs on.
    #[cfg(feature = "std")]
    pub(crate) fn run_threads(&self, threads: usize) -> usize {
        if threads == 0 {
            self.threads
        } else {
            threads.min(self.threads)
        }
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
            self.out_resolution.0,
            self.out_resolution.1,
        )
    }

    /// The decoder of a latent pipeline (a `VQModel` or `AutoencoderKL` beside the UNet), run
    /// by the sampler after its last step.
    pub fn decoder(&self) -> Option<&decoder::Decoder> {
        self.decoder.as_deref()
    }

    /// Attaches a decoder whose latents are this model's samples (channels and size), or
    /// removes it (`None`).
    pub fn set_decoder(&mut self, decoder: Option<decoder::Decoder>) -> Result<()> {
        if let Some(d) = &decoder {
            if d.latent_shape() != self.input_shape() {
                return Err(Error::UnsupportedConfig {
                    key: "decoder".into(),
                    value: alloc::format!(
                        "takes {:?} latents, the UNet samples {:?} (channels, height, width)",
                        d.latent_shape(),
                        self.input_shape()
                    ),
                });
            }
        }
        self.decoder = decoder.map(alloc::boxed::Box::new);
        Ok(())
    }

    /// The tokenizer of a text-to-image pipeline folder (its `tokenizer/`), read once by
    /// [`Model::load`]; the text encoder and the UNet's cross-attention were built for its
    /// `model_max_length`. The front ends (CLI, C API) turn prompts into ids with it; the
    /// `no_std` core takes ids.
    #[cfg(feature = "std")]
    pub fn tokenizer(&self) -> Option<&crate::text::ClipTokenizer> {
        self.tokenizer.as_ref()
    }

    /// The text encoder of a text-to-image pipeline (a `CLIPTextModel` beside a
    /// `UNet2DConditionModel`), run by the sampler on the prompt ids before the first step.
    pub fn text_encoder(&self) -> Option<&TextEncoder> {
        self.text_encoder.as_deref()
    }

    /// The encoder of the prompts: the text encoder, or the one [`Model::set_prompt_encoder`]
    /// (diffusers' `clip_skip`, [`Model::set_clip_skip`]) gave. The negative prompts always go
    /// through [`Model::text_encoder`], as in diffusers' `encode_prompt`.
    pub fn prompt_encoder(&self) -> Option<&TextEncoder> {
        self.prompt_encoder.as_deref().or(self.text_encoder())
    }

    /// diffusers' `clip_skip` of the prompts' states (0: the last hidden state).
    pub fn clip_skip(&self) -> usize {
        self.prompt_encoder().map_or(0, |t| t.clip_skip)
    }

    /// Encodes the prompts (not the negative prompts) with `encoder` instead of the text
    /// encoder, or goes back to it (`None`): diffusers' `clip_skip`, whose encoder is the same
    /// `CLIPTextModel` built for an earlier layer ([`TextEncoder::new_for_tokens`]). It must
    /// give the states the text encoder gives (tokens x hidden size).
    pub fn set_prompt_encoder(&mut self, encoder: Option<TextEncoder>) -> Result<()> {
        if let Some(e) = &encoder {
            let Some(t) = self.text_encoder() else {
                return Err(invalid_arg(
                    "prompt encoder",
                    "only a text-to-image pipeline (with a text encoder) takes one",
                ));
            };
            if (e.tokens(), e.config.hidden_size) != (t.tokens(), t.config.hidden_size) {
                return Err(invalid_arg(
                    "prompt encoder",
                    alloc::format!(
                        "gives {} x {} states, the text encoder {} x {}",
                        e.tokens(),
                        e.config.hidden_size,
                        t.tokens(),
                        t.config.hidden_size
                    ),
                ));
            }
        }
        self.prompt_encoder = encoder.map(alloc::boxed::Box::new);
        if let Some(e) = &mut self.prompt_encoder {
            e.net_mut().kernels = self.kernels;
            e.net_mut().winograd = self.winograd;
            #[cfg(feature = "std")]
            e.net_mut().set_threads(self.threads)?;
        }
        Ok(())
    }

    /// Attaches the text encoder whose hidden states this (conditional) model cross-attends to,
    /// or removes it (`None`): its `hidden_size` must be the UNet's `cross_attention_dim` and
    /// its token count the UNet's `text_tokens`. A prompt encoder set before is dropped.
    pub fn set_text_encoder(&mut self, text_encoder: Option<TextEncoder>) -> Result<()> {
        self.prompt_encoder = None;
        if let Some(t) = &text_encoder {
            let Some(cross) = &self.config.cross_attention else {
                return Err(invalid_arg(
                    "text encoder",
                    "only a text-conditional UNet (UNet2DConditionModel) takes one",
                ));
            };
            if (t.tokens(), t.config.hidden_size) != (cross.text_tokens, cross.cross_attention_dim)
            {
                return Err(Error::UnsupportedConfig {
                    key: "text_encoder".into(),
                    value: alloc::format!(
                        "gives {} x {} states, the UNet takes {} x {} (text_tokens x \
                         cross_attention_dim)",
                        t.tokens(),
                        t.config.hidden_size,
                        cross.text_tokens,
                        cross.cross_attention_dim
                    ),
                });
            }
        }
        self.text_encoder = text_encoder.map(alloc::boxed::Box::new);
        Ok(())
    }

    /// (channels, height, width) of one image of a sampling run: the decoder's output for a
    /// latent pipeline, else the UNet's sample.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        match &self.decoder {
            Some(d) => d.image_shape(),
            None => self.input_shape(),
        }
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

    /// The planned memory of a tensor at `batch`, as (start, len) from the start of the arena
    /// (see [`Model::tensor_data`]).
    pub fn tensor_region(&self, id: TensorId, batch: usize) -> (usize, usize) {
        self.plan.region(id, batch)
    }

    /// The activation arena inside a workspace at `batch` (it starts on the workspace's first
    /// 64-byte boundary, so copying a workspace to a buffer of another alignment does not copy
    /// the state: copy the arenas). `None` if the workspace is too short.
    pub fn arena<'a>(&self, workspace: &'a [f32], batch: usize) -> Option<&'a [f32]> {
        workspace.get(self.arena_range(workspace, batch)?)
    }

    /// [`Model::arena`], writable.
    pub fn arena_mut<'a>(&self, workspace: &'a mut [f32], batch: usize) -> Option<&'a mut [f32]> {
        let range = self.arena_range(workspace, batch)?;
        workspace.get_mut(range)
    }

    /// Where [`Model::arena`] lies in `workspace` (not checked against its length).
    fn arena_range(&self, workspace: &[f32], batch: usize) -> Option<core::ops::Range<usize>> {
        let start = crate::memory::aligned_start(workspace);
        Some(start..start.checked_add(self.plan.arena_len(batch))?)
    }

    /// A tensor's values in a workspace after a forward pass at `batch` (a tap, with a model
    /// built with [`Reuse::None`]; with shared memory a later tensor may have overwritten it).
    /// `None` if the workspace is too short to hold it.
    pub fn tensor_data<'a>(
        &self,
        workspace: &'a [f32],
        id: TensorId,
        batch: usize,
    ) -> Option<&'a [f32]> {
        let (start, len) = self.plan.region(id, batch);
        self.arena(workspace, batch)?
            .get(start..start.checked_add(len)?)
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
