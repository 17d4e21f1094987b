//! Weights: a safetensors file viewed in place.
//!
//! f16 tensors are used straight from the file bytes (memory-mapped under `std`); f32 and bf16
//! tensors are rounded to f16 once at load into one owned buffer. Either way the model sees a
//! [`WeightRef`], resolved to `&[f16]` by [`WeightStore::get`] without searching by name.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use half::f16;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

#[cfg(feature = "std")]
pub mod convert;

/// Where the bytes of a weights file live. Each variant keeps its bytes at a fixed address for
/// as long as it exists, which is what lets a [`WeightRef`] hold plain byte offsets.
pub enum WeightBytes {
    /// Bytes compiled into the program (`include_bytes!`) or otherwise living forever.
    Static(&'static [u8]),
    /// Bytes the library owns.
    Owned(Vec<u8>),
    /// A read-only memory map of the file.
    #[cfg(feature = "std")]
    Mapped(memmap2::Mmap),
}

impl WeightBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            WeightBytes::Static(b) => b,
            WeightBytes::Owned(v) => v,
            #[cfg(feature = "std")]
            WeightBytes::Mapped(m) => m,
        }
    }
}

/// A tensor's f16 data: either a range of the file's bytes (f16 in the file, used in place) or a
/// range of the converted buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightRef {
    /// Byte range in the file, 2-byte aligned at load time.
    File { byte_start: usize, len: usize },
    /// Element range in the owned f16 buffer.
    Owned { start: usize, len: usize },
}

impl WeightRef {
    pub fn len(&self) -> usize {
        match *self {
            WeightRef::File { len, .. } | WeightRef::Owned { len, .. } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything the weights of one model occupy: the file and the f16 copies of non-f16 tensors.
pub struct WeightStore {
    bytes: WeightBytes,
    converted: Vec<f16>,
    /// Tensors read from the file as f16 in place, and total elements converted (for reports).
    pub in_place_tensors: usize,
    pub converted_tensors: usize,
    /// Every tensor the model took, in the order the description took them: its diffusers name
    /// (the one found in the file), shape and reference. The trainer keys its f32 master weights
    /// on this list.
    pub named: Vec<NamedWeight>,
}

/// A parameter tensor of the model: diffusers name, shape (diffusers layout) and where its f16
/// data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedWeight {
    pub name: String,
    pub shape: Vec<usize>,
    pub weight: WeightRef,
}

/// Load-time options.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Reject weights containing NaN or infinity (one pass over the data at load).
    pub check_finite: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { check_finite: true }
    }
}

impl WeightStore {
    /// The f16 data of a tensor resolved at load.
    #[inline]
    pub fn get(&self, r: WeightRef) -> &[f16] {
        match r {
            WeightRef::File { byte_start, len } => {
                // Alignment and bounds were checked when the ref was made, and the bytes never
                // move, so this cast cannot fail.
                bytemuck::cast_slice(&self.bytes.as_slice()[byte_start..byte_start + 2 * len])
            }
            WeightRef::Owned { start, len } => &self.converted[start..start + len],
        }
    }

    pub fn file_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }
}

/// Resolves named tensors of a safetensors file into [`WeightRef`]s, checking each one's
/// presence, shape and dtype, and converting non-f16 data. The header is parsed once.
pub struct WeightLoader {
    store: WeightStore,
    metadata: Metadata,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    options: LoadOptions,
    /// No file: every tensor is zeros of the requested shape (to list a config's parameters
    /// before any weights exist, e.g. to initialise training).
    shapes_only: bool,
}

fn st_err(e: safetensors::SafeTensorError) -> Error {
    Error::InvalidSafetensors { message: alloc::format!("{e:?}") }
}

fn shape_string(shape: &[usize]) -> String {
    let mut s = String::from("[");
    for (i, d) in shape.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&d.to_string());
    }
    s.push(']');
    s
}

/// True when any f16 bit pattern is NaN or infinite (all exponent bits set). Written as a
/// branch-free reduction so it vectorises: it runs over every weight at load.
fn any_nonfinite_f16(bits: &[u16]) -> bool {
    bits.chunks(256).any(|c| c.iter().fold(false, |acc, &b| acc | (b & 0x7c00 == 0x7c00)))
}

impl WeightLoader {
    /// Validates the container (header, offsets, lengths) up front.
    pub fn new(bytes: WeightBytes, options: LoadOptions) -> Result<WeightLoader> {
        let (header_len, metadata) = SafeTensors::read_metadata(bytes.as_slice()).map_err(st_err)?;
        Ok(WeightLoader {
            store: WeightStore { bytes, converted: Vec::new(), in_place_tensors: 0, converted_tensors: 0, named: Vec::new() },
            metadata,
            data_start: 8 + header_len,
            options,
            shapes_only: false,
        })
    }

    /// A loader without a file: every tensor asked for is zeros of the requested shape,
    /// recording the first name. Used to list the parameters a config implies.
    pub fn shapes_only() -> WeightLoader {
        // The smallest valid safetensors file: an empty header padded to 8 bytes.
        let empty = WeightBytes::Owned(b"\x08\0\0\0\0\0\0\0{}      ".to_vec());
        let mut loader = WeightLoader::new(empty, LoadOptions { check_finite: false })
            .unwrap_or_else(|_| unreachable!("the empty safetensors file is valid"));
        loader.shapes_only = true;
        loader
    }

    fn record(&mut self, name: &str, shape: &[usize], weight: WeightRef) {
        self.store.named.push(NamedWeight { name: name.into(), shape: shape.to_vec(), weight });
    }

    /// Whether the file holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// Finds the first of `names` present (to accept old and new diffusers names), checks its
    /// shape, and returns its f16 data reference.
    pub fn take(&mut self, names: &[&str], shape: &[usize]) -> Result<WeightRef> {
        if self.shapes_only {
            let len: usize = shape.iter().product();
            let start = self.store.converted.len();
            self.store.converted.resize(start + len, f16::ZERO);
            let weight = WeightRef::Owned { start, len };
            self.record(names[0], shape, weight);
            return Ok(weight);
        }
        let (name, info) = names
            .iter()
            .find_map(|n| self.metadata.info(n).map(|i| (*n, i)))
            .ok_or_else(|| Error::MissingTensor { name: names[0].into() })?;
        // diffusers' Linear weights are [out, in]; a few old checkpoints store attention
        // projections as 1x1 convs [out, in, 1, 1]: accept trailing unit dimensions.
        let found = &info.shape;
        let mut squeezed: &[usize] = found;
        while squeezed.len() > shape.len() && squeezed.last() == Some(&1) {
            squeezed = &squeezed[..squeezed.len() - 1];
        }
        if squeezed != shape {
            return Err(Error::ShapeMismatch {
                name: name.into(),
                expected: shape_string(shape),
                found: shape_string(found),
            });
        }
        let bytes = self.store.bytes.as_slice();
        // `read_metadata` checked that the offsets lie inside the file and match dtype * shape.
        let byte_start = self.data_start + info.data_offsets.0;
        let data = &bytes[byte_start..self.data_start + info.data_offsets.1];
        let len: usize = shape.iter().product();
        let check = self.options.check_finite;
        let nonfinite = || Error::NonFiniteWeight { name: name.into() };
        match info.dtype {
            Dtype::F16 => {
                let Ok(bits) = bytemuck::try_cast_slice::<u8, u16>(data) else {
                    return Err(Error::UnalignedTensor { name: name.into() });
                };
                if check && any_nonfinite_f16(bits) {
                    return Err(nonfinite());
                }
                self.store.in_place_tensors += 1;
                let weight = WeightRef::File { byte_start, len };
                self.record(name, shape, weight);
                Ok(weight)
            }
            Dtype::F32 | Dtype::BF16 => {
                let start = self.store.converted.len();
                let converted = &mut self.store.converted;
                converted.reserve(len);
                if info.dtype == Dtype::F32 {
                    for c in data.chunks_exact(4) {
                        let h = f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                        // Also catches finite f32 values beyond f16's range (65504).
                        if check && !h.is_finite() {
                            return Err(nonfinite());
                        }
                        converted.push(h);
                    }
                } else {
                    for c in data.chunks_exact(2) {
                        let h = f16::from_f32(half::bf16::from_le_bytes([c[0], c[1]]).to_f32());
                        if check && !h.is_finite() {
                            return Err(nonfinite());
                        }
                        converted.push(h);
                    }
                }
                self.store.converted_tensors += 1;
                let weight = WeightRef::Owned { start, len };
                self.record(name, shape, weight);
                Ok(weight)
            }
            other => Err(Error::UnsupportedDtype { name: name.into(), dtype: alloc::format!("{other:?}") }),
        }
    }

    pub fn finish(self) -> WeightStore {
        self.store
    }
}
