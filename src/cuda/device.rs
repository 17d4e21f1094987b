//! Raw device plumbing: driver-error mapping, owned device memory, kernel launches.

use core::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, CudaContext, CudaFunction};

use super::backend::Inner;
use crate::error::{device_err, Result};

pub(super) fn cu<T>(r: core::result::Result<T, result::DriverError>, what: &str) -> Result<T> {
    r.map_err(|e| device_err(std::format!("{what}: {e:?}")))
}

/// Raw device memory (freed on drop).
pub(super) struct DevBuf {
    pub(super) ptr: u64,
    pub(super) ctx: Arc<CudaContext>,
}

impl DevBuf {
    pub(super) fn new(ctx: &Arc<CudaContext>, bytes: usize) -> Result<DevBuf> {
        cu(ctx.bind_to_thread(), "bind context")?;
        // SAFETY: a plain cuMemAlloc of a positive size; freed once in Drop.
        let ptr = cu(unsafe { result::malloc_sync(bytes.max(256)) }, "cuMemAlloc")?;
        Ok(DevBuf {
            ptr,
            ctx: ctx.clone(),
        })
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by malloc_sync, freed once; the backend synchronises its stream
        // before dropping sessions (see `Inner::session`), so no kernel still uses it.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

impl Inner {
    pub(super) fn launch(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        // SAFETY: each kernel's argument list is built to match its signature in
        // kernels/*.cu, every pointer is inside a live device buffer sized for the launch.
        cu(
            unsafe {
                result::launch_kernel(
                    f.cu_function(),
                    grid,
                    (block, 1, 1),
                    smem,
                    self.stream.cu_stream(),
                    args,
                )
            },
            "kernel launch",
        )
    }
}
