//! The trainer's f32 master weights, keyed by the same [`WeightRef`]s the op list holds.
//!
//! The inference [`Model`](crate::Model) resolves each op's weights to f16 data at load. The trainer keeps its
//! own flat f32 buffer (parameters, and likewise gradients, Adam moments and the EMA, all with
//! the same layout) and a table from each op's `WeightRef` to a range of that buffer, so the
//! training walk reads the *same* op list, only through another weight source. The table also
//! knows every tensor's diffusers name and shape (recorded when the description took it), which
//! is how weights are read from and written to diffusers-named safetensors files.
//!
//! Layout: conv weights are stored HWIO (`[kh][kw][in][out]`) so the conv loops run over
//! contiguous output channels; everything else keeps diffusers' layout. Conversion happens only
//! at load, at save and when a gradient is exported for comparison.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use half::f16;
use safetensors::{Dtype, SafeTensors};

use super::layers::conv::{hwio_to_oihw, oihw_to_hwio};
use super::rng::{Purpose, Stream};
use crate::error::{Error, Result};
use crate::model::{ModelDescription, Op};
use crate::weights::WeightRef;

/// What a parameter tensor is, which fixes its storage layout and its default initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `[out, in, k, k]` in diffusers, stored HWIO.
    ConvWeight {
        out_c: usize,
        in_c: usize,
        k: usize,
    },
    /// `[out, in]`.
    LinearWeight {
        in_f: usize,
    },
    /// Bias of a conv or linear with this fan-in.
    Bias {
        fan_in: usize,
    },
    /// GroupNorm scale (init 1) and shift (init 0).
    NormScale,
    NormShift,
    /// Class embedding table `[classes, dim]` (init N(0, 1), as `nn.Embedding`).
    Embedding,
    /// `GaussianFourierProjection.W` (init N(0, 16^2) as `UNet2DModel` draws it; fixed in
    /// diffusers, and it gets no gradient here).
    FourierWeight,
}

/// One parameter tensor.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    /// diffusers shape.
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    /// Range in the flat buffers.
    pub offset: usize,
    pub len: usize,
    weight: WeightRef,
}

impl ParamSpec {
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Every parameter of a model, in description order, and the lookup from `WeightRef`.
#[derive(Debug, Clone)]
pub struct ParamTable {
    specs: Vec<ParamSpec>,
    /// (key of the WeightRef, index into `specs`), sorted by key.
    by_ref: Vec<((u8, usize), usize)>,
    total: usize,
}

fn key(r: WeightRef) -> (u8, usize) {
    match r {
        WeightRef::File { byte_start, .. } => (0, byte_start),
        WeightRef::Owned { start, .. } => (1, start),
    }
}

fn st_err(e: impl core::fmt::Debug) -> Error {
    Error::InvalidSafetensors {
        message: alloc::format!("{e:?}"),
    }
}

impl ParamTable {
    /// Builds the table from a model description's parameter list (names, shapes, references)
    /// and its op list (which says what each tensor is).
    pub fn new(model: &ModelDescription) -> Result<ParamTable> {
        let mut kinds: Vec<((u8, usize), ParamKind)> = Vec::new();
        let linear = |kinds: &mut Vec<_>, (w, b): (WeightRef, WeightRef), in_f: usize| {
            kinds.push((key(w), ParamKind::LinearWeight { in_f }));
            kinds.push((key(b), ParamKind::Bias { fan_in: in_f }));
        };
        for op in &model.ops {
            match op {
                Op::Conv(c) => {
                    let s = &c.shape;
                    kinds.push((
                        key(c.weight),
                        ParamKind::ConvWeight {
                            out_c: s.out_c,
                            in_c: s.in_c(),
                            k: s.kernel,
                        },
                    ));
                    kinds.push((
                        key(c.bias),
                        ParamKind::Bias {
                            fan_in: s.in_c() * s.kernel * s.kernel,
                        },
                    ));
                }
                Op::Linear(l) => linear(&mut kinds, (l.weight, l.bias), l.in_f),
                Op::GroupNorm(g) => {
                    kinds.push((key(g.gamma), ParamKind::NormScale));
                    kinds.push((key(g.beta), ParamKind::NormShift));
                }
                Op::ClassEmbedding(c) => kinds.push((key(c.table), ParamKind::Embedding)),
                Op::Input(_) | Op::Sinusoid(_) | Op::Silu(_) | Op::Attention(_) | Op::Output(_) => {
                }
                Op::ScaleShift(_) | Op::Resample(_) | Op::Activation(_) | Op::ClassSinusoid(_) => {}
                Op::TimestepTable(t) => kinds.push((key(t.table), ParamKind::Embedding)),
                Op::FourierEmbedding(f) => kinds.push((key(f.weight), ParamKind::FourierWeight)),
                Op::FirResample(_)
                | Op::TimestepDivide(_)
                | Op::Elementwise(_)
                | Op::ClassVector(_)
                | Op::Geglu(_)
                | Op::EncoderStates(_)
                | Op::NormConv(_) => {}
                Op::LayerNorm(l) => {
                    kinds.push((key(l.gamma), ParamKind::NormScale));
                    kinds.push((key(l.beta), ParamKind::NormShift));
                }
                Op::TokenEmbedding(t) => {
                    kinds.push((key(t.table), ParamKind::Embedding));
                    kinds.push((key(t.positions), ParamKind::Embedding));
                }
            }
        }
        kinds.sort_by_key(|k| k.0);
        let mut specs = Vec::new();
        let mut offset = 0;
        for nw in &model.weights {
            let kind = kinds
                .binary_search_by_key(&key(nw.weight), |k| k.0)
                .map(|i| kinds[i].1)
                .map_err(|_| Error::MissingTensor {
                    name: alloc::format!("{} (not used by any op)", nw.name),
                })?;
            let len: usize = nw.shape.iter().product();
            specs.push(ParamSpec {
                name: nw.name.clone(),
                shape: nw.shape.clone(),
                kind,
                offset,
                len,
                weight: nw.weight,
            });
            // Keep every tensor 16-float aligned in the flat buffers.
            offset += len.div_ceil(16) * 16;
        }
        let mut by_ref: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (key(s.weight), i))
            .collect();
        by_ref.sort_unstable();
        Ok(ParamTable {
            specs,
            by_ref,
            total: offset,
        })
    }

    /// Length of the flat buffers (parameters, gradients, moments).
    pub fn buffer_len(&self) -> usize {
        self.total
    }

    /// Number of learned scalars.
    pub fn count(&self) -> usize {
        self.specs.iter().map(|s| s.len).sum()
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    pub fn find(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// The range of an op's weight in the flat buffers.
    #[inline]
    pub fn range(&self, r: WeightRef) -> Range<usize> {
        let i = self
            .by_ref
            .binary_search_by_key(&key(r), |e| e.0)
            .expect("weight of the op list");
        self.specs[self.by_ref[i].1].range()
    }

    /// As [`ParamTable::range`], as (start, len) for [`crate::memory::carve`].
    #[inline]
    pub fn region(&self, r: WeightRef) -> (usize, usize) {
        let range = self.range(r);
        (range.start, range.len())
    }

    /// A tensor in diffusers' layout (copied out of the flat buffer).
    pub fn export(&self, spec: &ParamSpec, buffer: &[f32]) -> Vec<f32> {
        let src = &buffer[spec.range()];
        match spec.kind {
            ParamKind::ConvWeight { out_c, in_c, k } => {
                let mut out = alloc::vec![0.0; spec.len];
                hwio_to_oihw(src, out_c, in_c, k, &mut out);
                out
            }
            _ => src.to_vec(),
        }
    }

    /// Stores a tensor given in diffusers' layout.
    pub fn import(&self, spec: &ParamSpec, data: &[f32], buffer: &mut [f32]) {
        let dst = &mut buffer[spec.range()];
        match spec.kind {
            ParamKind::ConvWeight { out_c, in_c, k } => oihw_to_hwio(data, out_c, in_c, k, dst),
            _ => dst.copy_from_slice(data),
        }
    }

    /// Reads every parameter from a diffusers-named safetensors file (`prefix` + name; F32, F64,
    /// F16 or BF16) into a flat buffer.
    pub fn read_safetensors(&self, bytes: &[u8], prefix: &str, buffer: &mut [f32]) -> Result<()> {
        let st = SafeTensors::deserialize(bytes).map_err(st_err)?;
        for spec in &self.specs {
            let name = alloc::format!("{prefix}{}", spec.name);
            let view = st
                .tensor(&name)
                .map_err(|_| Error::MissingTensor { name: name.clone() })?;
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(Error::UnsupportedDtype {
                        name,
                        dtype: alloc::format!("{other:?}"),
                    })
                }
            };
            if values.len() != spec.len {
                return Err(Error::ShapeMismatch {
                    name,
                    expected: alloc::format!("{:?}", spec.shape),
                    found: alloc::format!("{:?}", view.shape()),
                });
            }
            self.import(spec, &values, buffer);
        }
        Ok(())
    }

    /// Serialises one or more flat buffers as safetensors in diffusers' names and layout:
    /// `(prefix, buffer)` pairs, each tensor as F16 or F32.
    pub fn write_safetensors(&self, buffers: &[(&str, &[f32])], dtype: Dtype) -> Result<Vec<u8>> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (prefix, buffer) in buffers {
            for spec in &self.specs {
                let values = self.export(spec, buffer);
                let bytes: Vec<u8> = match dtype {
                    Dtype::F16 => values
                        .iter()
                        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                        .collect(),
                    _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                };
                tensors.push((
                    alloc::format!("{prefix}{}", spec.name),
                    spec.shape.clone(),
                    bytes,
                ));
            }
        }
        let dtype = if dtype == Dtype::F16 {
            Dtype::F16
        } else {
            Dtype::F32
        };
        let views = tensors
            .iter()
            .map(|(n, shape, data)| {
                safetensors::tensor::TensorView::new(dtype, shape.clone(), data)
                    .map(|v| (n.clone(), v))
                    .map_err(st_err)
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, None).map_err(st_err)
    }

    /// PyTorch's default initialisation (what `UNet2DModel(**config)` starts from): conv and
    /// linear weights and biases `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (kaiming-uniform with
    /// a = sqrt(5)), GroupNorm scale 1 and shift 0, embeddings N(0, 1). Seeded.
    pub fn init(&self, seed: u64, buffer: &mut [f32]) {
        buffer.fill(0.0);
        for (i, spec) in self.specs.iter().enumerate() {
            let mut rng = Stream::new(seed, Purpose::Init, i as u64);
            let dst = &mut buffer[spec.range()];
            let uniform = |rng: &mut Stream, fan_in: usize| {
                let bound = 1.0 / libm::sqrt(fan_in as f64);
                ((2.0 * rng.uniform() - 1.0) * bound) as f32
            };
            match spec.kind {
                ParamKind::ConvWeight { in_c, k, .. } => dst
                    .iter_mut()
                    .for_each(|v| *v = uniform(&mut rng, in_c * k * k)),
                ParamKind::LinearWeight { in_f } => {
                    dst.iter_mut().for_each(|v| *v = uniform(&mut rng, in_f))
                }
                ParamKind::Bias { fan_in } => {
                    dst.iter_mut().for_each(|v| *v = uniform(&mut rng, fan_in))
                }
                ParamKind::NormScale => dst.fill(1.0),
                ParamKind::NormShift => dst.fill(0.0),
                ParamKind::Embedding => dst.iter_mut().for_each(|v| *v = rng.gaussian() as f32),
                ParamKind::FourierWeight => dst
                    .iter_mut()
                    .for_each(|v| *v = (16.0 * rng.gaussian()) as f32),
            }
        }
    }
}
