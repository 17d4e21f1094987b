"""diffusers 0.42 references for the sigma schedulers (Euler, Euler ancestral, DPM-Solver multistep).

    pip install 'diffusers==0.42.*' torch safetensors numpy
    python tests/tools/make_sigma_fixtures.py

Writes tests/fixtures/sigma/ (seeded; rerunning rewrites the same numbers):
- cases.json: `schedules` (class + config -> set_timesteps for several step counts),
  `chains` (a whole run of `step()` calls with fixed random model outputs: per step the input
  sample, model output, injected noise and expected prev_sample), `runs` (whole sampling runs with
  the tiny-rgb16 fixture UNet, f16-rounded weights in float64, injected noise).
- cases.safetensors: the tensors, named `<case>.<what>`.

The run loop is diffusers' pipeline loop for these schedulers:
    latents = x_T * init_noise_sigma
    for t in timesteps: latents = step(unet(scale_model_input(latents, t), t), t, latents)
with every Gaussian the scheduler draws replaced by the next injected row (Euler ancestral's
randn_tensor is patched; DPM-Solver gets `variance_noise`).
"""
import json, os
import numpy as np
import torch
from safetensors.torch import save_file
import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea_module
from diffusers import (UNet2DModel, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                       DPMSolverMultistepScheduler)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "sigma")
MODEL = os.path.join(HERE, "..", "fixtures", "tiny-rgb16")
os.makedirs(OUT, exist_ok=True)
CLASSES = {c.__name__: c for c in (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler)}


class Injected:
    row = None

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(self.row.shape) == tuple(shape)
        return self.row.to(dtype=dtype)


INJ = Injected()
ea_module.randn_tensor = INJ

# (name, class, config)
CONFIGS = [
    ("euler_default", "EulerDiscreteScheduler", {}),
    ("euler_karras_leading", "EulerDiscreteScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                          timestep_spacing="leading", steps_offset=1, use_karras_sigmas=True)),
    ("euler_trailing_v_cos_sigmamin", "EulerDiscreteScheduler", dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing",
                                                                   prediction_type="v_prediction", final_sigmas_type="sigma_min")),
    ("euler_continuous_v_karras", "EulerDiscreteScheduler", dict(prediction_type="v_prediction", timestep_type="continuous",
                                                               use_karras_sigmas=True, sigma_min=0.05, sigma_max=40.0)),
    ("euler_sample", "EulerDiscreteScheduler", dict(prediction_type="sample")),
    ("ea_default", "EulerAncestralDiscreteScheduler", {}),
    ("ea_leading_v", "EulerAncestralDiscreteScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                           timestep_spacing="leading", steps_offset=1, prediction_type="v_prediction")),
    ("ea_trailing", "EulerAncestralDiscreteScheduler", dict(timestep_spacing="trailing")),
    ("dpm_default", "DPMSolverMultistepScheduler", {}),
    ("dpm3_karras", "DPMSolverMultistepScheduler", dict(solver_order=3, use_karras_sigmas=True, lower_order_final=False,
                                                       beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
    ("dpm_eps_heun_v_sigmamin", "DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver", solver_type="heun",
                                                                    final_sigmas_type="sigma_min", prediction_type="v_prediction")),
    ("dpm_sde_trailing", "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", timestep_spacing="trailing")),
    ("dpm1_leading_sample_eulerfinal", "DPMSolverMultistepScheduler", dict(solver_order=1, timestep_spacing="leading", steps_offset=1,
                                                                           prediction_type="sample", euler_at_final=True)),
    ("dpm3_eps_sigmamin_karras", "DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver", solver_order=3,
                                                                      final_sigmas_type="sigma_min", use_karras_sigmas=True)),
    ("dpm3_sde_heun", "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun",
                                                          lower_order_final=False)),
    ("dpm2_heun_cos", "DPMSolverMultistepScheduler", dict(solver_type="heun", lower_order_final=False,
                                                          final_sigmas_type="sigma_min", beta_schedule="squaredcos_cap_v2")),
    # Schedule only: Karras sigmas on cosine betas repeat timesteps (998, 998, ...), and diffusers'
    # step() then starts at the second occurrence, so no step chain is recorded for it.
    ("schedule_only_dpm_cos_karras", "DPMSolverMultistepScheduler", dict(beta_schedule="squaredcos_cap_v2",
                                                                         use_karras_sigmas=True)),
]
CFG = {name: (cls, kw) for name, cls, kw in CONFIGS}


def make(name):
    cls, kw = CFG[name]
    return CLASSES[cls](**kw)


def full_config(s, cls):
    # The exact text save_pretrained writes (Python's json: -inf is the bare token -Infinity).
    assert s.__class__.__name__ == cls
    return s.to_json_string()


def draws(s):
    return isinstance(s, EulerAncestralDiscreteScheduler) or (
        isinstance(s, DPMSolverMultistepScheduler) and s.config.algorithm_type.startswith("sde"))


def do_step(s, mo, t, x, z):
    if isinstance(s, EulerAncestralDiscreteScheduler):
        INJ.row = z
        return s.step(mo, t, x).prev_sample
    if isinstance(s, DPMSolverMultistepScheduler):
        return s.step(mo, t, x, variance_noise=z if draws(s) else None).prev_sample
    return s.step(mo, t, x).prev_sample


meta = {"schedules": [], "chains": [], "runs": []}
tensors = {}
g = torch.Generator().manual_seed(18)

for name, cls, kw in CONFIGS:
    for steps in [1, 7, 10, 25, 50]:
        s = make(name)
        s.set_timesteps(steps)
        ts = s.timesteps.to(torch.float64)
        if (ts < 0).any():
            continue  # diffusers lists t = -1 here (NumPy's arange overshoots); we refuse it
        key = f"{name}.{steps}"
        tensors[f"{key}.timesteps"] = ts
        tensors[f"{key}.sigmas"] = s.sigmas.to(torch.float64)
        meta["schedules"].append(dict(name=key, scheduler_json=full_config(s, cls), num_inference_steps=steps,
                                      init_noise_sigma=float(s.init_noise_sigma)))

# Chains of single steps with fixed random model outputs.
for name, cls, kw in CONFIGS:
    if name.startswith("schedule_only"):
        continue
    for steps in [10, 16]:
        s = make(name)
        s.set_timesteps(steps)
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double() * float(s.init_noise_sigma)
        key = f"chain.{name}.{steps}"
        rows = []
        for i, t in enumerate(s.timesteps):
            mo = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double()
            z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double()
            scaled = s.scale_model_input(x, t)
            prev = do_step(s, mo, t, x, z)
            tensors[f"{key}.{i}.sample"] = x.float()
            tensors[f"{key}.{i}.scaled"] = scaled.float()
            tensors[f"{key}.{i}.model_output"] = mo.float()
            tensors[f"{key}.{i}.noise"] = z.float()
            tensors[f"{key}.{i}.prev_sample"] = prev.float()
            x = prev.float().double()
        meta["chains"].append(dict(name=key, scheduler_json=full_config(s, cls), num_inference_steps=steps))

# Whole runs with the fixture UNet.
unet = UNet2DModel.from_pretrained(MODEL)
ref = UNet2DModel.from_config(unet.config)
ref.load_state_dict({k: v.half().double() for k, v in unet.state_dict().items()})
ref = ref.double().eval()
RUNS = [("euler_default", 10), ("euler_karras_leading", 12), ("ea_default", 10), ("dpm_default", 10),
        ("dpm3_karras", 12), ("dpm_sde_trailing", 10), ("dpm_eps_heun_v_sigmamin", 8), ("euler_trailing_v_cos_sigmamin", 8)]
c, h, w = 3, 16, 16
for name, steps in RUNS:
    cls, kw = CFG[name]
    s = make(name)
    s.set_timesteps(steps)
    x_T = torch.randn(2, c, h, w, generator=g, dtype=torch.float64).float()
    noise = torch.randn(steps, 2, c, h, w, generator=g, dtype=torch.float64).float()
    x = x_T.double() * s.init_noise_sigma
    traj = [x.clone()]
    for i, t in enumerate(s.timesteps):
        inp = s.scale_model_input(x, t)
        with torch.no_grad():
            eps = ref(inp, t).sample
        x = do_step(s, eps, t, x, noise[i].double())
        traj.append(x.clone())
    key = f"run.{name}.{steps}"
    tensors[f"{key}.x_T"] = x_T
    if draws(s):
        tensors[f"{key}.noise"] = noise
    tensors[f"{key}.traj"] = torch.stack(traj).float()
    tensors[f"{key}.timesteps"] = s.timesteps.to(torch.float64)
    meta["runs"].append(dict(name=key, config=name, scheduler_json=full_config(s, cls), num_inference_steps=steps,
                             noise=draws(s)))

save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "cases.safetensors"))
with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(meta, f, indent=1, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
print(f"wrote {OUT}: {len(meta['schedules'])} schedules, {len(meta['chains'])} chains, {len(meta['runs'])} runs")
