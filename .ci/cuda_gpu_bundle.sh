#!/usr/bin/env bash
# Builds, on a machine without a GPU, what .ci/cuda_gpu_check.sh runs on a GPU machine (which
# has no Rust toolchain): the CUDA test binaries, the bench example and the `sample` binary,
# release, stripped, in target/gpu-bundle. Carry that folder to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/gpu-bundle
rm -rf "$out"
mkdir -p "$out"
for t in cuda_parity cuda_kernels_compile cuda_alloc backend_ops; do
    bin=$(cargo test --release --features cuda --test "$t" --no-run --message-format=json |
        T="$t" python3 -c 'import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("executable") and t.get("name") == os.environ["T"] and "test" in t.get("kind", []):
        print(m["executable"])' | tail -n 1)
    [ -n "$bin" ] || { echo "no test binary for $t" >&2; exit 1; }
    cp "$bin" "$out/$t"
done
cargo build --release --features cuda --example bench_cuda --bin sample
cp target/release/examples/bench_cuda target/release/sample "$out/"
strip "$out"/cuda_parity "$out"/cuda_kernels_compile "$out"/cuda_alloc "$out"/backend_ops "$out"/bench_cuda "$out"/sample
# The tests find tests/fixtures and kernels/ through the path they were built in.
pwd >"$out/manifest_dir"
ls -l "$out"
du -sh "$out"
