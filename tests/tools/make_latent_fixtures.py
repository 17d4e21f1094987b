"""diffusers 0.42 references for the latent decoders and latent pipelines (issue 19).

    pip install 'diffusers==0.42.*' torch safetensors numpy
    python tests/tools/make_latent_fixtures.py

Writes tests/fixtures/latent/ (seeded; rerunning rewrites the same numbers):
- `tiny_vae/`: an `AutoencoderTiny` (TAESD layout, narrow); run `tiny` is kl/unet + this vae.
- `ldm/`: an `LDMPipeline` folder (unet: UNet2DModel, vqvae: VQModel, scheduler: DDIMScheduler),
  weights f16 as saved; `kl/`: the same UNet with an `AutoencoderKL` `vae` (shift_factor set).
- `cases.safetensors` + `cases.json`: per decoder `<name>.z` (latents), `<name>.out` (the
  decoder's output, float64 with the f16 weights), `<name>.act.<module>` (per-block outputs);
  per run `<run>.x_T`, `<run>.noise` [S,B,C,H,W] (DDIM's variance noise; zero rows at eta 0),
  `<run>.image` (the decoder output before `(x / 2 + 0.5).clamp(0, 1)`).
The runs replay LDMPipeline.__call__ line by line, with the step noise passed in.
"""
import json, os
import torch
from safetensors.torch import save_file
from diffusers import UNet2DModel, VQModel, AutoencoderKL, AutoencoderTiny, DDIMScheduler, LDMPipeline

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "latent")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(19)


def randomize(m):
    """Every parameter random (norm scales around 1), then rounded to f16."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif "embedding" in name:
                p.copy_(torch.randn_like(p))
            p.copy_(p.half().float())
    return m


DEC = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
           norm_num_groups=4, sample_size=16)
vq = randomize(VQModel(**DEC, latent_channels=3, num_vq_embeddings=32))
kl = randomize(AutoencoderKL(**DEC, latent_channels=4, shift_factor=0.25, scaling_factor=0.5))
tiny = randomize(AutoencoderTiny(latent_channels=4, encoder_block_out_channels=[8, 8],
                                 decoder_block_out_channels=[8, 8], num_encoder_blocks=[1, 1],
                                 num_decoder_blocks=[2, 1], scaling_factor=0.75, shift_factor=0.1))
unet = randomize(UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16],
                             layers_per_block=1, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                             up_block_types=["AttnUpBlock2D", "UpBlock2D"], norm_num_groups=4,
                             attention_head_dim=8))
unet_kl = randomize(UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[8, 16],
                                layers_per_block=1, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                                up_block_types=["AttnUpBlock2D", "UpBlock2D"], norm_num_groups=4,
                                attention_head_dim=8))
sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195, clip_sample=False)

# The pipeline folders, f16 weights.
pipe = LDMPipeline(vqvae=vq, unet=unet, scheduler=sched)
pipe.to(torch.float16).save_pretrained(os.path.join(OUT, "ldm"))
os.makedirs(os.path.join(OUT, "kl"), exist_ok=True)
unet_kl.half().save_pretrained(os.path.join(OUT, "kl", "unet"))
kl.half().save_pretrained(os.path.join(OUT, "kl", "vae"))
# The tests put this beside kl/unet and kl/scheduler as a UNet + AutoencoderTiny pipeline.
tiny.half().save_pretrained(os.path.join(OUT, "tiny_vae"))
sched.save_pretrained(os.path.join(OUT, "kl", "scheduler"))
with open(os.path.join(OUT, "kl", "model_index.json"), "w") as f:
    json.dump({"_class_name": "DiffusionPipeline", "_diffusers_version": "0.42.0",
               "unet": ["diffusers", "UNet2DModel"], "vae": ["diffusers", "AutoencoderKL"],
               "scheduler": ["diffusers", "DDIMScheduler"]}, f, indent=2)
for m in (vq, kl, tiny, unet, unet_kl):
    m.to(torch.float64)

tensors, meta = {}, {"decoders": [], "runs": []}


def taps(model, names):
    acts, hooks = {}, []
    mods = dict(model.named_modules())
    for n in names:
        hooks.append(mods[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o[0] if isinstance(o, tuple) else o)))
    return acts, hooks


MODS = ["post_quant_conv", "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.0", "decoder.up_blocks.1",
        "decoder.conv_act", "decoder.conv_out"]
with torch.no_grad():
    TINY = ["decoder.layers.1", "decoder.layers.2", "decoder.layers.3", "decoder.layers.5", "decoder.layers.6",
            "decoder.layers.7", "decoder"]
    for name, model, c in [("vq", vq, 3), ("kl", kl, 4), ("tiny", tiny, 4)]:
        z = torch.randn(2, c, 8, 8, dtype=torch.float64) * 2
        z = z.float().double()
        acts, hooks = taps(model, TINY if name == "tiny" else MODS)
        out = model.decode(z).sample
        for h in hooks:
            h.remove()
        tensors[f"{name}.z"] = z.float()
        tensors[f"{name}.out"] = out
        for k, v in acts.items():
            tensors[f"{name}.act.{k}"] = v.float()
        meta["decoders"].append({"name": name, "folder": {"vq": "ldm/vqvae", "kl": "kl/vae", "tiny": "tiny_vae"}[name],
                                 "modules": list(acts.keys())})

    def run(name, folder, unet, vae, steps, eta, latents_fn, c):
        s = DDIMScheduler.from_config(sched.config)
        x_T = torch.randn(1, c, 8, 8).double()
        noise = torch.randn(steps, 1, c, 8, 8).double() if eta > 0 else torch.zeros(steps, 1, c, 8, 8).double()
        latents = x_T * s.init_noise_sigma
        s.set_timesteps(steps)
        for i, t in enumerate(s.timesteps):
            inp = s.scale_model_input(latents, t)
            eps = unet(inp, t).sample
            kw = dict(eta=eta, variance_noise=noise[i]) if eta > 0 else dict(eta=eta)
            latents = s.step(eps, t, latents, **kw).prev_sample
        image = vae.decode(latents_fn(latents)).sample
        tensors[f"{name}.x_T"] = x_T.float()
        tensors[f"{name}.noise"] = noise.float()
        tensors[f"{name}.image"] = image
        meta["runs"].append({"name": name, "folder": folder, "steps": steps, "eta": eta})

    # LDMPipeline: latents / vqvae.config.scaling_factor, then VQModel.decode (quantizes).
    run("ldm_eta0", "ldm", unet, vq, 4, 0.0, lambda l: l / vq.config.scaling_factor, 3)
    run("ldm_eta05", "ldm", unet, vq, 5, 0.5, lambda l: l / vq.config.scaling_factor, 3)
    run("kl_eta0", "kl", unet_kl, kl, 3, 0.0, lambda l: l / kl.config.scaling_factor + kl.config.shift_factor, 4)
    run("tiny_eta05", "tiny", unet_kl, tiny, 3, 0.5,
        lambda l: l / tiny.config.scaling_factor + tiny.config.shift_factor, 4)

save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "cases.safetensors"))
with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(meta, f, indent=2)
print("wrote", OUT)
