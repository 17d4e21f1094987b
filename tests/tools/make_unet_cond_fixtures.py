"""UNet2DConditionModel (diffusers 0.42) fixtures: tiny SD 1.x- and SD 2.x-shaped configs with
seeded random weights rounded to f16, and a float64 reference forward pass (output and the
per-block activations) over random latents, timesteps and text states.

Run with PyTorch + diffusers 0.42:  python tests/tools/make_unet_cond_fixtures.py
Writes tests/fixtures/unet-cond/<model>/{config.json, diffusion_pytorch_model.safetensors,
cases.safetensors}: cases hold `x` [B, C, H, W], `t` [B], `context` [B, tokens, cross_dim]
(f32), `out` and `act.<block>` (NCHW, float64).
"""
import json, os
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from unet_weights import randomize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "unet-cond")
TOKENS = 7

MODELS = {
    # SD 1.x shape: 1x1-conv proj_in/out, one head count for every block (attention_head_dim is
    # the number of heads in this model), UNetMidBlock2DCrossAttn.
    "sd1": dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[16, 32],
                layers_per_block=1, norm_num_groups=8, cross_attention_dim=16, attention_head_dim=2,
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]),
    # SD 2.x shape: linear proj_in/out, heads per block, two transformer layers in block 1 (and
    # the mid block), upcast_attention, text width unlike the channels, cross-attention in both
    # levels.
    "sd2": dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[16, 24],
                layers_per_block=1, norm_num_groups=8, cross_attention_dim=24,
                attention_head_dim=[2, 4], use_linear_projection=True, upcast_attention=True,
                transformer_layers_per_block=[1, 2],
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
}


def main():
    torch.manual_seed(20261204)
    for name, cfg in MODELS.items():
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model = UNet2DConditionModel(**cfg).eval()
        randomize(model, round_f16=True)
        model.save_pretrained(d, safe_serialization=False)  # config.json
        os.remove(os.path.join(d, "diffusion_pytorch_model.bin"))
        save_file({k: v.half().contiguous() for k, v in model.state_dict().items()},
                  os.path.join(d, "diffusion_pytorch_model.safetensors"))
        m = model.double()
        acts = {}

        def hook(key):
            def f(_mod, _inp, out):
                acts[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()
            return f

        m.conv_in.register_forward_hook(hook("conv_in"))
        for i, blk in enumerate(m.down_blocks):
            blk.register_forward_hook(hook(f"down_blocks.{i}"))
        m.mid_block.register_forward_hook(hook("mid_block"))
        for i, blk in enumerate(m.up_blocks):
            blk.register_forward_hook(hook(f"up_blocks.{i}"))
        c, s = cfg["in_channels"], cfg["sample_size"]
        x = torch.randn(2, c, s, s).float()
        t = torch.tensor([10.0, 700.0])
        ctx = torch.randn(2, TOKENS, cfg["cross_attention_dim"]).float()
        with torch.no_grad():
            out = m(x.double(), t.double(), encoder_hidden_states=ctx.double()).sample
        tensors = {"x": x, "t": t, "context": ctx, "out": out}
        tensors.update({f"act.{k}": v for k, v in acts.items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "cases.safetensors"))
        n = sum(p.numel() for p in model.parameters())
        print(name, n, "parameters", {k: tuple(v.shape) for k, v in acts.items()})


if __name__ == "__main__":
    main()
