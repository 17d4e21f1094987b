"""A text encoder shaped like Stable Diffusion 1.x's (openai/clip-vit-large-patch14's text
tower, the published config), seeded random f16 weights, for timing only:

    python tests/tools/make_clip_l_like.py [OUT]      # default target/clip-l-like/text_encoder
    cargo run --release --example encode_text -- target/clip-l-like/text_encoder

Writes `config.json` and `model.safetensors` (transformers 4 key names, `text_model.` prefix).
"""
import json, os, sys
import numpy as np
from safetensors.numpy import save_file

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "target", "clip-l-like", "text_encoder")
os.makedirs(out, exist_ok=True)
cfg = {"_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"],
       "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
       "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
       "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
       "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
       "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "torch_dtype": "float32",
       "transformers_version": "4.22.0.dev0", "vocab_size": 49408}
rng = np.random.default_rng(24)
c, f = cfg["hidden_size"], cfg["intermediate_size"]
t = {}
def put(name, *shape, scale=None):
    s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
    t["text_model." + name] = (rng.standard_normal(shape, dtype=np.float32) * s).astype(np.float16)
put("embeddings.token_embedding.weight", cfg["vocab_size"], c, scale=0.02)
put("embeddings.position_embedding.weight", 77, c, scale=0.01)
for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layers.{i}"
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
        put(f"{p}.self_attn.{n}.weight", c, c)
        put(f"{p}.self_attn.{n}.bias", c, scale=0.02)
    put(f"{p}.mlp.fc1.weight", f, c); put(f"{p}.mlp.fc1.bias", f, scale=0.02)
    put(f"{p}.mlp.fc2.weight", c, f); put(f"{p}.mlp.fc2.bias", c, scale=0.02)
    for n in ("layer_norm1", "layer_norm2"):
        t[f"text_model.{p}.{n}.weight"] = np.ones(c, np.float16)
        t[f"text_model.{p}.{n}.bias"] = np.zeros(c, np.float16)
t["text_model.final_layer_norm.weight"] = np.ones(c, np.float16)
t["text_model.final_layer_norm.bias"] = np.zeros(c, np.float16)
save_file(t, os.path.join(out, "model.safetensors"))
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
print(out, sum(v.size for v in t.values()) / 1e6, "M parameters")
