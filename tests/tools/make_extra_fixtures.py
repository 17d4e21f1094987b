"""Extra diffusers reference cases for options the shared fixtures do not exercise.

Run with PyTorch + diffusers 0.42 installed:  python tests/tools/make_extra_fixtures.py
Writes tests/fixtures/extra/: per model `<name>/` (config.json, f32 weights, forward.safetensors
with x, t, labels and `out` = the f16-rounded model in float64) and `scheduler_cases.json` +
`scheduler_cases.safetensors` (single steps, float64).
"""
import json, os
import torch
from diffusers import UNet2DModel, DDPMScheduler, DDIMScheduler
from safetensors.torch import save_file
from unet_weights import randomize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "extra")
torch.manual_seed(20261123)

MODELS = {
    # center_input_sample, mid_block_scale_factor != 1, non-square, time_embedding_dim,
    # attn_norm_num_groups, 3 levels with attention at the bottom
    "options-a": dict(sample_size=[8, 16], in_channels=2, out_channels=2, block_out_channels=[16, 24, 32],
                      layers_per_block=1, down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
                      up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], center_input_sample=True,
                      mid_block_scale_factor=1.4142, time_embedding_dim=40, attn_norm_num_groups=4,
                      norm_num_groups=8, attention_head_dim=8, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1),
    # mid block without attention, 4 levels, attention everywhere
    "options-b": dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=[8, 16, 16, 24],
                      layers_per_block=1, down_block_types=["AttnDownBlock2D"] * 4, up_block_types=["AttnUpBlock2D"] * 4,
                      add_attention=False, norm_num_groups=4, attention_head_dim=None, norm_eps=1e-6),
    # no mid block at all
    "options-c": dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=2,
                      down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                      mid_block_type=None, norm_num_groups=4, attention_head_dim=4),
}


for name, cfg in MODELS.items():
    d = os.path.join(OUT, name)
    model = UNet2DModel(**cfg)
    randomize(model)
    model.save_pretrained(d, safe_serialization=True)
    ref = UNet2DModel(**cfg)
    ref.load_state_dict({k: v.half().double() for k, v in model.state_dict().items()})
    ref = ref.double().eval()
    h, w = (cfg["sample_size"] if isinstance(cfg["sample_size"], list) else [cfg["sample_size"]] * 2)
    x = torch.randn(2, cfg["in_channels"], h, w, dtype=torch.float64)
    t = torch.tensor([17, 803])
    with torch.no_grad():
        out = ref(x, t).sample
    save_file({"x": x.float().contiguous(), "t": t, "out": out.contiguous()}, os.path.join(d, "forward.safetensors"))

# Scheduler options beyond the shared cases.
cases, tensors = [], {}
g = torch.Generator().manual_seed(7)
SCHEDS = [
    ("DDPMScheduler", dict(beta_schedule="sigmoid", variance_type="fixed_small", timestep_spacing="linspace")),
    ("DDPMScheduler", dict(beta_schedule="linear", rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")),
    ("DDPMScheduler", dict(trained_betas=torch.linspace(1e-4, 0.03, 1000).tolist(), variance_type="fixed_large", clip_sample=False)),
    ("DDPMScheduler", dict(beta_schedule="scaled_linear", clip_sample=True, clip_sample_range=0.5, steps_offset=1)),
    ("DDIMScheduler", dict(beta_schedule="linear", prediction_type="sample", timestep_spacing="linspace")),
    ("DDIMScheduler", dict(beta_schedule="squaredcos_cap_v2", thresholding=True, sample_max_value=1.5, clip_sample=False)),
    ("DDIMScheduler", dict(beta_schedule="scaled_linear", rescale_betas_zero_snr=True, prediction_type="v_prediction",
                           timestep_spacing="trailing", set_alpha_to_one=False)),
]
for si, (cls, kw) in enumerate(SCHEDS):
    S = DDPMScheduler if cls == "DDPMScheduler" else DDIMScheduler
    for steps, eta, clipped in [(13, 0.0, False), (40, 0.7, True)]:
        s = S(**kw)
        s.set_timesteps(steps)
        ts = s.timesteps.tolist()
        for t in [ts[0], ts[len(ts) // 2], ts[-1]]:
            name = f"s{si}_{steps}_{t}"
            sample = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
            mo = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
            z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
            if cls == "DDPMScheduler":
                import diffusers.schedulers.scheduling_ddpm as m
                orig = m.randn_tensor
                m.randn_tensor = lambda *a, **k: z
                r = s.step(mo, t, sample)
                m.randn_tensor = orig
            else:
                r = s.step(mo, t, sample, eta=eta, use_clipped_model_output=clipped, variance_noise=z)
            tensors.update({f"{name}.sample": sample, f"{name}.model_output": mo, f"{name}.noise": z,
                            f"{name}.prev_sample": r.prev_sample, f"{name}.pred_original_sample": r.pred_original_sample})
            cases.append({"name": name, "scheduler": dict(s.config, _class_name=cls), "num_inference_steps": steps, "timestep": t,
                          "eta": eta, "use_clipped_model_output": clipped, "timesteps": ts})
save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "scheduler_cases.safetensors"))
with open(os.path.join(OUT, "scheduler_cases.json"), "w") as f:
    json.dump({"cases": cases}, f, indent=1, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
print("wrote", OUT, len(cases), "scheduler cases")
