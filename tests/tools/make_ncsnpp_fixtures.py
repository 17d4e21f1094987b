"""A tiny NCSN++ (score-SDE VE) UNet2DModel and its float64 forward pass, from diffusers 0.42.

Run with PyTorch + diffusers 0.42 installed:  python tests/tools/make_ncsnpp_fixtures.py
Writes tests/fixtures/ncsnpp/tiny-ncsnpp8/: config.json, f16 weights (google/ncsnpp-*'s layout
and options, narrow: Fourier time embedding, SkipDownBlock2D/AttnSkipDownBlock2D/SkipUpBlock2D/
AttnSkipUpBlock2D, norm_num_groups null, mid_block_scale_factor sqrt(2), norm_eps 1e-6), and
forward.safetensors: `x` [3,3,8,8], `t` [3] (sigmas 0.01, 1, 50, float32), `out` = the model
in float64 (its weights are f16), and `act.<module>` (float32) = each block's output (down/up blocks: the
features; `act.conv_out` is conv_out plus the skip image, before the division by sigma).
"""
import json, math, os
import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "ncsnpp", "tiny-ncsnpp8")
torch.manual_seed(20261204)

CFG = dict(
    sample_size=8, in_channels=3, out_channels=3, block_out_channels=[8, 32, 32], layers_per_block=1,
    time_embedding_type="fourier", norm_eps=1e-6, mid_block_scale_factor=math.sqrt(2.0), norm_num_groups=None,
    attention_head_dim=8, flip_sin_to_cos=True, freq_shift=1,
    down_block_types=["SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"],
    # AttnSkipUpBlock2D's groups are min(a + b // 4, 32): it needs 32-channel inputs here.
    up_block_types=["AttnSkipUpBlock2D", "SkipUpBlock2D", "SkipUpBlock2D"],
)

model = UNet2DModel(**CFG)
with torch.no_grad():
    for name, p in model.named_parameters():
        if name == "time_proj.weight":
            continue  # GaussianFourierProjection's W: keep its N(0, 16^2) draw
        if p.dim() > 1:
            p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5))
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn_like(p))
        else:
            p.copy_(0.1 * torch.randn_like(p))
model = model.half()
model.save_pretrained(OUT, safe_serialization=True)

ref = UNet2DModel(**CFG)
ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
ref = ref.double().eval()

acts = {}
def hook(name):
    def f(_, __, out):
        acts[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()
    return f
ref.time_embedding.register_forward_hook(hook("time_embedding"))
ref.conv_in.register_forward_hook(hook("conv_in"))
for i, blk in enumerate(ref.down_blocks):
    blk.register_forward_hook(hook(f"down_blocks.{i}"))
ref.mid_block.register_forward_hook(hook("mid_block"))
for i, blk in enumerate(ref.up_blocks):
    blk.register_forward_hook(hook(f"up_blocks.{i}"))
ref.conv_norm_out.register_forward_hook(hook("conv_norm_out"))

x = torch.randn(3, 3, 8, 8)
t = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float32)
with torch.no_grad():
    out = ref(x.double(), t.double()).sample
acts["conv_out"] = out * t.double().reshape(-1, 1, 1, 1)
tensors = {"x": x.contiguous(), "t": t, "out": out.contiguous()}
tensors.update({f"act.{k}": v.float().contiguous() for k, v in acts.items()})
save_file(tensors, os.path.join(OUT, "forward.safetensors"))
print("wrote", OUT, sum(p.numel() for p in model.parameters()), "parameters")

# Which skip-block configs diffusers can build (GroupNorm groups must divide the channels; the
# skip blocks choose their own, AttnSkipUpBlock2D as min(a + b // 4, 32)): config_cases.json.
import logging, random, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
random.seed(1)
cases = []
for n in range(300):
    levels = random.randint(1, 4)
    case = dict(
        block_out_channels=[random.choice([4, 8, 12, 16, 24, 32, 48, 64, 96, 128]) for _ in range(levels)],
        down_block_types=[random.choice(["SkipDownBlock2D", "AttnSkipDownBlock2D"]) for _ in range(levels)],
        up_block_types=[random.choice(["SkipUpBlock2D", "AttnSkipUpBlock2D"]) for _ in range(levels)],
        layers_per_block=random.randint(1, 2),
    )
    try:
        UNet2DModel(sample_size=2 ** levels, time_embedding_type="fourier", norm_num_groups=None,
                    attention_head_dim=None, **case)
        case["builds"] = True
    except Exception:
        case["builds"] = False
    cases.append(case)
with open(os.path.join(OUT, "..", "config_cases.json"), "w") as f:
    json.dump(cases, f, separators=(",", ":"))
print("config cases:", sum(c["builds"] for c in cases), "of", len(cases), "build")
