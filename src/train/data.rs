//! Training data: MNIST IDX files and folders of PNGs, as `[-1, 1]` NCHW images.
//!
//! - **MNIST IDX** (`*-images-idx3-ubyte[.gz]` and the matching labels file): images of a
//!   given index range, padded with background to the model's size (28x28 → 32x32: 2 pixels
//!   each side) and scaled `p / 255 * 2 - 1`, as DDPM does.
//! - **PNG folder**: every `*.png` directly in the folder (unlabelled), or in its subfolders,
//!   each subfolder a class in sorted order (`ImageFolder`'s convention). 8- or 16-bit grey or
//!   RGB, alpha dropped; grey is repeated for a 3-channel model.

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::string::ToString;

use crate::error::{invalid_arg, Error, Result};

/// Images in `[-1, 1]`, NCHW, with optional class labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub images: Vec<f32>,
    pub labels: Option<Vec<i64>>,
}

fn io_err(path: &Path, e: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Reads a file, gunzipping it when its name ends in `.gz`.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| io_err(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| io_err(path, e))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// Parses an IDX image file: (count, rows, cols, pixels).
pub fn parse_idx_images(bytes: &[u8]) -> Result<(usize, usize, usize, &[u8])> {
    let bad = |m: &str| invalid_arg("IDX images", m.to_string());
    if be_u32(bytes, 0) != Some(0x0803) {
        return Err(bad("magic is not 0x00000803"));
    }
    let (n, r, c) = (
        be_u32(bytes, 4).unwrap_or(0),
        be_u32(bytes, 8).unwrap_or(0),
        be_u32(bytes, 12).unwrap_or(0),
    );
    let data = bytes
        .get(16..16 + n * r * c)
        .ok_or_else(|| bad("file shorter than its header says"))?;
    Ok((n, r, c, data))
}

/// Parses an IDX label file.
pub fn parse_idx_labels(bytes: &[u8]) -> Result<&[u8]> {
    let bad = |m: &str| invalid_arg("IDX labels", m.to_string());
    if be_u32(bytes, 0) != Some(0x0801) {
        return Err(bad("magic is not 0x00000801"));
    }
    let n = be_u32(bytes, 4).unwrap_or(0);
    bytes
        .get(8..8 + n)
        .ok_or_else(|| bad("file shorter than its header says"))
}

/// The labels file beside an images file (`images` → `labels`, `idx3` → `idx1`).
pub fn labels_path_for(images: &Path) -> Option<PathBuf> {
    let name = images
        .file_name()?
        .to_str()?
        .replace("images-idx3", "labels-idx1");
    Some(images.with_file_name(name)).filter(|p| p.is_file())
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.images.len() / self.sample_len().max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn sample_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// One image, optionally mirrored left-right, into `dst`.
    pub fn copy_sample(&self, i: usize, flip: bool, dst: &mut [f32]) {
        let n = self.sample_len();
        let src = &self.images[i * n..(i + 1) * n];
        if !flip {
            dst.copy_from_slice(src);
            return;
        }
        let w = self.width;
        for (d, s) in dst.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
            for (x, v) in d.iter_mut().enumerate() {
                *v = s[w - 1 - x];
            }
        }
    }

    /// MNIST-style IDX data: images `range`, centred on a `size` canvas of background (-1).
    pub fn from_idx(
        images: &[u8],
        labels: Option<&[u8]>,
        range: Range<usize>,
        size: (usize, usize),
    ) -> Result<Dataset> {
        let (n, rows, cols, pixels) = parse_idx_images(images)?;
        if range.end > n || range.is_empty() {
            return Err(invalid_arg(
                "image range",
                alloc::format!("{range:?} of {n} images"),
            ));
        }
        let (h, w) = size;
        if h < rows || w < cols {
            return Err(invalid_arg(
                "image size",
                alloc::format!("{rows}x{cols} images do not fit {h}x{w}"),
            ));
        }
        let (top, left) = ((h - rows) / 2, (w - cols) / 2);
        let mut out = alloc::vec![-1.0f32; range.len() * h * w];
        for (k, i) in range.clone().enumerate() {
            let img = &pixels[i * rows * cols..(i + 1) * rows * cols];
            for y in 0..rows {
                for x in 0..cols {
                    out[(k * h + top + y) * w + left + x] =
                        img[y * cols + x] as f32 / 255.0 * 2.0 - 1.0;
                }
            }
        }
        let labels = match labels {
            Some(l) => {
                let l = parse_idx_labels(l)?;
                if l.len() < range.end {
                    return Err(invalid_arg("IDX labels", "fewer labels than images"));
                }
                Some(l[range].iter().map(|&v| v as i64).collect())
            }
            None => None,
        };
        Ok(Dataset {
            channels: 1,
            height: h,
            width: w,
            images: out,
            labels,
        })
    }

    /// Reads an IDX images file (and its labels file beside it, if any).
    pub fn mnist(images: &Path, range: Range<usize>, size: (usize, usize)) -> Result<Dataset> {
        let img = read_maybe_gz(images)?;
        let labels = labels_path_for(images)
            .map(|p| read_maybe_gz(&p))
            .transpose()?;
        Dataset::from_idx(&img, labels.as_deref(), range, size)
    }

    /// A folder of PNGs (see the module docs), resized never: every image must be `size`.
    pub fn png_folder(dir: &Path, channels: usize, size: (usize, usize)) -> Result<Dataset> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        let classes: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
        let mut files: Vec<(PathBuf, Option<i64>)> = Vec::new();
        let pngs = |d: &Path| -> Result<Vec<PathBuf>> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(d)
                .map_err(|e| io_err(d, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
                .collect();
            v.sort();
            Ok(v)
        };
        if classes.is_empty() {
            files.extend(pngs(dir)?.into_iter().map(|p| (p, None)));
        } else {
            for (k, c) in classes.iter().enumerate() {
                files.extend(pngs(c)?.into_iter().map(|p| (p, Some(k as i64))));
            }
        }
        if files.is_empty() {
            return Err(io_err(dir, "no .png files"));
        }
        let (h, w) = size;
        let mut images = Vec::with_capacity(files.len() * channels * h * w);
        for (path, _) in &files {
            images.extend(read_png(path, channels, size)?);
        }
        let labels = if classes.is_empty() {
            None
        } else {
            Some(files.iter().map(|f| f.1.unwrap_or(0)).collect())
        };
        Ok(Dataset {
            channels,
            height: h,
            width: w,
            images,
            labels,
        })
    }
}

/// One PNG as `[-1, 1]` CHW with `channels` channels.
pub fn read_png(path: &Path, channels: usize, (h, w): (usize, usize)) -> Result<Vec<f32>> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| io_err(path, e))?;
    let mut buf = alloc::vec![0u8; reader.output_buffer_size().unwrap_or(0)];
    let info = reader.next_frame(&mut buf).map_err(|e| io_err(path, e))?;
    if info.width as usize != w || info.height as usize != h {
        return Err(io_err(
            path,
            alloc::format!(
                "{}x{} image, the model takes {w}x{h}",
                info.width,
                info.height
            ),
        ));
    }
    let src_c = info.color_type.samples();
    let color = match info.color_type {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => 1,
        _ => 3,
    };
    if color != channels && !(color == 1 && channels == 3) {
        return Err(io_err(
            path,
            alloc::format!("{color}-channel image for a {channels}-channel model"),
        ));
    }
    let mut out = alloc::vec![0.0f32; channels * h * w];
    for p in 0..h * w {
        for c in 0..channels {
            let v = buf[p * src_c + if color == 1 { 0 } else { c }];
            out[c * h * w + p] = v as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Ok(out)
}
