#!/usr/bin/env python3
"""PyTorch reference for the trainer's speed (optional; needs `pip install torch diffusers`).

Times one full training step (forward, L_simple, backward, gradient clipping, AdamW, EMA) of
diffusers' `UNet2DModel` in fp32 on the models `benches/train_step.rs` times, with the same
batches and threads, so the two are compared in one sitting:

    python3 benches/torch_train_step.py --threads 1
    cargo bench --features train --bench train_step

Prints the median ms per step and steps/s for tiny-rgb16 (batch 2 and 16) and the default MNIST
model (batch 32).
"""

import argparse
import copy
import json
import os
import statistics
import time

import torch
from diffusers import UNet2DModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path):
    cfg = json.load(open(path))
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def bench(name, cfg, batch, steps, labels):
    torch.manual_seed(0)
    model = UNet2DModel(**cfg).train()
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    c, s = cfg["in_channels"], cfg["sample_size"]
    x0 = torch.rand(batch, c, s, s) * 2 - 1
    y = torch.arange(batch) % 10 if labels else None

    def step():
        t = torch.randint(0, 1000, (batch,))
        eps = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = torch.nn.functional.mse_loss(model(x_t, t, class_labels=y).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 0.001)

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    params = sum(p.numel() for p in model.parameters())
    print(f"{name:<11} batch {batch:>3}: median {ms:8.1f} ms/step ({1e3 / ms:.2f} steps/s); {params} params")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rgb16 = load_config(os.path.join(ROOT, "tests/fixtures/tiny-rgb16/config.json"))
    for batch in (2, 16):
        bench("tiny-rgb16", rgb16, batch, args.steps, False)
    mnist = load_config(os.path.join(ROOT, "weights/config.json"))
    bench("mnist", mnist, 32, min(args.steps, 5), True)


if __name__ == "__main__":
    main()
