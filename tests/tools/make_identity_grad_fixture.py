"""The trainer's gradient case for `class_embed_type: "identity"` (ClassVector): the
unet-c/identity8 model (tests/tools/make_unet_c_fixtures.py) loaded in float64, L_simple with
float class embeddings added to the time embedding; every parameter's gradient.

Run with PyTorch + diffusers 0.42:  python tests/tools/make_identity_grad_fixture.py
Writes tests/fixtures/unet-c/identity8/grad.safetensors.
"""
import os
import torch
from diffusers import UNet2DModel, DDPMScheduler
from safetensors.torch import save_file

D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "unet-c", "identity8")
torch.manual_seed(20261206)
model = UNet2DModel.from_pretrained(D).double().eval()
cfg = model.config
c, s = cfg.in_channels, cfg.sample_size
e = model.time_embedding.linear_2.out_features
abar = DDPMScheduler().alphas_cumprod.double()
x0, eps = torch.randn(2, c, s, s), torch.randn(2, c, s, s)
emb = torch.randn(2, e)
tg = torch.tensor([40, 700])
a = abar[tg].view(-1, 1, 1, 1)
x_t = (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()
pred = model(x_t.double(), tg, class_labels=emb.double()).sample[:, :c]
loss = ((pred - eps.double()) ** 2).mean()
loss.backward()
t = {"x0": x0, "eps": eps, "t": tg, "x_t": x_t, "class_embeddings": emb, "loss": loss.detach().view(1)}
for pn, p in model.named_parameters():
    t[f"param.{pn}"] = p.grad.detach().float()
save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(D, "grad.safetensors"))
print("wrote", os.path.join(D, "grad.safetensors"))
