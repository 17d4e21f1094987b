//! The fixed-step sampling loop: `x_T → x_0` with a [`Scheduler`] and a [`Model`], inside one
//! caller-provided workspace, with no heap allocation.
//!
//! ```text
//! x = x_T                                   (injected, or seeded noise stream 0)
//! for i, t in scheduler.timesteps():
//!     eps = model(x, t, y)                  (twice with classifier-free guidance:
//!                                            eps = (1 + w) eps(x, y) - w eps(x, null))
//!     x = scheduler.step(i, eps, x, z_i)    (z_i injected row i, or seeded stream i + 1)
//! ```

use crate::error::{invalid_arg, Error, Result};
use crate::model::Model;
use crate::schedule::noise::GaussianNoise;
use crate::schedule::{Scheduler, StepShape};

/// Classifier-free guidance: `eps = (1 + scale) * eps(x, y) - scale * eps(x, null_class)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    pub scale: f32,
    /// The label trained as "no class" (label dropout). Default: the model's last class index.
    pub null_class: i64,
}

impl Guidance {
    /// Guidance with the model's last class as the null class.
    pub fn new(model: &Model, scale: f32) -> Result<Guidance> {
        match model.config.num_class_embeds {
            Some(n) => Ok(Guidance {
                scale,
                null_class: n as i64 - 1,
            }),
            None => Err(invalid_arg(
                "guidance",
                "the model is not class-conditional",
            )),
        }
    }
}

/// What to sample, and where the randomness comes from.
#[derive(Debug, Clone, Copy)]
pub struct SampleOptions<'a> {
    pub batch: usize,
    /// Seed of the built-in generator, used for whatever noise is not injected.
    pub seed: u64,
    /// `[batch, C, H, W]`: the starting sample x_T.
    pub initial_noise: Option<&'a [f32]>,
    /// `[steps, batch, C, H, W]`: row i is the Gaussian noise of step i (diffusers' replay).
    pub step_noise: Option<&'a [f32]>,
    /// One label per sample, or one for all; required for class-conditional models.
    pub class_labels: Option<&'a [i64]>,
    pub guidance: Option<Guidance>,
}

impl<'a> SampleOptions<'a> {
    pub fn new(batch: usize, seed: u64) -> SampleOptions<'a> {
        SampleOptions {
            batch,
            seed,
            initial_noise: None,
            step_noise: None,
            class_labels: None,
            guidance: None,
        }
    }
}

/// Progress report after each step.
pub struct StepInfo<'a> {
    pub index: usize,
    pub steps: usize,
    pub timestep: i64,
    /// The sample after this step, `[batch, C, H, W]`.
    pub sample: &'a [f32],
}

/// Where each buffer of a sampling run lives in the workspace (f32 offsets).
struct Layout {
    model: (usize, usize),
    eps: (usize, usize),
    eps_uncond: (usize, usize),
    noise: (usize, usize),
    scratch: (usize, usize),
    total: usize,
}

fn layout(model: &Model, scheduler: &Scheduler, batch: usize, guided: bool) -> Layout {
    let (c, h, w) = model.input_shape();
    let (c_out, _, _) = model.output_shape();
    let sample = batch * c * h * w;
    let eps = batch * c_out * h * w;
    let shape = StepShape {
        batch,
        channels: c,
        height: h,
        width: w,
    };
    let mut at = 0;
    let mut take = |len: usize| {
        let r = (at, len);
        at += len;
        r
    };
    let model_ws = take(model.workspace_len(batch));
    let eps_r = take(eps);
    let eps_uncond = take(if guided { eps } else { 0 });
    let noise = take(sample);
    let scratch = take(scheduler.scratch_len(shape));
    Layout {
        model: model_ws,
        eps: eps_r,
        eps_uncond,
        noise,
        scratch,
        total: at,
    }
}

/// Exact workspace (f32 elements) of [`sample`] for this model, scheduler and batch.
pub fn workspace_len(model: &Model, scheduler: &Scheduler, batch: usize, guided: bool) -> usize {
    layout(model, scheduler, batch, guided).total
}

fn slice(ws: &mut [f32], (start, len): (usize, usize)) -> &mut [f32] {
    &mut ws[start..start + len]
}

/// Runs the whole sampling loop. `out` (`[batch, C, H, W]`) receives x_0; `on_step`, if
/// given, sees the sample after every step.
pub fn sample(
    model: &Model,
    scheduler: &Scheduler,
    workspace: &mut [f32],
    opts: &SampleOptions<'_>,
    out: &mut [f32],
    mut on_step: Option<&mut dyn FnMut(&StepInfo<'_>)>,
) -> Result<()> {
    let batch = opts.batch;
    if batch == 0 {
        return Err(invalid_arg("batch", "must be at least 1"));
    }
    let (c, h, w) = model.input_shape();
    let (c_out, _, _) = model.output_shape();
    let per_sample = c * h * w;
    if c_out != c && c_out != 2 * c {
        return Err(invalid_arg(
            "model",
            "out_channels must equal in_channels (or twice it, for learned variance)",
        ));
    }
    let n = batch * per_sample;
    if out.len() != n {
        return Err(Error::BufferSize {
            what: "sample output",
            expected: n,
            found: out.len(),
        });
    }
    let steps = scheduler.timesteps().len();
    if let Some(z) = opts.step_noise {
        if z.len() != steps * n {
            return Err(Error::BufferSize {
                what: "step noise [steps, B, C, H, W]",
                expected: steps * n,
                found: z.len(),
            });
        }
    }
    let labels = opts.class_labels;
    match (model.config.num_class_embeds, labels) {
        (Some(_), None) => {
            return Err(invalid_arg(
                "class labels",
                "the model is class-conditional: give a class label",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid_arg(
                "class labels",
                "the model is not class-conditional",
            ))
        }
        _ => {}
    }
    if let Some(l) = labels {
        if l.len() != batch && l.len() != 1 {
            return Err(Error::BufferSize {
                what: "class labels",
                expected: batch,
                found: l.len(),
            });
        }
    }
    let guidance = opts.guidance.filter(|g| g.scale != 0.0);
    if let Some(g) = &guidance {
        if !g.scale.is_finite() {
            return Err(invalid_arg("guidance", "scale must be finite"));
        }
        model.check_class_label(g.null_class)?;
    }
    let lay = layout(model, scheduler, batch, guidance.is_some());
    if workspace.len() < lay.total {
        return Err(Error::BufferSize {
            what: "sampling workspace",
            expected: lay.total,
            found: workspace.len(),
        });
    }

    #[cfg(feature = "cuda")]
    if let Some(gpu) = &model.cuda {
        if let Some(x_t) = opts.initial_noise {
            if x_t.len() != n {
                return Err(Error::BufferSize {
                    what: "initial noise x_T",
                    expected: n,
                    found: x_t.len(),
                });
            }
        }
        return gpu.sample(model, scheduler, opts, out, on_step);
    }

    let noise = GaussianNoise::new(opts.seed);
    match opts.initial_noise {
        Some(x_t) if x_t.len() != n => {
            return Err(Error::BufferSize {
                what: "initial noise x_T",
                expected: n,
                found: x_t.len(),
            })
        }
        Some(x_t) => out.copy_from_slice(x_t),
        None => noise.fill(0, out),
    }
    // init_noise_sigma is 1 for DDPM and DDIM: x_T is the standard normal draw itself.

    let shape = StepShape {
        batch,
        channels: c,
        height: h,
        width: w,
    };
    let (model_start, model_len) = lay.model;
    for (i, &t) in scheduler.timesteps().iter().enumerate() {
        let (model_ws, rest) = workspace[model_start..].split_at_mut(model_len);
        let rest_base = model_start + model_len;
        let shift = |(s, l): (usize, usize)| (s - rest_base, l);
        let ts = [t as f32];
        {
            let eps = slice(rest, shift(lay.eps));
            model.forward(model_ws, out, &ts, labels, eps)?;
        }
        if let Some(g) = &guidance {
            let (eps_r, uncond_r) = (shift(lay.eps), shift(lay.eps_uncond));
            {
                let uncond = slice(rest, uncond_r);
                model.forward(model_ws, out, &ts, Some(&[g.null_class]), uncond)?;
            }
            // eps and eps_uncond are adjacent: eps first.
            let (eps_part, uncond_part) =
                rest[eps_r.0..uncond_r.0 + uncond_r.1].split_at_mut(eps_r.1);
            let hw = h * w;
            for b in 0..batch {
                // Guide the prediction channels; learned-variance channels keep the
                // conditional model's values.
                let range = b * c_out * hw..(b * c_out + c) * hw;
                for (e, u) in eps_part[range.clone()].iter_mut().zip(&uncond_part[range]) {
                    *e = (1.0 + g.scale) * *e - g.scale * *u;
                }
            }
        }
        let noise_row: Option<&[f32]> = if scheduler.needs_noise(i) {
            match opts.step_noise {
                Some(z) => Some(&z[i * n..(i + 1) * n]),
                None => {
                    let buf = slice(rest, shift(lay.noise));
                    noise.fill(i as u64 + 1, buf);
                    None
                }
            }
        } else {
            None
        };
        let (eps_r, noise_r, scratch_r) = (shift(lay.eps), shift(lay.noise), shift(lay.scratch));
        // eps, eps_uncond, noise, scratch are laid out in this order.
        let (head, tail) = rest.split_at_mut(noise_r.0);
        let eps = &head[eps_r.0..eps_r.0 + eps_r.1];
        let (noise_buf, tail) = tail.split_at_mut(noise_r.1);
        let scratch = &mut tail[scratch_r.0 - (noise_r.0 + noise_r.1)..][..scratch_r.1];
        let z = if scheduler.needs_noise(i) {
            Some(noise_row.unwrap_or(noise_buf))
        } else {
            None
        };
        scheduler.step(i, shape, eps, out, z, None, scratch)?;
        if let Some(cb) = on_step.as_mut() {
            cb(&StepInfo {
                index: i,
                steps,
                timestep: t,
                sample: out,
            });
        }
    }
    Ok(())
}
