"""diffusers 0.42 references for the second group of sigma-family schedulers: Heun, UniPC
multistep, PNDM (PLMS). Same layout and conventions as make_sigma_fixtures.py.

    pip install 'diffusers==0.42.*' torch safetensors numpy
    python tests/tools/make_sigma2_fixtures.py

Writes tests/fixtures/sigma2/ (seeded; rerunning rewrites the same numbers): cases.json with
`schedules`, `chains` (one entry per `scheduler.timesteps` entry: Heun's 2N-1 evaluations,
PLMS's N+1) and `runs` (tiny-rgb16, f16-rounded weights in float64), and cases.safetensors.
None of these classes draws noise.
"""
import json, os
import torch
from safetensors.torch import save_file
from diffusers import UNet2DModel
import diffusers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "sigma2")
MODEL = os.path.join(HERE, "..", "fixtures", "tiny-rgb16")
os.makedirs(OUT, exist_ok=True)

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
# (name, class, config)
CONFIGS = [
    ("heun_default", "HeunDiscreteScheduler", {}),
    ("heun_karras_leading", "HeunDiscreteScheduler", dict(**SD, timestep_spacing="leading", steps_offset=1,
                                                          use_karras_sigmas=True)),
    ("heun_trailing_v_cos", "HeunDiscreteScheduler", dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing",
                                                          prediction_type="v_prediction")),
    ("heun_sample_clip", "HeunDiscreteScheduler", dict(prediction_type="sample", clip_sample=True, clip_sample_range=1.5,
                                                       beta_start=0.0001, beta_end=0.02)),
    ("unipc_default", "UniPCMultistepScheduler", {}),
    ("unipc3_karras_sd", "UniPCMultistepScheduler", dict(**SD, solver_order=3, use_karras_sigmas=True)),
    ("unipc_bh1_sigmamin_v_trailing", "UniPCMultistepScheduler", dict(solver_type="bh1", final_sigmas_type="sigma_min",
                                                                    prediction_type="v_prediction", timestep_spacing="trailing")),
    ("unipc3_nolof_disable_leading_sample", "UniPCMultistepScheduler", dict(solver_order=3, lower_order_final=False,
                                                                          final_sigmas_type="sigma_min", disable_corrector=[0, 2],
                                                                          timestep_spacing="leading", steps_offset=1,
                                                                          prediction_type="sample")),
    ("unipc1_trailing", "UniPCMultistepScheduler", dict(solver_order=1, timestep_spacing="trailing")),
    ("unipc3_eps_karras_minmax_cos", "UniPCMultistepScheduler", dict(predict_x0=False, solver_order=3, use_karras_sigmas=True,
                                                                   sigma_min=0.1, sigma_max=20.0, final_sigmas_type="sigma_min",
                                                                   beta_schedule="squaredcos_cap_v2")),
    ("unipc2_bh1_noisepred_v", "UniPCMultistepScheduler", dict(predict_x0=False, solver_type="bh1", final_sigmas_type="sigma_min",
                                                               prediction_type="v_prediction")),
    ("pndm_plms_sd", "PNDMScheduler", dict(**SD, skip_prk_steps=True, steps_offset=1)),
    ("pndm_default_prk", "PNDMScheduler", {}),
    ("pndm_prk_v_linspace_alpha1", "PNDMScheduler", dict(prediction_type="v_prediction", timestep_spacing="linspace",
                                                          set_alpha_to_one=True)),
    ("pndm_plms_trailing_cos_v", "PNDMScheduler", dict(skip_prk_steps=True, timestep_spacing="trailing",
                                                        beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")),
]
CFG = {name: (cls, kw) for name, cls, kw in CONFIGS}
RUNS = [("heun_default", 5), ("heun_karras_leading", 4), ("unipc_default", 6), ("unipc3_karras_sd", 7),
        ("pndm_plms_sd", 5), ("pndm_default_prk", 4)]


def make(name):
    cls, kw = CFG[name]
    return getattr(diffusers, cls)(**kw)


meta = {"schedules": [], "chains": [], "runs": []}
tensors = {}
g = torch.Generator().manual_seed(19)

for name, cls, kw in CONFIGS:
    for steps in [1, 2, 7, 10, 25]:
        if cls == "PNDMScheduler" and not kw.get("skip_prk_steps") and steps < 4:
            continue  # diffusers' PRK warm-up fails below 4 steps; we refuse it
        s = make(name)
        s.set_timesteps(steps)
        ts = s.timesteps.to(torch.float64)
        if (ts < 0).any():
            continue
        key = f"{name}.{steps}"
        tensors[f"{key}.timesteps"] = ts
        if hasattr(s, "sigmas") and s.sigmas is not None:
            tensors[f"{key}.sigmas"] = s.sigmas.to(torch.float64)
        meta["schedules"].append(dict(name=key, scheduler_json=s.to_json_string(), num_inference_steps=steps,
                                      init_noise_sigma=float(s.init_noise_sigma)))

for name, cls, kw in CONFIGS:
    for steps in [4, 7]:
        s = make(name)
        s.set_timesteps(steps)
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double() * float(s.init_noise_sigma)
        key = f"chain.{name}.{steps}"
        for i, t in enumerate(s.timesteps):
            mo = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double()
            scaled = s.scale_model_input(x, t)
            prev = s.step(mo, t, x).prev_sample
            tensors[f"{key}.{i}.sample"] = x.float()
            tensors[f"{key}.{i}.scaled"] = scaled.float()
            tensors[f"{key}.{i}.model_output"] = mo.float()
            tensors[f"{key}.{i}.prev_sample"] = prev.float()
            x = prev.float().double()
        meta["chains"].append(dict(name=key, scheduler_json=s.to_json_string(), num_inference_steps=steps))

unet = UNet2DModel.from_pretrained(MODEL)
ref = UNet2DModel.from_config(unet.config)
ref.load_state_dict({k: v.half().double() for k, v in unet.state_dict().items()})
ref = ref.double().eval()
c, h, w = 3, 16, 16
for name, steps in RUNS:
    s = make(name)
    s.set_timesteps(steps)
    x_T = torch.randn(2, c, h, w, generator=g, dtype=torch.float64).float()
    x = x_T.double() * s.init_noise_sigma
    traj = [x.clone()]
    for i, t in enumerate(s.timesteps):
        inp = s.scale_model_input(x, t)
        with torch.no_grad():
            eps = ref(inp, t).sample
        x = s.step(eps, t, x).prev_sample
        traj.append(x.clone())
    key = f"run.{name}.{steps}"
    tensors[f"{key}.x_T"] = x_T
    tensors[f"{key}.traj"] = torch.stack(traj).float()
    tensors[f"{key}.timesteps"] = s.timesteps.to(torch.float64)
    meta["runs"].append(dict(name=key, config=name, scheduler_json=s.to_json_string(), num_inference_steps=steps,
                             noise=False))

save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "cases.safetensors"))
with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(meta, f, indent=1)
print(f"wrote {OUT}: {len(meta['schedules'])} schedules, {len(meta['chains'])} chains, {len(meta['runs'])} runs")
