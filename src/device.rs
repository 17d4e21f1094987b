//! Where a model runs: the CPU kernels ([`crate::kernels`]) or a CUDA GPU (`cuda` feature,
//! [`crate::cuda`]). Chosen at model creation ([`crate::Model::to_device`],
//! `Model::load_on`); the API is the same on both.

use crate::error::{invalid_arg, Result};
use crate::model::Model;

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

impl Model {
    /// Moves the model to `device`. [`Device::Cuda`] compiles the CUDA kernels and uploads the
    /// weights once (`cuda` feature; without it, or without a GPU, driver or NVRTC, this is an
    /// [`crate::Error::Device`] and the model stays where it was). [`Model::forward`] and
    /// [`crate::sampler::sample`] then run there with the same arguments.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        match device {
            Device::Cpu => {
                self.accelerator = None;
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                let backend = crate::cuda::CudaBackend::new(self, i)?;
                self.accelerator = Some(alloc::boxed::Box::new(backend));
                Ok(())
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(crate::error::device_err(
                "this build has no CUDA backend (rebuild with `--features cuda`)",
            )),
        }
    }

    /// Where the model runs.
    pub fn device(&self) -> Device {
        match self.accelerator() {
            Some(a) if a.device_kind() == "cuda" => Device::Cuda(a.ordinal()),
            _ => Device::Cpu,
        }
    }

    /// [`Model::load`], then [`Model::to_device`]`(device)`.
    #[cfg(feature = "std")]
    pub fn load_on(dir: impl AsRef<std::path::Path>, device: Device) -> Result<Model> {
        let mut model = Model::load(dir)?;
        model.to_device(device)?;
        Ok(model)
    }
}
