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

use core::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaGraph, CudaStream};
use half::f16;

use super::kernels;
use crate::error::{device_err, invalid_arg, unsupported, Error, Result};
use crate::kernels::ConvShape;
use crate::model::backend::{walk, walk_range, Accelerator, Backend};
use crate::model::{
    AttentionOp, ClassEmbeddingOp, ConvOp, GroupNormOp, Input, InputOp, LinearOp, Model, Op,
    OutputOp, SiluOp, SinusoidOp, TensorId,
};
use crate::schedule::{SampleOptions, StepInfo};
use crate::schedule::config::{PredictionType, SchedulerKind, VarianceType};
use crate::schedule::Scheduler;
use crate::weights::WeightRef;

fn cu<T>(r: core::result::Result<T, result::DriverError>, what: &str) -> Result<T> {
    r.map_err(|e| device_err(std::format!("{what}: {e:?}")))
}

/// Raw device memory (freed on drop).
struct DevBuf {
    ptr: u64,
    ctx: Arc<CudaContext>,
}

impl DevBuf {
    fn new(ctx: &Arc<CudaContext>, bytes: usize) -> Result<DevBuf> {
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

/// The kernel argument list of a launch: pointers to each argument value, which must live
/// until the launch call returns (use inside the launch statement).
macro_rules! kargs {
    ($($a:expr),* $(,)?) => { [$( (&$a) as *const _ as *mut c_void ),*] };
}

/// Matches `struct ConvParams` in kernels/conv.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct ConvParams {
    in_a: u64,
    in_b: u64,
    weight: u64,
    bias: u64,
    channel_add: u64,
    residual: u64,
    out: u64,
    batch: i32,
    in_h: i32,
    in_w: i32,
    ca: i32,
    cb: i32,
    out_c: i32,
    out_h: i32,
    out_w: i32,
    ksize: i32,
    stride: i32,
    pad_top: i32,
    pad_left: i32,
    upsample: i32,
    out_scale: f32,
    vec: i32,
}

struct Funcs {
    conv: CudaFunction,
    group_norm: CudaFunction,
    /// Entry points for head dimensions up to 128, 256 and 512.
    attention: [CudaFunction; 3],
    nchw_to_nhwc: CudaFunction,
    nhwc_to_nchw: CudaFunction,
    timestep_sinusoid: CudaFunction,
    silu: CudaFunction,
    class_embed_add: CudaFunction,
    guidance_combine: CudaFunction,
    gaussian_noise: CudaFunction,
    scheduler_step: CudaFunction,
    set_step: CudaFunction,
    advance_step: CudaFunction,
}

/// Largest head dimension the attention kernel supports (4 columns x 128 threads).
pub const MAX_HEAD_DIM: usize = 512;

fn attention_smem_bytes(d: usize) -> u32 {
    (3 * 16 * (d + 2) * 2 + (16 * 16 + 3 * 16) * 4) as u32
}

/// What a captured step graph depends on besides the session's buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GraphKey {
    generated_noise: bool,
    labels: bool,
    guidance: Option<(u32, i64)>,
    kind: i32,
    pred: i32,
    var: i32,
    clip: i32,
    clip_range: u64,
    clipped_eps: i32,
}

/// A captured step. CUDA graph handles are not tied to a thread; this one is only touched
/// under the backend's mutex, with the backend's context bound.
struct StepGraph(CudaGraph);

// SAFETY: see above: never used by two threads at once.
unsafe impl Send for StepGraph {}

/// The device workspace of one batch size.
struct Session {
    batch: usize,
    steps_cap: usize,
    _mem: DevBuf,
    arena: u64,
    x: u64,
    eps: u64,
    eps_uncond: u64,
    noise: u64,
    ts: u64,
    coef: u64,
    labels: u64,
    null_label: u64,
    step: u64,
    seed: u64,
    host_labels: Vec<i32>,
    host_ts: Vec<f32>,
    host_coef: Vec<f64>,
    graph: Option<(GraphKey, StepGraph)>,
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    f: Funcs,
    _weights: DevBuf,
    /// Device pointers of each op's weights, in the order of [`Op::weights`].
    wptr: Vec<Vec<u64>>,
    session: Option<Session>,
}

/// A model's GPU state (see the module docs).
pub struct CudaBackend {
    ordinal: usize,
    name: std::string::String,
    arch: &'static str,
    inner: Mutex<Inner>,
}

fn grid1(n: usize) -> (u32, u32, u32) {
    (n.div_ceil(256) as u32, 1, 1)
}

impl CudaBackend {
    /// Sets up GPU `ordinal` for `model`: loads the driver and NVRTC (a typed error, never a
    /// panic, when either is missing), compiles the kernels for the GPU's architecture and
    /// uploads the weights.
    pub fn new(model: &Model, ordinal: usize) -> Result<CudaBackend> {
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
            guidance_combine: func("elementwise.cu", "guidance_combine")?,
            gaussian_noise: func("elementwise.cu", "gaussian_noise")?,
            scheduler_step: func("elementwise.cu", "scheduler_step")?,
            set_step: func("elementwise.cu", "set_step")?,
            advance_step: func("elementwise.cu", "advance_step")?,
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

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
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

    /// [`Model::forward`] on the GPU: inputs copied in, eps copied out.
    fn run_forward(
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
    fn run_forward_ops(
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

    /// [`crate::sampler::sample`] on the GPU (after the sampler validated its arguments).
    fn run_sample(
        &self,
        model: &Model,
        scheduler: &Scheduler,
        opts: &SampleOptions<'_>,
        out: &mut [f32],
        mut on_step: Option<&mut dyn FnMut(&StepInfo<'_>)>,
    ) -> Result<()> {
        let cfg = scheduler.config();
        if cfg.thresholding {
            return Err(unsupported(
                "thresholding",
                "dynamic thresholding is not implemented on the CUDA backend (use the CPU)",
            ));
        }
        if cfg.kind == SchedulerKind::Ddim
            && !(scheduler.eta().is_finite() && scheduler.eta() >= 0.0)
        {
            return Err(invalid_arg(
                "eta",
                std::format!("{} must be finite and >= 0", scheduler.eta()),
            ));
        }
        let batch = opts.batch;
        let (c, h, w) = model.input_shape();
        let (c_out, _, _) = model.output_shape();
        let (per, n) = (c * h * w, batch * c * h * w);
        let learned = cfg.kind == SchedulerKind::Ddpm && cfg.variance_type.is_learned();
        if learned && c_out != 2 * c {
            return Err(Error::BufferSize {
                what: "model output [B, 2C, H, W] (learned variance)",
                expected: 2 * n,
                found: batch * c_out * h * w,
            });
        }
        let steps = scheduler.num_steps();
        let guidance = opts.guidance.filter(|g| g.scale != 0.0);
        let key = GraphKey {
            generated_noise: opts.step_noise.is_none()
                && (0..steps).any(|i| scheduler.needs_noise(i)),
            labels: opts.class_labels.is_some(),
            guidance: guidance.map(|g| (g.scale.to_bits(), g.null_class)),
            kind: match cfg.kind {
                SchedulerKind::Ddpm => 0,
                SchedulerKind::Ddim => 1,
            },
            pred: match cfg.prediction_type {
                PredictionType::Epsilon => 0,
                PredictionType::Sample => 1,
                PredictionType::VPrediction => 2,
            },
            var: match (cfg.kind, cfg.variance_type) {
                (SchedulerKind::Ddpm, VarianceType::Learned) => 1,
                (SchedulerKind::Ddpm, VarianceType::LearnedRange) => 2,
                _ => 0,
            },
            clip: cfg.clip_sample as i32,
            clip_range: cfg.clip_sample_range.to_bits(),
            clipped_eps: (cfg.kind == SchedulerKind::Ddim && cfg.use_clipped_model_output) as i32,
        };

        let mut g = self.lock()?;
        let inner = &mut *g;
        inner.ensure_session(model, batch, steps)?;
        let st = inner.stream.cu_stream();
        {
            let s = inner.session.as_mut().expect("session");
            s.host_ts.clear();
            s.host_ts
                .extend(scheduler.timesteps().iter().map(|&t| t as f32));
            s.host_coef.clear();
            for i in 0..steps {
                s.host_coef
                    .extend(scheduler.step_coefficients(i).expect("step in range"));
            }
            // Always one label per sample on the device, so the captured graph does not depend
            // on whether one label was given for all.
            s.host_labels.clear();
            if let Some(l) = opts.class_labels {
                s.host_labels
                    .extend((0..batch).map(|b| l[if l.len() == 1 { 0 } else { b }] as i32));
            }
            let null = [guidance.map_or(0, |g| g.null_class as i32)];
            let seed = [opts.seed];
            // SAFETY: destinations sized by ensure_session for (batch, steps); pageable
            // sources are consumed when each call returns.
            unsafe {
                cu(
                    result::memcpy_htod_async(s.ts, &s.host_ts, st),
                    "copy timesteps",
                )?;
                cu(
                    result::memcpy_htod_async(s.coef, &s.host_coef, st),
                    "copy scheduler coefficients",
                )?;
                if !s.host_labels.is_empty() {
                    cu(
                        result::memcpy_htod_async(s.labels, &s.host_labels, st),
                        "copy labels",
                    )?;
                }
                cu(
                    result::memcpy_htod_async(s.null_label, &null, st),
                    "copy label",
                )?;
                cu(result::memcpy_htod_async(s.seed, &seed, st), "copy seed")?;
                if let Some(x_t) = opts.initial_noise {
                    cu(result::memcpy_htod_async(s.x, x_t, st), "copy x_T")?;
                }
            }
        }
        let s = inner.session.as_ref().expect("session");
        let (sx, sseed, sstep) = (s.x, s.seed, s.step);
        if opts.initial_noise.is_none() {
            // Stream 0 is x_T.
            let (nn, null, base) = (n as i64, 0u64, 0u64);
            inner.launch(
                &inner.f.gaussian_noise,
                grid1(n.div_ceil(2)),
                256,
                0,
                &mut kargs![sx, nn, sseed, null, base],
            )?;
        }
        let zero = 0i32;
        inner.launch(&inner.f.set_step, (1, 1, 1), 1, 0, &mut kargs![sstep, zero])?;

        let have =
            matches!(&inner.session.as_ref().expect("session").graph, Some((k, _)) if *k == key);
        if !have {
            let s = inner.session.as_mut().expect("session");
            s.graph = None;
            let stream = inner.stream.clone();
            cu(
                stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                "begin graph capture",
            )?;
            let captured = inner.enqueue_step(model, batch, per, c_out * h * w, &key);
            let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
            captured?;
            let graph = cu(graph, "end graph capture")?
                .ok_or_else(|| device_err("graph capture produced no graph"))?;
            inner.session.as_mut().expect("session").graph = Some((key, StepGraph(graph)));
        }
        let s = inner.session.as_ref().expect("session");
        let graph = &s.graph.as_ref().expect("graph").1 .0;
        for i in 0..steps {
            if let (Some(z), true) = (opts.step_noise, scheduler.needs_noise(i)) {
                // SAFETY: the noise buffer holds n floats; the row is n floats (checked by
                // the sampler); the copy is ordered before the graph launch on the stream.
                unsafe {
                    cu(
                        result::memcpy_htod_async(s.noise, &z[i * n..(i + 1) * n], st),
                        "copy step noise",
                    )?
                };
            }
            cu(graph.launch(), "launch step graph")?;
            if let Some(cb) = on_step.as_mut() {
                // SAFETY: out holds n floats, as x does; synchronize completes the copy.
                unsafe { cu(result::memcpy_dtoh_async(out, s.x, st), "copy sample")? };
                cu(inner.stream.synchronize(), "sampling step")?;
                cb(&StepInfo {
                    index: i,
                    steps,
                    timestep: scheduler.timesteps()[i],
                    sample: out,
                });
            }
        }
        // SAFETY: as above.
        unsafe { cu(result::memcpy_dtoh_async(out, s.x, st), "copy x_0")? };
        cu(inner.stream.synchronize(), "sampling")?;
        Ok(())
    }
}

impl Accelerator for CudaBackend {
    fn device_kind(&self) -> &'static str {
        "cuda"
    }

    fn ordinal(&self) -> usize {
        self.ordinal
    }

    fn forward(
        &self,
        model: &Model,
        batch: usize,
        x: &[f32],
        timesteps: &[f32],
        class_labels: Option<&[i64]>,
        out: &mut [f32],
    ) -> Result<()> {
        self.run_forward(model, batch, x, timesteps, class_labels, out)
    }

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
        self.run_forward_ops(model, ops, batch, arena, x, timesteps, class_labels, out)
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

/// (offsets, total bytes) of a session's buffers: arena, x, eps, eps_uncond, noise, ts, coef,
/// labels, null_label, step, seed; each 256-byte aligned.
fn session_layout(model: &Model, batch: usize, steps: usize) -> ([usize; 11], usize) {
    let (c, h, w) = model.input_shape();
    let (c_out, _, _) = model.output_shape();
    let (n, n_out) = (batch * c * h * w, batch * c_out * h * w);
    let sizes = [
        model.plan.arena_len(batch) * 2,
        n * 4,
        n_out * 4,
        n_out * 4,
        n * 4,
        batch.max(steps) * 4,
        steps.max(1) * 8 * 8,
        batch * 4,
        4,
        4,
        8,
    ];
    let mut offs = [0usize; 11];
    let mut at = 0;
    for (o, s) in offs.iter_mut().zip(sizes) {
        *o = at;
        at += s.div_ceil(256) * 256;
    }
    (offs, at)
}

impl Inner {
    /// Makes sure the session fits `batch` exactly and at least `steps` steps; a new one is
    /// allocated (the old one freed) only when it does not.
    fn ensure_session(&mut self, model: &Model, batch: usize, steps: usize) -> Result<()> {
        if let Some(s) = &self.session {
            if s.batch == batch && s.steps_cap >= steps {
                return Ok(());
            }
        }
        let steps_cap = steps.max(self.session.as_ref().map_or(0, |s| s.steps_cap));
        cu(self.stream.synchronize(), "synchronize")?;
        self.session = None;
        let (offs, total) = session_layout(model, batch, steps_cap);
        let mem = DevBuf::new(&self.ctx, total)?;
        let p = |i: usize| mem.ptr + offs[i] as u64;
        let session = Session {
            batch,
            steps_cap,
            arena: p(0),
            x: p(1),
            eps: p(2),
            eps_uncond: p(3),
            noise: p(4),
            ts: p(5),
            coef: p(6),
            labels: p(7),
            null_label: p(8),
            step: p(9),
            seed: p(10),
            host_labels: Vec::with_capacity(batch),
            host_ts: Vec::with_capacity(batch.max(steps_cap)),
            host_coef: Vec::with_capacity(8 * steps_cap),
            graph: None,
            _mem: mem,
        };
        self.session = Some(session);
        Ok(())
    }

    fn launch(
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

    /// One sampling step, as captured into the graph.
    fn enqueue_step(
        &self,
        model: &Model,
        batch: usize,
        per: usize,
        stride: usize,
        key: &GraphKey,
    ) -> Result<()> {
        let s = self.session.as_ref().expect("session");
        let n = batch * per;
        if key.generated_noise {
            // Stream i + 1 is the noise of step i.
            let (nn, base) = (n as i64, 1u64);
            self.launch(
                &self.f.gaussian_noise,
                grid1(n.div_ceil(2)),
                256,
                0,
                &mut kargs![s.noise, nn, s.seed, s.step, base],
            )?;
        }
        let n_labels = if key.labels {
            s.host_labels.len() as i32
        } else {
            0
        };
        self.enqueue_forward(
            model, batch, s.x, s.ts, 0, s.step, s.labels, n_labels, s.eps,
        )?;
        if let Some((scale_bits, _)) = key.guidance {
            self.enqueue_forward(
                model,
                batch,
                s.x,
                s.ts,
                0,
                s.step,
                s.null_label,
                1,
                s.eps_uncond,
            )?;
            let (c, h, w) = model.input_shape();
            let (c_out, _, _) = model.output_shape();
            let (scale, b, co, ci, hw) = (
                f32::from_bits(scale_bits),
                batch as i32,
                c_out as i32,
                c as i32,
                (h * w) as i32,
            );
            self.launch(
                &self.f.guidance_combine,
                grid1(batch * c * h * w),
                256,
                0,
                &mut kargs![s.eps, s.eps_uncond, scale, b, co, ci, hw],
            )?;
        }
        // Read only on steps that draw noise (generated above or copied in before launch).
        let z = s.noise;
        let clip_range = f64::from_bits(key.clip_range);
        let (per_l, stride_l, n_l) = (per as i64, stride as i64, n as i64);
        self.launch(
            &self.f.scheduler_step,
            grid1(n),
            256,
            0,
            &mut kargs![
                s.x,
                s.eps,
                z,
                s.coef,
                s.step,
                key.kind,
                key.pred,
                key.var,
                key.clip,
                clip_range,
                key.clipped_eps,
                per_l,
                stride_l,
                n_l
            ],
        )?;
        self.launch(&self.f.advance_step, (1, 1, 1), 1, 0, &mut kargs![s.step])
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &self,
        shape: &ConvShape,
        in_a: u64,
        in_b: u64,
        w: &[u64],
        channel_add: u64,
        residual: u64,
        out: u64,
        out_scale: f32,
    ) -> Result<()> {
        let s = shape;
        let m = s.batch * s.out_h * s.out_w;
        if m > i32::MAX as usize || s.kernel * s.kernel * s.in_c() > i32::MAX as usize {
            return Err(invalid_arg("batch", "too large for the CUDA conv kernel"));
        }
        let vec = s.in_ca.is_multiple_of(8)
            && s.in_cb.is_multiple_of(8)
            && in_a.is_multiple_of(16)
            && (s.in_cb == 0 || in_b.is_multiple_of(16));
        let p = ConvParams {
            in_a,
            in_b,
            weight: w[0],
            bias: w[1],
            channel_add,
            residual,
            out,
            batch: s.batch as i32,
            in_h: s.in_h as i32,
            in_w: s.in_w as i32,
            ca: s.in_ca as i32,
            cb: s.in_cb as i32,
            out_c: s.out_c as i32,
            out_h: s.out_h as i32,
            out_w: s.out_w as i32,
            ksize: s.kernel as i32,
            stride: s.stride as i32,
            pad_top: s.pad_top as i32,
            pad_left: s.pad_left as i32,
            upsample: s.upsample as i32,
            out_scale,
            vec: vec as i32,
        };
        let grid = (m.div_ceil(64) as u32, s.out_c.div_ceil(64) as u32, 1);
        self.launch(&self.f.conv, grid, 128, 0, &mut kargs![p])
    }

    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        rows: usize,
        in_f: usize,
        out_f: usize,
        input: u64,
        w: &[u64],
        residual: u64,
        out: u64,
        out_scale: f32,
    ) -> Result<()> {
        let shape = ConvShape {
            batch: 1,
            in_h: rows,
            in_w: 1,
            in_ca: in_f,
            in_cb: 0,
            out_c: out_f,
            out_h: rows,
            out_w: 1,
            kernel: 1,
            stride: 1,
            pad_top: 0,
            pad_left: 0,
            upsample: false,
        };
        self.conv(&shape, input, 0, w, 0, residual, out, out_scale)
    }

    #[allow(clippy::too_many_arguments)]
    fn group_norm(
        &self,
        batch: usize,
        pixels: usize,
        ca: usize,
        cb: usize,
        groups: usize,
        eps: f32,
        in_a: u64,
        in_b: u64,
        gamma_beta: &[u64],
        silu: bool,
        out: u64,
    ) -> Result<()> {
        let (px, a, b, g, si) = (
            pixels as i32,
            ca as i32,
            cb as i32,
            groups as i32,
            silu as i32,
        );
        self.launch(
            &self.f.group_norm,
            (groups as u32, batch as u32, 1),
            256,
            0,
            &mut kargs![
                in_a,
                in_b,
                gamma_beta[0],
                gamma_beta[1],
                out,
                px,
                a,
                b,
                g,
                eps,
                si
            ],
        )
    }

    /// The op list on the device. `x` (NCHW f32) in, `out` (NCHW f32 eps) out; the timestep of
    /// sample b is `ts[(*step if step != 0) + b * ts_per_sample]`; `labels` (i32, `n_labels`
    /// of them, 1 = broadcast) for class-conditional models.
    #[allow(clippy::too_many_arguments)]
    fn enqueue_forward(
        &self,
        model: &Model,
        batch: usize,
        x: u64,
        ts: u64,
        ts_per_sample: i32,
        step: u64,
        labels: u64,
        n_labels: i32,
        out: u64,
    ) -> Result<()> {
        let arena = self.session.as_ref().expect("session").arena;
        let mut launcher = CudaWalk {
            inner: self,
            model,
            batch,
            arena,
            x,
            ts,
            ts_per_sample,
            step,
            labels,
            n_labels,
            out,
        };
        walk(model.ops(), &mut launcher)
    }
}

/// The CUDA backend of the one walk: each op enqueues its kernel on the backend's stream.
/// Tensors live in the session's f16 arena at the memory plan's offsets (2 bytes an element).
struct CudaWalk<'a> {
    inner: &'a Inner,
    model: &'a Model,
    batch: usize,
    arena: u64,
    x: u64,
    ts: u64,
    ts_per_sample: i32,
    step: u64,
    labels: u64,
    n_labels: i32,
    out: u64,
}

impl CudaWalk<'_> {
    fn t(&self, id: TensorId) -> u64 {
        self.arena + 2 * self.model.plan.region(id, self.batch).0 as u64
    }
    fn opt(&self, id: Option<TensorId>) -> u64 {
        id.map_or(0, |id| self.t(id))
    }
    fn pair(&self, i: Input) -> (u64, u64) {
        (self.t(i.first()), self.opt(i.second()))
    }
    fn weights(&self, at: usize) -> &[u64] {
        &self.inner.wptr[at]
    }
}

impl Backend for CudaWalk<'_> {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn input(&mut self, _: usize, op: &InputOp) -> Result<()> {
        let (b32, c, hw, ce, dst) = (
            self.batch as i32,
            op.channels as i32,
            (op.height * op.width) as i32,
            op.center as i32,
            self.t(op.out),
        );
        let x = self.x;
        self.inner.launch(
            &self.inner.f.nchw_to_nhwc,
            grid1(self.batch * op.channels * op.height * op.width),
            256,
            0,
            &mut kargs![x, dst, b32, c, hw, ce],
        )
    }

    fn sinusoid(&mut self, _: usize, op: &SinusoidOp) -> Result<()> {
        let (ts, step, per, dst) = (self.ts, self.step, self.ts_per_sample, self.t(op.out));
        let (b32, dim, flip, shift) = (
            self.batch as i32,
            op.dim as i32,
            op.flip_sin_to_cos as i32,
            op.freq_shift,
        );
        self.inner.launch(
            &self.inner.f.timestep_sinusoid,
            grid1(self.batch * op.dim),
            256,
            0,
            &mut kargs![ts, step, per, dst, b32, dim, flip, shift],
        )
    }

    fn linear(&mut self, at: usize, op: &LinearOp) -> Result<()> {
        self.inner.linear(
            self.batch * op.rows,
            op.in_f,
            op.out_f,
            self.t(op.input),
            self.weights(at),
            self.opt(op.residual),
            self.t(op.out),
            op.out_scale,
        )
    }

    fn silu(&mut self, _: usize, op: &SiluOp) -> Result<()> {
        let (src, dst, n) = (
            self.t(op.input),
            self.t(op.out),
            (self.batch * op.len) as i64,
        );
        self.inner.launch(
            &self.inner.f.silu,
            grid1(self.batch * op.len),
            256,
            0,
            &mut kargs![src, dst, n],
        )
    }

    fn class_embedding(&mut self, at: usize, op: &ClassEmbeddingOp) -> Result<()> {
        let (src, dst, table) = (self.t(op.input), self.t(op.out), self.weights(at)[0]);
        let (labels, nl, b32, e32) = (self.labels, self.n_labels, self.batch as i32, op.dim as i32);
        self.inner.launch(
            &self.inner.f.class_embed_add,
            grid1(self.batch * op.dim),
            256,
            0,
            &mut kargs![src, dst, table, labels, nl, b32, e32],
        )
    }

    fn conv(&mut self, at: usize, op: &ConvOp) -> Result<()> {
        let (a, b) = self.pair(op.input);
        let shape = ConvShape {
            batch: self.batch,
            ..op.shape
        };
        self.inner.conv(
            &shape,
            a,
            b,
            self.weights(at),
            self.opt(op.channel_add),
            self.opt(op.residual),
            self.t(op.out),
            op.out_scale,
        )
    }

    fn group_norm(&mut self, at: usize, op: &GroupNormOp) -> Result<()> {
        let (a, b) = self.pair(op.input);
        self.inner.group_norm(
            self.batch,
            op.pixels,
            op.in_ca,
            op.in_cb,
            op.groups,
            op.eps,
            a,
            b,
            self.weights(at),
            op.silu,
            self.t(op.out),
        )
    }

    fn attention(&mut self, _: usize, op: &AttentionOp) -> Result<()> {
        let (q, k, v, attended) = (self.t(op.q), self.t(op.k), self.t(op.v), self.t(op.out));
        let d = op.channels / op.heads;
        let (nt, c32, h32, scale) = (
            op.tokens as i32,
            op.channels as i32,
            op.heads as i32,
            1.0 / (d as f32).sqrt(),
        );
        let f = &self.inner.f;
        let entry = match d {
            0..=128 => &f.attention[0],
            129..=256 => &f.attention[1],
            _ => &f.attention[2],
        };
        self.inner.launch(
            entry,
            (
                op.tokens.div_ceil(16) as u32,
                op.heads as u32,
                self.batch as u32,
            ),
            128,
            attention_smem_bytes(d),
            &mut kargs![q, k, v, attended, nt, c32, h32, scale],
        )
    }

    fn output(&mut self, _: usize, op: &OutputOp) -> Result<()> {
        let (src, out, b32, c, hw) = (
            self.t(op.input),
            self.out,
            self.batch as i32,
            op.channels as i32,
            (op.height * op.width) as i32,
        );
        self.inner.launch(
            &self.inner.f.nhwc_to_nchw,
            grid1(self.batch * op.channels * op.height * op.width),
            256,
            0,
            &mut kargs![src, out, b32, c, hw],
        )
    }
}
