//! # tinydiffusion
//!
//! Diffusers-compatible `UNet2DModel` inference with DDPM and DDIM sampling, written for places
//! big frameworks cannot go: a static library linked from C, a small `sample` binary, a `no_std`
//! microcontroller build.
//!
//! The path from file to image, in reading order:
//! 1. [`model::config`] (also reachable as [`config`]): `config.json` → [`config::UNetConfig`]
//!    (validated, typed errors); it sits beside the model description it feeds.
//! 2. [`weights`]: the safetensors file, viewed in place; f16 tensors are never copied.
//! 3. [`model`]: the config becomes a flat list of ops over tensor ids (the model description),
//!    each op holding its weights already resolved.
//! 4. [`memory`]: liveness of every tensor → byte offsets in one arena; the caller supplies that
//!    arena (its exact size is [`model::Model::workspace_len`]).
//! 5. [`kernels`]: the arithmetic, one module per backend behind one small interface.
//! 6. [`schedule`]: beta schedules, DDPM/DDIM steps, score-SDE samplers, noise sources.
//! 7. [`sampler`]: the fixed-step loop tying model and scheduler (or SDE sampler) together,
//!    allocation free.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]

extern crate alloc;

#[cfg(feature = "std")]
pub mod capi;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod error;
#[cfg(feature = "std")]
pub mod io;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod sampler;
pub mod schedule;
#[cfg(feature = "std")]
pub mod testing;
#[cfg(feature = "std")]
pub mod text;
#[cfg(feature = "train")]
pub mod train;
pub mod weights;

pub use config::UNetConfig;
pub use device::Device;
pub use error::{Error, Result};
pub use kernels::Precision;
/// The `UNet2DModel` configuration; it lives in [`model::config`], beside the model description.
pub use model::config;
pub use model::Model;
