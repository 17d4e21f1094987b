"""diffusers 0.42 references for `--scheduler NAME` / `SchedulerConfig::with_kind` (issue 18):
`NewClass.from_config(FolderClass.from_config(folder_json).config)`, which keeps exactly the
folder's *given* keys that the new class's `__init__` takes and applies the new class's defaults
to everything else. For each (folder JSON, class) pair: the converted scheduler's config
(`to_json_string`), its `set_timesteps` output, and a short sampling run with the tiny-rgb16 UNet
(float64, f16-rounded weights) and injected noise.

    pip install 'diffusers==0.42.*' torch safetensors numpy
    python tests/tools/make_override_fixtures.py

Writes tests/fixtures/overrides/ (seeded; rerunning rewrites the same numbers).
"""
import json, os
import torch
from safetensors.torch import save_file
from diffusers import UNet2DModel
import diffusers
import diffusers.schedulers.scheduling_euler_ancestral_discrete as eulera_module
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_module
import diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete as kdpm2a_module
import diffusers.schedulers.scheduling_dpmsolver_singlestep as dpms_module

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "overrides")
MODEL = os.path.join(HERE, "..", "fixtures", "tiny-rgb16")
os.makedirs(OUT, exist_ok=True)


class Injected:
    rows, k = None, 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        row = self.rows[self.k]
        self.k += 1
        return row.to(dtype=dtype)


INJ = Injected()
for m in (eulera_module, dpm_module, kdpm2a_module, dpms_module):
    m.randn_tensor = INJ

# Stable Diffusion's scheduler_config.json (PNDM, PLMS only).
SD_PNDM = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
           "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
           "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
           "trained_betas": None, "timestep_spacing": "leading"}
EULER_K = {"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True,
           "final_sigmas_type": "sigma_min", "rescale_betas_zero_snr": True,
           "prediction_type": "v_prediction", "timestep_spacing": "trailing", "steps_offset": 1}
DPM3 = {"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3, "use_karras_sigmas": True,
        "algorithm_type": "sde-dpmsolver++", "lower_order_final": False, "euler_at_final": True,
        "final_sigmas_type": "sigma_min", "timestep_spacing": "leading", "steps_offset": 1,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
# An old DDPM folder: no timestep_spacing, DDIM's set_alpha_to_one kept as a hidden key.
DDPM_OLD = {"_class_name": "DDPMScheduler", "variance_type": "fixed_large", "clip_sample": True,
            "beta_end": 0.02, "set_alpha_to_one": False}
HEUN = {"_class_name": "HeunDiscreteScheduler", "use_exponential_sigmas": True, "clip_sample": True}
UNIPC = {"_class_name": "UniPCMultistepScheduler", "sigma_min": 0.1, "sigma_max": 20.0,
         "use_karras_sigmas": True, "solver_type": "bh1", "disable_corrector": [1],
         "final_sigmas_type": "sigma_min"}
EULERA = {"_class_name": "EulerAncestralDiscreteScheduler", "rescale_betas_zero_snr": True,
          "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
LCM = {"_class_name": "LCMScheduler", "original_inference_steps": 25, "timestep_spacing": "trailing",
       "clip_sample": False}
EULER_LL = {"_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear",
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
UNIPC_FT = {"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True, "flow_shift": 3.0,
            "shift_terminal": 0.2, "prediction_type": "flow_prediction"}
DPM_CLIP = {"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "squaredcos_cap_v2",
            "lambda_min_clipped": -3.0, "prediction_type": "v_prediction"}
KDPM2 = {"_class_name": "KDPM2DiscreteScheduler", "use_beta_sigmas": True, "prediction_type": "v_prediction"}

E, EA, H, L = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
               "LMSDiscreteScheduler")
D, DS, U, DE = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                "DEISMultistepScheduler")
# (name, folder json, override class, steps)
CASES = [
    ("sd_pndm_to_euler", SD_PNDM, E, 4),
    ("sd_pndm_to_eulera", SD_PNDM, EA, 4),
    ("sd_pndm_to_dpm", SD_PNDM, D, 4),
    ("sd_pndm_to_unipc", SD_PNDM, U, 4),
    ("sd_pndm_to_heun", SD_PNDM, H, 3),
    ("sd_pndm_to_lms", SD_PNDM, L, 4),
    ("sd_pndm_to_ddim", SD_PNDM, "DDIMScheduler", 4),
    ("euler_k_to_eulera", EULER_K, EA, 4),
    ("euler_k_to_heun", EULER_K, H, 3),
    ("euler_k_to_lms", EULER_K, L, 4),
    ("euler_k_to_dpm", EULER_K, D, 4),
    # (With DPM3's lower_order_final false, diffusers' UniPC returns NaN on its last step,
    # from sigma_min to sigma_min.)
    ("dpm3_to_unipc", {k: v for k, v in DPM3.items() if k != "lower_order_final"}, U, 5),
    ("dpm3_to_single", DPM3, DS, 4),
    ("dpm3_to_deis", DPM3, DE, 4),
    ("dpm3_to_euler", DPM3, E, 4),
    ("ddpm_old_to_euler", DDPM_OLD, E, 4),
    ("ddpm_old_to_ddim", DDPM_OLD, "DDIMScheduler", 4),
    ("ddpm_old_to_pndm", DDPM_OLD, "PNDMScheduler", 4),
    ("heun_to_euler", HEUN, E, 4),
    ("heun_to_kdpm2a", HEUN, "KDPM2AncestralDiscreteScheduler", 3),
    ("unipc_to_euler", UNIPC, E, 4),
    # UniPC's sigma_min / sigma_max stay as hidden keys, which the other classes' ramps read
    # (`hasattr(self.config, "sigma_min")`), but LMS's Karras ramp.
    ("unipc_to_dpm", UNIPC, D, 4),
    ("unipc_to_lms", UNIPC, L, 4),
    ("unipc_to_deis", UNIPC, DE, 4),
    ("unipc_to_heun", UNIPC, H, 3),
    ("eulera_to_heun", EULERA, H, 3),
    ("eulera_to_euler", EULERA, E, 4),
    ("lcm_to_euler", LCM, E, 4),
    ("kdpm2_to_dpm", KDPM2, D, 4),
    # Euler's interpolation_type log_linear (the class itself; N + 2 sigmas, the last never
    # reached: the first N + 1 are compared), with a ramp, and dropped by Euler ancestral.
    ("euler_loglin", EULER_LL, E, 4),
    ("euler_loglin_leading", {**EULER_LL, "timestep_spacing": "leading", "steps_offset": 1}, E, 5),
    ("euler_loglin_karras", {**EULER_LL, "use_karras_sigmas": True}, E, 4),
    ("euler_loglin_to_eulera", EULER_LL, EA, 4),
    # UniPC's shift_terminal (flow sigmas stretched to end at it), and dropped by DPM-Solver.
    ("unipc_flow_terminal", UNIPC_FT, U, 4),
    ("unipc_flow_terminal_sigmamin", {**UNIPC_FT, "final_sigmas_type": "sigma_min"}, U, 5),
    ("unipc_flow_terminal_to_dpm", UNIPC_FT, D, 4),
    # lambda_min_clipped (the cosine schedule's clipped tail), multistep and singlestep.
    ("dpm_lambda_clip", DPM_CLIP, D, 4),
    ("dpm_lambda_clip_to_single", DPM_CLIP, DS, 4),
]


def convert(folder, cls):
    folder_cls = getattr(diffusers, folder["_class_name"])
    src = folder_cls.from_config({k: v for k, v in folder.items()})
    return getattr(diffusers, cls).from_config(src.config)


unet = UNet2DModel.from_pretrained(MODEL)
ref = UNet2DModel.from_config(unet.config)
ref.load_state_dict({k: v.half().double() for k, v in unet.state_dict().items()})
ref = ref.double().eval()
g = torch.Generator().manual_seed(18)
meta, tensors = [], {}
refused = []
for name, folder, cls, steps in CASES:
    try:
        s = convert(folder, cls)
    except (NotImplementedError, ValueError) as e:  # the library must refuse these too
        refused.append(dict(name=name, folder_json=json.dumps(folder), scheduler=cls, error=repr(e)))
        continue
    # Before set_timesteps, which may rewrite options (singlestep's lower_order_final).
    converted_json = s.to_json_string()
    s.set_timesteps(steps)
    x_T = torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64).float()
    noise = torch.randn(2 * len(s.timesteps), 1, 3, 16, 16, generator=g, dtype=torch.float64).float()
    x = x_T.double() * s.init_noise_sigma
    traj = [x.clone()]
    INJ.rows, INJ.k = [row.double() for row in noise], 0
    for t in s.timesteps:
        inp = s.scale_model_input(x, t)
        with torch.no_grad():
            eps = ref(inp, t).sample
        x = s.step(eps, t, x).prev_sample
        traj.append(x.clone())
    drawn = INJ.k
    if cls == "DDPMScheduler":
        raise SystemExit("DDPM draws through torch.randn")
    tensors[f"{name}.x_T"] = x_T
    tensors[f"{name}.traj"] = torch.stack(traj).float()
    tensors[f"{name}.timesteps"] = s.timesteps.to(torch.float64)
    if hasattr(s, "sigmas"):
        tensors[f"{name}.sigmas"] = s.sigmas[:len(s.timesteps) + 1].to(torch.float64)
    if drawn:
        tensors[f"{name}.noise"] = noise[:drawn]
    meta.append(dict(name=name, folder_json=json.dumps(folder), scheduler=cls, num_inference_steps=steps,
                     converted_json=converted_json, noise=drawn > 0,
                     init_noise_sigma=float(s.init_noise_sigma)))

save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "cases.safetensors"))
with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump({"overrides": meta, "refused": refused}, f, indent=1)
print(f"wrote {OUT}: {len(meta)} cases, {len(refused)} refused")
