//! The C API: the `extern "C"` functions of `libtinydiffusion.a`, declared for C in
//! `include/tinydiffusion.h` (generated from this file by cbindgen; `tests/c_header.rs` fails
//! when the committed header is stale).
//!
//! The static library itself is built by the `tinydiffusion-capi` package (`capi/`), which only
//! re-exports this module: a `staticlib` crate type on this crate would make every build of it,
//! including the `no_std` one and every crate depending on it, a final artifact that needs an
//! allocator and a panic handler.
//!
//! Rules every function here follows:
//! - Every pointer and length is checked before use: NULL gives [`td_status::NullPointer`], a
//!   buffer the library writes that is too small [`td_status::BufferTooSmall`], any other
//!   length that is not the one required [`td_status::BadSize`], a misaligned pointer or
//!   buffers that overlap where one is written [`td_status::InvalidArgument`].
//! - No panic crosses the boundary: each body runs under `catch_unwind` and a panic (a bug)
//!   becomes [`td_status::Internal`].
//! - Values C may set to anything (enum-like fields, flags) are plain integers here, checked,
//!   never Rust enums (an out-of-range discriminant would be undefined behaviour).
//! - The caller owns all memory it passes; handles are freed with their `_free` function;
//!   nothing needs libc `free`.
//! - Errors leave a detail message in thread-local storage ([`td_last_error_message`]),
//!   allocated only on the error path: a successful [`td_sample_with_scheduler`] or
//!   [`td_model_eval`] allocates nothing.
//!
//! Only with the `std` feature (it needs `catch_unwind` and thread-local storage); a `no_std`
//! build has no C API and uses the Rust API ([`Model::from_parts`], [`sampler::sample`]).
#![allow(non_camel_case_types)]

use core::ffi::c_char;
use std::cell::RefCell;
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use crate::error::Error;
use crate::model::load::{read_text, ModelFiles};
use crate::model::Model;
use crate::sampler::{self, Guidance, Method, SampleOptions};
use crate::schedule::{
    DdimPrevTimestep, Predictor, Scheduler, SchedulerConfig, SchedulerKind, SdeConfig, SdeSampler,
};
use crate::weights::WeightBytes;

// ---------------------------------------------------------------------------------------------
// Types shared with C
// ---------------------------------------------------------------------------------------------

/// What every fallible function returns. `TD_STATUS_OK` (0) is success. On any other value
/// the function has left its outputs unchanged, except where it says so (handle outputs are
/// set to NULL; a workspace is scratch either way), and `td_last_error_message` gives the
/// detail.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum td_status {
    /// Success.
    Ok = 0,
    /// A required pointer is NULL (or a pointer is NULL while its length is not 0).
    NullPointer = 1,
    /// A buffer the library writes (workspace, output, message) is smaller than required.
    BufferTooSmall = 2,
    /// A length is not the one required (inputs of the wrong size, an output larger than the
    /// exact size, a batch too large to address).
    BadSize = 3,
    /// An argument is out of range: batch 0, unknown scheduler kind or flag, steps above the
    /// training timesteps, class label out of range or given to an unconditional model,
    /// non-finite timestep or guidance, misaligned or overlapping buffers.
    InvalidArgument = 4,
    /// A JSON text (config.json, scheduler_config.json) is not valid JSON or not UTF-8.
    InvalidJson = 5,
    /// A config value is out of its valid range or of the wrong type.
    InvalidConfig = 6,
    /// A config key or value this library does not support.
    Unsupported = 7,
    /// The weights are unusable: malformed safetensors file, missing tensor, wrong shape,
    /// unsupported dtype, misaligned f16 data, NaN or infinity.
    InvalidWeights = 8,
    /// Reading the model folder failed (missing folder or file, permissions).
    Io = 9,
    /// A bug in the library (a caught panic). The model and scheduler stay usable; the
    /// contents of the buffers of the failed call are unspecified.
    Internal = 10,
    /// The requested device cannot be used: no CUDA driver or NVRTC, no such GPU, a CUDA
    /// error, or a library built without the `cuda` feature.
    DeviceUnavailable = 11,
}

/// Values of the `device` argument of `td_model_set_device`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum td_device_kind {
    /// The CPU kernels (every model starts here).
    Cpu = 0,
    /// A CUDA GPU (`ordinal` picks which); needs a library built with the `cuda` feature.
    Cuda = 1,
}

/// Values of `td_scheduler_desc.kind`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum td_scheduler_kind {
    /// The class of the model's scheduler config (DDPM when the model has none).
    FromConfig = 0,
    /// DDPM (ancestral sampling), built from the model's scheduler config as diffusers'
    /// `DDPMScheduler.from_config` does.
    Ddpm = 1,
    /// DDIM, built from the model's scheduler config as `DDIMScheduler.from_config` does.
    Ddim = 2,
    /// Reverse-time VP-SDE, Euler-Maruyama (score-SDE), on the continuous version of the
    /// model's schedule; `td_sampler_desc.sde` sets its options. `steps` 0 = 1000.
    Sde = 3,
    /// Probability-flow ODE (deterministic; Heun unless `sde.predictor` says Euler).
    /// `steps` 0 = 50.
    Ode = 4,
    /// Predictor-corrector: `sde.predictor` (default Euler-Maruyama) plus
    /// `sde.corrector_steps` Langevin steps per step. `steps` 0 = 500.
    Pc = 5,
}

/// Values of `td_sde_desc.predictor`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum td_sde_predictor {
    /// The kind's default: Euler-Maruyama for `_SDE` and `_PC`, Heun for `_ODE`.
    Default = -1,
    /// Euler-Maruyama on the reverse SDE (1 model evaluation per step; `_SDE`, `_PC`).
    EulerMaruyama = 0,
    /// Euler on the probability-flow ODE (1 evaluation per step; `_ODE`, `_PC`).
    OdeEuler = 1,
    /// Heun on the probability-flow ODE (2 evaluations per step; `_ODE`, `_PC`).
    OdeHeun = 2,
}

/// `td_sde_desc.flags`: skip the final Tweedie denoising step at `t_eps` (one evaluation
/// less; the output is then x at t_eps, still carrying noise of std sqrt(1 - abar(t_eps))).
pub const TD_SDE_NO_DENOISE: u32 = 1;
const KNOWN_SDE_FLAGS: u32 = TD_SDE_NO_DENOISE;

/// Options of the continuous-time samplers (`TD_SCHEDULER_KIND_SDE`, `_ODE`, `_PC`); the
/// other kinds ignore it. Start from `td_sde_desc_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct td_sde_desc {
    /// One of `td_sde_predictor` (`TD_SDE_PREDICTOR_*`).
    pub predictor: i32,
    /// Langevin corrector steps before each predictor step (`_PC` only; default 1).
    pub corrector_steps: usize,
    /// Signal-to-noise ratio of the Langevin step size (default 0.16, score_sde's VP value).
    pub snr: f64,
    /// The grid runs from t = 1 down to `t_eps` in (0, 1) (default 0.001).
    pub t_eps: f64,
    /// Bitwise OR of `TD_SDE_*` flags; unknown bits are rejected.
    pub flags: u32,
}

/// `td_scheduler_desc.flags`: DDIM steps to the next scheduled timestep instead of diffusers'
/// `t - T / N` (right for `trailing` and `linspace` spacing when N does not divide T).
pub const TD_SCHEDULER_DDIM_NEXT_TIMESTEP: u32 = 1;
/// `td_scheduler_desc.flags`: DDIM recomputes epsilon from the clipped x_0 prediction
/// (diffusers' `use_clipped_model_output=True`).
pub const TD_SCHEDULER_CLIPPED_MODEL_OUTPUT: u32 = 2;
const KNOWN_FLAGS: u32 = TD_SCHEDULER_DDIM_NEXT_TIMESTEP | TD_SCHEDULER_CLIPPED_MODEL_OUTPUT;

/// `td_sampler_desc.class_label`: no label (unconditional models).
#[allow(clippy::unnecessary_cast)] // cbindgen writes `(int64_t)-1`, safe inside any C expression
pub const TD_NO_CLASS: i64 = -1 as i64;
/// `td_sampler_desc.null_class`: the model's last class is the "no class" label of guidance.
#[allow(clippy::unnecessary_cast)]
pub const TD_DEFAULT_NULL_CLASS: i64 = -1 as i64;

/// How to build a scheduler from the model's scheduler config.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct td_scheduler_desc {
    /// One of `td_scheduler_kind` (`TD_SCHEDULER_KIND_*`).
    pub kind: i32,
    /// Inference steps; 0 = the default: all training timesteps for DDPM, 50 for DDIM (at most
    /// the training timesteps), 1000 for SDE, 50 for ODE, 500 for PC (predictor steps).
    pub steps: usize,
    /// DDIM's eta: 0 is deterministic, 1 has DDPM's variance. Finite and >= 0. DDPM ignores it.
    pub eta: f64,
    /// Bitwise OR of `TD_SCHEDULER_*` flags; unknown bits are rejected.
    pub flags: u32,
}

/// One sampling run. Start from `td_sampler_desc_default()` and set what you need.
///
/// Pointer fields are borrowed for the duration of the call that reads the struct only.
/// A pointer with length 0 may be NULL (absent); a NULL pointer with a non-zero length gives
/// `TD_STATUS_NULL_POINTER`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct td_sampler_desc {
    /// The scheduler (ignored by `td_sample_with_scheduler`).
    pub scheduler: td_scheduler_desc,
    /// Images per run, >= 1.
    pub batch: usize,
    /// Seed of the built-in counter-based Gaussian generator, used for whatever noise is not
    /// injected. The same seed gives the same bits on every machine and thread count.
    pub seed: u64,
    /// The class of every image when `class_labels` is NULL; `TD_NO_CLASS` (the default) for
    /// unconditional models. Class-conditional models require a label.
    pub class_label: i64,
    /// One label per image (`num_class_labels` = batch, or 1 for all), or NULL.
    pub class_labels: *const i64,
    pub num_class_labels: usize,
    /// Classifier-free guidance weight w: eps = (1 + w) eps(x, y) - w eps(x, null_class).
    /// 0 (the default) disables it; it needs a class-conditional model.
    pub guidance: f32,
    /// The label trained as "no class"; `TD_DEFAULT_NULL_CLASS` (-1) = the model's last class.
    pub null_class: i64,
    /// x_T, `[batch, C, H, W]` floats (`initial_noise_len` = batch * C * H * W), or NULL for
    /// the seeded generator (stream 0).
    pub initial_noise: *const f32,
    pub initial_noise_len: usize,
    /// Per-step Gaussian noise `[steps, batch, C, H, W]` (row i for step i, as diffusers'
    /// replay), or NULL for the seeded generator (stream i + 1). `steps` is
    /// `td_scheduler_noise_rows` (for DDPM and DDIM the number of steps; for the SDE kinds the
    /// number of Gaussian draws, row k for the k-th).
    pub step_noise: *const f32,
    pub step_noise_len: usize,
    /// Options of the continuous-time kinds (ignored by DDPM and DDIM). The last field, so
    /// every earlier field keeps its offset.
    pub sde: td_sde_desc,
}

/// A loaded model: weights, op list, memory plan and its scheduler config. Immutable.
///
/// Threads: one model may be used by any number of threads at once (each with its own
/// workspace and output buffers); only `td_model_free` and `td_model_set_device` need
/// exclusive access.
pub struct td_model {
    model: Model,
    scheduler_config: SchedulerConfig,
    /// (address, length) of the caller's weight bytes when loaded from memory, so that no
    /// buffer the library writes may overlap them.
    borrowed: Option<(usize, usize)>,
}

/// A scheduler built once (its tables are allocated here), for allocation-free sampling with
/// `td_sample_with_scheduler`. Immutable: shareable by threads like a model.
pub struct td_scheduler {
    scheduler: Built,
}

/// A built scheduler: discrete (DDPM/DDIM) or continuous-time.
enum Built {
    Discrete(Scheduler),
    Sde(SdeSampler),
}

impl Built {
    fn method(&self) -> Method<'_> {
        match self {
            Built::Discrete(s) => Method::Scheduler(s),
            Built::Sde(s) => Method::Sde(s),
        }
    }

    fn timesteps(&self) -> &[i64] {
        match self {
            Built::Discrete(s) => s.timesteps(),
            Built::Sde(s) => s.timesteps(),
        }
    }
}

/// The shapes and sizes of a model.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct td_model_info {
    pub in_channels: usize,
    /// in_channels, or twice it for learned-variance models.
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    /// Floats of one image, in_channels * height * width.
    pub sample_len: usize,
    /// Class-embedding size; 0 for unconditional models.
    pub num_classes: usize,
    /// Learned parameters.
    pub parameters: usize,
    /// Floating-point operations of one model evaluation per image.
    pub flops_per_sample: u64,
    /// The class of the model's scheduler config: `TD_SCHEDULER_KIND_DDPM` or `_DDIM`.
    pub scheduler_kind: i32,
    /// The scheduler config's `num_train_timesteps`.
    pub num_train_timesteps: usize,
}

// ---------------------------------------------------------------------------------------------
// Errors, panics, last-error message
// ---------------------------------------------------------------------------------------------

/// A failed call: the status and the detail message kept for `td_last_error_message`.
#[derive(Debug)]
struct Fail {
    status: td_status,
    message: String,
}

fn fail(status: td_status, message: impl Into<String>) -> Fail {
    Fail {
        status,
        message: message.into(),
    }
}

fn null(what: &str) -> Fail {
    fail(td_status::NullPointer, std::format!("{what} is NULL"))
}

fn invalid(message: impl Into<String>) -> Fail {
    fail(td_status::InvalidArgument, message)
}

/// The status of each library error. Exhaustive on purpose: a new [`Error`] variant must be
/// given a status here.
pub fn status_of(e: &Error) -> td_status {
    match e {
        Error::InvalidJson { .. } => td_status::InvalidJson,
        Error::UnsupportedConfig { .. } => td_status::Unsupported,
        Error::InvalidConfig { .. } => td_status::InvalidConfig,
        Error::InvalidSafetensors { .. }
        | Error::MissingTensor { .. }
        | Error::ShapeMismatch { .. }
        | Error::UnsupportedDtype { .. }
        | Error::UnalignedTensor { .. }
        | Error::NonFiniteWeight { .. } => td_status::InvalidWeights,
        Error::BufferSize {
            expected, found, ..
        } if found < expected => td_status::BufferTooSmall,
        Error::BufferSize { .. } => td_status::BadSize,
        Error::InvalidArgument { .. } => td_status::InvalidArgument,
        Error::Io { .. } => td_status::Io,
        Error::Device { .. } => td_status::DeviceUnavailable,
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail {
            status: status_of(&e),
            message: e.to_string(),
        }
    }
}

std::thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_last_error(message: String) {
    // `try_with`: during thread teardown the slot may be gone; the status still says enough.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut s) = slot.try_borrow_mut() {
            *s = message;
        }
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "unknown panic payload"
    }
}

/// Runs an entry point's body: errors and panics become a status (and a last-error message).
fn guard(body: impl FnOnce() -> Result<(), Fail>) -> td_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => td_status::Ok,
        Ok(Err(f)) => {
            set_last_error(f.message);
            f.status
        }
        Err(payload) => {
            set_last_error(std::format!(
                "internal error (a bug in tinydiffusion): {}",
                panic_message(&*payload)
            ));
            td_status::Internal
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pointer checks
// ---------------------------------------------------------------------------------------------

/// A caller buffer: address and length in bytes, checked for NULL, alignment and size.
#[derive(Debug, Clone, Copy)]
struct Span {
    addr: usize,
    bytes: usize,
}

impl Span {
    const EMPTY: Span = Span { addr: 0, bytes: 0 };

    /// A required buffer of `len` elements of `T`.
    fn of<T>(ptr: *const T, len: usize, what: &str) -> Result<Span, Fail> {
        if ptr.is_null() {
            return Err(null(what));
        }
        if (ptr as usize) % core::mem::align_of::<T>() != 0 {
            return Err(invalid(std::format!(
                "{what} is not aligned to {} bytes",
                core::mem::align_of::<T>()
            )));
        }
        let bytes = len
            .checked_mul(core::mem::size_of::<T>())
            .filter(|&b| b <= isize::MAX as usize && (ptr as usize).checked_add(b).is_some())
            .ok_or_else(|| {
                fail(
                    td_status::BadSize,
                    std::format!("{what}: length {len} is too large to address"),
                )
            })?;
        Ok(Span {
            addr: ptr as usize,
            bytes,
        })
    }

    /// An optional buffer: (NULL, 0) is absent, (NULL, n > 0) an error.
    fn optional<T>(ptr: *const T, len: usize, what: &str) -> Result<Option<Span>, Fail> {
        if ptr.is_null() && len == 0 {
            Ok(None)
        } else {
            Span::of(ptr, len, what).map(Some)
        }
    }

    fn overlaps(self, other: Span) -> bool {
        self.bytes != 0
            && other.bytes != 0
            && self.addr < other.addr + other.bytes
            && other.addr < self.addr + self.bytes
    }
}

/// Fails if a buffer the call writes overlaps any other buffer of the call (Rust's `&mut`
/// must not alias, and the result would be garbage anyway).
fn check_disjoint(written: &[(Span, &str)], read: &[(Span, &str)]) -> Result<(), Fail> {
    for (i, (w, wname)) in written.iter().enumerate() {
        for (o, oname) in written[i + 1..].iter().chain(read) {
            if w.overlaps(*o) {
                return Err(invalid(std::format!("{wname} overlaps {oname}")));
            }
        }
    }
    Ok(())
}

/// # Safety
/// `span` was made by [`Span::of`] from a pointer to `len` initialised `T`s that stay valid and
/// unwritten by others for `'a`.
unsafe fn slice<'a, T>(span: Span) -> &'a [T] {
    // SAFETY: non-NULL, aligned, at most isize::MAX bytes (checked in `Span::of`); validity and
    // lifetime are the caller's contract, stated on every entry point.
    unsafe {
        std::slice::from_raw_parts(
            span.addr as *const T,
            span.bytes / core::mem::size_of::<T>(),
        )
    }
}

/// # Safety
/// As [`slice`], and no other reference to the memory exists for `'a` ([`check_disjoint`]
/// checked it against the call's other buffers).
unsafe fn slice_mut<'a, T>(span: Span) -> &'a mut [T] {
    // SAFETY: as in `slice`; exclusive access per the caller's contract and `check_disjoint`.
    unsafe {
        std::slice::from_raw_parts_mut(span.addr as *mut T, span.bytes / core::mem::size_of::<T>())
    }
}

/// # Safety
/// `model` is NULL or a pointer returned by `td_model_load` / `td_model_from_memory` and not
/// yet freed.
unsafe fn model_ref<'a>(model: *const td_model) -> Result<&'a td_model, Fail> {
    // SAFETY: `as_ref` handles NULL; a non-NULL pointer is a live `Box<td_model>` per the
    // contract above, only ever read through shared references.
    unsafe { model.as_ref() }.ok_or_else(|| null("model"))
}

/// # Safety
/// `scheduler` is NULL or a pointer returned by `td_scheduler_new` and not yet freed.
unsafe fn scheduler_ref<'a>(scheduler: *const td_scheduler) -> Result<&'a td_scheduler, Fail> {
    // SAFETY: as in `model_ref`.
    unsafe { scheduler.as_ref() }.ok_or_else(|| null("scheduler"))
}

/// Reads a caller's struct by value.
///
/// # Safety
/// `ptr` is NULL or points to a readable `T`.
unsafe fn read_struct<T: Copy>(ptr: *const T, what: &str) -> Result<T, Fail> {
    Span::of(ptr, 1, what)?;
    // SAFETY: non-NULL and aligned (checked above), readable per the contract. Every `T` used
    // here has only integer, float and raw-pointer fields, for which every bit pattern is valid.
    Ok(unsafe { ptr.read() })
}

/// Writes a value to a caller's out-pointer.
///
/// # Safety
/// `ptr` is NULL or points to writable memory for a `T`.
unsafe fn write_out<T>(ptr: *mut T, value: T, what: &str) -> Result<(), Fail> {
    Span::of(ptr as *const T, 1, what)?;
    // SAFETY: non-NULL and aligned (checked above), writable per the contract; `T` is `Copy`
    // data or a raw pointer, so nothing is dropped.
    unsafe { ptr.write(value) };
    Ok(())
}

/// UTF-8 text from a (pointer, length) pair.
///
/// # Safety
/// `ptr` points to `len` readable bytes (checked for NULL here).
unsafe fn text<'a>(ptr: *const c_char, len: usize, file: &str) -> Result<&'a str, Fail> {
    let span = Span::of(ptr as *const u8, len, file)?;
    // SAFETY: checked span; readable for the duration of the call per the contract.
    let bytes: &[u8] = unsafe { slice(span) };
    std::str::from_utf8(bytes).map_err(|e| {
        fail(
            td_status::InvalidJson,
            std::format!("{file}: not UTF-8: {e}"),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------------

/// Checks a batch size against the model so that no size the sampler computes can overflow:
/// everything it lays out is at most this bound.
fn check_batch(model: &Model, batch: usize) -> Result<(), Fail> {
    if batch == 0 {
        return Err(invalid("batch must be at least 1"));
    }
    let (c, h, w) = model.input_shape();
    let (c_out, _, _) = model.output_shape();
    // Model workspace + output + unconditional output + noise and SDE scratch (at most 4
    // images' worth) per image, plus one image of scratch.
    let per_image = model.workspace_len(1) + 2 * c_out * h * w + 4 * c * h * w;
    let floats = per_image
        .checked_mul(batch)
        .and_then(|n| n.checked_add(c * h * w));
    match floats.and_then(|n| n.checked_mul(4)) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(()),
        _ => Err(fail(
            td_status::BadSize,
            std::format!("batch {batch} is too large to address"),
        )),
    }
}

/// Checks an exact-size output buffer.
fn check_out_len(what: &str, len: usize, expected: usize) -> Result<(), Fail> {
    if len < expected {
        Err(fail(
            td_status::BufferTooSmall,
            std::format!("{what}: {len} floats, {expected} needed"),
        ))
    } else if len > expected {
        Err(fail(
            td_status::BadSize,
            std::format!("{what}: {len} floats, exactly {expected} expected"),
        ))
    } else {
        Ok(())
    }
}

fn check_workspace_len(len: usize, needed: usize) -> Result<(), Fail> {
    if len < needed {
        Err(fail(
            td_status::BufferTooSmall,
            std::format!("workspace: {len} floats, {needed} needed"),
        ))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Status and version
// ---------------------------------------------------------------------------------------------

/// A static, NUL-terminated English description of a status code ("unknown status" for a
/// value that is none). Never NULL; do not free. Thread-safe.
#[no_mangle]
pub extern "C" fn td_status_message(status: i32) -> *const c_char {
    let s: &'static CStr = match status {
        0 => c"success",
        1 => c"a required pointer is NULL",
        2 => c"a buffer is too small",
        3 => c"a length has the wrong size",
        4 => c"invalid argument",
        5 => c"invalid JSON",
        6 => c"invalid config value",
        7 => c"unsupported config",
        8 => c"invalid weights file",
        9 => c"I/O error reading the model",
        10 => c"internal error (a bug in tinydiffusion)",
        11 => c"the device is unavailable",
        _ => c"unknown status",
    };
    s.as_ptr()
}

/// The library version ("0.1.0"), static and NUL-terminated. Thread-safe.
#[no_mangle]
pub extern "C" fn td_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// Copies the detail message of the last failed call made by this thread (e.g. "tensor
/// `conv_in.weight` has shape [32, 3, 3], expected [32, 3, 3, 3]") into `buf` as a
/// NUL-terminated string, truncated to `buf_len - 1` bytes at a UTF-8 boundary. `*out_len`
/// (if `out_len` is not NULL) receives the full length in bytes without the NUL; "" when no
/// call on this thread has failed. Successful calls leave the message as it is.
///
/// `buf` may be NULL when `buf_len` is 0 (to query the length). Returns
/// `TD_STATUS_BUFFER_TOO_SMALL` when the message was truncated. This function does not
/// change the stored message. Thread-safe: the message is per thread.
///
/// # Safety
/// `buf` points to `buf_len` writable bytes; `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_last_error_message(
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> td_status {
    let result = catch_unwind(AssertUnwindSafe(|| -> td_status {
        let message = LAST_ERROR
            .try_with(|s| s.borrow().clone())
            .unwrap_or_default();
        if !out_len.is_null() {
            // SAFETY: `write_out` checks NULL and alignment; writability is the contract.
            if unsafe { write_out(out_len, message.len(), "out_len") }.is_err() {
                return td_status::InvalidArgument;
            }
        }
        if buf_len == 0 {
            return if message.is_empty() {
                td_status::Ok
            } else {
                td_status::BufferTooSmall
            };
        }
        let span = match Span::of(buf as *const u8, buf_len, "buf") {
            Ok(s) => s,
            Err(f) => return f.status,
        };
        let mut n = message.len().min(buf_len - 1);
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: `buf` is non-NULL with `buf_len` writable bytes per the contract; the
        // message is a separate allocation, so the two cannot overlap.
        let dst: &mut [u8] = unsafe { slice_mut(span) };
        dst[..n].copy_from_slice(&message.as_bytes()[..n]);
        dst[n] = 0;
        if n < message.len() {
            td_status::BufferTooSmall
        } else {
            td_status::Ok
        }
    }));
    result.unwrap_or(td_status::Internal)
}

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

fn into_handle<T>(value: T) -> *mut T {
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
        let scheduler_config = match &files.scheduler_config {
            Some(p) => SchedulerConfig::from_json(&read_text(p)?)?,
            None => SchedulerConfig::ddpm_default(),
        };
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
/// at an odd address gives `TD_STATUS_INVALID_WEIGHTS`. The JSON texts are only read during
/// the call.
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
            },
            num_train_timesteps: m.scheduler_config.num_train_timesteps,
        };
        // SAFETY: contract above.
        unsafe { write_out(out_info, info, "out_info") }
    })
}

/// `*out_floats` = the exact number of floats of workspace one `td_model_eval` at `batch`
/// needs. Thread-safe.
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
        if x_len == 0 || x_len % per != 0 {
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

// ---------------------------------------------------------------------------------------------
// Schedulers and sampling
// ---------------------------------------------------------------------------------------------

/// The default scheduler description: the model's scheduler class, default steps, eta 0, no
/// flags. Thread-safe.
#[no_mangle]
pub extern "C" fn td_scheduler_desc_default() -> td_scheduler_desc {
    td_scheduler_desc {
        kind: td_scheduler_kind::FromConfig as i32,
        steps: 0,
        eta: 0.0,
        flags: 0,
    }
}

/// The default options of the continuous-time samplers: the kind's default predictor, 1
/// corrector step, snr 0.16, t_eps 0.001, no flags. Thread-safe.
#[no_mangle]
pub extern "C" fn td_sde_desc_default() -> td_sde_desc {
    td_sde_desc {
        predictor: td_sde_predictor::Default as i32,
        corrector_steps: 1,
        snr: 0.16,
        t_eps: 1e-3,
        flags: 0,
    }
}

/// The default sampling description: `td_scheduler_desc_default()`, batch 1, seed 0,
/// `TD_NO_CLASS`, no guidance (`null_class` = `TD_DEFAULT_NULL_CLASS`), no injected noise,
/// `td_sde_desc_default()`. Thread-safe.
#[no_mangle]
pub extern "C" fn td_sampler_desc_default() -> td_sampler_desc {
    td_sampler_desc {
        scheduler: td_scheduler_desc_default(),
        batch: 1,
        seed: 0,
        class_label: TD_NO_CLASS,
        class_labels: core::ptr::null(),
        num_class_labels: 0,
        guidance: 0.0,
        null_class: TD_DEFAULT_NULL_CLASS,
        initial_noise: core::ptr::null(),
        initial_noise_len: 0,
        step_noise: core::ptr::null(),
        step_noise_len: 0,
        sde: td_sde_desc_default(),
    }
}

/// The continuous-time sampler a description asks for, or None for DDPM/DDIM kinds.
fn build_sde(
    base: &SchedulerConfig,
    d: &td_scheduler_desc,
    sde: &td_sde_desc,
) -> Result<Option<SdeSampler>, Fail> {
    let kind = d.kind;
    let (default_predictor, default_steps) = match kind {
        k if k == td_scheduler_kind::Sde as i32 => (Predictor::EulerMaruyama, 1000),
        k if k == td_scheduler_kind::Ode as i32 => (Predictor::OdeHeun, 50),
        k if k == td_scheduler_kind::Pc as i32 => (Predictor::EulerMaruyama, 500),
        _ => return Ok(None),
    };
    let predictor = match sde.predictor {
        p if p == td_sde_predictor::Default as i32 => default_predictor,
        p if p == td_sde_predictor::EulerMaruyama as i32 => Predictor::EulerMaruyama,
        p if p == td_sde_predictor::OdeEuler as i32 => Predictor::OdeEuler,
        p if p == td_sde_predictor::OdeHeun as i32 => Predictor::OdeHeun,
        p => {
            return Err(invalid(std::format!(
                "sde.predictor {p} is not a td_sde_predictor"
            )))
        }
    };
    let is_ode = predictor != Predictor::EulerMaruyama;
    if (kind == td_scheduler_kind::Sde as i32 && is_ode)
        || (kind == td_scheduler_kind::Ode as i32 && !is_ode)
    {
        return Err(invalid(std::format!(
            "sde.predictor {} does not fit scheduler kind {kind} (use TD_SCHEDULER_KIND_PC to \
             combine)",
            sde.predictor
        )));
    }
    if sde.flags & !KNOWN_SDE_FLAGS != 0 {
        return Err(invalid(std::format!(
            "unknown sde flags {:#x}",
            sde.flags & !KNOWN_SDE_FLAGS
        )));
    }
    let cfg = SdeConfig {
        predictor,
        steps: if d.steps == 0 { default_steps } else { d.steps },
        corrector_steps: if kind == td_scheduler_kind::Pc as i32 {
            sde.corrector_steps
        } else {
            0
        },
        snr: sde.snr,
        t_eps: sde.t_eps,
        denoise: sde.flags & TD_SDE_NO_DENOISE == 0,
    };
    Ok(Some(SdeSampler::new(base, cfg)?))
}

/// The scheduler (discrete or continuous-time) a description asks for.
fn build(base: &SchedulerConfig, d: &td_scheduler_desc, sde: &td_sde_desc) -> Result<Built, Fail> {
    match build_sde(base, d, sde)? {
        Some(s) => Ok(Built::Sde(s)),
        None => build_scheduler(base, d).map(Built::Discrete),
    }
}

/// The Rust scheduler a description asks for, from the model's scheduler config.
fn build_scheduler(base: &SchedulerConfig, d: &td_scheduler_desc) -> Result<Scheduler, Fail> {
    let mut cfg = match d.kind {
        k if k == td_scheduler_kind::FromConfig as i32 => base.clone(),
        k if k == td_scheduler_kind::Ddpm as i32 => base.clone().with_kind(SchedulerKind::Ddpm),
        k if k == td_scheduler_kind::Ddim as i32 => base.clone().with_kind(SchedulerKind::Ddim),
        k => {
            return Err(invalid(std::format!(
                "scheduler kind {k} is not a td_scheduler_kind"
            )))
        }
    };
    if d.flags & !KNOWN_FLAGS != 0 {
        return Err(invalid(std::format!(
            "unknown scheduler flags {:#x}",
            d.flags & !KNOWN_FLAGS
        )));
    }
    if d.flags & TD_SCHEDULER_DDIM_NEXT_TIMESTEP != 0 {
        cfg.ddim_prev_timestep = DdimPrevTimestep::NextInSchedule;
    }
    if d.flags & TD_SCHEDULER_CLIPPED_MODEL_OUTPUT != 0 {
        cfg.use_clipped_model_output = true;
    }
    if !(d.eta.is_finite() && d.eta >= 0.0) {
        return Err(invalid(std::format!(
            "eta {} must be finite and >= 0",
            d.eta
        )));
    }
    let steps = match (d.steps, cfg.kind) {
        (0, SchedulerKind::Ddpm) => cfg.num_train_timesteps,
        (0, SchedulerKind::Ddim) => cfg.num_train_timesteps.min(50),
        (n, _) => n,
    };
    let mut scheduler = Scheduler::new(cfg, steps)?;
    scheduler.set_eta(d.eta);
    Ok(scheduler)
}

/// Builds a scheduler for `model` (its schedule tables are allocated here, once), for
/// `td_sample_with_scheduler`. On failure `*out_scheduler` is set to NULL when
/// `out_scheduler` is not NULL. Errors: `TD_STATUS_INVALID_ARGUMENT` (kind, flags, eta,
/// steps), `_NULL_POINTER`. Thread-safe.
///
/// # Safety
/// `model` is NULL or a live model; `desc` NULL or readable; `out_scheduler` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_new(
    model: *const td_model,
    desc: *const td_scheduler_desc,
    out_scheduler: *mut *mut td_scheduler,
) -> td_status {
    guard(|| {
        // SAFETY: contract above, for each of the three pointers.
        unsafe { write_out(out_scheduler, core::ptr::null_mut(), "out_scheduler") }?;
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let d = unsafe { read_struct(desc, "desc") }?;
        let handle = into_handle(td_scheduler {
            scheduler: build(&m.scheduler_config, &d, &td_sde_desc_default())?,
        });
        // SAFETY: checked by `write_out` above.
        unsafe { out_scheduler.write(handle) };
        Ok(())
    })
}

/// As `td_scheduler_new`, with the options `sde` of the continuous-time kinds
/// (`TD_SCHEDULER_KIND_SDE`, `_ODE`, `_PC`; `td_scheduler_new` uses `td_sde_desc_default()`).
/// Thread-safe.
///
/// # Safety
/// As `td_scheduler_new`; `sde` NULL or readable.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_new_sde(
    model: *const td_model,
    desc: *const td_scheduler_desc,
    sde: *const td_sde_desc,
    out_scheduler: *mut *mut td_scheduler,
) -> td_status {
    guard(|| {
        // SAFETY: contract above, for each of the four pointers.
        unsafe { write_out(out_scheduler, core::ptr::null_mut(), "out_scheduler") }?;
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let d = unsafe { read_struct(desc, "desc") }?;
        // SAFETY: contract above.
        let sde = unsafe { read_struct(sde, "sde") }?;
        let handle = into_handle(td_scheduler {
            scheduler: build(&m.scheduler_config, &d, &sde)?,
        });
        // SAFETY: checked by `write_out` above.
        unsafe { out_scheduler.write(handle) };
        Ok(())
    })
}

/// Frees a scheduler (NULL is ignored). No other thread may be using it.
///
/// # Safety
/// `scheduler` is NULL or a scheduler not yet freed.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_free(scheduler: *mut td_scheduler) {
    if scheduler.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a pointer from `Box::into_raw` in `td_scheduler_new`, freed once.
        drop(unsafe { Box::from_raw(scheduler) });
    }));
}

/// `*out_steps` = the number of steps of a run (the rows of `step_noise`). Thread-safe.
///
/// # Safety
/// `scheduler` is NULL or live; `out_steps` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_num_steps(
    scheduler: *const td_scheduler,
    out_steps: *mut usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let s = unsafe { scheduler_ref(scheduler) }?;
        // SAFETY: contract above.
        unsafe { write_out(out_steps, s.scheduler.method().num_steps(), "out_steps") }
    })
}

/// `*out_rows` = the rows of `td_sampler_desc.step_noise` a run reads: the number of steps
/// for DDPM and DDIM, the number of Gaussian draws for the SDE kinds (0 for `_ODE`).
/// Thread-safe.
///
/// # Safety
/// `scheduler` is NULL or live; `out_rows` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_noise_rows(
    scheduler: *const td_scheduler,
    out_rows: *mut usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let s = unsafe { scheduler_ref(scheduler) }?;
        // SAFETY: contract above.
        unsafe { write_out(out_rows, s.scheduler.method().noise_rows(), "out_rows") }
    })
}

/// `*out_evals` = the model evaluations of a run without guidance (twice as many with it):
/// one per step for DDPM and DDIM; for the SDE kinds steps * (predictor evaluations +
/// corrector steps) + 1 for the final denoising step. Thread-safe.
///
/// # Safety
/// `scheduler` is NULL or live; `out_evals` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_model_evaluations(
    scheduler: *const td_scheduler,
    out_evals: *mut usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let s = unsafe { scheduler_ref(scheduler) }?;
        let n = s.scheduler.method().model_evaluations();
        // SAFETY: contract above.
        unsafe { write_out(out_evals, n, "out_evals") }
    })
}

/// Copies the run's timesteps, first (noisiest) to last, into `out` (`len` >= the number of
/// steps, else `TD_STATUS_BUFFER_TOO_SMALL`). For the SDE kinds: the model timestep
/// t (T - 1) where each step starts, rounded (the model is evaluated at the fractional
/// value). Thread-safe.
///
/// # Safety
/// `scheduler` is NULL or live; `out` NULL or `len` writable int64s.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_timesteps(
    scheduler: *const td_scheduler,
    out: *mut i64,
    len: usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let s = unsafe { scheduler_ref(scheduler) }?;
        let span = Span::of(out as *const i64, len, "out")?;
        let t = s.scheduler.timesteps();
        if len < t.len() {
            return Err(fail(
                td_status::BufferTooSmall,
                std::format!("out: {len} entries, {} needed", t.len()),
            ));
        }
        // SAFETY: checked span, writable per the contract; the timesteps are the scheduler's
        // own allocation, which a caller cannot reach, so they do not overlap.
        let dst: &mut [i64] = unsafe { slice_mut(span) };
        dst[..t.len()].copy_from_slice(t);
        Ok(())
    })
}

/// `*out_floats` = the exact number of floats of workspace `td_sample` needs for this
/// description (it depends on the model, `batch`, whether `guidance` is non-zero, and the
/// model's scheduler config). The same size serves `td_sample_with_scheduler` with a scheduler
/// made for the same model. Thread-safe.
///
/// # Safety
/// `model` is NULL or live; `desc` NULL or readable; `out_floats` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_sample_workspace_len(
    model: *const td_model,
    desc: *const td_sampler_desc,
    out_floats: *mut usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let d = unsafe { read_struct(desc, "desc") }?;
        check_batch(&m.model, d.batch)?;
        let scheduler = build(&m.scheduler_config, &d.scheduler, &d.sde)?;
        let n =
            sampler::workspace_len_with(&m.model, scheduler.method(), d.batch, d.guidance != 0.0);
        // SAFETY: contract above.
        unsafe { write_out(out_floats, n, "out_floats") }
    })
}

/// The body of both sampling functions. Allocates nothing.
///
/// # Safety
/// The pointers of `d` and `workspace` / `out` follow the contract of `td_sample`.
unsafe fn run_sample(
    m: &td_model,
    method: Method<'_>,
    d: &td_sampler_desc,
    workspace: *mut f32,
    workspace_len: usize,
    out: *mut f32,
    out_len: usize,
) -> Result<(), Fail> {
    let model = &m.model;
    let ws_span = Span::of(workspace as *const f32, workspace_len, "workspace")?;
    let out_span = Span::of(out as *const f32, out_len, "out")?;
    let labels_span = Span::optional(d.class_labels, d.num_class_labels, "desc.class_labels")?;
    let init_span = Span::optional(d.initial_noise, d.initial_noise_len, "desc.initial_noise")?;
    let noise_span = Span::optional(d.step_noise, d.step_noise_len, "desc.step_noise")?;

    let batch = d.batch;
    check_batch(model, batch)?;
    let (c, h, w) = model.input_shape();
    let n = batch * c * h * w;
    check_out_len("out", out_len, n)?;
    if init_span.is_some() && d.initial_noise_len != n {
        return Err(fail(
            td_status::BadSize,
            std::format!(
                "desc.initial_noise: {} floats, expected batch*C*H*W = {n}",
                d.initial_noise_len
            ),
        ));
    }
    let steps = method.noise_rows();
    if noise_span.is_some() && steps.checked_mul(n) != Some(d.step_noise_len) {
        return Err(fail(
            td_status::BadSize,
            std::format!(
                "desc.step_noise: {} floats, expected steps*batch*C*H*W = {steps}*{n}",
                d.step_noise_len
            ),
        ));
    }
    let one_label = [d.class_label];
    let conditional = model.config.num_class_embeds.is_some();
    if labels_span.is_some() {
        if d.num_class_labels != batch && d.num_class_labels != 1 {
            return Err(fail(
                td_status::BadSize,
                std::format!(
                    "desc.class_labels: {} labels, expected batch ({batch}) or 1",
                    d.num_class_labels
                ),
            ));
        }
        if !conditional {
            return Err(invalid(
                "desc.class_labels: the model is not class-conditional",
            ));
        }
    } else if conditional && d.class_label == TD_NO_CLASS {
        return Err(invalid(
            "the model is class-conditional: set desc.class_label or desc.class_labels",
        ));
    } else if !conditional && d.class_label != TD_NO_CLASS {
        return Err(invalid(
            "desc.class_label: the model is not class-conditional (use TD_NO_CLASS)",
        ));
    }
    let guidance = if d.guidance != 0.0 {
        let mut g = Guidance::new(model, d.guidance)?;
        if d.null_class != TD_DEFAULT_NULL_CLASS {
            g.null_class = d.null_class;
        }
        Some(g)
    } else {
        None
    };
    check_workspace_len(
        workspace_len,
        sampler::workspace_len_with(model, method, batch, guidance.is_some()),
    )?;
    let weights = m
        .borrowed
        .map_or(Span::EMPTY, |(addr, bytes)| Span { addr, bytes });
    let opt = |s: Option<Span>| s.unwrap_or(Span::EMPTY);
    check_disjoint(
        &[(ws_span, "workspace"), (out_span, "out")],
        &[
            (opt(labels_span), "desc.class_labels"),
            (opt(init_span), "desc.initial_noise"),
            (opt(noise_span), "desc.step_noise"),
            (weights, "the model's weights"),
        ],
    )?;
    // SAFETY: every span was checked (NULL, alignment, size) above, the written ones are
    // disjoint from each other and from everything read; validity for the call is the
    // caller's contract.
    let (ws, out) = unsafe { (slice_mut::<f32>(ws_span), slice_mut::<f32>(out_span)) };
    // SAFETY: as above.
    let labels: Option<&[i64]> = match labels_span {
        Some(s) => Some(unsafe { slice(s) }),
        None if conditional => Some(&one_label),
        None => None,
    };
    if let Some(labels) = labels {
        for &l in labels {
            model.check_class_label(l)?;
        }
    }
    // SAFETY: as above.
    let initial_noise = init_span.map(|s| unsafe { slice::<f32>(s) });
    // SAFETY: as above.
    let step_noise = noise_span.map(|s| unsafe { slice::<f32>(s) });
    let opts = SampleOptions {
        batch,
        seed: d.seed,
        initial_noise,
        step_noise,
        class_labels: labels,
        guidance,
    };
    sampler::sample_with(model, method, ws, &opts, out, None)?;
    Ok(())
}

/// Samples a batch: `out` (exactly `[batch, C, H, W]` floats, NCHW, roughly in [-1, 1])
/// receives x_0. The scheduler is built from `desc->scheduler` for this call (its tables are
/// the only allocation; use `td_scheduler_new` + `td_sample_with_scheduler` to sample with
/// none). `workspace`: at least `td_sample_workspace_len` floats, scratch.
///
/// Thread-safe for one model as long as each thread has its own workspace and output;
/// `workspace` and `out` must not overlap each other, the noise or label arrays, or the
/// model's weights.
///
/// # Safety
/// `model` is NULL or live; `desc` NULL or readable, and its pointers as documented on
/// `td_sampler_desc`; `workspace` / `out` NULL or their lengths in writable floats; nothing is
/// modified by other threads during the call.
#[no_mangle]
pub unsafe extern "C" fn td_sample(
    model: *const td_model,
    desc: *const td_sampler_desc,
    workspace: *mut f32,
    workspace_len: usize,
    out: *mut f32,
    out_len: usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let d = unsafe { read_struct(desc, "desc") }?;
        let scheduler = build(&m.scheduler_config, &d.scheduler, &d.sde)?;
        // SAFETY: contract above.
        unsafe {
            run_sample(
                m,
                scheduler.method(),
                &d,
                workspace,
                workspace_len,
                out,
                out_len,
            )
        }
    })
}

/// As `td_sample`, with a scheduler from `td_scheduler_new` (`desc->scheduler` is ignored).
/// Allocates nothing. One scheduler may serve several threads at once.
///
/// # Safety
/// As `td_sample`; `scheduler` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn td_sample_with_scheduler(
    model: *const td_model,
    scheduler: *const td_scheduler,
    desc: *const td_sampler_desc,
    workspace: *mut f32,
    workspace_len: usize,
    out: *mut f32,
    out_len: usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let s = unsafe { scheduler_ref(scheduler) }?;
        // SAFETY: contract above.
        let d = unsafe { read_struct(desc, "desc") }?;
        // SAFETY: contract above.
        unsafe {
            run_sample(
                m,
                s.scheduler.method(),
                &d,
                workspace,
                workspace_len,
                out,
                out_len,
            )
        }
    })
}

// The header promises that models and schedulers can be shared by threads.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<td_model>();
    shareable::<td_scheduler>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_a_message() {
        for s in 0..=11 {
            // SAFETY: static NUL-terminated strings.
            let m = unsafe { CStr::from_ptr(td_status_message(s)) };
            assert_ne!(m.to_str().unwrap(), "unknown status", "status {s}");
        }
        // SAFETY: as above.
        assert_eq!(
            unsafe { CStr::from_ptr(td_status_message(12)) }
                .to_str()
                .unwrap(),
            "unknown status"
        );
        // SAFETY: as above.
        assert_eq!(
            unsafe { CStr::from_ptr(td_version()) }.to_str().unwrap(),
            env!("CARGO_PKG_VERSION")
        );
    }

    #[test]
    fn spans_reject_null_misaligned_and_huge() {
        assert_eq!(
            Span::of::<f32>(core::ptr::null(), 0, "p")
                .unwrap_err()
                .status,
            td_status::NullPointer
        );
        assert_eq!(
            Span::of(2usize as *const f32, 1, "p").unwrap_err().status,
            td_status::InvalidArgument
        );
        assert_eq!(
            Span::of(4usize as *const f32, usize::MAX / 2, "p")
                .unwrap_err()
                .status,
            td_status::BadSize
        );
        assert!(Span::optional::<f32>(core::ptr::null(), 0, "p")
            .unwrap()
            .is_none());
        let a = Span {
            addr: 100,
            bytes: 8,
        };
        assert!(a.overlaps(Span {
            addr: 104,
            bytes: 8
        }));
        assert!(!a.overlaps(Span {
            addr: 108,
            bytes: 8
        }));
        assert!(!a.overlaps(Span {
            addr: 104,
            bytes: 0
        }));
    }

    #[test]
    fn panics_become_internal() {
        let s = guard(|| panic!("boom"));
        assert_eq!(s, td_status::Internal);
        let mut buf = [0 as c_char; 64];
        let mut len = 0usize;
        // SAFETY: valid buffer and out-pointer.
        let r = unsafe { td_last_error_message(buf.as_mut_ptr(), buf.len(), &mut len) };
        assert_eq!(r, td_status::Ok);
        // SAFETY: NUL-terminated by the call.
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert!(msg.contains("boom"), "{msg}");
        assert_eq!(len, msg.len());
    }
}
