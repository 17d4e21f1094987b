"""diffusers 0.42 references for the third group of sigma-family schedulers (LMS discrete,
DPM-Solver singlestep, KDPM2, KDPM2 ancestral, DEIS multistep, IPNDM). Same layout and conventions as make_sigma_fixtures.py / make_sigma2_fixtures.py.

    pip install 'diffusers==0.42.*' torch safetensors numpy scipy
    python tests/tools/make_sigma3_fixtures.py

Writes tests/fixtures/sigma3/ (seeded; rerunning rewrites the same numbers): cases.json with
`schedules` (every `timestep_spacing`, several step counts), `chains` (single steps with fixed
model outputs, one entry per `scheduler.timesteps` entry, the history carried by the scheduler)
and `runs` (tiny-rgb16, f16-rounded weights in float64, injected noise for the classes that
draw any: row k is the k-th draw), and cases.safetensors.

KDPM2's `sigmas` are stored as the library lays them out: the sigma each evaluation scales its
input with (diffusers' `sigmas` at first-order evaluations, `sigmas_interpol` at second-order
ones), then the final 0.
"""
import json, os
import torch
from safetensors.torch import save_file
from diffusers import UNet2DModel
import diffusers
import inspect
import diffusers.schedulers.scheduling_dpmsolver_singlestep as dpms_module
import diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete as kdpm2a_module

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "sigma3")
MODEL = os.path.join(HERE, "..", "fixtures", "tiny-rgb16")
os.makedirs(OUT, exist_ok=True)


class Injected:
    """Stands in for randn_tensor in the modules of the classes that draw noise."""
    rows = None  # the draws to hand out, in order
    k = 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        row = self.rows[self.k]
        self.k += 1
        assert tuple(row.shape) == tuple(shape)
        return row.to(dtype=dtype)


INJ = Injected()
dpms_module.randn_tensor = INJ
kdpm2a_module.randn_tensor = INJ


def draws(s):
    """Whether the step draws one Gaussian per call."""
    name = s.__class__.__name__
    if name == "KDPM2AncestralDiscreteScheduler":
        return True
    return name == "DPMSolverSinglestepScheduler" and s.config.algorithm_type.startswith("sde")


def eval_sigmas(s):
    """The sigma of each evaluation plus the final one (KDPM2: see the module docstring)."""
    name = s.__class__.__name__
    if name not in ("KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"):
        return s.sigmas.to(torch.float64)
    shift = 1 if name == "KDPM2AncestralDiscreteScheduler" else 0
    v = [float(s.sigmas[j]) if j % 2 == 0 else float(s.sigmas_interpol[j - shift]) for j in range(len(s.timesteps))]
    return torch.tensor(v + [0.0], dtype=torch.float64)


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
    ("kdpm2_default", "KDPM2DiscreteScheduler", {}),
    ("kdpm2_karras_sd_leading", "KDPM2DiscreteScheduler", dict(**SD, use_karras_sigmas=True, timestep_spacing="leading",
                                                               steps_offset=1)),
    ("kdpm2_trailing_v_cos", "KDPM2DiscreteScheduler", dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing",
                                                            prediction_type="v_prediction")),
    ("kdpm2a_default", "KDPM2AncestralDiscreteScheduler", {}),
    ("kdpm2a_karras_v_linear", "KDPM2AncestralDiscreteScheduler", dict(use_karras_sigmas=True, beta_start=0.0001, beta_end=0.02,
                                                                       prediction_type="v_prediction")),
    ("kdpm2a_leading_sd", "KDPM2AncestralDiscreteScheduler", dict(**SD, timestep_spacing="leading", steps_offset=1)),
    ("deis_default", "DEISMultistepScheduler", {}),
    ("deis3_karras_sd", "DEISMultistepScheduler", dict(**SD, solver_order=3, use_karras_sigmas=True)),
    ("deis3_nolof_trailing_v", "DEISMultistepScheduler", dict(solver_order=3, lower_order_final=False,
                                                              timestep_spacing="trailing", prediction_type="v_prediction")),
    ("ipndm_default", "IPNDMScheduler", {}),
    ("deis1_leading_sample_cos", "DEISMultistepScheduler", dict(solver_order=1, timestep_spacing="leading", steps_offset=1,
                                                                prediction_type="sample", beta_schedule="squaredcos_cap_v2")),
]
CFG = {name: (cls, kw) for name, cls, kw in CONFIGS}
RUNS = [("lms_karras_sd_leading", 4), ("dpms3_karras_sd", 6), ("dpms_sde_heun", 3), ("kdpm2_default", 2),
        ("kdpm2a_default", 3), ("deis3_karras_sd", 4), ("ipndm_default", 5)]


def make(name):
    cls, kw = CFG[name]
    return getattr(diffusers, cls)(**kw)


def do_step(s, mo, t, x, z):
    INJ.rows, INJ.k = [z], 0
    return s.step(mo, t, x).prev_sample


meta = {"schedules": [], "chains": [], "runs": []}
tensors = {}
g = torch.Generator().manual_seed(20)

for name, cls, kw in CONFIGS:
    has_spacing = "timestep_spacing" in inspect.signature(getattr(diffusers, cls).__init__).parameters
    for spacing in ["linspace", "leading", "trailing"] if has_spacing else [None]:
        for steps in [1, 3, 6, 25]:
            if cls == "KDPM2AncestralDiscreteScheduler" and steps == 2:
                # sigma_down = sqrt(next^2 - up^2) cancels by ~1e5 when next << sigma (2 steps):
                # torch's float32 `** 0.5` is one ulp off the correctly rounded sqrt, and the
                # ulp becomes a 2% difference in the interpolated sigma. Ill-conditioned in
                # diffusers itself; not compared.
                continue
            s = getattr(diffusers, cls)(**({**kw, "timestep_spacing": spacing} if spacing else kw))
            s.set_timesteps(steps)
            ts = s.timesteps.to(torch.float64)
            # Negative timesteps; NaN ones (KDPM2 ancestral whose sigma_down underflows to 0,
            # which the library refuses).
            if (ts < 0).any() or ts.isnan().any():
                continue
            key = f"{name}.{spacing}.{steps}"
            tensors[f"{key}.timesteps"] = ts
            if hasattr(s, "sigmas"):  # IPNDM has none: checked through its steps
                tensors[f"{key}.sigmas"] = eval_sigmas(s)
            meta["schedules"].append(dict(name=key, scheduler_json=s.to_json_string(), num_inference_steps=steps,
                                          init_noise_sigma=float(s.init_noise_sigma)))

for name, cls, kw in CONFIGS:
    # Singlestep: a multiple of 3 and not; KDPM2: 2N - 1 evaluations.
    # (Kept small: the set stays under 1 MB.)
    chain_steps = {"DPMSolverSinglestepScheduler": [6, 7], "KDPM2DiscreteScheduler": [3],
                   "KDPM2AncestralDiscreteScheduler": [4]}
    for steps in chain_steps.get(cls, [6]):
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
    INJ.rows, INJ.k = [row.double() for row in noise], 0
    for i, t in enumerate(s.timesteps):
        inp = s.scale_model_input(x, t)
        with torch.no_grad():
            eps = ref(inp, t).sample
        x = s.step(eps, t, x).prev_sample
        traj.append(x.clone())
    noise = noise[:INJ.k]  # the rows drawn, in draw order
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
    json.dump(meta, f)
print(f"wrote {OUT}: {len(meta['schedules'])} schedules, {len(meta['chains'])} chains, {len(meta['runs'])} runs")
