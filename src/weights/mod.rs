//! Weights: a safetensors file viewed in place.
//!
//! f16 tensors are used straight from the file bytes (memory-mapped under `std`); f32 and bf16
//! tensors are rounded to f16 once at load into one owned buffer. Either way the model sees a
//! [`WeightRef`], resolved to `&[f16]` by [`WeightStore::get`] without searching by name.
//!
//! Conv and linear weights are used in the kernels' packed layout ([`crate::kernels::pack`]).
//! A file written by [`crate::model::convert::convert_folder`] already holds them packed (safetensors
//! metadata [`LAYOUT_KEY`] = [`LAYOUT_PACKED`], tensors under their diffusers names with the
//! packed shape `[ceil(out/32), k, k, in, 32]` for convs and `[ceil(out/32), in, 32]` for
//! linears), so they are used in place. A diffusers file (no such metadata) is packed once at
//! load into the owned buffer.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use half::f16;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::kernels::{pack_weight, packed_len, PACK_OC};

/// safetensors `__metadata__` key naming the weight layout of a converted file.
pub const LAYOUT_KEY: &str = "tinydiffusion.layout";
/// Its value for the packed layout (output channels in blocks of 32, see [`crate::kernels`]).
pub const LAYOUT_PACKED: &str = "oc32";

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

/// A conv or linear weight the model uses in packed layout.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedTensor {
    /// Its name in the file.
    pub name: String,
    pub out: usize,
    pub inp: usize,
    /// `Some(k)` for a `k x k` conv, `None` for a linear.
    pub kernel: Option<usize>,
    pub weight: WeightRef,
}

impl PackedTensor {
    /// The shape under which a converted file stores it.
    pub fn packed_shape(&self) -> Vec<usize> {
        packed_shape(self.out, self.inp, self.kernel)
    }
}

fn packed_shape(out: usize, inp: usize, kernel: Option<usize>) -> Vec<usize> {
    let blocks = out.div_ceil(PACK_OC);
    match kernel {
        Some(k) => alloc::vec![blocks, k, k, inp, PACK_OC],
        None => alloc::vec![blocks, inp, PACK_OC],
    }
}

/// Everything the weights of one model occupy: the file and the f16 copies of non-f16 tensors.
pub struct WeightStore {
    bytes: WeightBytes,
    converted: Vec<f16>,
    /// Tensors read from the file as f16 in place, and total elements converted (for reports).
    pub in_place_tensors: usize,
    pub converted_tensors: usize,
    /// Conv and linear weights packed into owned memory at load (a file not written by
    /// [`crate::model::convert::convert_folder`]); 0 for a converted file. Counted apart from
    /// `converted_tensors` (dtype conversions) and `in_place_tensors`.
    pub packed_at_load: usize,
    /// Whether the file declares the packed layout ([`LAYOUT_KEY`]).
    pub packed_file: bool,
    /// Every conv and linear weight, in the order the model took them.
    pub packed: Vec<PackedTensor>,
    /// Every tensor the model took, in the order the description took them: its diffusers name
    /// (the one found in the file), diffusers shape and reference (to packed data for convs and
    /// linears). The trainer keys its f32 master weights on this list.
    pub named: Vec<NamedWeight>,
}

/// A parameter tensor of the model: diffusers name, shape (diffusers layout) and where its f16
/// data lives (in the kernels' layout, which for convs and linears is the packed one).
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

    /// Hands the mapped file's pages under `len` bytes at `byte_start` back to the kernel, once
    /// that tensor was packed into owned memory: the resident set at load is then the packed
    /// copy plus one tensor, not the copy plus the whole file (an SD 1.5 UNet: 1.7 GB less).
    /// The pages stay mapped; a read of a neighbouring tensor sharing a boundary page faults
    /// it back in from the page cache. A no-op for bytes that are not a file map.
    fn release_file_pages(&self, byte_start: usize, len: usize) {
        #[cfg(all(feature = "std", unix))]
        if let WeightBytes::Mapped(map) = &self.bytes {
            const PAGE: usize = 4096;
            let start = byte_start / PAGE * PAGE;
            let end = (byte_start + len).min(map.len());
            // SAFETY: the map is read-only and private and this process never writes it, so no
            // page differs from the file: MADV_DONTNEED drops them and the next read faults the
            // same bytes back in from the file; no reference sees other contents. (The file
            // changing under the map is `map_file`'s contract.) The range lies in the map.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
        #[cfg(not(all(feature = "std", unix)))]
        let _ = (byte_start, len);
    }

    pub fn file_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// f16 elements copied into owned memory at load (0 for a converted file).
    pub fn owned_len(&self) -> usize {
        self.converted.len()
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
    /// When set, every requested tensor is made up (seeded random), see [`WeightLoader::synthetic`].
    synth: Option<Synth>,
    /// No file: every tensor is zeros of the requested shape (to list a config's parameters
    /// before any weights exist, e.g. to initialise training).
    shapes_only: bool,
}

/// Seeded random weights for whatever a model asks for (benchmarks and tests build models of
/// any config this way, see `crate::testing`).
pub(crate) struct Synth {
    state: u64,
    /// (name, diffusers shape, data) of every tensor made, in request order.
    pub(crate) tensors: Vec<(String, Vec<usize>, Vec<f16>)>,
}

impl Synth {
    fn next_unit(&mut self) -> f32 {
        // splitmix64 -> uniform in [-1, 1).
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Norm scales near 1, small biases, other weights uniform with variance 1 / fan_in (so
    /// activations keep their scale through the network).
    fn make(&mut self, name: &str, shape: &[usize]) -> Vec<f16> {
        let len: usize = shape.iter().product();
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let norm = shape.len() == 1 && name.ends_with(".weight");
        let bias = shape.len() == 1 && !norm;
        let amp = libm::sqrtf(3.0 / fan_in as f32);
        let data: Vec<f16> = (0..len)
            .map(|_| {
                let u = self.next_unit();
                f16::from_f32(if norm {
                    1.0 + 0.1 * u
                } else if bias {
                    0.05 * u
                } else {
                    amp * u
                })
            })
            .collect();
        self.tensors
            .push((name.into(), shape.to_vec(), data.clone()));
        data
    }
}

fn st_err(e: safetensors::SafeTensorError) -> Error {
    Error::InvalidSafetensors {
        message: alloc::format!("{e:?}"),
    }
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
    bits.chunks(256)
        .any(|c| c.iter().fold(false, |acc, &b| acc | (b & 0x7c00 == 0x7c00)))
}

impl WeightLoader {
    /// Validates the container (header, offsets, lengths) up front.
    pub fn new(bytes: WeightBytes, options: LoadOptions) -> Result<WeightLoader> {
        let (header_len, metadata) =
            SafeTensors::read_metadata(bytes.as_slice()).map_err(st_err)?;
        let packed_file = match metadata.metadata().as_ref().and_then(|m| m.get(LAYOUT_KEY)) {
            None => false,
            Some(v) if v == LAYOUT_PACKED => true,
            Some(v) => {
                return Err(Error::InvalidSafetensors {
                    message: alloc::format!("unknown weight layout {LAYOUT_KEY} = `{v}` (this build reads `{LAYOUT_PACKED}`)"),
                })
            }
        };
        Ok(WeightLoader {
            store: WeightStore {
                bytes,
                converted: Vec::new(),
                in_place_tensors: 0,
                converted_tensors: 0,
                packed_at_load: 0,
                packed_file,
                packed: Vec::new(),
                named: Vec::new(),
            },
            metadata,
            data_start: 8 + header_len,
            options,
            synth: None,
            shapes_only: false,
        })
    }

    /// A loader without a file: every tensor asked for is zeros of the requested shape,
    /// recording the first name. Used to list the parameters a config implies.
    pub fn shapes_only() -> WeightLoader {
        // The smallest valid safetensors file: an empty header padded to 8 bytes.
        let empty = WeightBytes::Owned(b"\x08\0\0\0\0\0\0\0{}      ".to_vec());
        let mut loader = WeightLoader::new(
            empty,
            LoadOptions {
                check_finite: false,
            },
        )
        .unwrap_or_else(|_| unreachable!("the empty safetensors file is valid"));
        loader.shapes_only = true;
        loader
    }

    /// A loader that makes up every tensor asked for (seeded, see [`Synth`]), in diffusers'
    /// layout; [`WeightLoader::synthesized`] returns them for writing a safetensors file.
    #[cfg(feature = "std")]
    pub(crate) fn synthetic(seed: u64) -> Result<WeightLoader> {
        let empty = safetensors::serialize(
            Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(),
            None,
        )
        .map_err(st_err)?;
        let mut loader = WeightLoader::new(WeightBytes::Owned(empty), LoadOptions::default())?;
        loader.synth = Some(Synth {
            state: seed,
            tensors: Vec::new(),
        });
        Ok(loader)
    }

    /// The tensors a synthetic loader made.
    #[cfg(feature = "std")]
    pub(crate) fn synthesized(&mut self) -> Vec<(String, Vec<usize>, Vec<f16>)> {
        self.synth
            .as_mut()
            .map(|s| core::mem::take(&mut s.tensors))
            .unwrap_or_default()
    }

    /// A conv (`kernel = Some(k)`, diffusers shape `[out, inp, k, k]`) or linear (`None`,
    /// `[out, inp]`) weight in the kernels' packed layout: in place from a converted file,
    /// else packed now into owned memory (a copy, made once at load).
    pub fn take_packed(
        &mut self,
        names: &[&str],
        out: usize,
        inp: usize,
        kernel: Option<usize>,
    ) -> Result<WeightRef> {
        let r = if self.store.packed_file {
            let r = self.take_unrecorded(names, &packed_shape(out, inp, kernel))?;
            if let WeightRef::Owned { .. } = r {
                return Err(Error::UnsupportedDtype {
                    name: names[0].into(),
                    dtype: "non-F16 tensor in a packed file".into(),
                });
            }
            r
        } else {
            let k = kernel.unwrap_or(1);
            let shape: Vec<usize> = match kernel {
                Some(k) => alloc::vec![out, inp, k, k],
                None => alloc::vec![out, inp],
            };
            // Take it in diffusers' layout (in place or rounded), then pack a copy.
            let plain = self.take_unrecorded(names, &shape)?;
            let src: Vec<f16> = self.store.get(plain).to_vec();
            match plain {
                WeightRef::File { byte_start, len } => {
                    self.store.in_place_tensors -= 1;
                    self.store.release_file_pages(byte_start, 2 * len);
                }
                WeightRef::Owned { start, .. } => self.store.converted.truncate(start),
            }
            let start = self.store.converted.len();
            let len = packed_len(out, inp, k);
            self.store.converted.resize(start + len, f16::ZERO);
            pack_weight(&src, out, inp, k, &mut self.store.converted[start..]);
            self.store.packed_at_load += 1;
            WeightRef::Owned { start, len }
        };
        let name = names
            .iter()
            .find(|n| self.contains(n))
            .map(|n| String::from(*n))
            .unwrap_or_else(|| names[0].into());
        let shape = match kernel {
            Some(k) => alloc::vec![out, inp, k, k],
            None => alloc::vec![out, inp],
        };
        self.store.named.push(NamedWeight {
            name: name.clone(),
            shape,
            weight: r,
        });
        self.store.packed.push(PackedTensor {
            name,
            out,
            inp,
            kernel,
            weight: r,
        });
        Ok(r)
    }

    /// Whether the file holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// Finds the first of `names` present (to accept old and new diffusers names), checks its
    /// shape, and returns its f16 data reference.
    pub fn take(&mut self, names: &[&str], shape: &[usize]) -> Result<WeightRef> {
        let weight = self.take_unrecorded(names, shape)?;
        let name = names
            .iter()
            .find(|n| self.contains(n))
            .copied()
            .unwrap_or(names[0]);
        self.store.named.push(NamedWeight {
            name: name.into(),
            shape: shape.to_vec(),
            weight,
        });
        Ok(weight)
    }

    /// `len` zeros in owned memory, for a layer saved without a bias (`bias=False`) whose op
    /// adds one.
    pub fn zeros(&mut self, len: usize) -> WeightRef {
        let start = self.store.converted.len();
        self.store.converted.resize(start + len, f16::ZERO);
        WeightRef::Owned { start, len }
    }

    /// [`WeightLoader::take`] without adding the tensor to [`WeightStore::named`].
    fn take_unrecorded(&mut self, names: &[&str], shape: &[usize]) -> Result<WeightRef> {
        if self.shapes_only {
            let len: usize = shape.iter().product();
            let start = self.store.converted.len();
            self.store.converted.resize(start + len, f16::ZERO);
            return Ok(WeightRef::Owned { start, len });
        }
        if let Some(synth) = &mut self.synth {
            let data = synth.make(names[0], shape);
            let start = self.store.converted.len();
            self.store.converted.extend_from_slice(&data);
            self.store.converted_tensors += 1;
            return Ok(WeightRef::Owned {
                start,
                len: data.len(),
            });
        }
        let (name, info) = names
            .iter()
            .find_map(|n| self.metadata.info(n).map(|i| (*n, i)))
            .ok_or_else(|| Error::MissingTensor {
                name: names[0].into(),
            })?;
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
                    // An even offset in the file that is misaligned in memory: the buffer the
                    // bytes lie in starts at an odd address, not the file's fault.
                    let base = bytes.as_ptr() as usize;
                    return Err(Error::UnalignedTensor {
                        name: name.into(),
                        buffer: byte_start.is_multiple_of(2).then_some(base),
                    });
                };
                if check && any_nonfinite_f16(bits) {
                    return Err(nonfinite());
                }
                self.store.in_place_tensors += 1;
                Ok(WeightRef::File { byte_start, len })
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
                Ok(WeightRef::Owned { start, len })
            }
            other => Err(Error::UnsupportedDtype {
                name: name.into(),
                dtype: alloc::format!("{other:?}"),
            }),
        }
    }

    pub fn finish(self) -> WeightStore {
        self.store
    }
}
