"""Whole-family pipeline runs from diffusers 0.42, as pipeline folders the `sample` CLI replays.

Run with PyTorch + diffusers 0.42:  python tests/tools/make_unet_c_fixtures.py
Writes tests/fixtures/unet-c/ (seeded; rerunning rewrites the same numbers):

- `ve/`: a `ScoreSdeVePipeline` folder: a tiny NCSN++ UNet2DModel (fourier time embedding,
  Skip/AttnSkip blocks with FIR) and a `ScoreSdeVeScheduler`.
- `cm/`: a `ConsistencyModelPipeline` folder: a tiny UNet shaped like OpenAI's consistency
  models (scale_shift, ResnetDownsampleBlock2D / ResnetUpsampleBlock2D, resnet samplers,
  multi-head attention, num_class_embeds) and a `CMStochasticIterativeScheduler`.
- `iddpm/`: a `DDPMPipeline` folder: an improved-DDPM UNet (scale_shift, learned variance,
  out_channels = 2 * in_channels) and a `DDPMScheduler` with variance_type learned_range.
- `identity8/`: a UNet2DModel with `class_embed_type: "identity"` and its float64 forward pass
  (`forward.safetensors`: x, t, class_embeddings, out).
- `nomid8/`, `ve/unet/cases.*`: trainer gradient cases (see the end of this script).
- `runs.json` + `runs.safetensors`: each run is the pipeline itself (`pipe(...)`), its UNet's
  f16 weights in float64, every Gaussian it draws recorded in draw order (`randn_tensor`
  replaced by a recorder: row 0 is x_T, the standard normal draw before init_noise_sigma; the
  rest are the step noise, `<run>.noise` [S,B,C,H,W]). `<run>.x_0` is the pipeline's sample
  before its post-processing (VE: the last `prev_sample_mean`; CM, DDPM: the last sample) and
  `<run>.image` the pipeline's own output (VE: `x_0.clamp(0, 1)`; CM, DDPM: `(x_0 / 2 + 0.5)`
  clamped), NCHW.
"""
import json, math, os
import torch

import unet_weights
import diffusers.utils.torch_utils  # noqa: F401
import diffusers.pipelines.deprecated.score_sde_ve.pipeline_score_sde_ve as p_ve
import diffusers.pipelines.consistency_models.pipeline_consistency_models as p_cm
import diffusers.pipelines.ddpm.pipeline_ddpm as p_ddpm
import diffusers.schedulers.scheduling_sde_ve as s_ve
import diffusers.schedulers.scheduling_consistency_models as s_cm
import diffusers.schedulers.scheduling_ddpm as s_ddpm
from diffusers import (UNet2DModel, ScoreSdeVePipeline, ScoreSdeVeScheduler, ConsistencyModelPipeline,
                       CMStochasticIterativeScheduler, DDPMPipeline, DDPMScheduler)
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "unet-c")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(20261204)

g = torch.Generator().manual_seed(17)
DRAWS = []


def recording_randn(shape, generator=None, device=None, dtype=None, layout=None, **kw):
    z = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    DRAWS.append(z.clone())
    return z.to(dtype or torch.float64)


for mod in (p_ve, p_cm, p_ddpm, s_ve, s_cm, s_ddpm):
    mod.randn_tensor = recording_randn

MODELS = {
    # NCSN++ (google/ncsnpp-*'s options, narrow): fourier embedding, FIR skip blocks.
    # (AttnSkip blocks need 32 channels: their forward is checked by tests/ncsnpp_parity.rs.)
    "ve": dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1,
               time_embedding_type="fourier", norm_eps=1e-6, mid_block_scale_factor=math.sqrt(2.0),
               norm_num_groups=None, attention_head_dim=8, flip_sin_to_cos=True, freq_shift=1,
               down_block_types=["SkipDownBlock2D", "SkipDownBlock2D"],
               up_block_types=["SkipUpBlock2D", "SkipUpBlock2D"]),
    # openai/diffusers-cd_* (narrow): AdaGN, resnet samplers, heads of 4, 10 classes.
    "cm": dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 16], layers_per_block=1,
               down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D"],
               up_block_types=["AttnUpBlock2D", "ResnetUpsampleBlock2D"], downsample_type="resnet",
               upsample_type="resnet", resnet_time_scale_shift="scale_shift", attention_head_dim=4,
               num_class_embeds=10, norm_num_groups=4),
    # improved DDPM: AdaGN, resnet samplers, learned variance.
    "iddpm": dict(sample_size=8, in_channels=3, out_channels=6, block_out_channels=[8, 16], layers_per_block=1,
                  down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D"],
                  up_block_types=["AttnUpBlock2D", "ResnetUpsampleBlock2D"], downsample_type="resnet",
                  upsample_type="resnet", resnet_time_scale_shift="scale_shift", attention_head_dim=4,
                  norm_num_groups=4),
}
SCHEDULERS = {
    "ve": (ScoreSdeVeScheduler, dict(num_train_timesteps=2000, sigma_max=50.0, sigma_min=0.01, snr=0.16,
                                     correct_steps=1)),
    "cm": (CMStochasticIterativeScheduler, dict(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0,
                                                clip_denoised=True)),
    "iddpm": (DDPMScheduler, dict(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")),
}
PIPELINES = {"ve": ScoreSdeVePipeline, "cm": ConsistencyModelPipeline, "iddpm": DDPMPipeline}
# (run, folder, steps, class labels)
RUNS = [("ve3", "ve", 3, None), ("cm1", "cm", 1, [3, 7]), ("cm2", "cm", 2, [1, 9]), ("iddpm10", "iddpm", 10, None)]
BATCH = 2


def randomize(model):
    # GaussianFourierProjection's W keeps its N(0, 16^2) draw.
    unet_weights.randomize(model, keep=("time_proj.weight",))


def reference(model):
    """The f16 weights in float64; timesteps (float32 sigmas / times) widened to float64."""
    ref = UNet2DModel.from_config(model.config)
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    ref = ref.double().eval()
    forward = ref.forward

    def widened(sample, timestep, *a, **kw):
        if torch.is_tensor(timestep):
            timestep = timestep.double()
        return forward(sample, timestep, *a, **kw)

    ref.forward = widened
    return ref


refs, scheds = {}, {}
for name, cfg in MODELS.items():
    model = UNet2DModel(**cfg)
    randomize(model)
    model = model.half()
    cls, kw = SCHEDULERS[name]
    sched = cls(**kw)
    PIPELINES[name](unet=model, scheduler=sched).save_pretrained(os.path.join(OUT, name))
    refs[name] = reference(model)
    scheds[name] = (cls, kw)
    print(name, sum(p.numel() for p in model.parameters()), "parameters")

meta, tensors = {"runs": []}, {}
for run, folder, steps, labels in RUNS:
    cls, kw = scheds[folder]
    pipe = PIPELINES[folder](unet=refs[folder], scheduler=cls(**kw))
    pipe.set_progress_bar_config(disable=True)
    DRAWS.clear()
    last = {}
    if folder == "ve":
        step_pred = pipe.scheduler.step_pred

        def recording_step_pred(*a, **k):
            o = step_pred(*a, **k)
            last["x_0"] = o.prev_sample_mean.clone()
            return o

        pipe.scheduler.step_pred = recording_step_pred
        with torch.no_grad():
            image = torch.from_numpy(pipe(batch_size=BATCH, num_inference_steps=steps, output_type="np").images)
        image = image.permute(0, 3, 1, 2)
    else:
        step = pipe.scheduler.step

        def recording_step(*a, **k):
            o = step(*a, **k)
            last["x_0"] = o[0].clone()
            return o

        pipe.scheduler.step = recording_step
        args = dict(batch_size=BATCH, num_inference_steps=steps, output_type="np" if folder == "iddpm" else "pt")
        if labels is not None:
            args["class_labels"] = labels
        with torch.no_grad():
            image = pipe(**args).images
        if folder == "iddpm":  # DDPMPipeline returns NHWC numpy
            image = torch.from_numpy(image).permute(0, 3, 1, 2)
    x_0 = last["x_0"]
    post = x_0.clamp(0, 1) if folder == "ve" else (x_0 / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(post.float(), torch.as_tensor(image).float(), atol=1e-6), run
    tensors[f"{run}.x_T"] = DRAWS[0].contiguous()
    if len(DRAWS) > 1:
        tensors[f"{run}.noise"] = torch.stack(DRAWS[1:]).contiguous()
    tensors[f"{run}.x_0"] = x_0.float().contiguous()
    tensors[f"{run}.image"] = torch.as_tensor(image).float().contiguous()
    meta["runs"].append(dict(name=run, folder=folder, steps=steps, class_labels=labels,
                             noise_rows=len(DRAWS) - 1))
    print(run, "noise rows", len(DRAWS) - 1, "x_0 norm", float(x_0.norm()))

save_file(tensors, os.path.join(OUT, "runs.safetensors"))
with open(os.path.join(OUT, "runs.json"), "w") as f:
    json.dump(meta, f, indent=1)
# class_embed_type "identity": diffusers' float class_labels [batch, time_embed_dim] added to the
# time embedding (num_class_embeds is ignored). identity8/forward.safetensors: `x` [3,2,8,8], `t`
# [3], `class_embeddings` [3,32], `out` = the f16 weights in float64.
ID_CFG = dict(sample_size=8, in_channels=2, out_channels=2, block_out_channels=[8, 16], layers_per_block=1,
              down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
              class_embed_type="identity", num_class_embeds=5, attention_head_dim=4, norm_num_groups=4,
              resnet_time_scale_shift="scale_shift")
model = UNet2DModel(**ID_CFG)
randomize(model)
model = model.half()
model.save_pretrained(os.path.join(OUT, "identity8"))
ref = UNet2DModel.from_config(model.config)
ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
ref = ref.double().eval()
x = torch.randn(3, 2, 8, 8)
t = torch.tensor([3.0, 500.0, 999.0])
emb = torch.randn(3, 32)
with torch.no_grad():
    out = ref(x.double(), t.double(), class_labels=emb.double()).sample
save_file({"x": x, "t": t, "class_embeddings": emb, "out": out.contiguous()},
          os.path.join(OUT, "identity8", "forward.safetensors"))
print("identity8", sum(p.numel() for p in model.parameters()), "parameters")


# Trainer gradient cases (f16 weights, float64 autograd, float32 gradients; the format of
# FORMAT.md's `gradient` case): `nomid8` (mid_block_type null: the first up resnet reads the
# bottom map concatenated with itself) with DDPM's L_simple, and `ve/unet` (the NCSN++ of the
# ScoreSdeVePipeline folder) with the score-SDE VE denoising score-matching loss
#   loss = mean over every element of (sigma * model(x0 + sigma z, sigma) + z)^2.
import diffusers
from diffusers import DDPMScheduler


def gradient_fixture(name, cfg, kind):
    """`cfg`: a new model saved (f16 weights) in OUT/name; or the folder of a saved one."""
    d = os.path.join(OUT, name)
    if isinstance(cfg, dict):
        model = UNet2DModel(**cfg)
        randomize(model)
        model = model.half()
        model.save_pretrained(d)
    else:
        model = UNet2DModel.from_pretrained(d)
    cfg = model.config
    full = UNet2DModel.from_config(model.config)
    full.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    full = full.double()
    c, sz = cfg.in_channels, cfg.sample_size
    x0 = torch.randn(2, c, sz, sz)
    eps = torch.randn(2, c, sz, sz)
    tensors = {"grad.x0": x0, "grad.eps": eps}
    if kind == "ddpm":
        abar = DDPMScheduler().alphas_cumprod.double()
        tg = torch.tensor([40, 700])
        a = abar[tg].view(-1, 1, 1, 1)
        x_t = (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()
        loss = ((full(x_t.double(), tg).sample[:, :c] - eps.double()) ** 2).mean()
        tensors["grad.t"] = tg
        desc = "ddpm L_simple (see FORMAT.md)"
    else:
        sigma = torch.tensor([0.05, 7.0], dtype=torch.float32)
        s = sigma.double().view(-1, 1, 1, 1)
        x_t = (x0.double() + s * eps.double()).float()
        loss = ((s * full(x_t.double(), sigma.double()).sample + eps.double()) ** 2).mean()
        tensors["grad.sigma"] = sigma
        desc = "mean over every element of (sigma * model(x0 + sigma eps, sigma) + eps)^2"
    loss.backward()
    tensors.update({"grad.x_t": x_t, "grad.loss": loss.detach().view(1)})
    for pn, p in full.named_parameters():
        if p.grad is not None:
            tensors[f"grad.param.{pn}"] = p.grad.detach().float()
    inputs = {"x0": "grad.x0", "eps": "grad.eps", "x_t": "grad.x_t"}
    inputs.update({"t": "grad.t"} if kind == "ddpm" else {"sigma": "grad.sigma"})
    case = {"name": "grad", "kind": "gradient", "loss": desc, "inputs": inputs,
            "expected": {"loss": "grad.loss", "param_grad_prefix": "grad.param."}}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "cases.safetensors"))
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump({"model": name, "diffusers": diffusers.__version__, "cases": [case]}, f, indent=1)
    print(name, sum(p.numel() for p in model.parameters()), "parameters, loss", float(loss))


gradient_fixture("nomid8", dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 8],
                                layers_per_block=1, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                                up_block_types=["AttnUpBlock2D", "UpBlock2D"], mid_block_type=None,
                                resnet_time_scale_shift="scale_shift", attention_head_dim=4, norm_num_groups=4),
                 "ddpm")
gradient_fixture("ve/unet", "ve/unet", "ve")  # the ScoreSdeVePipeline's NCSN++ UNet

for root, _, files in os.walk(OUT):
    for f in files:
        os.chmod(os.path.join(root, f), 0o644)
