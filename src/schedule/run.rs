//! What one sampling run is given and what it reports: plain data shared by the sampling loop
//! ([`crate::sampler`]) and the devices that run whole loops themselves (the CUDA backend).
//! `crate::sampler` re-exports these; [`Guidance::new`] (which reads the model) lives there.

/// Classifier-free guidance: `eps = (1 + scale) * eps(x, y) - scale * eps(x, null_class)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guidance {
    pub scale: f32,
    /// The label trained as "no class" (label dropout). Default: the model's last class index.
    pub null_class: i64,
}

/// The text conditioning of a text-to-image pipeline (`StableDiffusionPipeline`): token ids,
/// padded to the text encoder's length (77) by the tokenizer (the std front ends hold it; the
/// core takes ids), and diffusers' `guidance_scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextConditioning<'a> {
    /// `[prompts, tokens]`: one prompt for the whole batch, or `batch` prompts (image i gets
    /// prompt `i / (batch / prompts)`, diffusers' `num_images_per_prompt` order).
    pub prompt_ids: &'a [u32],
    /// `[prompts, tokens]`, one per prompt, read only with guidance on. With guidance and no
    /// negative prompt diffusers encodes `""`: give its ids (the tokenizer's encoding of the
    /// empty prompt); `None` with guidance on is a typed error.
    pub negative_ids: Option<&'a [u32]>,
    /// Guidance is on when `guidance_scale > 1` (diffusers' `do_classifier_free_guidance`):
    /// `eps = uncond + guidance_scale * (cond - uncond)` (not the class-guidance convention).
    pub guidance_scale: f32,
}

impl<'a> TextConditioning<'a> {
    /// `prompt_ids` without a negative prompt, guidance 7.5 (diffusers' default).
    pub fn new(prompt_ids: &'a [u32]) -> TextConditioning<'a> {
        TextConditioning {
            prompt_ids,
            negative_ids: None,
            guidance_scale: 7.5,
        }
    }

    /// Whether the run evaluates the unconditional branch (`guidance_scale > 1`).
    pub fn guided(&self) -> bool {
        self.guidance_scale > 1.0
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
    /// One label per sample, or one for all. `None` on a class-conditional model: the
    /// default labels of `sampler::default_class_label` (image i gets class i, cycling over
    /// every class but the last, the null class of guidance), as the `sample` tool and the C
    /// API do.
    pub class_labels: Option<&'a [i64]>,
    pub guidance: Option<Guidance>,
    /// A text-to-image pipeline's prompt ids and guidance (`Model::text_encoder`); `None`
    /// for every other model.
    pub text: Option<TextConditioning<'a>>,
    /// The most threads the run may use, and the count its workspace is sized for
    /// (`sampler::workspace_len_for_threads`): 0 = the model's thread count (a size that
    /// depends on the machine), N >= 1 = a size that depends only on N, and at most
    /// min(N, the model's threads) threads run. The output is the same bits either way.
    pub threads: usize,
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
            text: None,
            threads: 0,
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
