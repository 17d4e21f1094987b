"""diffusers 0.42 references for the score-SDE VE, consistency-model, LCM and TCD schedulers.

    pip install 'diffusers==0.42.*' torch safetensors numpy
    python tests/tools/make_sched_b_fixtures.py

Writes tests/fixtures/sched_b/ (seeded; rerunning rewrites the same numbers):

- `schedules`: `set_timesteps` (and VE's `set_sigmas`) for several configs and step counts.
- `chains`: single steps (VE `step_correct` / `step_pred`, CM / LCM / TCD `step`) with fixed
  model outputs, one per step of a run, and the noise each step drew (`randn_tensor` replaced
  by a recorder, so row k is the k-th draw).
- `runs`: whole loops as the pipelines run them (ScoreSdeVePipeline, ConsistencyModelPipeline,
  a DDPMPipeline-style loop for LCM / TCD) on tiny-gray8 / tiny-rgb16 / tiny-class16 with f16-rounded weights
  in float64, x_T and every draw injected. The loops are written out here (the pipelines
  post-process their output); `traj` holds x_T * init_noise_sigma and the sample after each
  step; VE's last entry is `sample_mean` (the pipeline's output before its clamp).
"""
import json, os
import torch
from safetensors.torch import save_file
from diffusers import UNet2DModel
import diffusers
import diffusers.schedulers.scheduling_sde_ve as m_ve
import diffusers.schedulers.scheduling_consistency_models as m_cm
import diffusers.schedulers.scheduling_lcm as m_lcm
import diffusers.schedulers.scheduling_tcd as m_tcd

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "sched_b")
os.makedirs(OUT, exist_ok=True)

g = torch.Generator().manual_seed(23)
DRAWS = []


def recording_randn(shape, generator=None, device=None, dtype=None, layout=None, **kw):
    z = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    DRAWS.append(z.clone())
    return z.to(dtype or torch.float32)


for mod in (m_ve, m_cm, m_lcm, m_tcd):
    mod.randn_tensor = recording_randn

CONFIGS = [
    ("ve_default", "ScoreSdeVeScheduler", {}),
    ("ve_small", "ScoreSdeVeScheduler", dict(sigma_max=1.0, sigma_min=0.01, snr=0.16, correct_steps=1,
                                             num_train_timesteps=1000)),
    ("ve_two_correct", "ScoreSdeVeScheduler", dict(sigma_max=2.0, sigma_min=0.02, sampling_eps=1e-3, correct_steps=2)),
    ("cm_default", "CMStochasticIterativeScheduler", {}),
    ("cm_imagenet", "CMStochasticIterativeScheduler", dict(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0,
                                                           s_noise=1.0, clip_denoised=True)),
    ("cm_noclip_1000", "CMStochasticIterativeScheduler", dict(num_train_timesteps=1000, clip_denoised=False,
                                                             s_noise=0.8, rho=5.0, sigma_data=0.6)),
    ("lcm_default", "LCMScheduler", {}),
    ("lcm_v_clip_linear", "LCMScheduler", dict(prediction_type="v_prediction", clip_sample=True, beta_schedule="linear",
                                               beta_start=0.0001, beta_end=0.02, original_inference_steps=100)),
    ("lcm_sample_cos", "LCMScheduler", dict(prediction_type="sample", beta_schedule="squaredcos_cap_v2",
                                            original_inference_steps=30, timestep_scaling=5.0)),
    ("tcd_default", "TCDScheduler", {}),
    ("tcd_v_linear", "TCDScheduler", dict(prediction_type="v_prediction", beta_schedule="linear", beta_start=0.0001,
                                          beta_end=0.02, original_inference_steps=40)),
    ("tcd_sample", "TCDScheduler", dict(prediction_type="sample")),
]
CFG = {name: (cls, kw) for name, cls, kw in CONFIGS}


def make(name):
    cls, kw = CFG[name]
    return getattr(diffusers, cls)(**kw)


def set_steps(s, name, steps):
    s.set_timesteps(steps)
    if CFG[name][0] == "ScoreSdeVeScheduler":
        s.set_sigmas(steps)


meta = {"schedules": [], "chains": [], "runs": []}
tensors = {}

for name, cls, kw in CONFIGS:
    for steps in [1, 2, 3, 4, 7, 10, 25, 50, 500]:
        s = make(name)
        try:
            set_steps(s, name, steps)
        except ValueError:
            continue  # diffusers refuses it; so do we (checked in the test by the same rule)
        key = f"{name}.{steps}"
        tensors[f"{key}.timesteps"] = s.timesteps if cls == "ScoreSdeVeScheduler" else s.timesteps.to(torch.float64)
        if cls == "ScoreSdeVeScheduler":
            tensors[f"{key}.sigmas"] = s.sigmas  # float32, as diffusers holds them
            tensors[f"{key}.discrete_sigmas"] = s.discrete_sigmas
        elif cls == "CMStochasticIterativeScheduler":
            tensors[f"{key}.sigmas"] = s.sigmas.to(torch.float64)
        meta["schedules"].append(dict(name=key, config=name, scheduler_json=s.to_json_string(),
                                      num_inference_steps=steps, init_noise_sigma=float(s.init_noise_sigma)))

# Custom timesteps (ConsistencyModelPipeline's `timesteps`, e.g. [22, 0] for the ImageNet CD model).
for name, ts in [("cm_imagenet", [22, 0]), ("cm_imagenet", [39, 17, 5, 0]), ("cm_noclip_1000", [900, 450, 3])]:
    s = make(name)
    s.set_timesteps(timesteps=ts)
    key = f"{name}.custom{len(ts)}"
    tensors[f"{key}.timesteps"] = s.timesteps.to(torch.float64)
    tensors[f"{key}.sigmas"] = s.sigmas.to(torch.float64)
    meta["schedules"].append(dict(name=key, config=name, scheduler_json=s.to_json_string(), custom_timesteps=ts,
                                  num_inference_steps=len(ts), init_noise_sigma=float(s.init_noise_sigma)))

# Chains: a run's worth of single steps with random model outputs (f32 values, f64 arithmetic).
for name, cls, kw in CONFIGS:
    for steps, gamma in ([(4, None), (1, None)] if cls != "TCDScheduler" else [(4, 0.3), (3, 0.0), (5, 0.7)]):
        s = make(name)
        set_steps(s, name, steps)
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double() * float(s.init_noise_sigma)
        key = f"chain.{name}.{steps}" + ("" if gamma is None else f".g{gamma}")
        k = 0
        for i, t in enumerate(s.timesteps):
            if cls == "ScoreSdeVeScheduler":
                parts = [("correct", j) for j in range(s.config.correct_steps)] + [("pred", 0)]
                for part, j in parts:
                    mo = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double()
                    DRAWS.clear()
                    if part == "correct":
                        prev = s.step_correct(mo, x).prev_sample
                        out = prev
                    else:
                        o = s.step_pred(mo, t, x)
                        prev = o.prev_sample
                        out = o.prev_sample_mean if i == len(s.timesteps) - 1 else prev
                    sk = f"{key}.{k}"
                    tensors[f"{sk}.sample"] = x.float()
                    tensors[f"{sk}.model_output"] = mo.float()
                    tensors[f"{sk}.noise"] = DRAWS[0]
                    tensors[f"{sk}.out"] = out.float()
                    x = prev.float().double()
                    k += 1
                continue
            mo = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).float().double()
            DRAWS.clear()
            sk = f"{key}.{i}"
            if cls == "CMStochasticIterativeScheduler":
                tensors[f"{sk}.scaled"] = s.scale_model_input(x, t).float()
                prev = s.step(mo, t, x).prev_sample
            elif cls == "TCDScheduler":
                prev = s.step(mo, t, x, eta=gamma).prev_sample
            else:
                prev = s.step(mo, t, x).prev_sample
            tensors[f"{sk}.sample"] = x.float()
            tensors[f"{sk}.model_output"] = mo.float()
            if DRAWS:
                tensors[f"{sk}.noise"] = DRAWS[0]
            tensors[f"{sk}.out"] = prev.float()
            x = prev.float().double()
        meta["chains"].append(dict(name=key, config=name, scheduler_json=s.to_json_string(), num_inference_steps=steps,
                                   gamma=gamma, evaluations=k if cls == "ScoreSdeVeScheduler" else len(s.timesteps)))


def reference_unet(folder):
    unet = UNet2DModel.from_pretrained(os.path.join(HERE, "..", "fixtures", folder))
    ref = UNet2DModel.from_config(unet.config)
    ref.load_state_dict({k: v.half().double() for k, v in unet.state_dict().items()})
    return ref.double().eval()


MODELS = {m: reference_unet(m) for m in ["tiny-rgb16", "tiny-class16", "tiny-gray8"]}
# (config, model, steps, labels, gamma)
RUNS = [
    ("ve_small", "tiny-gray8", 5, None, None),
    ("ve_two_correct", "tiny-gray8", 4, None, None),
    ("ve_default", "tiny-gray8", 3, None, None),
    ("cm_imagenet", "tiny-class16", 1, [3, 7], None),
    ("cm_imagenet", "tiny-class16", 3, [3, 7], None),
    ("cm_noclip_1000", "tiny-gray8", 2, None, None),
    ("lcm_default", "tiny-gray8", 4, None, None),
    ("lcm_v_clip_linear", "tiny-rgb16", 3, None, None),
    ("lcm_default", "tiny-gray8", 1, None, None),
    ("tcd_default", "tiny-gray8", 4, None, 0.3),
    ("tcd_v_linear", "tiny-gray8", 3, None, 0.0),
    ("cm_imagenet", "tiny-class16", [22, 0], [1, 9], None),
]

for name, model, steps, labels, gamma in RUNS:
    cls = CFG[name][0]
    ref = MODELS[model]
    s = make(name)
    custom = steps if isinstance(steps, list) else None
    if custom:
        s.set_timesteps(timesteps=custom)
        steps = len(custom)
    else:
        set_steps(s, name, steps)
    cfg = ref.config
    x_T = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g, dtype=torch.float64).float()
    x = x_T.double() * s.init_noise_sigma
    y = None if labels is None else torch.tensor(labels)
    traj = [x.clone()]
    DRAWS.clear()
    with torch.no_grad():
        if cls == "ScoreSdeVeScheduler":
            for i, t in enumerate(s.timesteps):
                sigma_t = s.sigmas[i] * torch.ones(2)
                for _ in range(s.config.correct_steps):
                    x = s.step_correct(ref(x, sigma_t).sample, x).prev_sample
                o = s.step_pred(ref(x, sigma_t).sample, t, x)
                x, x_mean = o.prev_sample, o.prev_sample_mean
                traj.append((x_mean if i == len(s.timesteps) - 1 else x).clone())
        else:
            for t in s.timesteps:
                inp = s.scale_model_input(x, t)
                out = ref(inp, t, class_labels=y).sample
                if cls == "TCDScheduler":
                    x = s.step(out, t, x, eta=gamma).prev_sample
                else:
                    x = s.step(out, t, x).prev_sample
                traj.append(x.clone())
    key = f"run.{name}.{steps}" + (".custom" if custom else "")
    tensors[f"{key}.x_T"] = x_T
    tensors[f"{key}.traj"] = torch.stack(traj).float()
    if DRAWS:
        tensors[f"{key}.noise"] = torch.stack(DRAWS)
    meta["runs"].append(dict(name=key, config=name, model=model, scheduler_json=s.to_json_string(),
                             num_inference_steps=steps, class_labels=labels, gamma=gamma, noise_rows=len(DRAWS),
                             custom_timesteps=custom))

os.chmod(OUT, 0o755)
save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "cases.safetensors"))
os.chmod(os.path.join(OUT, "cases.safetensors"), 0o644)
with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(meta, f, indent=1)
print(f"wrote {OUT}: {len(meta['schedules'])} schedules, {len(meta['chains'])} chains, {len(meta['runs'])} runs")
