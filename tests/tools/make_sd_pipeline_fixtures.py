"""diffusers 0.42 StableDiffusionPipeline references (issue 24): whole tiny pipeline folders and
float64 runs with injected noise.

    /work/venv/bin/python tests/tools/make_sd_pipeline_fixtures.py

Writes tests/fixtures/sd-pipeline/ (seeded; rerunning rewrites the same numbers):
- `sd1/`: an SD 1.x-shaped folder saved with `pipe.save_pretrained` (quick_gelu CLIP text
  encoder, conv proj_in, pad `<|endoftext|>`, epsilon, PNDMScheduler as SD 1.5 ships it,
  safety_checker null, a feature_extractor present);
- `sd2/`: an SD 2.x-shaped one (gelu, `use_linear_projection`, heads per block, pad `!`,
  v_prediction, DDIMScheduler as SD 2.1 ships it).
  The tokenizer is CLIP's first 64 merges (from tests/fixtures/clip-tokenizer's gz) over the
  512 byte symbols, plus the two special tokens: 578 ids, the text encoder's vocab_size.
  Weights random, rounded to f16, saved f16.
- `cases.safetensors` + `cases.json`: per run `<run>.x_T` (the latents before
  `init_noise_sigma`), `<run>.noise` (per-step noise of an ancestral scheduler, if any),
  `<run>.ids` / `<run>.neg_ids` (the tokenizer's ids, for reference), `<run>.image` (the VAE
  output before `(x / 2 + 0.5).clamp(0, 1)`, float64 pipeline).
Each run loads the saved folder and calls the pipeline itself in float64 (`output_type="latent"`), then decodes
`latents / scaling_factor` as the pipeline does.
"""
import json, os, shutil, tempfile
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPImageProcessor
from diffusers import (AutoencoderKL, DDIMScheduler, EulerAncestralDiscreteScheduler, PNDMScheduler,
                       StableDiffusionPipeline, UNet2DConditionModel)
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module

from clip_vocab import EOT, SOT, clip_vocab

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "sd-pipeline")
MERGES = 64
torch.manual_seed(2024)


def tokenizer(pad):
    vocab, merges = clip_vocab(MERGES)
    d = tempfile.mkdtemp()
    json.dump({t: i for i, t in enumerate(vocab)}, open(os.path.join(d, "vocab.json"), "w"), ensure_ascii=False)
    open(os.path.join(d, "merges.txt"), "w").write("#version: 0.2\n" + "\n".join(merges) + "\n")
    json.dump({"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": pad, "do_lower_case": True,
               "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"},
              open(os.path.join(d, "tokenizer_config.json"), "w"))
    tok = CLIPTokenizer.from_pretrained(d)
    shutil.rmtree(d)
    return tok, len(vocab)


def randomize(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ("norm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "embedding" in name and p.dim() == 2 and "time" not in name:
                p.copy_(torch.randn_like(p))
            elif p.dim() > 1:
                p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5))
            else:
                p.copy_(0.1 * torch.randn_like(p))
            p.copy_(p.half().float())
    return m


SCALED = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
           norm_num_groups=4, sample_size=16, scaling_factor=0.18215)
PIPES = {
    "sd1": dict(
        pad=EOT,
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16),
        unet=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[8, 16], layers_per_block=1,
                  norm_num_groups=4, cross_attention_dim=32, attention_head_dim=2,
                  down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]),
        scheduler=PNDMScheduler(**SCALED, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                                prediction_type="epsilon"),
        feature_extractor=True),
    "sd2": dict(
        pad="!",
        text=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=16),
        unet=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[8, 16], layers_per_block=1,
                  norm_num_groups=4, cross_attention_dim=24, attention_head_dim=[2, 4],
                  use_linear_projection=True, upcast_attention=True, transformer_layers_per_block=[1, 2],
                  down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
        scheduler=DDIMScheduler(**SCALED, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                prediction_type="v_prediction"),
        feature_extractor=False),
}

# (run, folder, prompt, negative, guidance, images per prompt, steps, (height, width) or None,
#  scheduler override or None)
RUNS = [
    ("sd1_cfg", "sd1", "a photo of a cat", "blurry, low quality", 7.5, 2, 5, None, None),
    ("sd1_nocfg_24x16", "sd1", "hello world!", None, 1.0, 1, 3, (24, 16), None),
    ("sd2_two_prompts", "sd2", ["a red fox", "mountains at dusk"], None, 7.5, 1, 4, None, None),
    ("sd2_euler_a", "sd2", "an astronaut riding a horse", "ugly", 5.0, 1, 4, None, "EulerAncestralDiscreteScheduler"),
]


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    pipes = {}
    for name, spec in PIPES.items():
        tok, vocab_size = tokenizer(spec["pad"])
        text = randomize(CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, bos_token_id=vocab_size - 2,
                                                      eos_token_id=vocab_size - 1,
                                                      pad_token_id=tok.pad_token_id, **spec["text"])).eval())
        unet = randomize(UNet2DConditionModel(**spec["unet"]).eval())
        vae = randomize(AutoencoderKL(**VAE).eval())
        fe = CLIPImageProcessor(crop_size=16, size=16) if spec["feature_extractor"] else None
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                       scheduler=spec["scheduler"], safety_checker=None, feature_extractor=fe,
                                       requires_safety_checker=False)
        pipe.to(torch.float16).save_pretrained(os.path.join(OUT, name), safe_serialization=True)
        # The runs use the folder as saved (a scheduler converted with from_config reads the
        # saved config, e.g. DDIM's explicit timestep_spacing).
        pipe = StableDiffusionPipeline.from_pretrained(os.path.join(OUT, name)).to(torch.float64)
        pipe.set_progress_bar_config(disable=True)
        pipes[name] = pipe

    tensors, meta = {}, {"runs": []}
    for run, folder, prompt, negative, guidance, n, steps, size, sched in RUNS:
        pipe = pipes[folder]
        base = pipe.scheduler
        if sched is not None:
            pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(base.config)
        prompts = prompt if isinstance(prompt, list) else [prompt]
        batch = len(prompts) * n
        vs = pipe.vae_scale_factor
        h, w = size if size else (pipe.unet.config.sample_size * vs,) * 2
        x_T = torch.randn(batch, 4, h // vs, w // vs).float().double()
        noise = None
        if sched is not None:
            noise = torch.randn(steps, batch, 4, h // vs, w // vs).float().double()
            rows = iter(noise)
            euler_a_module.randn_tensor = lambda *a, **k: next(rows).clone()
        with torch.no_grad():
            latents = pipe(prompt, negative_prompt=negative if negative is None or isinstance(prompt, str) else [negative] * len(prompts),
                           guidance_scale=guidance, num_images_per_prompt=n, num_inference_steps=steps, height=h,
                           width=w, latents=x_T.clone(), output_type="latent").images
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        pipe.scheduler = base
        enc = lambda p: pipe.tokenizer(p, padding="max_length", max_length=77, truncation=True,
                                       return_tensors="pt").input_ids
        tensors[f"{run}.x_T"] = x_T.float()
        if noise is not None:
            tensors[f"{run}.noise"] = noise.float()
        tensors[f"{run}.ids"] = enc(prompts).to(torch.int64)
        tensors[f"{run}.neg_ids"] = enc([negative or ""] * len(prompts)).to(torch.int64)
        tensors[f"{run}.image"] = image
        meta["runs"].append(dict(name=run, folder=folder, prompts=prompts, negative=negative, guidance=guidance,
                                 batch=batch, steps=steps, height=h, width=w, scheduler=sched))
        print(run, tuple(image.shape), float(image.abs().mean()))
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "cases.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
