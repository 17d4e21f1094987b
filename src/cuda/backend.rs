//! The CUDA backend: weights on the GPU once, one device workspace per batch size, the
//! model's op list walked by launching `kernels/*.cu`, and the sampling step as a CUDA graph.
//!
//! - **Weights**: every f16 tensor the op list references is copied once, at
//!   [`CudaBackend::new`], into one device buffer. Conv and linear weights keep the packed
//!   oc32 layout (`[ceil(out / 32), k, k, in, 32]`): its 32-channel rows are exactly the B
//!   tiles of the implicit-GEMM conv, so no conversion is needed.
//! - **Workspace**: one device allocation per batch size ([`Session`]), made before the first
//!   forward pass or sampling run at that size and reused: the activation arena is the model's
//!   [`crate::memory::MemoryPlan`] with 2-byte (f16) elements, so its size is
//!   `plan.arena_len(batch) * 2` bytes, plus the sampler's f32 buffers (x, eps, eps_uncond,
//!   noise), the timestep and scheduler-coefficient tables, labels and a step counter.
//! - **Sampling**: one step (noise, one or two forward passes, guidance, the scheduler
//!   update, the step counter increment) is captured once into a CUDA graph, then replayed
//!   `steps` times. Kernels read the step index, the seed and the timestep from device
//!   memory, so the same graph serves every step; a step allocates nothing on the host or the
//!   device.
//!
//! All device work goes through one stream owned by the backend and guarded by a mutex, so a
//! model on the GPU can still be shared by threads (their calls are serialised).

use std::sync::{Arc, Mutex};
use std::vec::Vec;

use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaStream};
use half::f16;

use super::device::{cu, DevBuf};
use super::kernels;
use super::session::{session_layout, Session};
use super::walk::CudaWalk;
use crate::error::{device_err, unsupported, Result};
use crate::model::backend::{walk_range, Accelerator};
use crate::model::{Model, Op};
use crate::schedule::{SampleOptions, Scheduler, StepInfo};
use crate::weights::WeightRef;

pub(super) struct Funcs {
    pub(super) conv: CudaFunction,
    pub(super) group_norm: CudaFunction,
    /// Entry points for head dimensions up to 128, 256 and 512.
    pub(super) attention: [CudaFunction; 3],
    pub(super) nchw_to_nhwc: CudaFunction,
    pub(super) nhwc_to_nchw: CudaFunction,
    pub(super) timestep_sinusoid: CudaFunction,
    pub(super) silu: CudaFunction,
    pub(super) class_embed_add: CudaFunction,
    pub(super) class_sinusoid: CudaFunction,
    pub(super) timestep_table: CudaFunction,
    pub(super) guidance_combine: CudaFunction,
    pub(super) gaussian_noise: CudaFunction,
    pub(super) scheduler_step: CudaFunction,
    pub(super) set_step: CudaFunction,
    pub(super) advance_step: CudaFunction,
    pub(super) scale_shift: CudaFunction,
    pub(super) resample2x: CudaFunction,
    pub(super) activation: CudaFunction,
    pub(super) fourier_embedding: CudaFunction,
    pub(super) fir_resample: CudaFunction,
    pub(super) timestep_divide: CudaFunction,
}

/// Largest head dimension the attention kernel supports (4 columns x 128 threads).
pub const MAX_HEAD_DIM: usize = 512;

pub(super) fn attention_smem_bytes(d: usize) -> u32 {
    (3 * 16 * (d + 2) * 2 + (16 * 16 + 3 * 16) * 4) as u32
}

pub(super) struct Inner {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) f: Funcs,
    pub(super) _weights: DevBuf,
    /// Device pointers of each op's weights, in the order of [`Op::weights`].
    pub(super) wptr: Vec<Vec<u64>>,
    pub(super) session: Option<Session>,
}

/// A model's GPU state (see the module docs).
pub struct CudaBackend {
    pub(super) ordinal: usize,
    pub(super) name: std::string::String,
    pub(super) arch: &'static str,
    pub(super) inner: Mutex<Inner>,
}

pub(super) fn grid1(n: usize) -> (u32, u32, u32) {
    (n.div_ceil(256) as u32, 1, 1)
}

impl CudaBackend {
    /// Sets up GPU `ordinal` for `model`: loads the driver and NVRTC (a typed error, never a
    /// panic, when either is missing), compiles the kernels for the GPU's architecture and
    /// uploads the weights.
    pub fn new(model: &Model, ordinal: usize) -> Result<CudaBackend> {
        // Checked before the driver so the refusal is the same on any machine.
        if model.config.cross_attention.is_some() {
            // No kernels for the transformer ops (LayerNorm, GEGLU, cross-attention) yet.
            return Err(crate::model::backend::unsupported_op(
                "cuda",
                "encoder_states",
            ));
        }
        if !kernels::driver_available() {
            return Err(device_err(
                "no CUDA driver found (libcuda.so could not be loaded): is this a GPU machine \
                 with the NVIDIA driver installed?",
            ));
        }
        if !kernels::nvrtc_available() {
            return Err(device_err(
                "NVRTC not found (libnvrtc.so.13): install the `nvidia-cuda-nvrtc` wheel or the \
                 CUDA 13 toolkit and put its lib folder on LD_LIBRARY_PATH",
            ));
        }
        cu(result::init(), "cuInit")?;
        let count = cu(CudaContext::device_count(), "cuDeviceGetCount")?;
        if ordinal >= count.max(0) as usize {
            return Err(device_err(std::format!(
                "no CUDA device {ordinal} ({count} present)"
            )));
        }
        for op in model.ops() {
            if let Op::Attention(a) = op {
                if a.channels / a.heads > MAX_HEAD_DIM {
                    return Err(unsupported(
                        "attention_head_dim",
                        std::format!(
                            "head dimension {} above the CUDA kernel's {MAX_HEAD_DIM}",
                            a.channels / a.heads
                        ),
                    ));
                }
            }
        }
        let ctx = cu(CudaContext::new(ordinal), "create CUDA context")?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = cu(ctx.compute_capability(), "compute capability")?;
        let arch = kernels::arch_for(major, minor)?;
        // Raw pointers and one stream: no per-slice event tracking (it would record events
        // inside graph captures).
        // SAFETY: called before any stream or allocation of this context exists in this
        // backend; all device work below is ordered on `stream`.
        unsafe { ctx.disable_event_tracking() };
        let stream = cu(ctx.new_stream(), "create stream")?;
        let mut modules = std::collections::HashMap::new();
        for (file, src) in kernels::SOURCES {
            // A real architecture gets a CUBIN (see kernels::compile_cubin); a newer GPU than
            // this code knows gets PTX for compute_90, JIT-compiled by the driver.
            let image = if arch.starts_with("sm_") {
                cudarc::nvrtc::Ptx::from_binary(kernels::compile_cubin(file, src, arch)?)
            } else {
                kernels::compile(file, src, arch)?
            };
            let m = cu(ctx.load_module(image), &std::format!("load kernels/{file}"))?;
            modules.insert(*file, m);
        }
        let func = |file: &str, name: &str| -> Result<CudaFunction> {
            cu(
                modules[file].load_function(name),
                &std::format!("load kernel {name}"),
            )
        };
        let f = Funcs {
            conv: func("conv.cu", "conv2d_f16")?,
            group_norm: func("norm.cu", "group_norm_f16")?,
            attention: [
                func("attention.cu", "attention_f16_r1")?,
                func("attention.cu", "attention_f16_r2")?,
                func("attention.cu", "attention_f16_r4")?,
            ],
            nchw_to_nhwc: func("elementwise.cu", "nchw_to_nhwc")?,
            nhwc_to_nchw: func("elementwise.cu", "nhwc_to_nchw")?,
            timestep_sinusoid: func("elementwise.cu", "timestep_sinusoid")?,
            silu: func("elementwise.cu", "silu")?,
            class_embed_add: func("elementwise.cu", "class_embed_add")?,
            class_sinusoid: func("elementwise.cu", "class_sinusoid")?,
            timestep_table: func("elementwise.cu", "timestep_table")?,
            guidance_combine: func("elementwise.cu", "guidance_combine")?,
            gaussian_noise: func("elementwise.cu", "gaussian_noise")?,
            scheduler_step: func("elementwise.cu", "scheduler_step")?,
            set_step: func("elementwise.cu", "set_step")?,
            advance_step: func("elementwise.cu", "advance_step")?,
            scale_shift: func("elementwise.cu", "scale_shift")?,
            resample2x: func("elementwise.cu", "resample2x")?,
            activation: func("elementwise.cu", "activation")?,
            fourier_embedding: func("elementwise.cu", "fourier_embedding")?,
            fir_resample: func("elementwise.cu", "fir_resample")?,
            timestep_divide: func("elementwise.cu", "timestep_divide")?,
        };
        for (func, d) in f.attention.iter().zip([128, 256, MAX_HEAD_DIM]) {
            cu(
                func.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    attention_smem_bytes(d) as i32,
                ),
                "attention shared memory limit",
            )?;
        }

        // Weights: one staging copy, one upload, 256-byte aligned tensors.
        let refs: Vec<Vec<WeightRef>> = model.ops().iter().map(Op::weights).collect();
        let mut offsets: Vec<Vec<usize>> = Vec::with_capacity(refs.len());
        let mut total = 0usize;
        for rs in &refs {
            let mut o = Vec::with_capacity(rs.len());
            for r in rs {
                o.push(total);
                total += model.weights().get(*r).len().div_ceil(128) * 128;
            }
            offsets.push(o);
        }
        let mut staging = std::vec![f16::ZERO; total.max(1)];
        for (rs, os) in refs.iter().zip(&offsets) {
            for (r, &o) in rs.iter().zip(os) {
                let w = model.weights().get(*r);
                staging[o..o + w.len()].copy_from_slice(w);
            }
        }
        let weights = DevBuf::new(&ctx, staging.len() * 2)?;
        // SAFETY: the buffer holds staging.len() f16; the copy completes before the
        // synchronize below returns.
        cu(
            unsafe { result::memcpy_htod_async(weights.ptr, &staging, stream.cu_stream()) },
            "upload weights",
        )?;
        cu(stream.synchronize(), "upload weights")?;
        let wptr = offsets
            .iter()
            .map(|os| os.iter().map(|&o| weights.ptr + 2 * o as u64).collect())
            .collect();
        Ok(CudaBackend {
            ordinal,
            name,
            arch,
            inner: Mutex::new(Inner {
                ctx,
                stream,
                f,
                _weights: weights,
                wptr,
                session: None,
            }),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The GPU's name, as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// The NVRTC architecture the kernels were compiled for (e.g. `sm_90`).
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    pub(super) fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let g = self
            .inner
            .lock()
            .map_err(|_| device_err("the CUDA state was poisoned by a panic"))?;
        cu(g.ctx.bind_to_thread(), "bind context")?;
        Ok(g)
    }

    /// Device workspace bytes for a batch and a step count (what [`Session`] allocates).
    pub fn workspace_bytes(model: &Model, batch: usize, steps: usize) -> usize {
        session_layout(model, batch, steps).1
    }
}

impl Accelerator for CudaBackend {
    fn device_kind(&self) -> &'static str {
        "cuda"
    }

    fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// [`Model::forward`] on the GPU: inputs copied in, eps copied out.
    fn forward(
        &self,
        model: &Model,
        batch: usize,
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
    ) -> Result<()> {
        let mut g = self.lock()?;
        let inner = &mut *g;
        inner.ensure_session(model, batch, 0)?;
        let s = inner.session.as_mut().expect("session");
        let st = inner.stream.cu_stream();
        s.host_ts.clear();
        s.host_ts.extend_from_slice(timesteps);
        s.host_labels.clear();
        if let Some(l) = class_labels {
            s.host_labels.extend(l.iter().map(|&v| v as i32));
        }
        // SAFETY: every destination was sized for `batch` by ensure_session; the host sources
        // are pageable, so each copy has consumed its source when the call returns.
        unsafe {
            cu(result::memcpy_htod_async(s.x, x, st), "copy x")?;
            cu(result::memcpy_htod_async(s.ts, &s.host_ts, st), "copy t")?;
            if !s.host_labels.is_empty() {
                cu(
                    result::memcpy_htod_async(s.labels, &s.host_labels, st),
                    "copy labels",
                )?;
            }
        }
        let (ts_per_sample, n_labels) = (
            (timesteps.len() != 1) as i32,
            class_labels.map_or(0, |l| l.len()) as i32,
        );
        let (sx, seps, sts, slab) = (s.x, s.eps, s.ts, s.labels);
        inner.enqueue_forward(
            model,
            batch,
            sx,
            sts,
            ts_per_sample,
            0,
            slab,
            n_labels,
            seps,
        )?;
        let s = inner.session.as_ref().expect("session");
        // SAFETY: out holds batch * c_out * h * w floats (checked by Model::forward), as does
        // the eps buffer; synchronize waits for the copy.
        unsafe { cu(result::memcpy_dtoh_async(out, s.eps, st), "copy eps")? };
        cu(inner.stream.synchronize(), "forward")?;
        Ok(())
    }

    /// [`Model::forward_ops`] on the GPU: the host arena (f32) goes to the device arena as
    /// f16, ops `ops` run, and the arena comes back (and `out`, if the range ends with the
    /// output op). For the per-op backend tests, not for speed.
    #[allow(clippy::too_many_arguments)]
    fn forward_ops(
        &self,
        model: &Model,
        ops: core::ops::Range<usize>,
        batch: usize,
        arena: &mut [f32],
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
    ) -> Result<()> {
        let mut g = self.lock()?;
        let inner = &mut *g;
        inner.ensure_session(model, batch, 0)?;
        let s = inner.session.as_mut().expect("session");
        let st = inner.stream.cu_stream();
        s.host_ts.clear();
        s.host_ts.extend_from_slice(timesteps);
        s.host_labels.clear();
        if let Some(l) = class_labels {
            s.host_labels.extend(l.iter().map(|&v| v as i32));
        }
        let mut staged: Vec<f16> = arena.iter().map(|&v| f16::from_f32(v)).collect();
        // SAFETY: the session arena holds plan.arena_len(batch) f16 (session_layout), which is
        // arena.len() (Model::forward_ops passes exactly that part of the workspace); x, the
        // timesteps and labels fit their buffers as in `forward`; the host sources are
        // pageable, so each copy has consumed its source when the call returns.
        unsafe {
            cu(
                result::memcpy_htod_async(s.arena, &staged, st),
                "copy arena",
            )?;
            cu(result::memcpy_htod_async(s.x, x, st), "copy x")?;
            cu(result::memcpy_htod_async(s.ts, &s.host_ts, st), "copy t")?;
            if !s.host_labels.is_empty() {
                cu(
                    result::memcpy_htod_async(s.labels, &s.host_labels, st),
                    "copy labels",
                )?;
            }
        }
        let ts_per_sample = (timesteps.len() != 1) as i32;
        let n_labels = class_labels.map_or(0, |l| l.len()) as i32;
        let (arena_ptr, x_ptr, ts_ptr, labels_ptr, eps) = (s.arena, s.x, s.ts, s.labels, s.eps);
        let writes_out = model.ops()[ops.clone()]
            .iter()
            .any(|o| matches!(o, Op::Output(_)));
        let inner: &Inner = inner;
        let mut launcher = CudaWalk {
            inner,
            model,
            batch,
            arena: arena_ptr,
            x: x_ptr,
            ts: ts_ptr,
            ts_per_sample,
            step: 0,
            labels: labels_ptr,
            n_labels,
            out: eps,
        };
        walk_range(model.ops(), ops, &mut launcher)?;
        // SAFETY: the same buffers as above, read back; synchronize waits for both copies.
        unsafe {
            cu(
                result::memcpy_dtoh_async(&mut staged, arena_ptr, st),
                "copy arena",
            )?;
            if writes_out {
                cu(result::memcpy_dtoh_async(out, eps, st), "copy eps")?;
            }
        }
        cu(inner.stream.synchronize(), "forward_ops")?;
        for (d, v) in arena.iter_mut().zip(&staged) {
            *d = v.to_f32();
        }
        Ok(())
    }

    fn sample(
        &self,
        model: &Model,
        scheduler: &Scheduler,
        opts: &SampleOptions<'_>,
        out: &mut [f32],
        on_step: Option<&mut dyn FnMut(&StepInfo<'_>)>,
    ) -> Result<()> {
        self.run_sample(model, scheduler, opts, out, on_step)
    }

    fn as_any(&self) -> &dyn core::any::Any {
        self
    }
}
