#!/usr/bin/env python3
"""tinydiffusion against the CPU engines users deploy (optional; issue 20).

    pip install torch diffusers safetensors numpy onnx onnxruntime openvino
    nice -n 5 python3 benches/engines_reference.py --threads 2

Builds the CIFAR-10 DDPM UNet (google/ddpm-cifar10-32's published config, written below;
seeded random weights rounded to f16 so every engine computes with the same values), saves it
as a diffusers DDIMPipeline folder (UNet weights stored f16, which tinydiffusion maps without
copying), exports it to ONNX (one static graph per batch size) and times, on the same threads:

- ONNX Runtime (all graph optimisations, intra-op threads = N, sequential execution);
- OpenVINO (f32 inference precision; f16 only where the CPU reports FP16 among its
  OPTIMIZATION_CAPABILITIES, otherwise the table says it was skipped);
- PyTorch eager (torch.set_num_threads(N), inference mode);
- ours (`examples/bench_folder.rs`, a subprocess loading the same folder after
  `sample convert`, our deploy step as the ONNX export is theirs).

Before anything is timed, each engine's output at each batch is checked against PyTorch's
(relative L2; the script stops if one is above 1e-3). Then rounds alternate between the
engines (batch 1 and batch 8 in each round); each round's figure is the median of its runs and
the table shows the median over rounds and each engine's best round, per image, with the
ratios to ours (on a shared machine the load varies between rounds, and it costs the engines
differently: PyTorch's spin-waiting workers most).

Then 50-step DDIM at batch 1 as whole processes, alternating: ours (`sample --scheduler ddim`)
against PyTorch's DDIMPipeline on the same folder, both from the same x_T, both under
`/usr/bin/time -v` (wall time from start to exit, start-up included; peak RSS). PyTorch's
sampling loop alone (the pipeline call, without the interpreter's start-up and the folder's
load) is printed too. The two final images are compared (relative L2).

Prints one markdown table (with `lscpu`'s model name and whether the CPU has avx512f and
avx512_fp16) ready for the README. About 5-8 minutes on 2 busy cores.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# google/ddpm-cifar10-32's published config, as benches/torch_reference.py times it, with
# the defaults it leaves implicit written out.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import CONFIG as CIFAR10_CONFIG  # noqa: E402

CONFIG = dict(
    CIFAR10_CONFIG,
    act_fn="silu",
    center_input_sample=False,
    time_embedding_type="positional",
    mid_block_scale_factor=1,
)
BATCHES = (1, 8)
CHECK_BAR = 1e-3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timesteps(batch):
    """The timesteps every engine gets (bench_folder uses the same formula)."""
    return [10 + 97 * i for i in range(batch)]


def rel_l2(a, b):
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def cpu_description():
    model, flags = "unknown CPU", set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if model in ("unknown CPU", "AMD EPYC"):
        # Some VMs report only the family in lscpu; /proc/cpuinfo may say more.
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return model, {f: f in flags for f in ("avx512f", "avx512_fp16", "avx512_bf16", "amx_tile")}


def build_folder(path):
    """Seeded CIFAR-10 UNet, weights rounded to f16, saved as a DDIMPipeline folder."""
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**CONFIG).eval()
    with torch.no_grad():
        for p in unet.parameters():
            # f16 values: the folder stores f16, so every engine computes with the same weights.
            p.copy_(p.half().float())
    pipe = DDIMPipeline(unet=unet.half(), scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.save_pretrained(path, safe_serialization=True)
    return unet.float().eval()


def export_onnx(unet, batch, path):
    import torch

    class Eps(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep):
            return self.unet(sample, timestep).sample

    x = torch.zeros(batch, 3, 32, 32)
    t = torch.tensor(timesteps(batch), dtype=torch.int64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Eps(unet).eval(),
            (x, t),
            path,
            input_names=["sample", "timestep"],
            output_names=["eps"],
            opset_version=17,
            dynamo=False,
        )


class Engine:
    name = ""

    def prepare(self, batch, x):
        """Everything before timing (compile, load); returns the first output."""
        raise NotImplementedError

    def run(self, batch, runs):
        """Median seconds per forward over `runs` (after a warm-up)."""
        raise NotImplementedError


def median_of(fn, runs, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Torch(Engine):
    name = "PyTorch eager"

    def __init__(self, unet, threads):
        import torch

        torch.set_num_threads(threads)
        self.torch, self.unet, self.inputs = torch, unet, {}
        self.name = f"PyTorch {torch.__version__.split('+')[0]} eager"

    def prepare(self, batch, x):
        torch = self.torch
        t = torch.tensor(timesteps(batch), dtype=torch.int64)
        self.inputs[batch] = (torch.from_numpy(x), t)
        with torch.inference_mode():
            return self.unet(*self.inputs[batch]).sample.numpy()

    def run(self, batch, runs):
        with self.torch.inference_mode():
            return median_of(lambda: self.unet(*self.inputs[batch]), runs)


class OnnxRuntime(Engine):
    def __init__(self, onnx_paths, threads):
        import onnxruntime as ort

        self.ort, self.paths, self.threads, self.sessions, self.feeds = ort, onnx_paths, threads, {}, {}
        self.name = f"ONNX Runtime {ort.__version__} (all graph optimisations)"

    def prepare(self, batch, x):
        ort = self.ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(self.paths[batch], so, providers=["CPUExecutionProvider"])
        self.sessions[batch] = sess
        self.feeds[batch] = {"sample": x, "timestep": np.array(timesteps(batch), dtype=np.int64)}
        return sess.run(None, self.feeds[batch])[0]

    def run(self, batch, runs):
        sess, feed = self.sessions[batch], self.feeds[batch]
        return median_of(lambda: sess.run(None, feed), runs)


class OpenVino(Engine):
    def __init__(self, onnx_paths, threads, precision):
        import openvino as ov

        self.ov, self.core = ov, ov.Core()
        self.paths, self.threads, self.precision = onnx_paths, threads, precision
        self.requests, self.feeds = {}, {}
        version = ov.__version__.split("-")[0]
        self.name = f"OpenVINO {version} ({precision})"

    def prepare(self, batch, x):
        model = self.core.read_model(self.paths[batch])
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        compiled = self.core.compile_model(model, "CPU", config)
        self.requests[batch] = compiled.create_infer_request()
        self.feeds[batch] = {"sample": x, "timestep": np.array(timesteps(batch), dtype=np.int64)}
        out = self.requests[batch].infer(self.feeds[batch])
        return np.array(next(iter(out.values())))

    def run(self, batch, runs):
        req, feed = self.requests[batch], self.feeds[batch]
        return median_of(lambda: req.infer(feed), runs)


class Ours(Engine):
    name = "tinydiffusion (f32)"

    def __init__(self, folder, threads, workdir):
        self.exe = os.path.join(REPO, "target", "release", "examples", "bench_folder")
        self.folder, self.threads, self.workdir = folder, threads, workdir

    def _cmd(self, batch, runs, warmup):
        return [self.exe, "--model", self.folder, "--batch", str(batch), "--threads",
                str(self.threads), "--runs", str(runs), "--warmup", str(warmup),
                "--input", os.path.join(self.workdir, f"x{batch}.bin")]

    def prepare(self, batch, x):
        x.astype("<f4").tofile(os.path.join(self.workdir, f"x{batch}.bin"))
        out = os.path.join(self.workdir, f"ours{batch}.bin")
        subprocess.run(self._cmd(batch, 1, 0) + ["--output", out], check=True, capture_output=True)
        return np.fromfile(out, dtype="<f4").reshape(x.shape)

    def run(self, batch, runs):
        # The same warm-up and run count as the in-process engines; the process start and the
        # folder's load are outside the timed forwards, as the other engines' compile is.
        out = subprocess.run(self._cmd(batch, runs, 2), check=True, capture_output=True, text=True)
        return float(re.search(r"median_ms ([0-9.]+)", out.stdout).group(1)) / 1e3


def time_rss(cmd, env=None):
    """Wall seconds of a whole process and its peak RSS in MiB (/usr/bin/time -v)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return wall, (int(rss.group(1)) / 1024 if rss else float("nan")), p.stdout


def ddim_child(folder, threads, seed, out):
    """The PyTorch process of the sampling comparison: load, sample, save the image."""
    t_start = time.perf_counter()
    import torch
    from diffusers import DDIMPipeline

    torch.set_num_threads(threads)
    pipe = DDIMPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        image = pipe(batch_size=1, generator=g, num_inference_steps=50, eta=0.0, output_type="np").images
    loop = time.perf_counter() - t0
    np.save(out, image)
    print(json.dumps({"loop_s": loop, "in_process_s": time.perf_counter() - t_start}))


def sampling(folder, packed, threads, rounds, workdir, seed=0):
    import torch
    from safetensors.numpy import save_file

    # DDIMPipeline draws x_T with randn_tensor(shape, generator) on the CPU: torch.randn.
    x_t = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(seed)).numpy()
    noise = os.path.join(workdir, "x_T.safetensors")
    save_file({"x_T": x_t}, noise)
    ours_x0 = os.path.join(workdir, "ours_x0.safetensors")
    ours = [os.path.join(REPO, "target", "release", "sample"), "--model", packed,
            "--scheduler", "ddim", "--steps", "50", "--eta", "0", "--batch", "1",
            "--threads", str(threads), "--init-noise", noise, "--save-tensor", ours_x0,
            "--out", "none", "--quiet"]
    torch_img = os.path.join(workdir, "torch_image.npy")
    theirs = [sys.executable, os.path.abspath(__file__), "--ddim-child", folder,
              "--threads", str(threads), "--seed", str(seed), "--child-out", torch_img]
    rows = {"ours": [], "torch": []}
    for _ in range(rounds):
        wall, rss, _ = time_rss(ours)
        rows["ours"].append((wall, rss, None))
        wall, rss, stdout = time_rss(theirs)
        rows["torch"].append((wall, rss, json.loads(stdout.strip().splitlines()[-1])["loop_s"]))
    # Once from the folder as diffusers saved it (repacked at load), for its peak RSS.
    unpacked = [folder if a == packed else a for a in ours]
    rows["ours_unpacked"] = [time_rss(unpacked)[:2] + (None,)]
    from safetensors.numpy import load_file

    x0 = load_file(ours_x0)["x_0"]
    ours_img = np.clip(x0 / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return rows, rel_l2(ours_img, np.load(torch_img))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--runs", type=int, nargs=2, default=(10, 4), metavar=("B1", "B8"),
                    help="timed forwards per round at batch 1 and 8 (default 10 4)")
    ap.add_argument("--sampling-rounds", type=int, default=3)
    ap.add_argument("--skip-sampling", action="store_true")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("--workdir", default=None, help="keep the folder and ONNX files here")
    ap.add_argument("--ddim-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ddim_child:
        return ddim_child(args.ddim_child, args.threads, args.seed, args.child_out)

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "bench_folder",
                        "--bin", "sample"], cwd=REPO, check=True)
    workdir = args.workdir or tempfile.mkdtemp(prefix="td-engines-")
    os.makedirs(workdir, exist_ok=True)
    folder = os.path.join(workdir, "ddpm-cifar10-random")
    cpu, flags = cpu_description()
    print(f"CPU: {cpu}; " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()))
    print(f"threads {args.threads}; work folder {workdir}", flush=True)

    import torch

    torch.set_num_threads(args.threads)
    unet = build_folder(folder)
    # Ours loads the folder after `sample convert` (weights in the packed layout, mapped without
    # a copy): the deploy step, as the ONNX export is the other engines'. The folder as saved
    # loads too (repacked at load: more memory, see the sampling table).
    packed = folder + "-packed"
    if not os.path.exists(packed):
        subprocess.run([os.path.join(REPO, "target", "release", "sample"), "convert", folder, packed],
                       check=True, capture_output=True)
    lines = []
    if not args.skip_forward:
        onnx_paths = {}
        for b in BATCHES:
            onnx_paths[b] = os.path.join(workdir, f"unet_b{b}.onnx")
            if not os.path.exists(onnx_paths[b]):
                export_onnx(unet, b, onnx_paths[b])
        engines = [Ours(packed, args.threads, workdir), OnnxRuntime(onnx_paths, args.threads)]
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        engines.append(OpenVino(onnx_paths, args.threads, "f32"))
        ov_f16 = "FP16" in caps
        if ov_f16:
            engines.append(OpenVino(onnx_paths, args.threads, "f16"))
        engines.append(Torch(unet, args.threads))

        # Correctness first: each engine against PyTorch, same input, same weights.
        rng = np.random.default_rng(1)
        errors = {}
        reference = {}
        for b in BATCHES:
            x = rng.standard_normal((b, 3, 32, 32)).astype(np.float32)
            for e in reversed(engines):  # PyTorch first
                out = e.prepare(b, x)
                if isinstance(e, Torch):
                    reference[b] = out
                errors[(e.name, b)] = rel_l2(out, reference[b])
                print(f"check batch {b}: {e.name}: rel L2 vs PyTorch {errors[(e.name, b)]:.2e}", flush=True)
        bad = [k for k, v in errors.items() if not v <= CHECK_BAR]
        if bad:
            sys.exit(f"outputs differ from PyTorch by more than {CHECK_BAR}: {bad}")

        times = {(e.name, b): [] for e in engines for b in BATCHES}
        for r in range(args.rounds):
            order = engines if r % 2 == 0 else list(reversed(engines))
            for e in order:
                for b, runs in zip(BATCHES, args.runs):
                    times[(e.name, b)].append(e.run(b, runs))
                    time.sleep(0.2)  # let spinning thread pools go idle before the next engine
            print(f"round {r + 1}: " + ", ".join(
                f"{e.name.split(' (')[0]} {times[(e.name, 1)][-1] * 1e3:.1f}/{times[(e.name, 8)][-1] * 1e3 / 8:.1f}"
                for e in engines) + " ms (batch 1 / batch 8 per image)", flush=True)
        # Medians over rounds, and each engine's best round: on a shared machine a round can
        # fall into another job's burst, and engines differ in how much load costs them.
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        ours = engines[0].name
        lines += [
            f"CIFAR-10 DDPM UNet (35.7M parameters), f32, {args.threads} threads, "
            f"{args.rounds} alternating rounds, medians and best rounds; {cpu} "
            f"(avx512f {'yes' if flags['avx512f'] else 'no'}, avx512_fp16 {'yes' if flags['avx512_fp16'] else 'no'})",
            "",
            "| engine | batch 1, ms | vs ours | best round | vs ours "
            "| batch 8, ms per image | vs ours | best round | vs ours | max rel L2 vs PyTorch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in engines:
            cells = []
            for b in BATCHES:
                for stat in (med, best):
                    v = stat[(e.name, b)] / b
                    cells += [f"{v * 1e3:.1f}", f"{v / (stat[(ours, b)] / b):.2f}x"]
            err = max(errors[(e.name, b)] for b in BATCHES)
            err_s = "reference" if isinstance(e, Torch) else f"{err:.1e}"
            lines.append(f"| {e.name} | " + " | ".join(cells) + f" | {err_s} |")
        if not ov_f16:
            lines.append("")
            lines.append(f"OpenVINO f16: skipped, the CPU reports no FP16 ({', '.join(caps)}).")

    if not args.skip_sampling:
        rows, img_err = sampling(folder, packed, args.threads, args.sampling_rounds, workdir)
        o_wall = statistics.median(w for w, _, _ in rows["ours"])
        t_wall = statistics.median(w for w, _, _ in rows["torch"])
        t_loop = statistics.median(l for _, _, l in rows["torch"])
        o_rss = max(r for _, r, _ in rows["ours"])
        u_wall, u_rss, _ = rows["ours_unpacked"][0]
        t_rss = max(r for _, r, _ in rows["torch"])
        lines += [
            "",
            f"50-step DDIM, batch 1, whole process, medians of {args.sampling_rounds} alternating runs "
            f"(final images: rel L2 {img_err:.1e})",
            "",
            "| | wall, s | vs ours | peak RSS, MiB |",
            "|---|---:|---:|---:|",
            f"| tinydiffusion `sample --scheduler ddim` | {o_wall:.2f} | 1.00x | {o_rss:.0f} |",
            f"| ... on the folder as diffusers saved it (no `sample convert`), one run "
            f"| {u_wall:.2f} | | {u_rss:.0f} |",
            f"| PyTorch DDIMPipeline, whole process | {t_wall:.2f} | {t_wall / o_wall:.2f}x | {t_rss:.0f} |",
            f"| PyTorch DDIMPipeline, sampling loop only | {t_loop:.2f} | {t_loop / o_wall:.2f}x | |",
        ]
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
