"""diffusers 0.42 references for the third group of sigma-family schedulers (LMS discrete,
DPM-Solver singlestep, ...). Same layout and conventions as make_sigma_fixtures.py / make_sigma2_fixtures.py.

    pip install 'diffusers==0.42.*' torch safetensors numpy scipy
    python tests/tools/make_sigma3_fixtures.py

Writes tests/fixtures/sigma3/ (seeded; rerunning rewrites the same numbers): cases.json with
`schedules` (every `timestep_spacing`, several step counts), `chains` (single steps with fixed
model outputs, one entry per `scheduler.timesteps` entry, the history carried by the scheduler)
and `runs` (tiny-rgb16, f16-rounded weights in float64, injected noise for the classes that
draw any), and cases.safetensors.
"""
import json, os
import torch
from safetensors.torch import save_file
from diffusers import UNet2DModel
import diffusers
import inspect
import diffusers.schedulers.scheduling_dpmsolver_singlestep as dpms_module

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "sigma3")
MODEL = os.path.join(HERE, "..", "fixtures", "tiny-rgb16")
os.makedirs(OUT, exist_ok=True)


class Injected:
    """Stands in for randn_tensor in the modules of the classes that draw noise."""
    row = None

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(self.row.shape) == tuple(shape)
        return self.row.to(dtype=dtype)


INJ = Injected()
dpms_module.randn_tensor = INJ


def draws(s):
    """Whether the step draws one Gaussian per call."""
    name = s.__class__.__name__
    return name == "DPMSolverSinglestepScheduler" and s.config.algorithm_type.startswith("sde")


SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
# (name, class, config)
CONFIGS = [
    ("lms_default", "LMSDiscreteScheduler", {}),
    ("lms_karras_sd_leading", "LMSDiscreteScheduler", dict(**SD, timestep_spacing="leading", steps_offset=1,
                                                           use_karras_sigmas=True)),
    ("lms_trailing_v_cos", "LMSDiscreteScheduler", dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing",
                                                        prediction_type="v_prediction")),
    ("lms_sample_linspace_sd", "LMSDiscreteScheduler", dict(**SD, prediction_type="sample")),
    ("dpms_default", "DPMSolverSinglestepScheduler", {}),
    ("dpms3_karras_sd", "DPMSolverSinglestepScheduler", dict(**SD, solver_order=3, use_karras_sigmas=True)),
    ("dpms3_heun_sigmamin", "DPMSolverSinglestepScheduler", dict(solver_order=3, solver_type="heun",
                                                                  final_sigmas_type="sigma_min")),
    ("dpms_dpmsolver_heun_v", "DPMSolverSinglestepScheduler", dict(algorithm_type="dpmsolver", solver_type="heun",
                                                                    final_sigmas_type="sigma_min",
                                                                    prediction_type="v_prediction")),
    ("dpms3_dpmsolver_lof_eps", "DPMSolverSinglestepScheduler", dict(algorithm_type="dpmsolver", solver_order=3,
                                                                      final_sigmas_type="sigma_min",
                                                                      lower_order_final=True)),
    ("dpms_sde_heun", "DPMSolverSinglestepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_type="heun")),
    ("dpms3_sde_sample_cos", "DPMSolverSinglestepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=3,
                                                                   prediction_type="sample",
                                                                   beta_schedule="squaredcos_cap_v2")),
    ("dpms1_karras_v", "DPMSolverSinglestepScheduler", dict(solver_order=1, use_karras_sigmas=True,
                                                             prediction_type="v_prediction")),
]
CFG = {name: (cls, kw) for name, cls, kw in CONFIGS}
RUNS = [("lms_default", 6), ("lms_karras_sd_leading", 5), ("dpms_default", 6), ("dpms3_karras_sd", 6),
        ("dpms_sde_heun", 5)]


def make(name):
    cls, kw = CFG[name]
    return getattr(diffusers, cls)(**kw)


def do_step(s, mo, t, x, z):
    INJ.row = z
    return s.step(mo, t, x).prev_sample


meta = {"schedules": [], "chains": [], "runs": []}
tensors = {}
g = torch.Generator().manual_seed(20)

for name, cls, kw in CONFIGS:
    has_spacing = "timestep_spacing" in inspect.signature(getattr(diffusers, cls).__init__).parameters
    for spacing in ["linspace", "leading", "trailing"] if has_spacing else [None]:
        for steps in [1, 2, 3, 6, 7, 10, 25]:
            s = getattr(diffusers, cls)(**({**kw, "timestep_spacing": spacing} if spacing else kw))
            s.set_timesteps(steps)
            ts = s.timesteps.to(torch.float64)
            if (ts < 0).any():
                continue
            key = f"{name}.{spacing}.{steps}"
            tensors[f"{key}.timesteps"] = ts
            tensors[f"{key}.sigmas"] = s.sigmas.to(torch.float64)
            meta["schedules"].append(dict(name=key, scheduler_json=s.to_json_string(), num_inference_steps=steps,
                                          init_noise_sigma=float(s.init_noise_sigma)))

for name, cls, kw in CONFIGS:
    for steps in [4, 6, 7] if cls == "DPMSolverSinglestepScheduler" else [4, 7]:
        s = make(name)
        s.set_timesteps(steps)
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double() * float(s.init_noise_sigma)
        key = f"chain.{name}.{steps}"
        for i, t in enumerate(s.timesteps):
            mo = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double()
            z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double()
            scaled = s.scale_model_input(x, t)
            prev = do_step(s, mo, t, x, z)
            tensors[f"{key}.{i}.sample"] = x.float()
            tensors[f"{key}.{i}.scaled"] = scaled.float()
            tensors[f"{key}.{i}.model_output"] = mo.float()
            tensors[f"{key}.{i}.prev_sample"] = prev.float()
            if draws(s):
                tensors[f"{key}.{i}.noise"] = z.float()
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
    noise = torch.randn(len(s.timesteps), 2, c, h, w, generator=g, dtype=torch.float64).float()
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
    tensors[f"{key}.traj"] = torch.stack(traj).float()
    tensors[f"{key}.timesteps"] = s.timesteps.to(torch.float64)
    if draws(s):
        tensors[f"{key}.noise"] = noise
    meta["runs"].append(dict(name=key, config=name, scheduler_json=s.to_json_string(), num_inference_steps=steps,
                             noise=draws(s)))

save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "cases.safetensors"))
with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(meta, f, indent=1)
print(f"wrote {OUT}: {len(meta['schedules'])} schedules, {len(meta['chains'])} chains, {len(meta['runs'])} runs")
