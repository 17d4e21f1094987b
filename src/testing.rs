//! Helpers for tests, benchmarks and examples (std): models of any config with seeded random
//! f16 weights, built in memory, no download. Not part of the stable API.

use std::string::String;
use std::vec::Vec;

use crate::error::{Error, Result};
use crate::memory::Reuse;
use crate::weights::{WeightBytes, WeightLoader};
use crate::{Model, UNetConfig};

/// google/ddpm-cifar10-32's UNet (35.7M parameters), the benchmark workload.
pub const CIFAR10_CONFIG: &str = r#"{
  "_class_name": "UNet2DModel",
  "act_fn": "silu",
  "attention_head_dim": null,
  "block_out_channels": [128, 256, 256, 256],
  "center_input_sample": false,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
  "downsample_padding": 0,
  "flip_sin_to_cos": false,
  "freq_shift": 1,
  "in_channels": 3,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-06,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 32,
  "time_embedding_type": "positional",
  "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
}"#;

/// `n` floats in [-1, 1) from a xorshift generator seeded with `seed` (kernel benchmarks'
/// inputs: the same on every run and machine).
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// The kernel path a kernel benchmark runs: the one its first command-line argument names
/// ([`KernelPath::from_name`](crate::kernels::KernelPath::from_name)), else the detected one.
/// Panics on an unknown or unavailable one (benchmarks only).
pub fn kernel_path_from_args() -> crate::kernels::KernelPath {
    use crate::kernels::KernelPath;
    let path = match std::env::args().nth(1) {
        Some(name) => KernelPath::from_name(&name).unwrap_or_else(|e| panic!("{e}")),
        None => KernelPath::detect(),
    };
    if let Err(e) = path.table() {
        panic!("{e}");
    }
    path
}

/// Median seconds per call of `call` over 7 timed runs of `reps` calls each (kernel
/// benchmarks).
pub fn median_secs_per_call(reps: usize, mut call: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                call();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// A diffusers-layout safetensors file (f16, diffusers names and shapes) holding seeded random
/// weights for every tensor `config_json` needs.
pub fn random_weights(config_json: &str, seed: u64) -> Result<Vec<u8>> {
    let config = UNetConfig::from_json(config_json)?;
    let mut loader = WeightLoader::synthetic(seed)?;
    crate::model::describe::describe(&config, &mut loader, config.sample_size)?;
    let tensors = loader.synthesized();
    let st_err = |e| Error::InvalidSafetensors {
        message: std::format!("{e:?}"),
    };
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, data)| {
            (
                name,
                shape,
                data.iter().flat_map(|h| h.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(st_err)
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(st_err)
}

/// A model of `config_json` with seeded random weights, loaded as a converted (packed) file
/// is: every weight used in place, nothing copied at load.
pub fn random_model(config_json: &str, seed: u64) -> Result<Model> {
    let weights = random_weights(config_json, seed)?;
    let (packed, _) = crate::model::convert::to_packed_safetensors(config_json, &weights)?;
    let config = UNetConfig::from_json(config_json)?;
    Model::new(
        config,
        WeightBytes::Owned(packed),
        Default::default(),
        Reuse::Shared,
    )
}
