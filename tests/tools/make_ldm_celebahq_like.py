"""A latent pipeline the size of CompVis/ldm-celebahq-256, with seeded random weights (no
download): the published UNet2DModel / VQModel / DDIMScheduler configs written from memory of the
hub folder. For speed and memory figures only (README, "Latent diffusion").

    python tests/tools/make_ldm_celebahq_like.py OUT_DIR
"""
import sys, torch
from diffusers import UNet2DModel, VQModel, DDIMScheduler, LDMPipeline

out = sys.argv[1]
torch.manual_seed(0)
unet = UNet2DModel(sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
                   block_out_channels=(224, 448, 672, 896), attention_head_dim=32,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
vqvae = VQModel(in_channels=3, out_channels=3, latent_channels=3, layers_per_block=2, num_vq_embeddings=8192,
                block_out_channels=(128, 256, 512), sample_size=256,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
sched = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="linear", clip_sample=False,
                      num_train_timesteps=1000)
LDMPipeline(vqvae=vqvae, unet=unet, scheduler=sched).to(torch.float16).save_pretrained(out)
print("wrote", out)
