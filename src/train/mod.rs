//! Training (feature `train`): the same UNet the core runs, with hand-written backward passes.
//!
//! ## How the trainer reuses the model and the schedule
//! There is one model definition: [`crate::model::describe`] turns a config into the op list.
//! The trainer takes that description without loading a model
//! ([`crate::model::describe_config`], or [`crate::model::describe_weights`] when it starts from
//! a weights file, to keep that file's tensor names) and walks the same op list
//! ([`graph::TrainGraph`]); only the weight source differs. Inference ops hold `WeightRef`s to
//! f16 data; the trainer resolves the same `WeightRef`s through [`params::ParamTable`] to its
//! f32 master weights (one flat buffer, conv weights in HWIO layout), keyed by the diffusers
//! names the description recorded. The kernels differ too: [`layers`] holds an f32-weight
//! forward for every layer with its backward beside it; the inference kernels are untouched.
//! `tests/train_run.rs` checks that both forwards agree (to f16 rounding of the weights).
//!
//! The noise schedule is the core's too: [`loss::NoiseSchedule`] holds the betas and
//! alpha-bars [`crate::schedule::betas()`] computes from a [`crate::schedule::SchedulerConfig`]
//! (diffusers' float32 values, bit for bit), the same config a checkpoint writes as
//! `scheduler_config.json`, and the prediction type is [`crate::schedule::PredictionType`].
//!
//! ## Modules
//! - [`layers`]: each layer's forward and backward, side by side.
//! - [`graph`]: the training walk and its planned memory.
//! - [`params`]: f32 master weights by diffusers name; init, load, save.
//! - [`loss`]: the noise schedule; L_simple (epsilon / v), hybrid loss for learned variance.
//! - [`optim`]: AdamW, gradient clipping, warmup, EMA.
//! - [`rng`]: counter-based random numbers, one stream per (seed, purpose, step).
//! - [`data`]: MNIST IDX and PNG folders.
//! - [`eval`]: the variational bound in bits/dim on held-out images.
//! - [`quality`]: sample quality, a Fréchet distance over features of a small MNIST classifier.
//! - [`checkpoint`], [`trainer`]: diffusers-layout checkpoints with training state; the loop.

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod graph;
pub mod layers;
pub mod loss;
pub mod optim;
pub mod params;
pub mod quality;
pub mod rng;
pub mod trainer;

pub use graph::{Dropout, TrainGraph, TrainWorkspace};
pub use params::ParamTable;
pub use trainer::{TrainOptions, Trainer};
