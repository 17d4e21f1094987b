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
//!
//! The continuous-time samplers ([`Method::Sde`], `schedule::sde`) run the same way: the same
//! checks, workspace, guided model evaluation ([`EpsModel`]) and noise streams, with the
//! scheduler step replaced by SDE / ODE / Langevin steps.
//!
//! [`Sampler`] is the one front end that builds either from a model's scheduler config: the
//! kind, the steps, the options and their defaults ([`default_steps`]), and the argument
//! checks. The `sample` tool, the C API and the examples all build theirs with it;
//! [`sample`], [`sample_with`] and [`Method`] remain for schedulers built by hand.

use crate::error::{invalid_arg, Error, Result};
use crate::model::Model;
use crate::schedule::noise::GaussianNoise;
use crate::schedule::sde::{NoiseRows, SdeSampler, SdeStep};
use crate::schedule::{ConsistencyScheduler, LcmScheduler, ScoreVeScheduler};
use crate::schedule::{PredictionType, Scheduler, SigmaScheduler, StepShape};

mod front;

pub use crate::schedule::eps::{EpsModel, NoiseLevel};
pub use crate::schedule::run::{Guidance, SampleOptions, StepInfo, TextConditioning};
pub use front::{default_class_label, default_steps, Sampler, SamplerKind, SamplerSpec};

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

/// How to get from x_T to x_0.
#[derive(Debug, Clone, Copy)]
pub enum Method<'a> {
    /// DDPM or DDIM steps at the scheduler's discrete timesteps.
    Scheduler(&'a Scheduler),
    /// Continuous time: reverse SDE, probability-flow ODE, predictor-corrector.
    Sde(&'a SdeSampler),
    /// Sigma-parameterised schedulers (Euler, Euler ancestral, DPM-Solver multistep, Heun,
    /// UniPC, PNDM): x_T scaled by `init_noise_sigma`, the model input scaled, multistep
    /// history in the workspace; one step per model evaluation.
    Sigma(&'a SigmaScheduler),
    /// The VE score SDE of `ScoreSdeVePipeline`: x_T scaled by sigma_max, Langevin corrector
    /// steps and a predictor step per step, the model called at sigma_t.
    ScoreVe(&'a ScoreVeScheduler),
    /// Consistency models (`ConsistencyModelPipeline`): x_T scaled by sigma_max, the model
    /// input scaled by c_in.
    Consistency(&'a ConsistencyScheduler),
    /// LCM and TCD, one model evaluation per step.
    Lcm(&'a LcmScheduler),
}

impl Method<'_> {
    /// Rows of [`SampleOptions::step_noise`] a run reads: one per DDPM/DDIM step, one per
    /// Gaussian draw of a continuous-time run ([`SdeSampler::noise_rows`]).
    pub fn noise_rows(&self) -> usize {
        match self {
            Method::Scheduler(s) => s.timesteps().len(),
            Method::Sde(s) => s.noise_rows(),
            Method::Sigma(s) => s.noise_rows(),
            Method::ScoreVe(s) => s.noise_rows(),
            Method::Consistency(s) => s.noise_rows(),
            Method::Lcm(s) => s.noise_rows(),
        }
    }

    /// Gaussian draws of a run, as diffusers makes them: for DDPM/DDIM the steps that use
    /// noise (DDPM draws none at t = 0, DDIM none at eta 0); for the others
    /// [`Method::noise_rows`].
    pub fn noise_draws(&self) -> usize {
        match self {
            Method::Scheduler(s) => (0..s.timesteps().len())
                .filter(|&i| s.needs_noise(i))
                .count(),
            _ => self.noise_rows(),
        }
    }

    /// Whether `rows` rows of step noise fit the run: [`Method::noise_rows`] (DDPM/DDIM: row
    /// i for step i) or [`Method::noise_draws`] (row k for the k-th draw, the order of
    /// diffusers' pipelines: a `DDPMPipeline` run of N steps draws N - 1).
    pub fn accepts_noise_rows(&self, rows: usize) -> bool {
        rows == self.noise_rows() || rows == self.noise_draws()
    }

    /// Model evaluations of a run (twice as many with guidance).
    pub fn model_evaluations(&self) -> usize {
        match self {
            Method::Scheduler(s) => s.timesteps().len(),
            Method::Sde(s) => s.model_evaluations(),
            Method::Sigma(s) => s.num_steps(),
            Method::ScoreVe(s) => s.model_evaluations(),
            Method::Consistency(s) => s.num_steps(),
            Method::Lcm(s) => s.num_steps(),
        }
    }

    /// Steps reported to the progress callback.
    pub fn num_steps(&self) -> usize {
        match self {
            Method::Scheduler(s) => s.num_steps(),
            Method::Sde(s) => s.num_steps(),
            Method::Sigma(s) => s.num_steps(),
            Method::ScoreVe(s) => s.num_steps(),
            Method::Consistency(s) => s.num_steps(),
            Method::Lcm(s) => s.num_steps(),
        }
    }
}

/// Where each buffer of a sampling run lives in the workspace (f32 lengths), in the order
/// model, output, uncond, noise, scratch, text, model_in, latents, labels.
struct Layout {
    model: usize,
    /// Raw model output `[B, C_out, H, W]` (guided).
    output: usize,
    /// The unconditional output of guidance.
    uncond: usize,
    /// DDPM/DDIM: one noise row.
    noise: usize,
    /// The scheduler's or the SDE sampler's scratch; a sigma scheduler's multistep history.
    scratch: usize,
    /// Class-conditional models: room for `batch` i64 default labels at an 8-byte boundary
    /// (2 * batch + 1 floats), used when the run is given no labels.
    labels: usize,
    /// Sigma schedulers: the scaled model input `[B, C, H, W]` (0 when unscaled).
    model_in: usize,
    /// Latent pipelines: the latents `[B, C, H, W]` the loop runs on (the caller's output
    /// receives the decoded image); 0 without a decoder.
    latents: usize,
    /// Text-to-image pipelines: the text encoder's states `[B, tokens, hidden]` of the prompts,
    /// then (guided) of the negative prompts; 0 without a text encoder. Placed after
    /// `scratch`, before `model_in`.
    text: usize,
}

impl Layout {
    /// Saturating: a batch too large to address gives usize::MAX, which no workspace
    /// satisfies, instead of a wrapped (small, wrong) size. `sample_with` rejects such a batch
    /// before using any offset.
    fn total(&self) -> usize {
        [
            self.output,
            self.uncond,
            self.noise,
            self.scratch,
            self.labels,
            self.model_in,
            self.latents,
            self.text,
        ]
        .iter()
        .fold(self.model, |at, len| at.saturating_add(*len))
    }
}

fn layout(model: &Model, method: Method<'_>, batch: usize, guided: bool, threads: usize) -> Layout {
    let (c, h, w) = model.input_shape();
    let (c_out, _, _) = model.output_shape();
    let sample = batch.saturating_mul(c * h * w);
    let output = batch.saturating_mul(c_out * h * w);
    let shape = StepShape {
        batch,
        channels: c,
        height: h,
        width: w,
    };
    let (noise, scratch, model_in) = match method {
        Method::Scheduler(s) => (sample, s.scratch_len(shape), 0),
        Method::Sde(s) => (0, s.scratch_len(shape), 0),
        Method::Sigma(s) => (
            if s.noise_rows() > 0 { sample } else { 0 },
            s.history_len(shape),
            if s.scales_input() { sample } else { 0 },
        ),
        Method::ScoreVe(_) => (sample, 0, 0),
        Method::Consistency(s) => (if s.noise_rows() > 0 { sample } else { 0 }, 0, sample),
        Method::Lcm(s) => (if s.noise_rows() > 0 { sample } else { 0 }, 0, 0),
    };
    // The decoder runs after the loop, in the UNet's arena (free by then).
    let decoder_ws = model
        .decoder()
        .map_or(0, |d| d.workspace_len_for_threads(batch, threads));
    // The text encoder runs before the loop, in the UNet's arena (not in use yet).
    let text_ws = [model.text_encoder(), model.prompt_encoder()]
        .into_iter()
        .flatten()
        .map(|t| t.workspace_len_for_threads(batch, threads))
        .max()
        .unwrap_or(0);
    let text = model.text_encoder().map_or(0, |t| {
        batch
            .saturating_mul(t.output_len())
            .saturating_mul(if guided { 2 } else { 1 })
    });
    Layout {
        model: model
            .workspace_len_for_threads(batch, threads)
            .max(decoder_ws)
            .max(text_ws),
        text,
        output,
        uncond: if guided { output } else { 0 },
        noise,
        scratch,
        labels: if model.config.num_class_embeds.is_some() {
            batch.saturating_mul(2).saturating_add(1)
        } else {
            0
        },
        model_in,
        latents: if model.decoder().is_some() { sample } else { 0 },
    }
}

/// Exact workspace (f32 elements) of [`sample`] for this model, scheduler and batch.
pub fn workspace_len(model: &Model, scheduler: &Scheduler, batch: usize, guided: bool) -> usize {
    workspace_len_with(model, Method::Scheduler(scheduler), batch, guided)
}

/// Exact workspace (f32 elements) of [`sample_with`] with [`SampleOptions::threads`] 0 (the
/// model's thread count: the size depends on the machine; see
/// [`workspace_len_for_threads`]).
pub fn workspace_len_with(model: &Model, method: Method<'_>, batch: usize, guided: bool) -> usize {
    layout(model, method, batch, guided, 0).total()
}

/// Exact workspace (f32 elements) of [`sample_with`] with [`SampleOptions::threads`] =
/// `threads`. For `threads` >= 1 it depends only on the model, the method, the batch, guidance
/// and `threads`, not on the machine ([`Model::workspace_len_for_threads`]); 0 is
/// [`workspace_len_with`].
pub fn workspace_len_for_threads(
    model: &Model,
    method: Method<'_>,
    batch: usize,
    guided: bool,
    threads: usize,
) -> usize {
    layout(model, method, batch, guided, threads).total()
}

/// The UNet as the samplers call it: forward pass, classifier-free guidance, and (as an
/// [`EpsModel`]) the conversion of its output to eps.
struct Denoiser<'a> {
    model: &'a Model,
    labels: Option<&'a [i64]>,
    guidance: Option<Guidance>,
    threads: usize,
    prediction: PredictionType,
    workspace: &'a mut [f32],
    output: &'a mut [f32],
    uncond: &'a mut [f32],
    batch: usize,
    text: Option<TextStates<'a>>,
}

/// A text-to-image run's encoder states, in the workspace.
#[derive(Clone, Copy)]
struct TextStates<'a> {
    /// `[B, tokens, hidden]` of the prompts.
    cond: &'a [f32],
    /// The same of the negative prompts, when guided.
    uncond: Option<&'a [f32]>,
    /// diffusers' `guidance_scale`.
    scale: f32,
}

impl Denoiser<'_> {
    /// The guided model output `[B, C_out, H, W]` at `timestep`.
    fn raw(&mut self, x: &[f32], timestep: f32) -> Result<&[f32]> {
        let ts = [timestep];
        if let Some(TextStates {
            cond,
            uncond,
            scale,
        }) = self.text
        {
            self.model.forward_conditional_with_threads(
                self.threads,
                self.workspace,
                x,
                &ts,
                cond,
                self.output,
            )?;
            if let Some(states) = uncond {
                self.model.forward_conditional_with_threads(
                    self.threads,
                    self.workspace,
                    x,
                    &ts,
                    states,
                    self.uncond,
                )?;
                // diffusers' StableDiffusionPipeline: uncond + s * (text - uncond).
                for (e, &u) in self.output.iter_mut().zip(self.uncond.iter()) {
                    *e = u + scale * (*e - u);
                }
            }
            return Ok(&*self.output);
        }
        self.model.forward_with_threads(
            self.threads,
            self.workspace,
            x,
            &ts,
            self.labels,
            self.output,
        )?;
        if let Some(g) = &self.guidance {
            self.model.forward_with_threads(
                self.threads,
                self.workspace,
                x,
                &ts,
                Some(&[g.null_class]),
                self.uncond,
            )?;
            let (c, h, w) = self.model.input_shape();
            let (c_out, _, _) = self.model.output_shape();
            let hw = h * w;
            for b in 0..self.batch {
                // Guide the prediction channels; learned-variance channels keep the
                // conditional model's values.
                let range = b * c_out * hw..(b * c_out + c) * hw;
                for (e, u) in self.output[range.clone()]
                    .iter_mut()
                    .zip(&self.uncond[range])
                {
                    *e = (1.0 + g.scale) * *e - g.scale * *u;
                }
            }
        }
        Ok(&*self.output)
    }
}

impl EpsModel for Denoiser<'_> {
    fn eps(&mut self, x: &[f32], level: NoiseLevel, out: &mut [f32]) -> Result<()> {
        let (c, h, w) = self.model.input_shape();
        let (c_out, _, _) = self.model.output_shape();
        let per = c * h * w;
        let stride = c_out * h * w;
        let prediction = self.prediction;
        let m = self.raw(x, level.timestep)?;
        let (sa, sb) = (
            libm::sqrt(level.alpha_bar),
            libm::sqrt(1.0 - level.alpha_bar),
        );
        for (b, o) in out.chunks_exact_mut(per).enumerate() {
            // The first C channels are the prediction (learned variance: the rest).
            let mb = &m[b * stride..b * stride + per];
            let xb = &x[b * per..(b + 1) * per];
            for ((oi, &mi), &xi) in o.iter_mut().zip(mb).zip(xb) {
                let (mi, xi) = (mi as f64, xi as f64);
                *oi = match prediction {
                    PredictionType::Epsilon => mi,
                    PredictionType::Sample => (xi - sa * mi) / sb,
                    PredictionType::VPrediction => sa * mi + sb * xi,
                    // Refused by `SchedulerConfig::validate` for the VP samplers.
                    PredictionType::FlowPrediction => f64::NAN,
                } as f32;
            }
        }
        Ok(())
    }
}

/// A text-to-image run's conditioning against the model and the batch (typed errors naming
/// the argument).
fn check_text(model: &Model, text: Option<&TextConditioning<'_>>, batch: usize) -> Result<()> {
    let (encoder, t) = match (model.text_encoder(), text) {
        (None, None) => return Ok(()),
        (None, Some(_)) => {
            return Err(invalid_arg(
                "prompt",
                "the model has no text encoder (not a text-to-image pipeline)",
            ))
        }
        (Some(_), None) => {
            return Err(invalid_arg(
                "prompt",
                "a text-to-image pipeline needs prompt ids (SampleOptions::text)",
            ))
        }
        (Some(e), Some(t)) => (e, t),
    };
    if !t.guidance_scale.is_finite() {
        return Err(invalid_arg("guidance_scale", "must be finite"));
    }
    let tokens = encoder.tokens();
    let prompts = t.prompt_ids.len() / tokens;
    if t.prompt_ids.len() % tokens != 0 || prompts == 0 || !batch.is_multiple_of(prompts) {
        return Err(Error::BufferSize {
            what: "prompt ids [prompts, tokens] (one prompt, or one per image)",
            expected: batch * tokens,
            found: t.prompt_ids.len(),
        });
    }
    if t.guided() {
        match t.negative_ids {
            None => {
                return Err(invalid_arg(
                    "negative prompt ids",
                    "needed with guidance_scale > 1 (diffusers encodes the empty prompt \"\" \
                     when there is no negative prompt: give its ids)",
                ))
            }
            Some(n) if n.len() != t.prompt_ids.len() => {
                return Err(Error::BufferSize {
                    what: "negative prompt ids (one per prompt)",
                    expected: t.prompt_ids.len(),
                    found: n.len(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Encodes `ids` (`prompts` rows of the encoder's tokens) into `out` (`[batch, tokens, hidden]`):
/// the prompts' states, then each copied to its images (image i gets prompt
/// `i / (batch / prompts)`, diffusers' `num_images_per_prompt` order). Allocates nothing.
fn encode_prompts(
    encoder: &crate::model::TextEncoder,
    threads: usize,
    workspace: &mut [f32],
    ids: &[u32],
    out: &mut [f32],
    batch: usize,
) -> Result<()> {
    let per = encoder.output_len();
    let prompts = ids.len() / encoder.tokens();
    encoder.encode(threads, workspace, ids, &mut out[..prompts * per])?;
    let images_per_prompt = batch / prompts;
    // From the last image down: prompt i / n <= i is still in place when row i is written.
    for i in (0..batch).rev() {
        let p = i / images_per_prompt;
        if p != i {
            out.copy_within(p * per..(p + 1) * per, i * per);
        }
    }
    Ok(())
}

/// Noise row `k` of a run: the injected row, or seeded stream `k + 1` drawn into `buf`.
fn noise_row<'a>(
    step_noise: Option<&'a [f32]>,
    noise: GaussianNoise,
    k: usize,
    buf: &'a mut [f32],
) -> &'a [f32] {
    let n = buf.len();
    match step_noise {
        Some(z) => &z[k * n..(k + 1) * n],
        None => {
            noise.fill(k as u64 + 1, buf);
            buf
        }
    }
}

/// Runs the whole sampling loop with a DDPM/DDIM scheduler. `out` (`[batch, C, H, W]`)
/// receives x_0; `on_step`, if given, sees the sample after every step.
pub fn sample(
    model: &Model,
    scheduler: &Scheduler,
    workspace: &mut [f32],
    opts: &SampleOptions<'_>,
    out: &mut [f32],
    on_step: Option<&mut dyn FnMut(&StepInfo<'_>)>,
) -> Result<()> {
    sample_with(
        model,
        Method::Scheduler(scheduler),
        workspace,
        opts,
        out,
        on_step,
    )
}

/// Runs the whole sampling loop with any [`Method`]. `out` (`[batch, C, H, W]`) receives
/// x_0; `on_step`, if given, sees the sample after every step (continuous-time methods
/// report the rounded model timestep of the time reached). Allocates nothing.
pub fn sample_with(
    model: &Model,
    method: Method<'_>,
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
    let Some(n) = batch
        .checked_mul(c_out.max(c) * h * w)
        .map(|_| batch * per_sample)
    else {
        return Err(invalid_arg(
            "batch",
            alloc::format!("{batch} samples are too many to address"),
        ));
    };
    // A latent pipeline's output is the decoded image.
    let image_len = match model.decoder() {
        Some(d) => {
            let (ci, hi, wi) = d.image_shape();
            batch.checked_mul(ci * hi * wi).ok_or_else(|| {
                invalid_arg(
                    "batch",
                    alloc::format!("{batch} images are too many to address"),
                )
            })?
        }
        None => n,
    };
    if out.len() != image_len {
        return Err(Error::BufferSize {
            what: "sample output",
            expected: image_len,
            found: out.len(),
        });
    }
    let rows = method.noise_rows();
    // DDPM/DDIM step noise given one row per draw (diffusers' draw order) rather than per step.
    let mut per_draw = false;
    if let Some(z) = opts.step_noise {
        let draws = method.noise_draws();
        per_draw = draws != rows && draws.checked_mul(n) == Some(z.len());
        if Some(z.len()) != rows.checked_mul(n) && !per_draw {
            return Err(Error::BufferSize {
                what: "step noise [steps, B, C, H, W]",
                expected: rows.saturating_mul(n),
                found: z.len(),
            });
        }
    }
    if model.config.identity_class_embedding {
        return Err(crate::error::unsupported(
            "class_embed_type",
            "identity: the model needs class embeddings per evaluation, which no sampler (nor \
             diffusers pipeline) supplies; call Model::forward_with_class_embeddings",
        ));
    }
    let labels = opts.class_labels;
    if let (None, Some(_)) = (model.config.num_class_embeds, labels) {
        return Err(invalid_arg(
            "class labels",
            "the model is not class-conditional",
        ));
    }
    if let Some(l) = labels {
        if l.len() != batch && l.len() != 1 {
            return Err(Error::BufferSize {
                what: "class labels",
                expected: batch,
                found: l.len(),
            });
        }
        for &label in l {
            model.check_class_label(label)?;
        }
    }
    let guidance = opts.guidance.filter(|g| g.scale != 0.0);
    if guidance.is_some() && model.config.num_class_embeds.is_none() {
        return Err(invalid_arg(
            "guidance",
            "classifier-free guidance needs a class-conditional model",
        ));
    }
    if let Some(g) = &guidance {
        if !g.scale.is_finite() {
            return Err(invalid_arg("guidance", "scale must be finite"));
        }
        model.check_class_label(g.null_class)?;
    }
    let text = opts.text;
    check_text(model, text.as_ref(), batch)?;
    let text_guided = text.is_some_and(|t| t.guided());
    let lay = layout(
        model,
        method,
        batch,
        guidance.is_some() || text_guided,
        opts.threads,
    );
    if workspace.len() < lay.total() {
        return Err(Error::BufferSize {
            what: "sampling workspace",
            expected: lay.total(),
            found: workspace.len(),
        });
    }
    let (workspace, label_room) = workspace[..lay.total()].split_at_mut(lay.total() - lay.labels);
    // No labels on a class-conditional model: the front end's default, kept in the workspace.
    let labels: Option<&[i64]> = match (model.config.num_class_embeds, labels) {
        (Some(classes), None) => {
            let (_, room, _) = bytemuck::pod_align_to_mut::<f32, i64>(label_room);
            let room = &mut room[..batch];
            for (i, l) in room.iter_mut().enumerate() {
                *l = default_class_label(classes, i);
            }
            Some(&*room)
        }
        (_, given) => given,
    };
    let opts = &SampleOptions {
        class_labels: labels,
        ..*opts
    };

    if let Some(gpu) = model.accelerator() {
        if model.text_encoder().is_some() {
            return Err(crate::error::unsupported(
                "text_encoder",
                alloc::format!(
                    "a text-to-image pipeline on a {} device (it runs on the CPU only for now)",
                    gpu.device_kind()
                ),
            ));
        }
        let Method::Scheduler(scheduler) = method else {
            return Err(Error::UnsupportedConfig {
                key: "scheduler".into(),
                value: alloc::format!(
                    "sde, ode, pc, euler, euler-a, dpm-solver, heun, unipc, pndm, lms, \
                     dpm-singlestep, kdpm2, kdpm2-a, deis, ipndm, sde-ve, cm, lcm and tcd on a \
                     {} device (they run on the CPU only for now)",
                    gpu.device_kind()
                ),
            });
        };
        // The device's learned time embedding trusts its timesteps: check them here.
        if let Some(steps) = model.config.learned_time_embedding {
            for &t in scheduler.timesteps() {
                crate::model::forward::timestep_index(t as f32, steps)?;
            }
        }
        if let Some(x_t) = opts.initial_noise {
            if x_t.len() != n {
                return Err(Error::BufferSize {
                    what: "initial noise x_T",
                    expected: n,
                    found: x_t.len(),
                });
            }
        }
        let Some(decoder) = model.decoder() else {
            return gpu.sample(model, scheduler, opts, out, on_step);
        };
        // The device samples the latents; the decoder runs on the CPU in the UNet's arena.
        let (model_ws, rest) = workspace.split_at_mut(lay.model);
        let at = rest.len() - lay.latents;
        let latents = &mut rest[at..];
        gpu.sample(model, scheduler, opts, latents, on_step)?;
        decoder.unscale(latents);
        return decoder.decode(opts.threads, model_ws, latents, out);
    }

    // A latent pipeline samples into the latent region and decodes into the caller's `out`.
    let (model_region, rest) = workspace.split_at_mut(lay.model);
    let at = rest.len() - lay.latents;
    let (rest, latents) = rest.split_at_mut(at);
    let (out, image) = match model.decoder() {
        Some(d) => (latents, Some((d, out))),
        None => (out, None),
    };
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
    // init_noise_sigma is 1 for DDPM, DDIM and the VP-SDE: x_T is the standard normal draw.
    // The sigma schedulers scale it (diffusers: latents = randn * init_noise_sigma, float32).
    let init_noise_sigma = match method {
        Method::Sigma(s) => s.init_noise_sigma(),
        Method::ScoreVe(s) => s.init_noise_sigma(),
        Method::Consistency(s) => s.init_noise_sigma(),
        _ => 1.0,
    };
    let sigma = init_noise_sigma as f32;
    if sigma != 1.0 {
        out.iter_mut().for_each(|x| *x *= sigma);
    }

    let shape = StepShape {
        batch,
        channels: c,
        height: h,
        width: w,
    };
    let (output, rest) = rest.split_at_mut(lay.output);
    let (uncond, rest) = rest.split_at_mut(lay.uncond);
    let (noise_buf, rest) = rest.split_at_mut(lay.noise);
    let (scratch, rest) = rest.split_at_mut(lay.scratch);
    let (text_region, rest) = rest.split_at_mut(lay.text);
    let model_in = &mut rest[..lay.model_in];
    // The prompts' (and, guided, the negative prompts') encoder states, encoded once in the
    // UNet's arena before the loop uses it.
    let text_states = match (model.text_encoder(), model.prompt_encoder(), text) {
        (Some(encoder), Some(prompt_encoder), Some(t)) => {
            let (cond, uncond) = text_region.split_at_mut(batch * encoder.output_len());
            // The prompts through the prompt encoder (diffusers' `clip_skip` applies to them
            // only), the negative prompts through the text encoder.
            encode_prompts(
                prompt_encoder,
                opts.threads,
                model_region,
                t.prompt_ids,
                cond,
                batch,
            )?;
            let uncond = match (t.guided(), t.negative_ids) {
                (true, Some(ids)) => {
                    encode_prompts(encoder, opts.threads, model_region, ids, uncond, batch)?;
                    Some(&*uncond)
                }
                _ => None,
            };
            Some(TextStates {
                cond: &*cond,
                uncond,
                scale: t.guidance_scale,
            })
        }
        _ => None,
    };
    let prediction = match method {
        Method::Scheduler(s) => s.config().prediction_type,
        Method::Sde(s) => s.prediction_type(),
        Method::Sigma(s) => s.config().prediction_type,
        // These read the raw model output ([`Denoiser::raw`]): no conversion to eps.
        Method::ScoreVe(s) => s.config().prediction_type,
        Method::Consistency(s) => s.config().prediction_type,
        Method::Lcm(s) => s.config().prediction_type,
    };
    let mut denoiser = Denoiser {
        model,
        labels,
        guidance,
        threads: opts.threads,
        prediction,
        workspace: model_region,
        output,
        uncond,
        batch,
        text: text_states,
    };
    match method {
        Method::Scheduler(scheduler) => {
            let steps = scheduler.timesteps().len();
            let mut draw = 0;
            for (i, &t) in scheduler.timesteps().iter().enumerate() {
                let m = denoiser.raw(out, t as f32)?;
                let z: Option<&[f32]> = if scheduler.needs_noise(i) {
                    // Given rows may be one per draw; generated noise (per_draw false) is
                    // seeded by step.
                    let row = if per_draw { draw } else { i };
                    draw += 1;
                    Some(noise_row(opts.step_noise, noise, row, noise_buf))
                } else {
                    None
                };
                scheduler.step(i, shape, m, out, z, None, scratch)?;
                if let Some(cb) = on_step.as_mut() {
                    cb(&StepInfo {
                        index: i,
                        steps,
                        timestep: t,
                        sample: out,
                    });
                }
            }
        }
        Method::Sigma(sched) => {
            let steps = sched.num_steps();
            for i in 0..steps {
                let t = sched.model_timestep(i);
                let m = if sched.scales_input() {
                    let d = sched.input_divisor(i);
                    for (xi, &x) in model_in.iter_mut().zip(out.iter()) {
                        *xi = (x as f64 / d) as f32;
                    }
                    denoiser.raw(model_in, t)?
                } else {
                    denoiser.raw(out, t)?
                };
                let z: Option<&[f32]> = if sched.needs_noise(i) {
                    let row = sched.noise_row(i);
                    Some(noise_row(opts.step_noise, noise, row, noise_buf))
                } else {
                    None
                };
                sched.step(i, shape, m, out, z, scratch)?;
                if let Some(cb) = on_step.as_mut() {
                    cb(&StepInfo {
                        index: i,
                        steps,
                        timestep: sched.rounded_timesteps()[i],
                        sample: out,
                    });
                }
            }
        }
        Method::Sde(sde) => {
            let rows = match opts.step_noise {
                Some(z) => NoiseRows::Injected(z),
                None => NoiseRows::Seeded(noise),
            };
            let vp = sde.sde();
            let mut report = |s: &SdeStep<'_>| {
                if let Some(cb) = on_step.as_mut() {
                    cb(&StepInfo {
                        index: s.index,
                        steps: s.steps,
                        timestep: libm::round(vp.timestep(s.t)) as i64,
                        sample: s.sample,
                    });
                }
            };
            sde.run(&mut denoiser, shape, out, rows, scratch, Some(&mut report))?;
        }
        Method::ScoreVe(sched) => {
            let steps = sched.num_steps();
            let draws = sched.correct_steps() + 1;
            for i in 0..steps {
                let sigma_t = sched.model_sigma(i);
                for c in 0..draws {
                    let m = denoiser.raw(out, sigma_t)?;
                    // Row k of the run: the pipeline's k-th draw after x_T.
                    let z = noise_row(opts.step_noise, noise, i * draws + c, noise_buf);
                    if c + 1 < draws {
                        sched.step_correct(shape, m, out, z)?;
                    } else {
                        sched.step_pred(i, shape, m, out, z)?;
                    }
                }
                if let Some(cb) = on_step.as_mut() {
                    cb(&StepInfo {
                        index: i,
                        steps,
                        timestep: sched.timesteps()[i],
                        sample: out,
                    });
                }
            }
        }
        Method::Consistency(sched) => {
            let steps = sched.num_steps();
            for i in 0..steps {
                let d = sched.input_divisor(i);
                for (xi, &x) in model_in.iter_mut().zip(out.iter()) {
                    *xi = (x as f64 / d) as f32;
                }
                let m = denoiser.raw(model_in, sched.model_timesteps()[i] as f32)?;
                let z: Option<&[f32]> = if sched.needs_noise(i) {
                    Some(noise_row(opts.step_noise, noise, i, noise_buf))
                } else {
                    None
                };
                sched.step(i, shape, m, out, z)?;
                if let Some(cb) = on_step.as_mut() {
                    cb(&StepInfo {
                        index: i,
                        steps,
                        timestep: sched.timesteps()[i],
                        sample: out,
                    });
                }
            }
        }
        Method::Lcm(sched) => {
            let steps = sched.num_steps();
            for (i, &t) in sched.timesteps().iter().enumerate() {
                let m = denoiser.raw(out, t as f32)?;
                let z: Option<&[f32]> = if sched.needs_noise(i) {
                    Some(noise_row(opts.step_noise, noise, i, noise_buf))
                } else {
                    None
                };
                sched.step(i, shape, m, out, z)?;
                if let Some(cb) = on_step.as_mut() {
                    cb(&StepInfo {
                        index: i,
                        steps,
                        timestep: t,
                        sample: out,
                    });
                }
            }
        }
    }
    if let Some((decoder, image)) = image {
        let Denoiser { workspace, .. } = denoiser;
        if model.text_encoder().is_some() {
            // StableDiffusionPipeline decodes `latents / scaling_factor` (no shift_factor).
            let s = decoder.config.scaling_factor;
            out.iter_mut().for_each(|x| *x = (*x as f64 / s) as f32);
        } else {
            decoder.unscale(out);
        }
        decoder.decode(opts.threads, workspace, out, image)?;
    }
    Ok(())
}
