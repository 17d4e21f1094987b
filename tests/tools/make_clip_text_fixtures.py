"""transformers references for the CLIP text encoder (issue 24).

    pip install 'diffusers==0.42.*' transformers torch safetensors numpy
    python tests/tools/make_clip_text_fixtures.py

Writes tests/fixtures/clip-text/ (seeded; rerunning rewrites the same numbers). Per model
(`quick/`: quick_gelu, 2 layers, weights saved f16 under transformers 4's `text_model.` key
prefix; `gelu/`: gelu, 3 layers, weights saved f32 under transformers 5's unprefixed keys):
- `text_encoder/config.json` + `text_encoder/model.safetensors`: `CLIPTextModel.save_pretrained`
  (every weight random, rounded to f16).
- `cases.safetensors`: `ids` [B, 77] (int64: bos, random tokens, eos, then pad), `hidden.{i}`
  (transformers' `hidden_states[i]`, i = 0 (embeddings) ..= layers), `last` (`last_hidden_state`),
  `skip.{k}` for clip_skip k = 1, 2 (diffusers' `final_layer_norm(hidden_states[-(k + 1)])`),
  all float64 computed, stored f32.
"""
import json, os
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "clip-text")
torch.manual_seed(24)


def randomize(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ("layer_norm" in name or "layernorm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif "embedding" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
            p.copy_(p.half().float())
    return m


MODELS = {
    "quick": dict(cfg=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                           layer_norm_eps=1e-5, bos_token_id=998, eos_token_id=999, pad_token_id=999,
                           projection_dim=16),
                  dtype=torch.float16, prefix=True),
    "gelu": dict(cfg=dict(vocab_size=400, hidden_size=40, intermediate_size=96, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                          layer_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                          projection_dim=16),
                 dtype=torch.float32, prefix=False),
}

for name, spec in MODELS.items():
    cfg = CLIPTextConfig(**spec["cfg"])
    model = randomize(CLIPTextModel(cfg).eval())
    folder = os.path.join(OUT, name, "text_encoder")
    model.to(spec["dtype"]).save_pretrained(folder, safe_serialization=True)
    if spec["prefix"]:
        # transformers 4 (every Stable Diffusion checkpoint) saves the keys under `text_model.`;
        # transformers 5 drops the prefix. One fixture of each.
        from safetensors.torch import load_file
        path = os.path.join(folder, "model.safetensors")
        tensors = load_file(path)
        save_file({"text_model." + k: v for k, v in tensors.items()}, path, metadata={"format": "pt"})
    model = model.double()
    model.config._attn_implementation = "eager"
    c = spec["cfg"]
    rows = []
    for length in (9, 77):
        body = torch.randint(0, c["vocab_size"] - 2, (length - 2,)).tolist() if length > 2 else []
        seq = [c["bos_token_id"]] + body + [c["eos_token_id"]]
        seq = seq[:77] + [c["pad_token_id"]] * (77 - len(seq))
        rows.append(seq)
    ids = torch.tensor(rows, dtype=torch.int64)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    cases = {"ids": ids}
    for i, h in enumerate(out.hidden_states):
        cases[f"hidden.{i}"] = h.float().contiguous()
    cases["last"] = out.last_hidden_state.float().contiguous()
    with torch.no_grad():
        for k in (1, 2):
            h = out.hidden_states[-(k + 1)]
            cases[f"skip.{k}"] = model.final_layer_norm(h).float().contiguous()
    save_file(cases, os.path.join(OUT, name, "cases.safetensors"))
    print(name, {k: tuple(v.shape) for k, v in cases.items()})
