"""A StableDiffusionPipeline run whose tokenizer's `model_max_length` (16) is below the text
encoder's `max_position_embeddings` (77): diffusers pads prompts to 16 ids, the encoder sees 16
positions and the UNet cross-attends to 16 rows. Uses the SD 1.x fixture folder
(tests/fixtures/sd-pipeline/sd1, made by make_sd_pipeline_fixtures.py) with only
tokenizer_config.json changed; float64; writes tests/fixtures/sd-pipeline/short-tokenizer.safetensors
(`x_T`, the decoder output `image`). Run: /work/venv/bin/python tests/tools/make_sd_short_tokenizer_fixture.py"""
import json
import os
import shutil
import tempfile

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SD = os.path.join(HERE, "..", "fixtures", "sd-pipeline")
PROMPT, GUIDANCE, STEPS = "a photo of a cat", 7.5, 3


def main():
    torch.manual_seed(16)
    folder = os.path.join(tempfile.mkdtemp(), "sd1")
    shutil.copytree(os.path.join(SD, "sd1"), folder)
    config_path = os.path.join(folder, "tokenizer", "tokenizer_config.json")
    config = json.load(open(config_path))
    config["model_max_length"] = 16
    json.dump(config, open(config_path, "w"))
    pipe = StableDiffusionPipeline.from_pretrained(folder).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer.model_max_length == 16
    vs = pipe.vae_scale_factor
    h = w = pipe.unet.config.sample_size * vs
    x_T = torch.randn(1, 4, h // vs, w // vs).float().double()
    with torch.no_grad():
        latents = pipe(PROMPT, guidance_scale=GUIDANCE, num_inference_steps=STEPS, height=h, width=w,
                       latents=x_T.clone(), output_type="latent").images
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    save_file({"x_T": x_T.float().contiguous(), "image": image.contiguous()},
              os.path.join(SD, "short-tokenizer.safetensors"))
    print(tuple(image.shape), float(image.abs().mean()))


if __name__ == "__main__":
    main()
