//! Where a model runs: the CPU kernels ([`crate::kernels`]) or a CUDA GPU (`cuda` feature,
//! [`crate::cuda`]). Chosen at model creation ([`crate::Model::to_device`],
//! `Model::load_on`); the API is the same on both.

use crate::error::{invalid_arg, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` feature; an error without it).
    Cuda(usize),
}

impl Device {
    /// `cpu`, `cuda` (GPU 0) or `cuda:N` (case-insensitive), as given on a command line.
    pub fn parse(name: &str) -> Result<Device> {
        let n = name.trim().to_ascii_lowercase();
        if n == "cpu" {
            return Ok(Device::Cpu);
        }
        if n == "cuda" || n == "gpu" {
            return Ok(Device::Cuda(0));
        }
        if let Some(i) = n.strip_prefix("cuda:") {
            if let Ok(i) = i.parse::<usize>() {
                return Ok(Device::Cuda(i));
            }
        }
        Err(invalid_arg(
            "device",
            alloc::format!("'{name}' is not one of: cpu, cuda, cuda:N"),
        ))
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl core::fmt::Display for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
