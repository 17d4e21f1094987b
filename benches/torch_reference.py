#!/usr/bin/env python3
"""PyTorch reference timing for the CIFAR-10 DDPM UNet (optional; needs `pip install torch diffusers`).

Times diffusers' `UNet2DModel` with google/ddpm-cifar10-32's architecture (random weights, no
download) in fp32 on the same number of threads as tinydiffusion, so both can be measured in one
sitting and compared as a ratio:

    python3 benches/torch_reference.py --threads 2
    cargo run --release --example bench_unet -- --threads 2

Prints, for batch 1 and 8, the median ms per forward (and per image), GFLOP/s (12.44 GFLOP per
image, the figure bench_unet uses), plus one 50-step DDIM sample at batch 1 and the peak RSS.
"""

import argparse
import resource
import statistics
import time

CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    attention_head_dim=None,
)
GFLOP_PER_IMAGE = 12.44


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    ap.add_argument("--runs", type=int, default=0, help="timed runs per batch (default 30 / 8)")
    ap.add_argument("--no-sample", action="store_true", help="skip the 50-step DDIM sample")
    ap.add_argument("--sample-runs", type=int, default=1, help="DDIM samples to time (median)")
    args = ap.parse_args()

    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UNet2DModel(**CONFIG).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; UNet2DModel {params / 1e6:.1f}M parameters, fp32")
    print(f"{'batch':>6} {'ms/forward':>12} {'ms/image':>10} {'GFLOP/s':>9}")
    with torch.inference_mode():
        for batch in (1, 8):
            x = torch.randn(batch, 3, 32, 32)
            t = torch.tensor([10 + 97 * i for i in range(batch)])
            for _ in range(3):
                model(x, t)
            runs = args.runs or (30 if batch == 1 else 8)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                model(x, t)
                times.append(time.perf_counter() - t0)
            m = statistics.median(times)
            print(f"{batch:>6} {m * 1e3:>12.2f} {m * 1e3 / batch:>10.2f} {GFLOP_PER_IMAGE * batch / m:>9.1f}")

        if not args.no_sample:
            sched = DDIMScheduler(num_train_timesteps=1000)
            sched.set_timesteps(50)
            times = []
            for _ in range(max(1, args.sample_runs)):
                x = torch.randn(1, 3, 32, 32)
                t0 = time.perf_counter()
                for t in sched.timesteps:
                    eps = model(x, t).sample
                    x = sched.step(eps, t, x).prev_sample
                times.append(time.perf_counter() - t0)
            each = " ".join(f"{s:.2f}" for s in times)
            print(f"DDIM 50 steps, batch 1: {statistics.median(times):.2f} s (median of {len(times)}: {each})")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss:.0f} MB")


if __name__ == "__main__":
    main()
