//! One error type for the whole library: every bad input ends here, typed, never as a panic.

use alloc::string::String;
use core::fmt;

/// Everything that can go wrong when loading a model, planning memory or sampling.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A JSON file (config.json, scheduler_config.json, model_index.json) is not valid JSON
    /// or has a field of the wrong type.
    InvalidJson { file: &'static str, message: String },
    /// A config key has a value this library does not support (or an unknown key).
    UnsupportedConfig { key: String, value: String },
    /// A config value is out of its valid range (e.g. channels not divisible by groups).
    InvalidConfig { key: String, message: String },
    /// The safetensors container itself is malformed (header, offsets, lengths).
    InvalidSafetensors { message: String },
    /// A tensor the config requires is absent from the weights file.
    MissingTensor { name: String },
    /// A tensor has a shape other than the config implies.
    ShapeMismatch {
        name: String,
        expected: String,
        found: String,
    },
    /// A tensor has a dtype this library cannot read (only F32, F16, BF16 are).
    UnsupportedDtype { name: String, dtype: String },
    /// f16 data is not 2-byte aligned in memory, so it cannot be used in place. `buffer`:
    /// `None` when the tensor's offset in the file is odd (the file needs rewriting);
    /// `Some(address)` when the file is fine but the weights buffer it was loaded from starts
    /// at an odd address (the caller's buffer needs 2-byte alignment).
    UnalignedTensor { name: String, buffer: Option<usize> },
    /// A weight contains NaN or infinity.
    NonFiniteWeight { name: String },
    /// A caller-provided buffer (workspace, input, output, noise) has the wrong length.
    BufferSize {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// An argument is out of range (batch 0, steps 0, class label too large, ...).
    InvalidArgument { what: &'static str, message: String },
    /// Reading a file or folder failed (std only).
    Io { path: String, message: String },
    /// A compute device is unusable: no CUDA driver or NVRTC found, no such GPU, a CUDA call
    /// failed, or the build lacks the `cuda` feature.
    Device { message: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidJson { file, message } => write!(f, "{file}: invalid JSON: {message}"),
            Error::UnsupportedConfig { key, value } => {
                write!(f, "unsupported config: `{key}` = {value}")
            }
            Error::InvalidConfig { key, message } => write!(f, "invalid config `{key}`: {message}"),
            Error::InvalidSafetensors { message } => {
                write!(f, "malformed safetensors file: {message}")
            }
            Error::MissingTensor { name } => write!(f, "missing tensor `{name}` in weights file"),
            Error::ShapeMismatch { name, expected, found } => {
                write!(f, "tensor `{name}` has shape {found}, expected {expected}")
            }
            Error::UnsupportedDtype { name, dtype } => {
                write!(f, "tensor `{name}` has unsupported dtype {dtype} (F32, F16, BF16 are)")
            }
            Error::UnalignedTensor { name, buffer: None } => write!(
                f,
                "f16 tensor `{name}` is not 2-byte aligned in the file; rewrite it with `sample convert`"
            ),
            Error::UnalignedTensor { name, buffer: Some(addr) } => write!(
                f,
                "f16 tensor `{name}` is not 2-byte aligned in memory: the weights buffer starts at \
                 the odd address {addr:#x} (the file itself is fine); pass a 2-byte aligned buffer \
                 (malloc'd memory is)"
            ),
            Error::NonFiniteWeight { name } => write!(f, "tensor `{name}` contains NaN or infinity"),
            Error::BufferSize { what, expected, found } => {
                write!(f, "{what}: expected {expected} elements, got {found}")
            }
            Error::InvalidArgument { what, message } => write!(f, "invalid {what}: {message}"),
            Error::Io { path, message } => write!(f, "{path}: {message}"),
            Error::Device { message } => write!(f, "device: {message}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

/// Shorthand used by validation code: `invalid("batch", "must be at least 1")`.
pub(crate) fn invalid_arg(what: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidArgument {
        what,
        message: message.into(),
    }
}

pub(crate) fn device_err(message: impl Into<String>) -> Error {
    Error::Device {
        message: message.into(),
    }
}

pub(crate) fn unsupported(key: &str, value: impl fmt::Display) -> Error {
    use alloc::string::ToString;
    Error::UnsupportedConfig {
        key: key.into(),
        value: value.to_string(),
    }
}
