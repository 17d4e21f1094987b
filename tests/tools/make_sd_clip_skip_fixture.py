"""A StableDiffusionPipeline run with `clip_skip=1`, as diffusers 0.42 does it: the prompts' states
are the text encoder's second-to-last hidden state through the final LayerNorm, the negative
prompts' (guidance) the last hidden state as without clip_skip. Uses the SD 1.x fixture folder
(tests/fixtures/sd-pipeline/sd1, made by make_sd_pipeline_fixtures.py); float64; writes
tests/fixtures/sd-pipeline/clip-skip.safetensors (`x_T`, the decoder output `image`, and the
prompt states `cond` and negative states `uncond` diffusers' encode_prompt gives).
Run: /work/venv/bin/python tests/tools/make_sd_clip_skip_fixture.py"""
import os

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SD = os.path.join(HERE, "..", "fixtures", "sd-pipeline")
PROMPT, NEGATIVE, GUIDANCE, STEPS, CLIP_SKIP = "a photo of a cat", "blurry", 7.5, 3, 1


def main():
    torch.manual_seed(17)
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(SD, "sd1")).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    # diffusers 0.42's clip_skip path reads `text_encoder.text_model.final_layer_norm`, which
    # transformers 5 flattened into CLIPTextModel itself: point the old name at the model
    # (a plain attribute, not a registered submodule) so diffusers' own code runs unchanged.
    if not hasattr(pipe.text_encoder, "text_model"):
        object.__setattr__(pipe.text_encoder, "text_model", pipe.text_encoder)
    vs = pipe.vae_scale_factor
    h = w = pipe.unet.config.sample_size * vs
    x_T = torch.randn(1, 4, h // vs, w // vs).float().double()
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE, clip_skip=CLIP_SKIP)
        latents = pipe(PROMPT, negative_prompt=NEGATIVE, guidance_scale=GUIDANCE, num_inference_steps=STEPS,
                       height=h, width=w, latents=x_T.clone(), output_type="latent", clip_skip=CLIP_SKIP).images
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    save_file({"x_T": x_T.float().contiguous(), "image": image.contiguous(), "cond": cond.contiguous(),
               "uncond": uncond.contiguous()}, os.path.join(SD, "clip-skip.safetensors"))
    print(tuple(image.shape), float(image.abs().mean()), float((cond - uncond).abs().mean()))


if __name__ == "__main__":
    main()
