//! Offline conversion (std): rewrite a model folder so that it loads without any copy.
//!
//! Every floating tensor is rounded to f16 (f32 and bf16 inputs) and written with
//! `safetensors::serialize`, which pads the header to 8 bytes, so every tensor starts 2-byte
//! aligned and is used in place. Tensor names stay diffusers' names, so the output is still a
//! diffusers checkpoint (`UNet2DModel.from_pretrained(out, torch_dtype=torch.float16)` loads it).
//! The configs are copied unchanged.

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
    pub bytes_in: usize,
    pub bytes_out: usize,
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

/// Converts a UNet or pipeline folder into a UNet folder `out_dir` (config.json,
/// diffusion_pytorch_model.safetensors in f16, scheduler_config.json when the input has one).
/// The model is loaded from the result to check it before returning.
pub fn convert_folder(in_dir: &Path, out_dir: &Path) -> Result<ConvertReport> {
    let files = ModelFiles::find(in_dir)?;
    let config = read_text(&files.config)?;
    let bytes = std::fs::read(&files.weights).map_err(|e| io_err(&files.weights, e))?;
    let (converted, report) = to_f16_safetensors(&bytes)?;
    // Validate before writing anything: the converted weights must load against the config.
    crate::Model::from_parts(&config, super::WeightBytes::Owned(converted.clone()))?;
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
