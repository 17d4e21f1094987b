#!/usr/bin/env bash
# The GPU checks of the CUDA backend, in one run on a GPU machine (CUDA 13 driver, NVRTC from
# the CUDA toolkit or the `nvidia-cuda-nvrtc` wheel), from the repo root, with the binaries
# of .ci/cuda_gpu_bundle.sh in target/gpu-bundle:
#     bash .ci/cuda_gpu_check.sh 2>&1 | tee "$OUT/gpu.log"
# Prints: the GPU; the NVRTC compile test; every parity line (rel L2 against diffusers and
# CPU vs GPU, with its bar); the bench table; a `sample --device cuda` run; then PyTorch's
# numbers if torch and diffusers are importable. Exit status 1 if a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
b=target/gpu-bundle
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

lib=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
hits = [p for d in dirs for p in glob.glob(os.path.join(d, "nvidia", "**", "libnvrtc.so.13*"), recursive=True)]
print(os.path.dirname(hits[0]) if hits else "")
PY
)
if [ -z "$lib" ]; then
    hit=$(find / -name 'libnvrtc.so.13*' -not -path '/proc/*' 2>/dev/null | head -n 1)
    [ -n "$hit" ] && lib=$(dirname "$hit")
fi
echo "libnvrtc: ${lib:-not found}"
export LD_LIBRARY_PATH="${lib:+$lib:}/usr/local/nvidia/lib64:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

baked=$(cat "$b/manifest_dir")
if [ "$baked" != "$PWD" ] && [ ! -e "$baked" ]; then
    mkdir -p "$(dirname "$baked")" && ln -s "$PWD" "$baked"
fi
export TINYDIFFUSION_REQUIRE_NVRTC=1 TINYDIFFUSION_REQUIRE_GPU=1
rc=0
echo "== NVRTC compile (sm_80, sm_90)"
timeout 300 "$b/cuda_kernels_compile" --nocapture || rc=1
echo "== parity: fixtures vs diffusers, CIFAR-10 model CPU vs GPU"
timeout 400 "$b/cuda_parity" --nocapture --test-threads 1 || rc=1
echo "== every op on the GPU against the CPU reference, op by op (bar 5e-3)"
timeout 300 "$b/backend_ops" --nocapture --test-threads 1 cuda || rc=1
echo "== zero host allocations per step"
timeout 120 "$b/cuda_alloc" || rc=1
echo "== bench (CIFAR-10 UNet, batch 1 and 64, DDIM 50 x 64)"
timeout 300 "$b/bench_cuda" || rc=1
echo "== sample --device cuda"
timeout 120 "$b/sample" --model tests/fixtures/tiny-rgb16 --device cuda --scheduler ddim \
    --steps 20 --batch 4 --out /tmp/gpu_samples.png || rc=1
echo "== PyTorch reference (needs torch with CUDA and diffusers)"
if python3 -c 'import torch, diffusers' 2>/dev/null; then
    PYTHONUNBUFFERED=1 timeout 400 python3 benches/torch_cuda_reference.py || rc=1
else
    echo "SKIP: torch or diffusers not importable (carry a diffusers wheel)"
fi
exit $rc
