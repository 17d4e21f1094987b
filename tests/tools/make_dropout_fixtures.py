"""Trainer dropout (UNet2DModel `dropout`, applied by every ResnetBlock2D after norm2 and the
activation, before conv2): gradient fixtures with fixed masks.

For each model: config.json + f16 weights, and cases.json + cases.safetensors with one
`gradient` case (L_simple on the first in_channels output channels, float64 autograd) run with
every resnet's nn.Dropout replaced by a product with a fixed mask: keep flags
`grad.dropout_mask.<resnet module name>` ([B, C, H, W], 1 keep / 0 drop, drawn with
torch.rand >= p), kept values scaled by 1 / (1 - p) as nn.Dropout does in training.

Run with PyTorch + diffusers 0.42:  python tests/tools/make_dropout_fixtures.py
Writes tests/fixtures/dropout/<model>/.
"""
import json, os
import torch
import diffusers
from diffusers import UNet2DModel, DDPMScheduler
from diffusers.models.resnet import ResnetBlock2D
from safetensors.torch import save_file
from unet_weights import randomize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "dropout")
torch.manual_seed(20261205)

MODELS = {
    # improved DDPM with dropout: AdaGN (the mask acts on the activated scale-shift output,
    # here mish: an Activation op), resnet down/upsamplers (their resnets drop too), attention.
    "iddpm-drop8": dict(sample_size=8, in_channels=2, out_channels=4, block_out_channels=[8, 16],
                        layers_per_block=1,
                        down_block_types=["ResnetDownsampleBlock2D", "AttnDownBlock2D"],
                        up_block_types=["AttnUpBlock2D", "ResnetUpsampleBlock2D"],
                        downsample_type="resnet", upsample_type="resnet",
                        resnet_time_scale_shift="scale_shift", act_fn="mish",
                        attention_head_dim=4, norm_num_groups=4, dropout=0.3),
    # the default time conditioning: the mask acts on GroupNorm+SiLU's output; mid block.
    "plain-drop8": dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 16],
                        layers_per_block=1, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                        up_block_types=["AttnUpBlock2D", "UpBlock2D"], attention_head_dim=8,
                        norm_num_groups=4, dropout=0.2),
}


class FixedMask(torch.nn.Module):
    def __init__(self, keep, p):
        super().__init__()
        self.keep, self.p = keep, p

    def forward(self, x):
        return x * self.keep.to(x.dtype) / (1.0 - self.p)


for name, cfg in MODELS.items():
    d = os.path.join(OUT, name)
    model = UNet2DModel(**cfg)
    randomize(model)
    model.half().save_pretrained(d, safe_serialization=True)
    full = model.double().eval()  # f16 values in float64
    c, s, p = cfg["in_channels"], cfg["sample_size"], cfg["dropout"]
    abar = DDPMScheduler().alphas_cumprod.double()
    x0 = torch.randn(2, c, s, s)
    eps = torch.randn(2, c, s, s)
    tg = torch.tensor([40, 700])
    a = abar[tg].view(-1, 1, 1, 1)
    x_t = (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()
    # The shape of each resnet's dropout input, from an eval pass.
    shapes, hooks = {}, []
    for mn, m in full.named_modules():
        if isinstance(m, ResnetBlock2D):
            hooks.append(m.dropout.register_forward_hook(
                (lambda mn: lambda _m, i, _o: shapes.__setitem__(mn, tuple(i[0].shape)))(mn)))
    with torch.no_grad():
        full(x_t.double(), tg)
    for h in hooks:
        h.remove()
    tensors = {}
    for mn, m in full.named_modules():
        if isinstance(m, ResnetBlock2D):
            keep = (torch.rand(shapes[mn]) >= p).float()
            m.dropout = FixedMask(keep, p)
            tensors[f"grad.dropout_mask.{mn}"] = keep
    full.zero_grad()
    pred = full(x_t.double(), tg).sample[:, :c]
    loss = ((pred - eps.double()) ** 2).mean()
    loss.backward()
    tensors.update({"grad.x0": x0, "grad.eps": eps, "grad.t": tg, "grad.x_t": x_t,
                    "grad.loss": loss.detach().view(1)})
    for pn, prm in full.named_parameters():
        tensors[f"grad.param.{pn}"] = prm.grad.detach().float()
    cases = [{"name": "grad", "kind": "gradient",
              "loss": "mean over the first in_channels output channels of (eps_theta(x_t, t) - eps)^2, "
                      "x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, linear betas 1e-4..0.02, T=1000; "
                      "every ResnetBlock2D's dropout replaced by x * keep / (1 - p)",
              "dropout": p,
              "inputs": {"x0": "grad.x0", "eps": "grad.eps", "t": "grad.t", "x_t": "grad.x_t"},
              "expected": {"loss": "grad.loss", "param_grad_prefix": "grad.param.",
                           "dropout_mask_prefix": "grad.dropout_mask."}}]
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "cases.safetensors"))
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump({"model": name, "diffusers": diffusers.__version__, "cases": cases}, f, indent=1)
    print("wrote", d, "sites:", len(shapes))
