//! File helpers for tools (std): f32 tensors in safetensors files (replaying diffusers runs),
//! and PNG grids of samples.

use std::path::Path;
use std::string::ToString;
use std::vec::Vec;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

fn io_err(path: &Path, e: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Reads tensor `name` of a safetensors file as f32 (F32, F64, F16 and BF16 are accepted),
/// with its shape.
pub fn read_tensor(path: &Path, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::InvalidSafetensors {
        message: std::format!("{}: {e:?}", path.display()),
    })?;
    let view = st.tensor(name).map_err(|_| Error::MissingTensor {
        name: std::format!("{name} in {}", path.display()),
    })?;
    let d = view.data();
    let values = match view.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::UnsupportedDtype {
                name: name.into(),
                dtype: std::format!("{other:?}"),
            })
        }
    };
    Ok((values, view.shape().to_vec()))
}

/// Writes f32 tensors `(name, shape, data)` to a safetensors file.
pub fn write_tensors(path: &Path, tensors: &[(&str, &[usize], &[f32])]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| bytemuck::cast_slice(d).to_vec())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.to_vec(), b)
                .map(|v| (name.to_string(), v))
                .map_err(|e| Error::InvalidArgument {
                    what: "tensor",
                    message: std::format!("{name}: {e:?}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, None).map_err(|e| Error::InvalidArgument {
        what: "tensor",
        message: std::format!("{e:?}"),
    })?;
    std::fs::write(path, data).map_err(|e| io_err(path, e))
}

/// Maps a model-space value to a pixel as diffusers does: `(x / 2 + 0.5)` clamped to [0, 1],
/// then `round(255 * v)`.
pub fn to_pixel(x: f32) -> u8 {
    let v = (x / 2.0 + 0.5).clamp(0.0, 1.0);
    // NaN clamps to NaN; `as u8` maps it to 0, so a broken sample shows black, never garbage.
    (v * 255.0).round() as u8
}

/// Writes a batch `[B, C, H, W]` (C = 1 grayscale, C = 3 RGB) as a PNG grid of `cols` columns
/// with a 2-pixel gap.
pub fn write_png_grid(
    path: &Path,
    samples: &[f32],
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    cols: usize,
) -> Result<()> {
    if channels != 1 && channels != 3 {
        return Err(Error::InvalidArgument {
            what: "image",
            message: std::format!(
                "{channels} channels: only 1 (gray) or 3 (RGB) can be written as PNG"
            ),
        });
    }
    if samples.len() != batch * channels * height * width || batch == 0 {
        return Err(Error::BufferSize {
            what: "image samples",
            expected: batch * channels * height * width,
            found: samples.len(),
        });
    }
    let cols = cols.clamp(1, batch);
    let rows = batch.div_ceil(cols);
    let gap = 2;
    let (gw, gh) = (
        cols * width + (cols - 1) * gap,
        rows * height + (rows - 1) * gap,
    );
    let mut pixels = std::vec![0u8; gw * gh * channels];
    let hw = height * width;
    for b in 0..batch {
        let (ox, oy) = ((b % cols) * (width + gap), (b / cols) * (height + gap));
        for y in 0..height {
            for x in 0..width {
                for c in 0..channels {
                    let v = samples[(b * channels + c) * hw + y * width + x];
                    pixels[((oy + y) * gw + ox + x) * channels + c] = to_pixel(v);
                }
            }
        }
    }
    let file = std::fs::File::create(path).map_err(|e| io_err(path, e))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), gw as u32, gh as u32);
    encoder.set_color(if channels == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    });
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| io_err(path, e))?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| io_err(path, e))?;
    writer.finish().map_err(|e| io_err(path, e))
}
