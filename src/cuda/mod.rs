//! The CUDA backend (feature `cuda`): the kernels of `kernels/*.cu`, compiled at run time by
//! NVRTC, launched over the same op list and memory plan as the CPU path.
//!
//! Nothing CUDA is needed to build this: cudarc loads `libcuda` and `libnvrtc` (CUDA 13) when
//! a model moves to the GPU ([`crate::Model::to_device`]), and their absence is an
//! [`crate::Error::Device`], not a panic.

mod backend;
pub mod kernels;

pub use backend::{CudaBackend, MAX_HEAD_DIM};

impl crate::Model {
    /// The CUDA backend, when the model is on a GPU.
    pub fn cuda_backend(&self) -> Option<&CudaBackend> {
        self.accelerator()?.as_any().downcast_ref::<CudaBackend>()
    }
}
