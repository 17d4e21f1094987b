#!/usr/bin/env python3
"""PyTorch GPU reference timing for the CIFAR-10 DDPM UNet (needs torch with CUDA and diffusers).

Times diffusers' `UNet2DModel` with google/ddpm-cifar10-32's architecture (random weights, no
download) in fp16, channels_last, eager and torch.compile, so it can be run in one sitting with
tinydiffusion's CUDA backend and compared as a ratio:

    python3 benches/torch_cuda_reference.py
    cargo run --release --features cuda --example bench_cuda

Prints, for each mode (eager, compile) and batch 1 and 64, the median ms per forward (CUDA
events, inputs already on the GPU) and TFLOP/s at 12.44 GFLOP per image; then a 50-step DDIM
run of 64 images per mode (DDIMScheduler, the loop in Python as DDIMPipeline runs it).
"""

import argparse
import os
import statistics
import sys

# The architecture and FLOP count the CPU reference times (one definition for both scripts).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import CONFIG, GFLOP_PER_IMAGE  # noqa: E402


def time_ms(torch, fn, runs):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30, help="timed forwards per batch")
    ap.add_argument("--modes", default="eager,compile", help="eager, compile or both")
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                    help="torch.compile mode (e.g. default, reduce-overhead, max-autotune)")
    ap.add_argument("--sample-batch", type=int, default=64)
    args = ap.parse_args()

    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    base = UNet2DModel(**CONFIG).eval().to("cuda", dtype=torch.float16)
    base = base.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in base.parameters())
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; UNet2DModel "
          f"{params / 1e6:.1f}M parameters, fp16, channels_last")
    for mode in args.modes.split(","):
        model = base if mode == "eager" else torch.compile(base, mode=args.compile_mode)
        print(f"== {mode}")
        print(f"{'batch':>6} {'ms/forward':>12} {'ms/image':>10} {'TFLOP/s':>9}")
        with torch.inference_mode():
            for batch in (1, 64):
                x = torch.randn(batch, 3, 32, 32, device="cuda", dtype=torch.float16)
                x = x.to(memory_format=torch.channels_last)
                t = torch.tensor([10 + 97 * i % 1000 for i in range(batch)], device="cuda")
                ms = time_ms(torch, lambda: model(x, t).sample, args.runs)
                tflops = GFLOP_PER_IMAGE * batch / ms  # GFLOP per ms = TFLOP/s
                print(f"{batch:>6} {ms:>12.3f} {ms / batch:>10.4f} {tflops:>9.2f}")

            sched = DDIMScheduler(num_train_timesteps=1000)
            sched.set_timesteps(50)
            b = args.sample_batch

            def run():
                g = torch.Generator(device="cuda").manual_seed(1)
                img = torch.randn(b, 3, 32, 32, device="cuda", dtype=torch.float16, generator=g)
                img = img.to(memory_format=torch.channels_last)
                for tt in sched.timesteps:
                    eps = model(img, tt.to("cuda")).sample
                    img = sched.step(eps, tt, img).prev_sample
                return img

            run()  # warm-up (and compilation)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            s = start.elapsed_time(end) / 1e3
            print(f"DDIM 50 steps, batch {b}: {s:.3f} s ({s * 1e3 / 50:.2f} ms/step, "
                  f"{b / s:.1f} images/s)")


if __name__ == "__main__":
    main()
