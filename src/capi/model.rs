//! Models: loading (from a folder or from memory), device, info, one raw evaluation.

use core::ffi::c_char;
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use super::pointers::{
    check_batch, check_disjoint, check_out_len, check_workspace_len, model_ref, slice, slice_mut,
    text, write_out, Span,
};
use super::{
    fail, guard, invalid, null, td_device_kind, td_model, td_model_info, td_precision,
    td_scheduler_kind, td_status, Fail,
};
use crate::model::load::ModelFiles;
use crate::model::Model;
use crate::schedule::{SchedulerConfig, SchedulerKind};
use crate::weights::WeightBytes;

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

fn path_from_c(dir: &CStr) -> Result<PathBuf, Fail> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        dir.to_str()
            .map(PathBuf::from)
            .map_err(|_| invalid("dir is not UTF-8"))
    }
}

pub(super) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Loads a model folder: a diffusers `UNet2DModel` folder (`config.json`,
/// `diffusion_pytorch_model.safetensors`, optional `scheduler_config.json`) or a pipeline
/// folder (`model_index.json`, `unet/`, `scheduler/`). The weights are memory-mapped, never
/// copied (f32/bf16 weights are rounded to f16 once here). The scheduler config is the
/// folder's, or diffusers' `DDPMScheduler()` defaults when it has none.
///
/// `dir` is a NUL-terminated path (bytes on Unix, UTF-8 elsewhere). On success `*out_model`
/// is the new model (free it with `td_model_free`); on failure it is set to NULL when
/// `out_model` is not NULL. Errors: `TD_STATUS_IO`, `_INVALID_JSON`, `_INVALID_CONFIG`,
/// `_UNSUPPORTED`, `_INVALID_WEIGHTS`, `_NULL_POINTER`. Thread-safe.
///
/// The model starts (cores - 1) worker threads here, cores = the CPUs the process may use;
/// they end in `td_model_free` (see `td_model_set_threads`). `td_model_from_memory` does the
/// same.
///
/// # Safety
/// `dir` is NULL or a NUL-terminated string; `out_model` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_model_load(
    dir: *const c_char,
    out_model: *mut *mut td_model,
) -> td_status {
    guard(|| {
        // SAFETY: writable out-pointer per the contract (NULL and alignment checked).
        unsafe { write_out(out_model, core::ptr::null_mut(), "out_model") }?;
        if dir.is_null() {
            return Err(null("dir"));
        }
        // SAFETY: non-NULL and NUL-terminated per the contract.
        let path = path_from_c(unsafe { CStr::from_ptr(dir) })?;
        let files = ModelFiles::find(&path)?;
        let scheduler_config = files.load_scheduler_config()?;
        let model = Model::load(&path)?;
        let handle = into_handle(td_model {
            model,
            scheduler_config,
            borrowed: None,
        });
        // SAFETY: checked above.
        unsafe { out_model.write(handle) };
        Ok(())
    })
}

/// Builds a model from memory, with no file system: the bytes of a safetensors weights file,
/// the text of its `config.json` and optionally of its `scheduler_config.json` (NULL with
/// length 0: diffusers' `DDPMScheduler()` defaults). Texts are UTF-8 of the given length (no
/// NUL needed).
///
/// The weights are NOT copied: f16 tensors are used in place (f32/bf16 ones are rounded to f16
/// into a buffer the model owns). The `weights` bytes must stay valid and unmodified until
/// `td_model_free`, and should be at least 8-byte aligned (any `malloc` result is): f16 data
/// at an odd address gives `TD_STATUS_INVALID_WEIGHTS`, whose message says whether the
/// buffer's address is to blame (pass an aligned buffer) or the file's layout (rewrite it with
/// `sample convert`). The JSON texts are only read during the call.
///
/// On success `*out_model` is the new model; on failure it is set to NULL when `out_model` is
/// not NULL. Thread-safe (several threads may even share one weights buffer).
///
/// # Safety
/// Each pointer is NULL or points to its length in readable bytes; `weights` stays valid and
/// unmodified until `td_model_free` of the returned model; `out_model` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_model_from_memory(
    weights: *const u8,
    weights_len: usize,
    config_json: *const c_char,
    config_len: usize,
    scheduler_json: *const c_char,
    scheduler_len: usize,
    out_model: *mut *mut td_model,
) -> td_status {
    guard(|| {
        // SAFETY: writable out-pointer per the contract (NULL and alignment checked).
        unsafe { write_out(out_model, core::ptr::null_mut(), "out_model") }?;
        let weights_span = Span::of(weights, weights_len, "weights")?;
        // SAFETY: checked pointer and length; readable for the call per the contract.
        let config = unsafe { text(config_json, config_len, "config.json") }?;
        let scheduler_config =
            match Span::optional(scheduler_json as *const u8, scheduler_len, "scheduler_json")? {
                // SAFETY: as for `config`.
                Some(_) => SchedulerConfig::from_json(unsafe {
                    text(scheduler_json, scheduler_len, "scheduler_config.json")
                }?)?,
                None => SchedulerConfig::ddpm_default(),
            };
        // SAFETY: the caller guarantees the bytes stay valid and unmodified until
        // `td_model_free` drops the model, the only owner of this slice: `'static` stands for
        // "as long as the model lives", and no reference to the bytes escapes the model.
        let bytes: &'static [u8] = unsafe { slice(weights_span) };
        let model = Model::from_parts(config, WeightBytes::Static(bytes))?;
        let borrowed = Some((weights_span.addr, weights_span.bytes));
        let handle = into_handle(td_model {
            model,
            scheduler_config,
            borrowed,
        });
        // SAFETY: checked above.
        unsafe { out_model.write(handle) };
        Ok(())
    })
}

/// Frees a model (NULL is ignored). No other thread may be using it, and schedulers made from
/// it stay valid (they do not refer to it).
///
/// # Safety
/// `model` is NULL or a model not yet freed.
#[no_mangle]
pub unsafe extern "C" fn td_model_free(model: *mut td_model) {
    if model.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a pointer from `Box::into_raw` in a constructor, freed once per the contract.
        drop(unsafe { Box::from_raw(model) });
    }));
}

/// Moves a model to a device: `TD_DEVICE_KIND_CPU`, or `TD_DEVICE_KIND_CUDA` with the GPU's
/// `ordinal` (0 for the first). On a GPU the kernels are compiled and the weights uploaded
/// here, once; every later call (`td_model_eval`, `td_sample`, ...) runs there with the same
/// arguments and workspace sizes. Errors: `TD_STATUS_DEVICE_UNAVAILABLE` (no CUDA driver or
/// NVRTC, no such GPU, a library built without CUDA; the model then stays where it was),
/// `_INVALID_ARGUMENT` (unknown device, negative ordinal), `_UNSUPPORTED` (a model the GPU
/// kernels cannot run). Not thread-safe: no other call may use `model` meanwhile.
///
/// # Safety
/// `model` is NULL or a live model that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn td_model_set_device(
    model: *mut td_model,
    device: i32,
    ordinal: i32,
) -> td_status {
    guard(|| {
        // SAFETY: NULL or a live, unshared model per the contract.
        let m = unsafe { model.as_mut() }.ok_or_else(|| null("model"))?;
        let device = match device {
            d if d == td_device_kind::Cpu as i32 => crate::Device::Cpu,
            d if d == td_device_kind::Cuda as i32 => {
                let i = usize::try_from(ordinal)
                    .map_err(|_| invalid(std::format!("device ordinal {ordinal} is negative")))?;
                crate::Device::Cuda(i)
            }
            d => return Err(invalid(std::format!("unknown device kind {d}"))),
        };
        m.model.to_device(device)?;
        Ok(())
    })
}

/// Sets the arithmetic of the model's CPU forward passes: `TD_PRECISION_F32` (the default)
/// or `TD_PRECISION_F16` (f16 arithmetic in convolutions and linears, a few 1e-3 relative
/// error per forward pass). Errors: `TD_STATUS_UNSUPPORTED` (f16 on a CPU without f16
/// arithmetic, which needs aarch64 FEAT_FP16; the model is unchanged),
/// `_INVALID_ARGUMENT` (unknown precision), `_NULL_POINTER`. F16 runs no Winograd convolutions, so
/// `td_model_workspace_len` may shrink; a workspace sized before the call still fits.
/// Not thread-safe: no other call may use `model` meanwhile.
///
/// # Safety
/// `model` is NULL or a live model that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn td_model_set_precision(model: *mut td_model, precision: i32) -> td_status {
    guard(|| {
        // SAFETY: NULL or a live, unshared model per the contract.
        let m = unsafe { model.as_mut() }.ok_or_else(|| null("model"))?;
        let precision = match precision {
            p if p == td_precision::F32 as i32 => crate::Precision::F32,
            p if p == td_precision::F16 as i32 => crate::Precision::F16,
            p => return Err(invalid(std::format!("unknown precision {p}"))),
        };
        m.model.set_precision(precision)?;
        Ok(())
    })
}

/// Sets the number of threads the model's forward passes use: `threads` in 1..=1024, or 0 for
/// every core the process may use (the default at load). The model's team of (threads - 1)
/// worker threads is replaced here, once (the old workers end, the new ones start); they
/// sleep while the model is idle and end in `td_model_free`. Errors:
/// `TD_STATUS_INVALID_ARGUMENT` (more than 1024, or the threads cannot be started: the model
/// then runs on the calling thread alone), `_NULL_POINTER`. A workspace sized with
/// `td_sampler_desc.threads` = 0 or `td_model_workspace_len` depends on this count; one
/// sized for an explicit `td_sampler_desc.threads` does not. Not thread-safe: no other call
/// may use `model` meanwhile.
///
/// # Safety
/// `model` is NULL or a live model that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn td_model_set_threads(model: *mut td_model, threads: usize) -> td_status {
    guard(|| {
        // SAFETY: NULL or a live, unshared model per the contract.
        let m = unsafe { model.as_mut() }.ok_or_else(|| null("model"))?;
        m.model.set_threads(threads)?;
        Ok(())
    })
}

/// diffusers' `clip_skip` for a text-to-image pipeline loaded with `td_model_load`: the
/// prompts' states become the text encoder's hidden state `clip_skip` layers before the last
/// (through its final LayerNorm); the negative prompts keep the last hidden state, as diffusers'
/// `encode_prompt` does. 0 (the default) is the last hidden state. Loads the text encoder
/// again for that layer. `TD_STATUS_INVALID_ARGUMENT`: not a text-to-image pipeline loaded
/// from a folder, or more layers than the encoder has (the message names `clip_skip`);
/// `TD_STATUS_NULL_POINTER`. Workspace sizes do not grow. Not thread-safe: no other call may use `model` meanwhile.
///
/// # Safety
/// `model` is NULL or a live model that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn td_model_set_clip_skip(
    model: *mut td_model,
    clip_skip: usize,
) -> td_status {
    guard(|| {
        // SAFETY: NULL or a live, unshared model per the contract.
        let m = unsafe { model.as_mut() }.ok_or_else(|| null("model"))?;
        m.model.set_clip_skip(clip_skip)?;
        Ok(())
    })
}

/// `*out_threads` = the number of threads the model's forward passes use (the caller and
/// `*out_threads - 1` workers). Thread-safe.
///
/// # Safety
/// `model` is NULL or a live model; `out_threads` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_model_get_threads(
    model: *const td_model,
    out_threads: *mut usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        unsafe { write_out(out_threads, m.model.threads(), "out_threads") }
    })
}

/// Fills `*out_info` with the model's shapes and sizes. Thread-safe.
///
/// # Safety
/// `model` is NULL or a live model; `out_info` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_model_get_info(
    model: *const td_model,
    out_info: *mut td_model_info,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        let (c, h, w) = m.model.input_shape();
        let (c_out, _, _) = m.model.output_shape();
        let info = td_model_info {
            in_channels: c,
            out_channels: c_out,
            height: h,
            width: w,
            sample_len: c * h * w,
            num_classes: m.model.config.num_class_embeds.unwrap_or(0),
            parameters: m.model.parameters(),
            flops_per_sample: m.model.flops_per_sample(),
            scheduler_kind: match m.scheduler_config.kind {
                SchedulerKind::Ddpm => td_scheduler_kind::Ddpm as i32,
                SchedulerKind::Ddim => td_scheduler_kind::Ddim as i32,
                SchedulerKind::Euler => td_scheduler_kind::Euler as i32,
                SchedulerKind::EulerAncestral => td_scheduler_kind::EulerAncestral as i32,
                SchedulerKind::DpmSolverMultistep => td_scheduler_kind::DpmSolverMultistep as i32,
                SchedulerKind::Heun => td_scheduler_kind::Heun as i32,
                SchedulerKind::UniPcMultistep => td_scheduler_kind::UniPcMultistep as i32,
                SchedulerKind::Pndm => td_scheduler_kind::Pndm as i32,
                SchedulerKind::Lms => td_scheduler_kind::Lms as i32,
                SchedulerKind::DpmSolverSinglestep => td_scheduler_kind::DpmSolverSinglestep as i32,
                SchedulerKind::Kdpm2 => td_scheduler_kind::Kdpm2 as i32,
                SchedulerKind::Kdpm2Ancestral => td_scheduler_kind::Kdpm2Ancestral as i32,
                SchedulerKind::DeisMultistep => td_scheduler_kind::DeisMultistep as i32,
                SchedulerKind::Ipndm => td_scheduler_kind::Ipndm as i32,
                SchedulerKind::ScoreSdeVe => td_scheduler_kind::ScoreSdeVe as i32,
                SchedulerKind::CmStochasticIterative => td_scheduler_kind::Consistency as i32,
                SchedulerKind::Lcm => td_scheduler_kind::Lcm as i32,
                SchedulerKind::Tcd => td_scheduler_kind::Tcd as i32,
            },
            num_train_timesteps: m.scheduler_config.num_train_timesteps,
            image_channels: m.model.image_shape().0,
            image_height: m.model.image_shape().1,
            image_width: m.model.image_shape().2,
            image_len: {
                let (ic, ih, iw) = m.model.image_shape();
                ic * ih * iw
            },
        };
        // SAFETY: contract above.
        unsafe { write_out(out_info, info, "out_info") }
    })
}

/// `*out_floats` = the exact number of floats of workspace one `td_model_eval` at `batch`
/// needs. It is sized for the model's thread count (`td_model_set_threads`; by default every
/// core the process may use), so it depends on the machine. Thread-safe.
///
/// # Safety
/// `model` is NULL or a live model; `out_floats` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_model_workspace_len(
    model: *const td_model,
    batch: usize,
    out_floats: *mut usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        check_batch(&m.model, batch)?;
        // SAFETY: contract above.
        unsafe { write_out(out_floats, m.model.workspace_len(batch), "out_floats") }
    })
}

/// One model evaluation: `out = eps_theta(x, t[, class_labels])`, all NCHW floats.
///
/// - `x`: `[batch, in_channels, H, W]`; `x_len` a non-zero multiple of `sample_len` gives batch.
/// - `timesteps`: `n_timesteps` = batch (one each) or 1 (for all); finite, may be fractional.
/// - `class_labels`: `n_labels` = batch or 1; required exactly for class-conditional models
///   (NULL with 0 otherwise).
/// - `out`: exactly `[batch, out_channels, H, W]`.
/// - `workspace`: at least `td_model_workspace_len(batch)` floats; its contents are scratch.
///
/// No allocation. Thread-safe for one model as long as each thread has its own workspace and
/// output; `workspace` and `out` must not overlap any other buffer.
///
/// # Safety
/// Each pointer is NULL or points to its length in floats (labels: int64), readable (and
/// writable for `workspace`, `out`), not modified by other threads during the call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn td_model_eval(
    model: *const td_model,
    workspace: *mut f32,
    workspace_len: usize,
    x: *const f32,
    x_len: usize,
    timesteps: *const f32,
    n_timesteps: usize,
    class_labels: *const i64,
    n_labels: usize,
    out: *mut f32,
    out_len: usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        let ws = Span::of(workspace as *const f32, workspace_len, "workspace")?;
        let x_span = Span::of(x, x_len, "x")?;
        let t_span = Span::of(timesteps, n_timesteps, "timesteps")?;
        let labels_span = Span::optional(class_labels, n_labels, "class_labels")?;
        let out_span = Span::of(out as *const f32, out_len, "out")?;

        let (c, h, w) = m.model.input_shape();
        let (c_out, _, _) = m.model.output_shape();
        let per = c * h * w;
        if x_len == 0 || !x_len.is_multiple_of(per) {
            return Err(fail(
                td_status::BadSize,
                std::format!("x: {x_len} floats is not a multiple of {per} (C*H*W)"),
            ));
        }
        let batch = x_len / per;
        check_batch(&m.model, batch)?;
        check_out_len("out", out_len, batch * c_out * h * w)?;
        if n_timesteps != batch && n_timesteps != 1 {
            return Err(fail(
                td_status::BadSize,
                std::format!("timesteps: {n_timesteps}, expected {batch} or 1"),
            ));
        }
        if labels_span.is_some() && n_labels != batch && n_labels != 1 {
            return Err(fail(
                td_status::BadSize,
                std::format!("class_labels: {n_labels}, expected {batch} or 1"),
            ));
        }
        check_workspace_len(workspace_len, m.model.workspace_len(batch))?;
        let labels_span = labels_span.unwrap_or(Span::EMPTY);
        let weights = m
            .borrowed
            .map_or(Span::EMPTY, |(addr, bytes)| Span { addr, bytes });
        check_disjoint(
            &[(ws, "workspace"), (out_span, "out")],
            &[
                (x_span, "x"),
                (t_span, "timesteps"),
                (labels_span, "class_labels"),
                (weights, "the model's weights"),
            ],
        )?;
        // SAFETY: every span was checked (NULL, alignment, size) above and the written ones are
        // disjoint from all others; validity for the call is the caller's contract.
        let (ws, x, ts, out) = unsafe {
            (
                slice_mut::<f32>(ws),
                slice::<f32>(x_span),
                slice::<f32>(t_span),
                slice_mut::<f32>(out_span),
            )
        };
        // SAFETY: as above (absent labels: an empty span is never read).
        let labels = (!class_labels.is_null()).then(|| unsafe { slice::<i64>(labels_span) });
        m.model.forward(ws, x, ts, labels, out)?;
        Ok(())
    })
}
