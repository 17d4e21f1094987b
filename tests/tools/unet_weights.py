"""The seeded random weights the UNet fixture scripts give a diffusers model (torch's global
generator, parameters in `named_parameters` order): matrices and kernels N(0, 1/fan_in), norm
scales 1 + N(0, 0.2^2), everything else N(0, 0.1^2)."""
import torch


def randomize(model, keep=(), round_f16=False):
    """Randomizes `model` in place; parameters named in `keep` keep their own init (e.g. a
    GaussianFourierProjection's W); `round_f16` rounds each to f16 as it is drawn."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in keep:
                continue
            if p.dim() > 1:
                p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
            if round_f16:
                p.copy_(p.half().float())
