//! Offline conversion (std): rewrite a model folder so that it loads without any copy.
//!
//! Every floating tensor is rounded to f16 (f32 and bf16 inputs) and written with
//! `safetensors::serialize`, which pads the header to 8 bytes, so every tensor starts 2-byte
//! aligned and is used in place. The configs are copied unchanged.
//!
//! Two layouts ([`Layout`]):
//! - [`Layout::Packed`] (what [`convert_folder`] writes): conv and linear weights in the
//!   kernels' packed layout (see [`crate::kernels`]), under their diffusers names, with the
//!   packed shape (`[ceil(out/32), k, k, in, 32]` for convs, `[ceil(out/32), in, 32]` for
//!   linears) and the file metadata `{"tinydiffusion.layout": "oc32"}`
//!   ([`crate::weights::LAYOUT_KEY`]). Every tensor then loads in place, nothing is copied. Biases,
//!   norms and the class embedding keep their diffusers shapes. diffusers itself cannot load
//!   this file (the shapes differ); keep the original for that.
//! - [`Layout::Diffusers`]: diffusers' shapes, so the output is still a diffusers checkpoint
//!   (`UNet2DModel.from_pretrained(out, torch_dtype=torch.float16)` loads it); this library
//!   loads it too, packing conv and linear weights once at load (a copy).

use std::path::Path;
use std::string::ToString;
use std::vec::Vec;

use half::f16;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::model::load::{read_text, ModelFiles};

/// What a conversion did.
#[derive(Debug, Clone, Default)]
pub struct ConvertReport {
    pub tensors: usize,
    pub converted: usize,
    /// Conv and linear weights written in the packed layout.
    pub packed: usize,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

/// The weight layout a conversion writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// The kernels' layout: loads with no copy at all (the default).
    #[default]
    Packed,
    /// diffusers' layout: still a diffusers checkpoint.
    Diffusers,
}

fn io_err(path: &Path, e: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Rounds every F32/BF16 tensor of a safetensors buffer to F16; other dtypes are copied.
pub fn to_f16_safetensors(bytes: &[u8]) -> Result<(Vec<u8>, ConvertReport)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::InvalidSafetensors {
        message: std::format!("{e:?}"),
    })?;
    let mut report = ConvertReport {
        bytes_in: bytes.len(),
        ..Default::default()
    };
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        report.tensors += 1;
        let data = view.data();
        let (dtype, data) = match view.dtype() {
            Dtype::F32 => {
                report.converted += 1;
                let halves: Vec<u8> = data
                    .chunks_exact(4)
                    .flat_map(|c| {
                        f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
                    })
                    .collect();
                (Dtype::F16, halves)
            }
            Dtype::BF16 => {
                report.converted += 1;
                let halves: Vec<u8> = data
                    .chunks_exact(2)
                    .flat_map(|c| {
                        f16::from_f32(half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                            .to_le_bytes()
                    })
                    .collect();
                (Dtype::F16, halves)
            }
            other => (other, data.to_vec()),
        };
        out.push((name, dtype, view.shape().to_vec(), data));
    }
    let views = out
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::InvalidSafetensors {
                    message: std::format!("{e:?}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::InvalidSafetensors {
        message: std::format!("{e:?}"),
    })?;
    report.bytes_out = bytes.len();
    Ok((bytes, report))
}

/// Rounds to f16 like [`to_f16_safetensors`] and writes every conv and linear weight of the
/// model `config_json` describes in the packed layout (see the module docs).
pub fn to_packed_safetensors(config_json: &str, bytes: &[u8]) -> Result<(Vec<u8>, ConvertReport)> {
    let (f16_bytes, mut report) = to_f16_safetensors(bytes)?;
    let st_err = |e| Error::InvalidSafetensors {
        message: std::format!("{e:?}"),
    };
    // Loading the f16 file packs every conv and linear weight into owned memory and records
    // which tensors those are.
    let config = crate::UNetConfig::from_json(config_json)?;
    let model = crate::Model::new(
        config,
        crate::weights::WeightBytes::Owned(f16_bytes.clone()),
        crate::weights::LoadOptions::default(),
        crate::memory::Reuse::Shared,
    )?;
    let store = model.weights();
    let st = SafeTensors::deserialize(&f16_bytes).map_err(st_err)?;
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        match store.packed.iter().find(|p| p.name == name) {
            Some(p) => {
                report.packed += 1;
                let data: Vec<u8> = store
                    .get(p.weight)
                    .iter()
                    .flat_map(|h| h.to_le_bytes())
                    .collect();
                out.push((name, Dtype::F16, p.packed_shape(), data));
            }
            None => out.push((
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )),
        }
    }
    let views = out
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(st_err)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert(
        crate::weights::LAYOUT_KEY.to_string(),
        crate::weights::LAYOUT_PACKED.to_string(),
    );
    let bytes = safetensors::serialize(views, Some(meta)).map_err(st_err)?;
    report.bytes_out = bytes.len();
    Ok((bytes, report))
}

/// Converts a UNet or pipeline folder into a UNet folder `out_dir` (config.json,
/// diffusion_pytorch_model.safetensors in f16, scheduler_config.json when the input has one),
/// with conv and linear weights in the kernels' packed layout so that loading copies nothing.
/// The model is loaded from the result to check it before returning.
pub fn convert_folder(in_dir: &Path, out_dir: &Path) -> Result<ConvertReport> {
    convert_folder_with(in_dir, out_dir, Layout::Packed)
}

/// [`convert_folder`] with a choice of [`Layout`].
pub fn convert_folder_with(in_dir: &Path, out_dir: &Path, layout: Layout) -> Result<ConvertReport> {
    let files = ModelFiles::find(in_dir)?;
    let config = read_text(&files.config)?;
    let bytes = std::fs::read(&files.weights).map_err(|e| io_err(&files.weights, e))?;
    let (converted, report) = match layout {
        Layout::Packed => to_packed_safetensors(&config, &bytes)?,
        Layout::Diffusers => to_f16_safetensors(&bytes)?,
    };
    // Validate before writing anything: the converted weights must load against the config
    // (and, packed, with no copy at all).
    let check = crate::Model::from_parts(
        &config,
        crate::weights::WeightBytes::Owned(converted.clone()),
    )?;
    if layout == Layout::Packed && check.weights().owned_len() != 0 {
        return Err(Error::InvalidSafetensors {
            message: "packed conversion still needs copies at load".into(),
        });
    }
    std::fs::create_dir_all(out_dir).map_err(|e| io_err(out_dir, e))?;
    let write = |name: &str, data: &[u8]| -> Result<()> {
        // Write to a temporary name then rename, so a crash never leaves a half-written file.
        let path = out_dir.join(name);
        let tmp = out_dir.join(std::format!(".{name}.tmp"));
        std::fs::write(&tmp, data).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))
    };
    write("diffusion_pytorch_model.safetensors", &converted)?;
    write("config.json", config.as_bytes())?;
    if let Some(s) = &files.scheduler_config {
        write("scheduler_config.json", read_text(s)?.as_bytes())?;
    }
    Ok(report)
}
