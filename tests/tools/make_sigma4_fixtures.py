"""diffusers 0.42 references for the remaining options of the sigma-family schedulers (issue 18),
including flow-matching sigmas (`use_flow_sigmas`, `flow_shift`, flow_prediction) and
`rescale_betas_zero_snr`:
`use_exponential_sigmas` and `use_beta_sigmas` (Euler, Heun, LMS, KDPM2 (+ ancestral), DPM-Solver
multistep and singlestep, UniPC, DEIS), DPM-Solver multistep's `use_lu_lambdas`, `sde-dpmsolver`,
`algorithm_type` "deis" and `euler_at_final`, and dynamic `thresholding` (DPM-Solver multistep and
singlestep, UniPC, DEIS). Same layout and conventions as make_sigma3_fixtures.py, plus `beta_ppf`:
scipy.stats.beta.ppf on a grid (the beta sigmas' inverse CDF).

    pip install 'diffusers==0.42.*' torch safetensors numpy scipy
    python tests/tools/make_sigma4_fixtures.py

Writes tests/fixtures/sigma4/ (seeded; rerunning rewrites the same numbers).
"""
import json, os
import numpy as np
import scipy.stats
import torch
from safetensors.torch import save_file
from diffusers import UNet2DModel
import diffusers
import inspect
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_module
import diffusers.schedulers.scheduling_dpmsolver_singlestep as dpms_module
import diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete as kdpm2a_module
import diffusers.schedulers.scheduling_lcm as lcm_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as eulera_module
import diffusers.schedulers.scheduling_tcd as tcd_module

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "sigma4")
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
dpm_module.randn_tensor = INJ
dpms_module.randn_tensor = INJ
kdpm2a_module.randn_tensor = INJ
lcm_module.randn_tensor = INJ
eulera_module.randn_tensor = INJ
tcd_module.randn_tensor = INJ


def draws(s):
    """Whether the step draws one Gaussian per call."""
    name = s.__class__.__name__
    if name in ("KDPM2AncestralDiscreteScheduler", "EulerAncestralDiscreteScheduler"):
        return True
    return name.startswith("DPMSolver") and s.config.algorithm_type.startswith("sde")


def eval_sigmas(s):
    """The sigma of each evaluation plus the final one (KDPM2: see make_sigma3_fixtures.py)."""
    name = s.__class__.__name__
    if name not in ("KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"):
        return s.sigmas.to(torch.float64)
    shift = 1 if name == "KDPM2AncestralDiscreteScheduler" else 0
    v = [float(s.sigmas[j]) if j % 2 == 0 else float(s.sigmas_interpol[j - shift]) for j in range(len(s.timesteps))]
    return torch.tensor(v + [0.0], dtype=torch.float64)


SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
EXP = dict(use_exponential_sigmas=True)
BETA = dict(use_beta_sigmas=True)
# Thresholding that bites: a quantile below 1 of the |x_0| range, s allowed up to 3.
THR = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0)
FLOW = dict(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
ZSNR = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing", **SD)
E, H, L, K, KA = ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
                  "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
D, DS, U, DE = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                "DEISMultistepScheduler")
# (name, class, config)
CONFIGS = [
    ("euler_exp_sd", E, dict(**SD, **EXP)),
    ("euler_beta_sigmamin_v", E, dict(**BETA, final_sigmas_type="sigma_min", prediction_type="v_prediction")),
    ("euler_beta_ends", E, dict(**SD, **BETA, sigma_min=0.05, sigma_max=10.0)),
    ("heun_exp", H, dict(**EXP)),
    ("heun_beta_sd_v", H, dict(**SD, **BETA, prediction_type="v_prediction")),
    ("lms_exp_sd", L, dict(**SD, **EXP)),
    ("lms_beta_cos", L, dict(**BETA, beta_schedule="squaredcos_cap_v2")),
    ("kdpm2_exp", K, dict(**EXP)),
    ("kdpm2_beta_sd", K, dict(**SD, **BETA)),
    ("kdpm2a_beta", KA, dict(**BETA)),
    ("kdpm2a_exp_sd", KA, dict(**SD, **EXP)),
    ("dpm_exp", D, dict(**EXP)),
    ("dpm3_beta_sd", D, dict(**SD, **BETA, solver_order=3)),
    ("dpm_lu", D, dict(use_lu_lambdas=True)),
    ("dpm3_lu_cos_v", D, dict(use_lu_lambdas=True, beta_schedule="squaredcos_cap_v2", solver_order=3,
                              prediction_type="v_prediction")),
    ("dpm_sde_dpmsolver", D, dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min")),
    ("dpm_sde_dpmsolver_heun_v", D, dict(algorithm_type="sde-dpmsolver", solver_type="heun",
                                         final_sigmas_type="sigma_min", prediction_type="v_prediction")),
    ("dpm_deis_alg", D, dict(algorithm_type="deis", euler_at_final=True, final_sigmas_type="sigma_min")),
    ("dpm3_thr", D, dict(**THR, solver_order=3)),
    ("dpm_thr_dpmsolver", D, dict(**THR, algorithm_type="dpmsolver", final_sigmas_type="sigma_min")),
    ("dpm_thr_sde_sample", D, dict(**THR, algorithm_type="sde-dpmsolver++", prediction_type="sample")),
    ("dpms_exp_sd", DS, dict(**SD, **EXP)),
    ("dpms3_beta_thr", DS, dict(**BETA, **THR, solver_order=3)),
    ("dpms_deis_alg_thr_v", DS, dict(**THR, algorithm_type="deis", prediction_type="v_prediction",
                                      final_sigmas_type="sigma_min")),
    ("unipc_exp", U, dict(**EXP)),
    ("unipc_beta_sigmamin", U, dict(**BETA, final_sigmas_type="sigma_min")),
    ("unipc3_thr_bh1", U, dict(**THR, solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min")),
    ("unipc_exp_ends_thr", U, dict(**EXP, **THR, sigma_min=0.1, sigma_max=20.0)),
    ("deis_exp_sd", DE, dict(**SD, **EXP)),
    ("deis3_beta", DE, dict(**BETA, solver_order=3)),
    ("deis_thr_v", DE, dict(**THR, prediction_type="v_prediction")),
    # rescale_betas_zero_snr: the last alpha-bar set to 2**-24 (the classes that take the key).
    ("euler_rescale_v", E, dict(**ZSNR)),
    ("eulera_rescale_v", "EulerAncestralDiscreteScheduler", dict(**ZSNR)),
    ("dpm_rescale_v", D, dict(**ZSNR)),
    ("unipc_rescale_v", U, dict(**ZSNR)),
    # Flow-matching sigmas (alpha = 1 - sigma), `flow_shift`, `prediction_type` flow_prediction.
    ("dpm_flow_shift3", D, dict(**FLOW)),
    ("dpms_flow_eps", DS, dict(use_flow_sigmas=True, flow_shift=2.0, solver_order=3)),
    ("unipc_flow_sigmamin", U, dict(**FLOW, final_sigmas_type="sigma_min")),
    ("deis_flow", DE, dict(**FLOW)),
]
CFG = {name: (cls, kw) for name, cls, kw in CONFIGS}
RUNS = [("euler_beta_sigmamin_v", 3), ("kdpm2a_beta", 3), ("dpm3_lu_cos_v", 4), ("dpm_sde_dpmsolver", 4),
        ("dpms3_beta_thr", 3), ("unipc3_thr_bh1", 3), ("deis_thr_v", 3), ("dpm_flow_shift3", 3)]


def make(name):
    cls, kw = CFG[name]
    return getattr(diffusers, cls)(**kw)


def do_step(s, mo, t, x, z):
    INJ.rows, INJ.k = [z], 0
    return s.step(mo, t, x).prev_sample


meta = {"schedules": [], "chains": [], "runs": [], "beta_ppf": [], "lcm_chains": []}
tensors = {}
g = torch.Generator().manual_seed(20)

for name, cls, kw in CONFIGS:
    has_spacing = "timestep_spacing" in inspect.signature(getattr(diffusers, cls).__init__).parameters
    for spacing in ["linspace", "leading", "trailing"] if has_spacing else [None]:
        for steps in [1, 25] if spacing in (None, "linspace") else [4]:
            if cls == "KDPM2AncestralDiscreteScheduler" and steps == 2:
                # sigma_down = sqrt(next^2 - up^2) cancels by ~1e5 when next << sigma (2 steps):
                # torch's float32 `** 0.5` is one ulp off the correctly rounded sqrt, and the
                # ulp becomes a 2% difference in the interpolated sigma. Ill-conditioned in
                # diffusers itself; not compared.
                continue
            s = getattr(diffusers, cls)(**({**kw, "timestep_spacing": spacing} if spacing else kw))
            try:
                s.set_timesteps(steps)
            except Exception as e:  # recorded: the library refuses these too
                print(f"skip {name}.{spacing}.{steps}: {e!r}")
                continue
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
    chain_steps = {"DPMSolverSinglestepScheduler": [7], "KDPM2DiscreteScheduler": [3],
                   "KDPM2AncestralDiscreteScheduler": [4]}
    if name == "eulera_rescale_v":
        # From sigma 4096 (the 2**-24 alpha-bar) sigma_down = sqrt(to^2 - up^2) cancels by ~1e5
        # in float32, and torch's `** 0.5` (an ulp off the rounded sqrt, see
        # make_sigma3_fixtures.py) moves step 0 by ~5e-5: ill-conditioned in diffusers itself.
        # Its schedule is compared; Euler's, DPM-Solver's and UniPC's steps cover the rescale.
        continue
    for steps in chain_steps.get(cls, [4]):
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

# LCM with dynamic thresholding (and TCD, which keeps the key but never reads it): chains of
# single steps with injected noise, `gamma` the eta TCD's step is called with.
for name, cls, kw, gamma in [
    ("lcm_thr", "LCMScheduler", dict(**THR), None),
    ("lcm_thr_v_ratio", "LCMScheduler", dict(thresholding=True, dynamic_thresholding_ratio=0.5,
                                             sample_max_value=2.0, prediction_type="v_prediction"), None),
    ("tcd_thr", "TCDScheduler", dict(**THR), 0.3),
]:
    s = getattr(diffusers, cls)(**kw)
    s.set_timesteps(4)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float()
    key = f"lcm.{name}"
    for i, t in enumerate(s.timesteps):
        mo = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float()
        z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float()
        INJ.rows, INJ.k = [z], 0
        extra = {} if gamma is None else dict(eta=gamma)
        prev = s.step(mo, t, x, **extra).prev_sample
        tensors[f"{key}.{i}.sample"] = x
        tensors[f"{key}.{i}.model_output"] = mo
        tensors[f"{key}.{i}.noise"] = z
        tensors[f"{key}.{i}.prev_sample"] = prev.float().clone()
        x = prev.float().clone()
    meta["lcm_chains"].append(dict(name=key, scheduler_json=s.to_json_string(), num_inference_steps=4,
                                   gamma=gamma, steps=len(s.timesteps)))

# scipy.stats.beta.ppf, as _convert_to_beta calls it (1 - linspace(0, 1, n)), and at other shapes.
for a, b in [(0.6, 0.6), (0.5, 2.0), (2.0, 0.5), (3.0, 3.0), (1.0, 1.0)]:
    # (Not the far tails: there boost's ibeta_inv, behind scipy, gives up on its root finding.)
    ps = np.concatenate([1 - np.linspace(0, 1, 26), 1 - np.linspace(0, 1, 7), [1e-4, 0.123456789, 0.9999]])
    key = f"beta_ppf.{a}.{b}"
    tensors[f"{key}.p"] = torch.from_numpy(ps.astype(np.float64))
    tensors[f"{key}.x"] = torch.from_numpy(np.array([scipy.stats.beta.ppf(p, a, b) for p in ps], dtype=np.float64))
    meta["beta_ppf"].append(dict(name=key, a=a, b=b))

save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "cases.safetensors"))
with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(meta, f)
print(f"wrote {OUT}: {len(meta['schedules'])} schedules, {len(meta['chains'])} chains, {len(meta['runs'])} runs")
