//! A model's description without a loaded model: what [`describe`](super::describe::describe)
//! makes of a config (op list, tensors, taps) plus the parameter tensors it takes, for code
//! that walks the op list with weights of its own (the trainer's f32 master weights).
//!
//! [`describe_config`] needs no weights file ([`WeightLoader::shapes_only`]): every parameter
//! is recorded under its current diffusers name. [`describe_weights`] runs the same walk
//! against a real file, so each parameter is recorded under the name that file uses (older
//! diffusers names are accepted, as at load) and shapes are checked.

use alloc::string::String;
use alloc::vec::Vec;

use super::{describe, Op, Tap, TensorSpec};
use crate::config::UNetConfig;
use crate::error::Result;
use crate::weights::{LoadOptions, NamedWeight, WeightBytes, WeightLoader};

/// The op list of a config and the parameters it takes, without the weights.
///
/// The [`crate::weights::WeightRef`]s in `ops` and `weights` are keys only: they match each
/// other, but point into no data a caller can read.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDescription {
    pub config: UNetConfig,
    /// Every tensor of the forward pass, in definition order (as [`super::Model::tensors`]).
    pub tensors: Vec<TensorSpec>,
    /// The op list, in execution order (as [`super::Model::ops`]).
    pub ops: Vec<Op>,
    pub taps: Vec<Tap>,
    /// Every parameter tensor in the order the description took them: diffusers name and
    /// shape, and the reference the ops hold (as [`crate::weights::WeightStore::named`]).
    pub weights: Vec<NamedWeight>,
    /// Number of learned scalars.
    pub parameters: usize,
    /// Where training applies `dropout` (config [`UNetConfig::dropout`]), in op order.
    pub dropout_sites: Vec<DropoutSite>,
}

/// One `ResnetBlock2D`'s `nn.Dropout`: it acts on the input of the op `op` (the resnet's
/// `conv2`), which no other op reads.
#[derive(Debug, Clone, PartialEq)]
pub struct DropoutSite {
    pub op: usize,
    /// The resnet's diffusers module name (`down_blocks.0.resnets.1`).
    pub resnet: String,
}

impl ModelDescription {
    /// (channels, height, width) of the model's input.
    pub fn input_shape(&self) -> (usize, usize, usize) {
        let (h, w) = self.config.sample_size;
        (self.config.in_channels, h, w)
    }

    /// (channels, height, width) of the model's output.
    pub fn output_shape(&self) -> (usize, usize, usize) {
        let (h, w) = self.config.sample_size;
        (self.config.out_channels, h, w)
    }

    /// Floating-point operations of one forward pass per sample (as
    /// [`super::Model::flops_per_sample`]).
    pub fn flops_per_sample(&self) -> u64 {
        self.ops.iter().map(Op::flops_per_sample).sum()
    }
}

fn run(config: &UNetConfig, mut loader: WeightLoader) -> Result<ModelDescription> {
    let d = describe::describe(config, &mut loader, config.sample_size)?;
    Ok(ModelDescription {
        config: config.clone(),
        tensors: d.tensors,
        ops: d.ops,
        taps: d.taps,
        dropout_sites: d.dropout_sites,
        weights: loader.finish().named,
        parameters: d.parameters,
    })
}

/// The description of `config` at its `sample_size`, without any weights file.
pub fn describe_config(config: &UNetConfig) -> Result<ModelDescription> {
    run(config, WeightLoader::shapes_only())
}

/// The description of `config` with each parameter named as `weights` (a safetensors file)
/// names it; errors as [`super::Model::new`] for a missing tensor or a wrong shape.
pub fn describe_weights(config: &UNetConfig, weights: WeightBytes) -> Result<ModelDescription> {
    run(config, WeightLoader::new(weights, LoadOptions::default())?)
}
