#!/usr/bin/env python3
"""Replays diffusers sampling runs with the `sample` binary on a model no test has seen.

Optional (needs `pip install torch diffusers safetensors`): builds a fresh, seeded diffusers
pipeline folder (class-conditional RGB UNet2DModel with a config unlike every fixture: non-square
16x24, three levels, two layers per block, multi-head attention, five classes), runs diffusers'
own schedulers on it in float64 with f16-rounded weights, feeding them noise we draw, then runs

    sample --model DIR --init-noise x_T --step-noise noise --save-tensor x_0 ...

with the same noise and reports the relative L2 distance of the final samples (the bar is 1e-3).

    cargo build --release --bin sample
    python3 benches/diffusers_replay.py [--sample target/release/sample] [--keep DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea_module
from diffusers import (DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, UNet2DModel)

CONFIG = dict(
    sample_size=(16, 24), in_channels=3, out_channels=3,
    block_out_channels=(24, 48, 48), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=12, norm_num_groups=8, norm_eps=1e-5, downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, num_class_embeds=5,
)

# (name, scheduler class, scheduler config, steps, eta, guidance w, extra `sample` flags)
RUNS = [
    ("ddpm50_linear_clip", DDPMScheduler,
     dict(beta_schedule="linear", variance_type="fixed_small", clip_sample=True), 50, None, None, []),
    ("ddpm30_cosine_fixed_large_vpred", DDPMScheduler,
     dict(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large", prediction_type="v_prediction",
          clip_sample=False, timestep_spacing="trailing"), 30, None, None, []),
    ("ddim25_eta05_scaled_linear", DDIMScheduler,
     dict(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1), 25, 0.5, None, []),
    ("ddim10_eta0_guided_w2", DDIMScheduler,
     dict(beta_schedule="linear", clip_sample=True), 10, 0.0, 2.0, []),
    # The sigma schedulers: the folder's scheduler_config.json names the class.
    ("euler20_karras_guided_w1", EulerDiscreteScheduler,
     dict(beta_schedule="scaled_linear", use_karras_sigmas=True), 20, None, 1.0, []),
    ("euler_a15_leading", EulerAncestralDiscreteScheduler,
     dict(timestep_spacing="leading", steps_offset=1), 15, None, None, []),
    ("dpmpp2m_20", DPMSolverMultistepScheduler, dict(), 20, None, None, []),
    ("dpmpp3m_sde_karras_12", DPMSolverMultistepScheduler,
     dict(algorithm_type="sde-dpmsolver++", solver_order=3, use_karras_sigmas=True), 12, None, None, []),
]
SIGMA = (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler)


def draws_noise(sched):
    return isinstance(sched, EulerAncestralDiscreteScheduler) or (
        isinstance(sched, DPMSolverMultistepScheduler) and sched.config.algorithm_type.startswith("sde"))


class InjectedNoise:
    """Stands in for diffusers' randn_tensor inside DDPMScheduler.step: returns our noise."""
    row = None

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(self.row.shape) == tuple(shape)
        return self.row.to(dtype=dtype)


INJECTED = InjectedNoise()
ddpm_module.randn_tensor = INJECTED
ea_module.randn_tensor = INJECTED


def seeded_model(seed):
    torch.manual_seed(seed)
    model = UNet2DModel(**CONFIG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Every layer matters: no zero-initialised output convs, activations O(1).
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p[0].numel()))
    return model


def f16_weights_in_f64(model):
    m = UNet2DModel.from_config(model.config)
    m.load_state_dict({k: v.half().double() for k, v in model.state_dict().items()})
    return m.double().eval()


def diffusers_run(model, cls, sched_cfg, steps, eta, w, x, noise, labels, null_class):
    sched = cls(num_train_timesteps=1000, **sched_cfg)
    sched.set_timesteps(steps)
    if cls in SIGMA:
        # The pipeline loop of these schedulers: x_T scaled, the model input scaled, the model
        # at the scheduler's (possibly fractional) timesteps, drawn noise replaced row by row.
        x = x * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(x, t)
            tt = t.expand(x.shape[0])
            with torch.no_grad():
                eps = model(inp, tt, class_labels=labels).sample
                if w is not None:
                    uncond = model(inp, tt, class_labels=torch.full_like(labels, null_class)).sample
                    eps = (1 + w) * eps - w * uncond
            INJECTED.row = noise[i]
            if isinstance(sched, DPMSolverMultistepScheduler):
                x = sched.step(eps, t, x, variance_noise=noise[i] if draws_noise(sched) else None).prev_sample
            else:
                x = sched.step(eps, t, x).prev_sample
        return x
    for i, t in enumerate(sched.timesteps):
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
        with torch.no_grad():
            eps = model(x, tt, class_labels=labels).sample
            if w is not None:
                uncond = model(x, tt, class_labels=torch.full_like(labels, null_class)).sample
                eps = (1 + w) * eps - w * uncond
        if cls is DDPMScheduler:
            INJECTED.row = noise[i]
            x = sched.step(eps, t, x).prev_sample
        else:
            x = sched.step(eps, t, x, eta=eta, variance_noise=noise[i] if eta else None).prev_sample
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", default="target/release/sample")
    ap.add_argument("--keep", help="write the pipeline folder here instead of a temp dir")
    args = ap.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="td-replay-")
    os.makedirs(root, exist_ok=True)

    model = seeded_model(2026).eval()
    model64 = f16_weights_in_f64(model)
    batch, (h, w), c = 3, CONFIG["sample_size"], CONFIG["in_channels"]
    labels = torch.tensor([0, 3, 1])
    null_class = CONFIG["num_class_embeds"] - 1
    g = torch.Generator().manual_seed(7)

    worst = 0.0
    print(f"pipeline folder: {root}")
    print(f"{'run':36s} {'steps':>5s}  rel L2 (ours vs diffusers)")
    for name, cls, sched_cfg, steps, eta, gw, extra in RUNS:
        run_dir = os.path.join(root, name)
        # A DDPMPipeline folder, as save_pretrained writes it (f32 weights, diffusers names).
        DDPMPipeline(unet=model, scheduler=cls(num_train_timesteps=1000, **sched_cfg)).save_pretrained(run_dir)
        x_T = torch.randn(batch, c, h, w, generator=g, dtype=torch.float64)
        noise = torch.randn(steps, batch, c, h, w, generator=g, dtype=torch.float64)
        expected = diffusers_run(model64, cls, sched_cfg, steps, eta, gw, x_T.clone(), noise, labels, null_class)

        save_file({"x_T": x_T.float().contiguous()}, os.path.join(run_dir, "x_T.safetensors"))
        save_file({"noise": noise.float().contiguous()}, os.path.join(run_dir, "noise.safetensors"))
        uses_noise = cls not in SIGMA or draws_noise(cls(num_train_timesteps=1000, **sched_cfg))
        out = os.path.join(run_dir, "x_0.safetensors")
        cmd = [args.sample, "--model", run_dir, "--steps", str(steps), "--batch", str(batch),
               "--class-label", ",".join(str(int(v)) for v in labels),
               "--init-noise", os.path.join(run_dir, "x_T.safetensors"),
               "--save-tensor", out, "--out", os.path.join(run_dir, "x_0.png"), "--quiet"]
        if uses_noise:
            cmd += ["--step-noise", os.path.join(run_dir, "noise.safetensors")]
        if eta is not None:
            cmd += ["--eta", str(eta)]
        if gw is not None:
            cmd += ["--guidance", str(gw), "--null-class", str(null_class)]
        subprocess.run(cmd + extra, check=True)
        ours = load_file(out)["x_0"].double()
        rel = float((ours - expected).norm() / expected.norm())
        worst = max(worst, rel)
        print(f"{name:36s} {steps:5d}  {rel:.2e}")
    json.dump(dict(CONFIG, sample_size=list(CONFIG["sample_size"])), open(os.path.join(root, "config_used.json"), "w"))
    print(f"worst {worst:.2e} (bar 1e-3): {'PASS' if worst <= 1e-3 else 'FAIL'}")
    sys.exit(0 if worst <= 1e-3 else 1)


if __name__ == "__main__":
    main()
