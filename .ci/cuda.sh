#!/usr/bin/env bash
# CUDA backend checks that need no GPU: `--features cuda` builds, and every kernels/*.cu
# compiles with NVRTC (CUDA 13) to PTX and to a CUBIN for sm_80 and sm_90.
# NVRTC comes from PyPI's `nvidia-cuda-nvrtc` wheel (libnvrtc.so.13), installed into a
# folder of its own; nothing CUDA is needed otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

NVRTC_VERSION="${NVRTC_VERSION:-13.0.88}"
NVRTC_DIR="${NVRTC_DIR:-target/ci-nvrtc-$NVRTC_VERSION}"

echo "== NVRTC $NVRTC_VERSION (PyPI nvidia-cuda-nvrtc) into $NVRTC_DIR"
if ! ls "$NVRTC_DIR"/nvidia/cu13/lib/libnvrtc.so.13* >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$NVRTC_DIR" "nvidia-cuda-nvrtc==$NVRTC_VERSION"
fi
lib="$(dirname "$(ls "$NVRTC_DIR"/nvidia/cu13/lib/libnvrtc.so.13* | head -n1)")"
export LD_LIBRARY_PATH="$(cd "$lib" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "libnvrtc: $lib"

echo "== build with --features cuda"
cargo build --features cuda --lib --bins

echo "== every kernels/*.cu compiles (NVRTC, sm_80 and sm_90)"
TINYDIFFUSION_REQUIRE_NVRTC=1 cargo test --features cuda --test cuda_kernels_compile -- --nocapture
