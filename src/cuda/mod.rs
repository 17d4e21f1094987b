//! The CUDA backend (feature `cuda`): the kernels of `kernels/*.cu`, compiled at run time by
//! NVRTC, launched over the same op list and memory plan as the CPU path.
//!
//! Nothing CUDA is needed to build this: cudarc loads `libcuda` and `libnvrtc` (CUDA 13) when
//! a model moves to the GPU ([`crate::Model::to_device`]), and their absence is an
//! [`crate::Error::Device`], not a panic.

/// The kernel argument list of a launch: pointers to each argument value, which must live
/// until the launch call returns (use inside the launch statement).
macro_rules! kargs {
    ($($a:expr),* $(,)?) => { [$( (&$a) as *const _ as *mut core::ffi::c_void ),*] };
}

mod backend;
mod device;
pub mod kernels;
mod sample;
mod session;
mod walk;

pub use backend::{CudaBackend, MAX_HEAD_DIM};

impl crate::Model {
    /// The CUDA backend, when the model is on a GPU.
    pub fn cuda_backend(&self) -> Option<&CudaBackend> {
        self.accelerator()?.as_any().downcast_ref::<CudaBackend>()
    }
}
