"""UNet2DModel variants of the improved-DDPM family (and other UNet2DModel options), as
reference fixtures in the format of the shared tiny-* models (see tests/fixtures/FORMAT.md):
config.json + f32 weights, cases.json + cases.safetensors with a `forward` case (f16-rounded
weights run in float64, with per-block activations) and `sample` cases (whole DDPM/DDIM runs
with injected noise, float64).

Run with PyTorch + diffusers 0.42:  python tests/tools/make_unet_a_fixtures.py
Writes tests/fixtures/unet-a/<model>/.
"""
import json, os, sys
import torch
import diffusers
import diffusers.schedulers.scheduling_ddpm as ddpm_module
from diffusers import UNet2DModel, DDPMScheduler, DDIMScheduler
from safetensors.torch import save_file
from unet_weights import randomize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "unet-a")
torch.manual_seed(20261204)
os.makedirs(OUT, exist_ok=True)

MODELS = {
    # improved DDPM: AdaGN (scale_shift), resnet down/upsamplers (ResnetDownsampleBlock2D and
    # AttnDown/UpBlock2D with downsample_type/upsample_type "resnet"), multi-head attention,
    # mid attention without GroupNorm (scale_shift default), learned variance (out = 2 x in).
    "iddpm8": dict(sample_size=8, in_channels=3, out_channels=6, block_out_channels=[8, 16, 16],
                   layers_per_block=1,
                   down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
                   up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
                   downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift",
                   attention_head_dim=4, norm_num_groups=4),
    # learned time embedding (nn.Embedding over the integer timestep), act_fn mish through
    # AdaGN, one-head attention (attention_head_dim None), resnet samplers.
    "learned8": dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 16],
                     layers_per_block=1, down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D"],
                     up_block_types=["AttnUpBlock2D", "ResnetUpsampleBlock2D"], time_embedding_type="learned",
                     num_train_timesteps=1000, act_fn="mish", resnet_time_scale_shift="scale_shift",
                     attention_head_dim=None, norm_num_groups=4),
    # act_fn gelu, no mid block, centered input, downsample_padding 0, norm_eps,
    # time_embedding_dim.
    "gelu8": dict(sample_size=8, in_channels=2, out_channels=2, block_out_channels=[8, 16], layers_per_block=1,
                  down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                  act_fn="gelu", mid_block_type=None, center_input_sample=True, downsample_padding=0,
                  norm_eps=1e-6, time_embedding_dim=24, attention_head_dim=8, norm_num_groups=4),
    # act_fn relu with the mid attention's own groups (attn_norm_num_groups) under AdaGN.
    "relu8": dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 8], layers_per_block=1,
                  down_block_types=["AttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "AttnUpBlock2D"],
                  act_fn="relu", resnet_time_scale_shift="scale_shift", attn_norm_num_groups=2,
                  mid_block_scale_factor=1.4142, attention_head_dim=4, norm_num_groups=4),
    # class_embed_type "timestep": the label through the sinusoid and its own TimestepEmbedding
    # (num_class_embeds, ignored by diffusers, bounds the labels here).
    "classts8": dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 16], layers_per_block=1,
                     down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                     class_embed_type="timestep", num_class_embeds=10, attention_head_dim=8, norm_num_groups=4),
}
LABELS = {"classts8": [3, 7]}

# Models with a trainer gradient case (the others' layers are covered by these and by the
# finite-difference checks).
GRADIENT_CASES = {"iddpm8", "learned8"}

SAMPLES = {
    "iddpm8": [
        ("ddpm20_learned_range", DDPMScheduler, dict(beta_schedule="squaredcos_cap_v2", variance_type="learned_range"), 20, None),
    ],
    "learned8": [("ddpm20", DDPMScheduler, dict(), 20, None), ("ddim10_eta0", DDIMScheduler, dict(), 10, 0.0)],
    "gelu8": [("ddpm20", DDPMScheduler, dict(), 20, None)],
    "relu8": [("ddim10_eta0", DDIMScheduler, dict(), 10, 0.0)],
    "classts8": [("ddpm20", DDPMScheduler, dict(), 20, None)],
}


def block_outputs(model):
    acts = {}

    def hook(name):
        def f(_m, _i, o):
            o = o[0] if isinstance(o, tuple) else o
            acts[name] = o.detach().clone()
        return f

    names = ["time_embedding", "conv_in", "mid_block", "conv_norm_out", "conv_out"]
    names += [f"down_blocks.{i}" for i in range(len(model.down_blocks))]
    names += [f"up_blocks.{i}" for i in range(len(model.up_blocks))]
    mods = dict(model.named_modules())
    for n in names:
        if n in mods and mods[n] is not None:
            mods[n].register_forward_hook(hook(n))
    return acts


for name, cfg in MODELS.items():
    d = os.path.join(OUT, name)
    model = UNet2DModel(**cfg)
    randomize(model)
    # Stored as f16 (what the f16w reference runs anyway): half the bytes.
    model.half().save_pretrained(d, safe_serialization=True)
    model.float()
    ref = UNet2DModel(**cfg)
    ref.load_state_dict({k: v.half().double() for k, v in model.state_dict().items()})
    ref = ref.double().eval()
    full = model.double().eval()  # its weights are f16 values already (saved as f16 above)
    for m in (ref, full):
        # diffusers casts the time sinusoid to the model's dtype but not the class label's
        # ("timestep" class embedding): do it for the float64 run.
        m.time_proj.forward = (lambda f: lambda ts: f(ts).double())(m.time_proj.forward)
    acts = block_outputs(ref)
    c, s = cfg["in_channels"], cfg["sample_size"]
    tensors, cases = {}, []
    x = torch.randn(2, c, s, s)
    t = torch.tensor([17, 803])
    kw = {}
    labels = torch.tensor(LABELS[name]) if name in LABELS else None
    with torch.no_grad():
        out = ref(x.double(), t, class_labels=labels).sample
        out_f64 = full(x.double(), t, class_labels=labels).sample
    tensors.update({"forward.x": x, "forward.t": t, "forward.out_f16w": out, "forward.out_f64": out_f64})
    fwd_inputs = {"x": "forward.x", "t": "forward.t"}
    if labels is not None:
        tensors["forward.class_labels"] = labels
        fwd_inputs["class_labels"] = "forward.class_labels"
    for k, v in acts.items():
        tensors[f"forward.act.{k}"] = v
    cases.append({"name": "forward", "kind": "forward", "inputs": fwd_inputs,
                  "expected": {"out": "forward.out_f16w", "out_f64": "forward.out_f64",
                               "activations": {k: f"forward.act.{k}" for k in acts}}})
    for case, S, skw, steps, eta in SAMPLES[name]:
        sched = S(**skw)
        sched.set_timesteps(steps)
        x_t = torch.randn(2, c, s, s).double()
        noise = torch.randn(steps, 2, c, s, s).double()
        traj = [x_t]
        sample = x_t
        for i, ts in enumerate(sched.timesteps):
            with torch.no_grad():
                mo = ref(sample, ts, class_labels=labels).sample
            if S is DDPMScheduler:
                orig = ddpm_module.randn_tensor
                ddpm_module.randn_tensor = lambda *a, **k: noise[i]
                sample = sched.step(mo, ts, sample).prev_sample
                ddpm_module.randn_tensor = orig
            else:
                sample = sched.step(mo, ts, sample, eta=eta).prev_sample
            traj.append(sample)
        inputs = {"x_T": f"{case}.x_T"}
        if labels is not None:
            inputs["class_labels"] = f"{case}.class_labels"
            tensors[f"{case}.class_labels"] = labels.clone()
        tensors[f"{case}.x_T"] = x_t.float()
        if S is DDPMScheduler:
            inputs["noise"] = f"{case}.noise"
            tensors[f"{case}.noise"] = noise.float()
        tensors[f"{case}.timesteps"] = sched.timesteps.clone()
        tensors[f"{case}.traj"] = torch.stack(traj)
        cases.append({"name": case, "kind": "sample",
                      "scheduler": {k: (sorted(v) if k == "_use_default_values" else v)
                                    for k, v in dict(sched.config, _class_name=S.__name__).items()},
                      "num_inference_steps": steps, "eta": eta, "guidance_w": None, "null_class": None,
                      "inputs": inputs,
                      "expected": {"timesteps": f"{case}.timesteps", "traj": f"{case}.traj"}})
    # The trainer's gradient case: L_simple on the eps channels (the first in_channels).
    if name not in GRADIENT_CASES:
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "cases.safetensors"))
        with open(os.path.join(d, "cases.json"), "w") as f:
            json.dump({"model": name, "diffusers": diffusers.__version__, "cases": cases}, f, indent=1,
                      default=lambda o: list(o) if isinstance(o, tuple) else str(o))
        print("wrote", d)
        continue
    abar = DDPMScheduler().alphas_cumprod.double()
    x0 = torch.randn(2, c, s, s)
    eps = torch.randn(2, c, s, s)
    tg = torch.tensor([40, 700])
    a = abar[tg].view(-1, 1, 1, 1)
    x_t = (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()
    full.zero_grad()
    pred = full(x_t.double(), tg).sample[:, :c]
    loss = ((pred - eps.double()) ** 2).mean()
    loss.backward()
    tensors.update({"grad.x0": x0, "grad.eps": eps, "grad.t": tg, "grad.x_t": x_t, "grad.loss": loss.detach().view(1)})
    for pn, p in full.named_parameters():
        # float32 (the bar is 1e-3): keeps the fixture small.
        tensors[f"grad.param.{pn}"] = p.grad.detach().float()
    cases.append({"name": "grad", "kind": "gradient",
                  "loss": "mean over the first in_channels output channels of (eps_theta(x_t, t) - eps)^2, "
                          "x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, linear betas 1e-4..0.02, T=1000",
                  "inputs": {"x0": "grad.x0", "eps": "grad.eps", "t": "grad.t", "x_t": "grad.x_t"},
                  "expected": {"loss": "grad.loss", "param_grad_prefix": "grad.param."}})
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "cases.safetensors"))
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump({"model": name, "diffusers": diffusers.__version__, "cases": cases}, f, indent=1,
                  default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    print("wrote", d)
