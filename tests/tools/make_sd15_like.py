"""A StableDiffusionPipeline folder shaped exactly like Stable Diffusion 1.5 (no download): the
published unet / vae / text_encoder (CLIP ViT-L/14 text tower) / scheduler (PNDM) configs are
written out below, the weights are diffusers' and transformers' own seeded random init, saved in
f16. The tokenizer is CLIP's real one (vocab.json + merges.txt built from open_clip's
`bpe_simple_vocab_16e6.txt.gz`, committed under tests/fixtures/clip-tokenizer/), padded with
`<|endoftext|>` as SD 1.x. For memory and speed figures only (README, "SD 1.5 shape"); the
folder is about 2.2 GB, so it is written OUTSIDE the repository:

    /work/venv/bin/python tests/tools/make_sd15_like.py [OUT_DIR]     # default /work/sd15

Activations stay finite: the default inits (kaiming-uniform convs and linears, N(0, 0.02)
embeddings) shrink rather than grow through the nets; the script checks a 64x64 UNet step and
a text encoding for finite outputs and prints their scale.
"""
import json
import os
import sys
import tempfile

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from clip_vocab import clip_vocab

OUT = sys.argv[1] if len(sys.argv) > 1 else "/work/sd15"

# runwayml/stable-diffusion-v1-5, unet/config.json
UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768,
    attention_head_dim=8,
)
# runwayml/stable-diffusion-v1-5, vae/config.json
VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512,
)
# openai/clip-vit-large-patch14, text_config (as SD 1.5's text_encoder/config.json)
CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, initializer_range=0.02,
    initializer_factor=1.0, attention_dropout=0.0, dropout=0.0, projection_dim=768,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
# runwayml/stable-diffusion-v1-5, scheduler/scheduler_config.json
# (its `clip_sample: false` is no PNDMScheduler argument; it is written into the json after).
SCHED = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None,
)


def tokenizer(tmp):
    """CLIP's vocabulary as CLIP builds it: bytes, bytes + </w>, 48894 merges, the two specials."""
    vocab, merges = clip_vocab()
    assert len(vocab) == 49408
    with open(os.path.join(tmp, "vocab.json"), "w") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(tmp, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                         pad_token="<|endoftext|>", model_max_length=77)


def main():
    torch.manual_seed(15)
    unet = UNet2DConditionModel(**UNET)
    vae = AutoencoderKL(**VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP))
    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer(tmp)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                       scheduler=PNDMScheduler(**SCHED), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.to(torch.float16).save_pretrained(OUT, safe_serialization=True)
    sched_json = os.path.join(OUT, "scheduler", "scheduler_config.json")
    sched = json.load(open(sched_json))
    sched["clip_sample"] = False
    json.dump(sched, open(sched_json, "w"), indent=2, sort_keys=True)
    # Finite check on the saved (f16-rounded) weights, computed in f32.
    unet = UNet2DConditionModel.from_pretrained(OUT, subfolder="unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(OUT, subfolder="text_encoder", torch_dtype=torch.float32)
    with torch.no_grad():
        ids = CLIPTokenizer.from_pretrained(OUT, subfolder="tokenizer")(
            "a photograph of an astronaut riding a horse", padding="max_length", max_length=77,
            return_tensors="pt").input_ids
        states = text_encoder(ids).last_hidden_state
        g = torch.Generator().manual_seed(0)
        eps = unet(torch.randn(1, 4, 64, 64, generator=g), 981, encoder_hidden_states=states).sample
    assert torch.isfinite(states).all() and torch.isfinite(eps).all()
    print(f"wrote {OUT}: text states std {states.std():.3g}, eps std {eps.std():.3g}")


if __name__ == "__main__":
    main()
