"""diffusers 0.42 references for the conditional UNet's new op forms (issue 24): the
cross-attention core and GEGLU.

    pip install 'diffusers==0.42.*' torch safetensors numpy
    python tests/tools/make_text_op_fixtures.py

Writes tests/fixtures/text-ops/ops.safetensors (seeded), float64 computed, stored f32:
- `cross.{i}.q` [B, n, C], `cross.{i}.k`, `cross.{i}.v` [B, m, C]: diffusers' `Attention(query_dim,
  cross_attention_dim, heads, dim_head)` projections of latent tokens `x` and text states `ctx`;
  `cross.{i}.out` [B, n, C]: the attention core (what `to_out` then projects), checked here to
  give the module's output through `to_out`. `cross.{i}.shape` = [heads].
- `geglu.x` [R, 2 * D]: the output of diffusers' `GEGLU(dim_in, D).proj`; `geglu.out` [R, D]:
  the module's output.
"""
import os
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from diffusers.models.attention_processor import Attention
from diffusers.models.activations import GEGLU

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "text-ops")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(2401)


def rounded(m):
    with torch.no_grad():
        for p in m.parameters():
            p.copy_((torch.randn_like(p) / max(p.shape[-1], 1) ** 0.5).half().double())
    return m.double()


cases = {}
# (batch, latent tokens n, text tokens m, cross_attention_dim, heads, dim_head)
for i, (b, n, m, cross, heads, dim_head) in enumerate([(2, 16, 77, 24, 4, 8), (1, 64, 7, 40, 2, 20)]):
    c = heads * dim_head
    attn = rounded(Attention(query_dim=c, cross_attention_dim=cross, heads=heads, dim_head=dim_head, bias=True))
    x = torch.randn(b, n, c, dtype=torch.float64)
    ctx = torch.randn(b, m, cross, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
        split = lambda t: t.view(b, -1, heads, dim_head).transpose(1, 2)
        core = F.scaled_dot_product_attention(split(q), split(k), split(v))
        core = core.transpose(1, 2).reshape(b, n, c)
        full = attn(x, encoder_hidden_states=ctx)
        assert torch.allclose(attn.to_out[0](core), full, atol=1e-10), "core is not what to_out projects"
    for name, t in [("q", q), ("k", k), ("v", v), ("out", core)]:
        cases[f"cross.{i}.{name}"] = t.float().contiguous()
    cases[f"cross.{i}.shape"] = torch.tensor([heads], dtype=torch.int64)

geglu = rounded(GEGLU(24, 20))
x = torch.randn(2 * 9, 24, dtype=torch.float64)
with torch.no_grad():
    cases["geglu.x"] = geglu.proj(x).float().contiguous()
    cases["geglu.out"] = geglu(x).float().contiguous()
save_file(cases, os.path.join(OUT, "ops.safetensors"))
print({k: tuple(v.shape) for k, v in cases.items()})
