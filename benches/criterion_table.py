#!/usr/bin/env python3
"""Per-kernel table from criterion's saved estimates (run `cargo bench --bench kernels` first):

    python3 benches/criterion_table.py [--filter conv]

Prints one markdown row per benchmark group (a kernel on one of the CIFAR-10 UNet's shapes):
the median time of each variant (naive scalar reference, im2col + the gemm crate, ours on one
thread and on all cores, and Winograd where it applies) and the speed of ours against the other
two, all from the same `cargo bench` run.
"""

import argparse
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "criterion")


def median_ns(path):
    with open(os.path.join(path, "new", "estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"]


def variants(group_dir):
    """{variant name: median ns} for one group (`naive`, `gemm-im2col`, `ours-1t/avx2`, ...)."""
    out = {}
    for name in sorted(os.listdir(group_dir)):
        d = os.path.join(group_dir, name)
        if name == "report" or not os.path.isdir(d):
            continue
        if os.path.isdir(os.path.join(d, "new")):
            out[name] = median_ns(d)
            continue
        for param in sorted(os.listdir(d)):
            p = os.path.join(d, param)
            if param != "report" and os.path.isdir(os.path.join(p, "new")):
                out[f"{name}/{param}"] = median_ns(p)
    return out


def fmt(ns):
    if ns is None:
        return "-"
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.1f} us"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--filter", default="", help="only groups whose name contains this")
    args = ap.parse_args()
    if not os.path.isdir(ROOT):
        raise SystemExit(f"{ROOT}: no criterion results (run `cargo bench --bench kernels`)")
    rows = []
    cols = set()
    for group in sorted(os.listdir(ROOT)):
        d = os.path.join(ROOT, group)
        if group == "report" or args.filter not in group or not os.path.isdir(d):
            continue
        v = variants(d)
        if v:
            rows.append((group, v))
            cols.update(v)
    order = ["naive", "gemm-im2col"]
    rest = sorted(c for c in cols if c not in order)
    cols = [c for c in order if c in cols] + rest
    best = lambda v: min((t for k, t in v.items() if k.startswith(("ours", "winograd")) and "1t" in k), default=None)
    print("| kernel | " + " | ".join(cols) + " | best 1-thread ours vs naive | vs gemm |")
    print("|---" * (len(cols) + 3) + "|")
    for group, v in rows:
        b = best(v)
        ratio = lambda k: f"{v[k] / b:.1f}x" if b and k in v else "-"
        print(f"| {group} | " + " | ".join(fmt(v.get(c)) for c in cols) + f" | {ratio('naive')} | {ratio('gemm-im2col')} |")


if __name__ == "__main__":
    main()
