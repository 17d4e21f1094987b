"""One UNet step at Stable Diffusion 1.5's shape (64x64 latents, batch 2 = guidance, 77 x 768
text states) in three engines on the same machine, same inputs, alternating rounds:
PyTorch f32 eager (torch.set_num_threads(2)), ONNX Runtime (the same UNet2DConditionModel
exported with external data, ORT_ENABLE_ALL, 2 intra-op threads) and tinydiffusion
(examples/bench_sd_unet, 2 threads, run under /usr/bin/time -v for its peak RSS).

    cargo build --release --example bench_sd_unet
    nice -n 5 /work/venv/bin/python benches/sd_reference.py [--model /work/sd15] [--rounds 3]
        [--runs 1] [--onnx-dir /work/sd15-onnx] [--keep-onnx]

The folder comes from tests/tools/make_sd15_like.py. Each engine's output is checked against
PyTorch's (relative L2). The ONNX export (~3.5 GB) is deleted at the end unless --keep-onnx.
Prints one table: median seconds per step per engine (medians over rounds of each round's
median), ratios, the CPU (lscpu) and our peak RSS.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from diffusers import UNet2DConditionModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OURS = os.path.join(ROOT, "target", "release", "examples", "bench_sd_unet")


class Eps(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, states):
        return self.unet(sample, timestep, encoder_hidden_states=states, return_dict=False)[0]


def rel_l2(a, b):
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def cpu_name():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = re.search(r"Model name:\s*(.*)", out)
    return name.group(1).strip() if name else "unknown CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/work/sd15")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=1, help="timed steps per engine per round (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnx-dir", default="/work/sd15-onnx")
    ap.add_argument("--keep-onnx", action="store_true")
    ap.add_argument("--skip-onnx", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet", torch_dtype=torch.float32).eval()
    eps = Eps(unet).eval()
    x = torch.randn(2, 4, 64, 64)
    t = torch.tensor([981.0])
    states = torch.randn(2, 77, 768)
    inputs = os.path.join(args.onnx_dir + "-io", "inputs.f32")
    os.makedirs(os.path.dirname(inputs), exist_ok=True)
    np.concatenate([x.numpy().ravel(), t.numpy().ravel(), states.numpy().ravel()]).astype("<f4").tofile(inputs)

    ort_session = None
    if not args.skip_onnx:
        import onnxruntime as ort
        path = os.path.join(args.onnx_dir, "unet.onnx")
        if not os.path.isfile(path):
            os.makedirs(args.onnx_dir, exist_ok=True)
            t0 = time.time()
            with torch.no_grad():
                torch.onnx.export(eps, (x, t, states), path, input_names=["sample", "timestep", "states"],
                                  output_names=["eps"], opset_version=17, dynamo=False,
                                  external_data=True)
            print(f"exported {path} in {time.time() - t0:.0f} s", flush=True)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        ort_session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {"sample": x.numpy(), "timestep": t.numpy(), "states": states.numpy()}

    def run_torch():
        with torch.no_grad():
            return eps(x, t, states).numpy()

    def run_ort():
        return ort_session.run(None, feeds)[0]

    def timed(fn):
        out = fn()  # warm-up
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    def run_ours():
        save = os.path.join(os.path.dirname(inputs), "ours.f32")
        cmd = ["/usr/bin/time", "-v", OURS, os.path.join(args.model, "unet"), "--threads", str(args.threads),
               "--runs", str(args.runs), "--batch", "2", "--inputs", inputs, "--save", save]
        p = subprocess.run(cmd, capture_output=True, text=True, check=True)
        median = float(re.search(r"median ([0-9.]+) s", p.stdout).group(1))
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
        return median, np.fromfile(save, dtype="<f4").reshape(x.shape), rss

    results = {"PyTorch f32 eager": [], "ONNX Runtime": [], "tinydiffusion": []}
    reference = None
    errors, rss_max = {}, 0
    for r in range(args.rounds):
        sec, out = timed(run_torch)
        reference = out if reference is None else reference
        results["PyTorch f32 eager"].append(sec)
        errors["PyTorch f32 eager"] = rel_l2(out, reference)
        if ort_session is not None:
            sec, out = timed(run_ort)
            results["ONNX Runtime"].append(sec)
            errors["ONNX Runtime"] = rel_l2(out, reference)
        sec, out, rss = run_ours()
        results["tinydiffusion"].append(sec)
        errors["tinydiffusion"] = rel_l2(out, reference)
        rss_max = max(rss_max, rss)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items() if v), flush=True)

    ours = statistics.median(results["tinydiffusion"])
    print(f"\nSD 1.5 UNet step, batch 2 (guidance), 64x64 latents, 77x768 text states, {args.threads} threads, "
          f"{cpu_name()}, {args.rounds} alternating rounds x {args.runs} timed step(s), medians")
    print("| engine | s per step | tinydiffusion speed-up | rel. L2 vs PyTorch |")
    print("|---|---|---|---|")
    for name, v in results.items():
        if not v:
            continue
        m = statistics.median(v)
        print(f"| {name} | {m:.2f} | {m / ours:.2f}x | {errors[name]:.1e} |")
    print(f"tinydiffusion peak RSS (whole process: f16 weights mapped + workspace): {rss_max / 1024:.0f} MiB")
    if not args.keep_onnx and os.path.isdir(args.onnx_dir):
        shutil.rmtree(args.onnx_dir)
    shutil.rmtree(os.path.dirname(inputs), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
