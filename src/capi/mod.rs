//! The C API: the `extern "C"` functions of `libtinydiffusion.a`, declared for C in
//! `include/tinydiffusion.h` (generated from this module by cbindgen; `tests/c_header.rs` fails
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

use crate::error::Error;
use crate::model::Model;
use crate::sampler::Sampler;
use crate::schedule::SchedulerConfig;

mod model;
mod pointers;
mod sample;

pub use model::*;
use pointers::{slice_mut, write_out, Span};
pub use sample::*;

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

/// Values of the `precision` argument of `td_model_set_precision`.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum td_precision {
    /// f32 arithmetic (every model starts here).
    F32 = 0,
    /// f16 arithmetic in convolutions and linears, f32 accumulation across blocks, GroupNorm,
    /// softmax and scheduler state; needs a CPU with f16 arithmetic (aarch64 FEAT_FP16).
    F16 = 1,
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
    /// model's schedule; `td_sampler_desc.sde` sets its options. `steps` 0 = min(1000, T).
    Sde = 3,
    /// Probability-flow ODE (deterministic; Heun unless `sde.predictor` says Euler).
    /// `steps` 0 = min(50, T).
    Ode = 4,
    /// Predictor-corrector: `sde.predictor` (default Euler-Maruyama) plus
    /// `sde.corrector_steps` Langevin steps per step. `steps` 0 = min(500, T).
    Pc = 5,
    /// diffusers' `EulerDiscreteScheduler`, with the model's scheduler config's options.
    /// `steps` 0 = min(50, T).
    Euler = 6,
    /// diffusers' `EulerAncestralDiscreteScheduler` (one noise row per step).
    /// `steps` 0 = min(50, T).
    EulerAncestral = 7,
    /// diffusers' `DPMSolverMultistepScheduler` (the config's `algorithm_type` and
    /// `solver_order`; one noise row per step for `sde-dpmsolver++`). `steps` 0 = min(50, T).
    DpmSolverMultistep = 8,
    /// diffusers' `HeunDiscreteScheduler` (two model evaluations per step but the last).
    /// `steps` 0 = min(50, T).
    Heun = 9,
    /// diffusers' `UniPCMultistepScheduler` (the config's `solver_order` and `solver_type`).
    /// `steps` 0 = min(50, T).
    UniPcMultistep = 10,
    /// diffusers' `PNDMScheduler` (the config's `skip_prk_steps`). `steps` 0 = min(50, T).
    Pndm = 11,
    /// diffusers' `LMSDiscreteScheduler` (order 4). `steps` 0 = min(50, T).
    Lms = 12,
    /// diffusers' `DPMSolverSinglestepScheduler` (the config's `algorithm_type` and
    /// `solver_order`; one noise row per step for `sde-dpmsolver++`). `steps` 0 = min(50, T).
    DpmSolverSinglestep = 13,
    /// diffusers' `KDPM2DiscreteScheduler` (2N - 1 model evaluations). `steps` 0 = min(50, T).
    Kdpm2 = 14,
    /// diffusers' `KDPM2AncestralDiscreteScheduler` (2N - 1 model evaluations, N - 1 noise
    /// rows). `steps` 0 = min(50, T).
    Kdpm2Ancestral = 15,
    /// diffusers' `DEISMultistepScheduler` (the config's `solver_order`). `steps` 0 = min(50, T).
    DeisMultistep = 16,
    /// diffusers' `IPNDMScheduler`. `steps` 0 = min(50, T).
    Ipndm = 17,
    /// diffusers' `ScoreSdeVeScheduler` as `ScoreSdeVePipeline` runs it (`correct_steps`
    /// Langevin steps, then a predictor step, each drawing noise). `steps` 0 = min(2000, T).
    ScoreSdeVe = 20,
    /// diffusers' `CMStochasticIterativeScheduler` (consistency models). `steps` 0 = 1.
    Consistency = 21,
    /// diffusers' `LCMScheduler`. `steps` 0 = min(4, T).
    Lcm = 22,
    /// diffusers' `TCDScheduler`; its gamma is `eta`, in [0, 1] (`td_scheduler_desc_default()`
    /// gives 0, deterministic: set 0.3 for diffusers' default). `steps` 0 = min(4, T).
    Tcd = 23,
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
    /// Inference (predictor) steps; 0 = the default, for a model trained with T timesteps
    /// (`td_model_info.num_train_timesteps`): T for DDPM, min(50, T) for DDIM, min(1000, T)
    /// for SDE, min(50, T) for ODE, min(500, T) for PC. The `sample` tool has the same
    /// defaults.
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
///
/// Every call that reads it checks all of its fields (kind, flags, steps, eta, guidance,
/// labels, noise lengths, threads, the SDE options) before it computes any size:
/// `td_sample_workspace_len` and `td_sample` fail the same way on the same description,
/// whatever buffers `td_sample` is given.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct td_sampler_desc {
    /// `sizeof(td_sampler_desc)` as this header declares it; `td_sampler_desc_default()` sets
    /// it. A description whose size is not the library's (a program built against another
    /// version of the header) gives `TD_STATUS_BAD_SIZE` instead of being misread.
    pub struct_size: usize,
    /// The scheduler (ignored by `td_sample_with_scheduler`).
    pub scheduler: td_scheduler_desc,
    /// Images per run, >= 1.
    pub batch: usize,
    /// Seed of the built-in counter-based Gaussian generator, used for whatever noise is not
    /// injected. The same seed gives the same bits on every machine and thread count.
    pub seed: u64,
    /// The class of every image when `class_labels` is NULL. `TD_NO_CLASS` (the default):
    /// no label, which unconditional models require; a class-conditional model then samples
    /// the default labels, the same as the `sample` tool's: image i gets class
    /// i mod (num_classes - 1), every class but the last (the null class of guidance) in turn
    /// (class 0 for every image when num_classes <= 2).
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
    /// Options of the continuous-time kinds (ignored by DDPM and DDIM).
    pub sde: td_sde_desc,
    /// Threads the run may use, and the count its workspace is sized for:
    /// - 0 (the default): the model's thread count (`td_model_set_threads`; by default every
    ///   core the process may use). The workspace size then depends on the machine: its
    ///   cores, the CPU affinity the program runs under, its SIMD extensions.
    /// - N in 1..=1024: `td_sample_workspace_len` gives the size for N threads, the same on
    ///   every machine of the architecture (it fits every kernel path: scalar, AVX2,
    ///   AVX-512 on x86-64; scalar, NEON on aarch64), and the run uses at most
    ///   min(N, the model's thread count) threads. For an arena sized once (a firmware
    ///   build, a static buffer), set N.
    ///
    /// The output is the same bits for every value.
    pub threads: usize,
    /// A scheduler by name, NUL-terminated UTF-8, or NULL (the default: `scheduler.kind`
    /// chooses): a diffusers class name (`"LCMScheduler"`, `"CMStochasticIterativeScheduler"`,
    /// ...) or a `sample --scheduler` name (`"lcm"`, `"sde-ve"`, `"dpm++2m"`, ...). When set,
    /// `scheduler.kind` must be `TD_SCHEDULER_KIND_FROM_CONFIG`. An unknown name gives
    /// `TD_STATUS_INVALID_ARGUMENT`.
    pub scheduler_class: *const c_char,
    /// A diffusers scheduler config, the text of a `scheduler_config.json` (NUL-terminated
    /// UTF-8), used instead of the model's; NULL (the default): the model's. Its
    /// `_class_name` is the class unless `scheduler_class` or `scheduler.kind` names another
    /// (converted as diffusers' `from_config` does); its other keys are the options. Invalid
    /// JSON, an unknown key or a bad value give the config error naming the key.
    pub scheduler_config_json: *const c_char,
    /// Text-to-image pipelines (a `StableDiffusionPipeline` folder loaded with
    /// `td_model_load`): the prompt of every image, NUL-terminated UTF-8; NULL (the default)
    /// on every other model. NULL on a text pipeline gives `TD_STATUS_NULL_POINTER`, text that
    /// is not UTF-8 `TD_STATUS_INVALID_ARGUMENT`, a prompt on any other model
    /// `TD_STATUS_INVALID_ARGUMENT`. The prompt is tokenized for each call (a text run's only
    /// allocation, before sampling).
    pub prompt: *const c_char,
    /// The negative prompt (NUL-terminated UTF-8), read only with guidance on; NULL (the
    /// default): none, which diffusers encodes as the empty prompt `""`.
    pub negative_prompt: *const c_char,
    /// Text guidance: eps = uncond + s (cond - uncond), on when s > 1 (diffusers'
    /// `guidance_scale`). Default 7.5. Not the class guidance of `guidance`.
    pub guidance_scale: f32,
}

/// A loaded model: weights, op list, memory plan and its scheduler config. Immutable.
///
/// Threads: one model may be used by any number of threads at once (each with its own
/// workspace and output buffers); only `td_model_free`, `td_model_set_device` and
/// `td_model_set_threads` need exclusive access.
///
/// Worker threads: each model owns a team of (threads - 1) worker threads that split each
/// kernel call of a forward pass with the calling thread. Loading starts them, one team per
/// model, with threads = every core the process may use (its CPU affinity); set another
/// count with `td_model_set_threads`. They sleep when the model is idle and end in
/// `td_model_free` (or when `td_model_set_threads` replaces the team).
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
    /// Discrete (DDPM/DDIM) or continuous-time, built by the one front end.
    sampler: Sampler,
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
    /// What `td_sample` writes per image: the decoded image of a latent pipeline (a folder
    /// with a VQModel or AutoencoderKL decoder), else the sample (= the fields above).
    pub image_channels: usize,
    pub image_height: usize,
    pub image_width: usize,
    /// Floats of one `td_sample` output image, image_channels * image_height * image_width.
    pub image_len: usize,
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
            // A misaligned address (2 is not a multiple of 4).
            Span::of(core::ptr::without_provenance::<f32>(2), 1, "p")
                .unwrap_err()
                .status,
            td_status::InvalidArgument
        );
        assert_eq!(
            Span::of(std::ptr::dangling::<f32>(), usize::MAX / 2, "p")
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
