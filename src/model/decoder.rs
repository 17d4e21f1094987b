//! A latent decoder (`VQModel` or `AutoencoderKL` decode): the latents → image half of a
//! latent-diffusion pipeline. Its op list ([`super::describe_decoder`]) runs through the same
//! walk and backends as the UNet (it is held as a [`Model`] of its own ops); the `VQModel`'s
//! codebook lookup runs on the caller's latents first.
//!
//! In a pipeline folder the decoder hangs off the UNet's model ([`Model::decoder`]) and the
//! sampling loop decodes after its last step, in the same workspace: the decoder's arena
//! overlaps the UNet's, which is free by then (`sampler::workspace_len_with` sizes both).

use super::decoder_config::{DecoderConfig, DecoderKind};
use super::describe_decoder::{describe_decoder, DecoderLayout};
use super::Model;
use crate::config::UNetConfig;
use crate::error::{Error, Result};
use crate::memory::Reuse;
use crate::weights::{LoadOptions, WeightBytes, WeightLoader, WeightRef};

/// A loaded decoder for latents of one size.
pub struct Decoder {
    pub config: DecoderConfig,
    /// The decoder's op list, weights and memory plan.
    pub(crate) net: Model,
    /// `VQModel`: `quantize.embedding.weight`, `[num_vq_embeddings, vq_embed_dim]`.
    codebook: Option<WeightRef>,
}

impl Decoder {
    /// Builds the decoder of `config` for `(height, width)` latents from its safetensors
    /// weights (the autoencoder's whole file; encoder tensors are not read).
    pub fn new(
        config: DecoderConfig,
        weights: WeightBytes,
        options: LoadOptions,
        latent_size: (usize, usize),
        reuse: Reuse,
    ) -> Result<Decoder> {
        Decoder::with_layout(
            config,
            weights,
            options,
            latent_size,
            reuse,
            DecoderLayout::for_reuse(reuse),
        )
    }

    /// [`Decoder::new`] with the resnets' band size and in-place choice given (tests run the
    /// bands small to check they change nothing).
    pub fn with_layout(
        config: DecoderConfig,
        weights: WeightBytes,
        options: LoadOptions,
        latent_size: (usize, usize),
        reuse: Reuse,
        layout: DecoderLayout,
    ) -> Result<Decoder> {
        let (h, w) = latent_size;
        let up = config.upscale();
        let (out_h, out_w) = (h.saturating_mul(up), w.saturating_mul(up));
        let c_in = config.input_channels();
        if h == 0
            || w == 0
            || [c_in, config.block_out_channels[0]].iter().any(|c| {
                out_h.saturating_mul(out_w).saturating_mul(*c) > crate::config::MAX_TENSOR_ELEMS
            })
        {
            return Err(crate::error::invalid_arg(
                "latents",
                alloc::format!("{h}x{w} latents cannot be decoded (too large or empty)"),
            ));
        }
        let mut loader = WeightLoader::new(weights, options)?;
        let codebook = match config.kind {
            DecoderKind::Vq {
                num_vq_embeddings,
                vq_embed_dim,
            } => Some(loader.take(
                &["quantize.embedding.weight"],
                &[num_vq_embeddings, vq_embed_dim],
            )?),
            DecoderKind::Kl { .. } | DecoderKind::Tiny => None,
        };
        let mut described = describe_decoder(&config, &mut loader, latent_size, layout)?;
        if let Some(c) = codebook {
            described.parameters += c.len();
        }
        let shapes = UNetConfig::io_only(latent_size, c_in, config.out_channels);
        let net = Model::assemble(
            shapes,
            described,
            loader.finish(),
            latent_size,
            (out_h, out_w),
            reuse,
        )?;
        Ok(Decoder {
            config,
            net,
            codebook,
        })
    }

    /// [`Decoder::new`] from a `config.json` text, default load options, shared memory.
    pub fn from_parts(
        config_json: &str,
        weights: WeightBytes,
        latent_size: (usize, usize),
    ) -> Result<Decoder> {
        let config = DecoderConfig::from_json(config_json)?;
        Decoder::new(
            config,
            weights,
            LoadOptions::default(),
            latent_size,
            Reuse::Shared,
        )
    }

    /// (channels, height, width) of the latents it decodes.
    pub fn latent_shape(&self) -> (usize, usize, usize) {
        self.net.input_shape()
    }

    /// (channels, height, width) of the image it produces.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        self.net.output_shape()
    }

    /// The decoder's op list, taps and memory plan, as a [`Model`] (for inspection and tests).
    pub fn net(&self) -> &Model {
        &self.net
    }

    /// The net, to choose its kernels ([`Model::set_kernels`]) or threads.
    pub fn net_mut(&mut self) -> &mut Model {
        &mut self.net
    }

    /// Learned parameters (with the codebook).
    pub fn parameters(&self) -> usize {
        self.net.parameters()
    }

    /// f32 elements of workspace of [`Decoder::decode`] at `batch` on at most `threads`
    /// threads (0: the net's thread count; see [`Model::workspace_len_for_threads`]).
    pub fn workspace_len_for_threads(&self, batch: usize, threads: usize) -> usize {
        self.net.workspace_len_for_threads(batch, threads)
    }

    /// [`Decoder::workspace_len_for_threads`] with `threads` 0.
    pub fn workspace_len(&self, batch: usize) -> usize {
        self.net.workspace_len(batch)
    }

    /// What a pipeline does to its final latents before `decode`: `x / scaling_factor`
    /// (`+ shift_factor` when the config sets one), in place.
    pub fn unscale(&self, latents: &mut [f32]) {
        let s = self.config.scaling_factor;
        let shift = self.config.shift_factor.unwrap_or(0.0);
        for x in latents.iter_mut() {
            *x = (*x as f64 / s + shift) as f32;
        }
    }

    /// diffusers' `decode` of `latents` (`[B, C, h, w]`, NCHW) into `out` (`[B, C_out, H, W]`).
    /// A `VQModel` first replaces each latent pixel, in place, by its nearest codebook entry
    /// (Euclidean distance; the first of equals, as `argmin`). `workspace`: at least
    /// [`Decoder::workspace_len_for_threads`]`(batch, threads)` floats. Allocates nothing.
    pub fn decode(
        &self,
        threads: usize,
        workspace: &mut [f32],
        latents: &mut [f32],
        out: &mut [f32],
    ) -> Result<()> {
        let (c, h, w) = self.latent_shape();
        let per = c * h * w;
        if latents.is_empty() || !latents.len().is_multiple_of(per) {
            return Err(Error::BufferSize {
                what: "latents",
                expected: per,
                found: latents.len(),
            });
        }
        if latents.iter().any(|x| !x.is_finite()) {
            return Err(crate::error::invalid_arg("latents", "must be finite"));
        }
        if let Some(book) = self.codebook {
            self.quantize(self.net.weights.get(book), latents, c, h * w);
        }
        self.net
            .forward_with_threads(threads, workspace, latents, &[0.0], None, out)
    }

    /// The nearest codebook entry for every pixel of NCHW `latents`, in place. `VQModel`
    /// builds its quantizer with `remap=None` and `legacy` only changes the training loss, so
    /// the lookup is all `decode` does; `z + (z_q - z)` is `z_q` up to rounding.
    fn quantize(&self, book: &[half::f16], latents: &mut [f32], c: usize, pixels: usize) {
        for sample in latents.chunks_exact_mut(c * pixels) {
            for p in 0..pixels {
                let mut best = (f64::INFINITY, 0usize);
                for (e, entry) in book.chunks_exact(c).enumerate() {
                    let d: f64 = entry
                        .iter()
                        .enumerate()
                        .map(|(ch, v)| {
                            let diff = sample[ch * pixels + p] as f64 - v.to_f64();
                            diff * diff
                        })
                        .sum();
                    if d < best.0 {
                        best = (d, e);
                    }
                }
                let entry = &book[best.1 * c..(best.1 + 1) * c];
                for (ch, v) in entry.iter().enumerate() {
                    sample[ch * pixels + p] = v.to_f32();
                }
            }
        }
    }
}
