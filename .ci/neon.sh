#!/usr/bin/env bash
# NEON path in CI: cross-build the forward-parity test for aarch64-unknown-linux-gnu and run it
# under qemu-user: every fixture model on the NEON kernels, at 1 and 3 threads; the Winograd
# kernel tests; every op against the scalar reference; the trainer's portable matrix product.
# Installs what it needs: the Rust target, Debian's gcc-aarch64-linux-gnu (linker and libc)
# and qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
rustup target add "$TARGET"

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# `-cpu max`: an ARMv8.x CPU with FEAT_FP16, so the f16-arithmetic path (`neon-fp16`) runs too.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu"
# One test binary, optimised, only the NEON test (qemu is slow: about 2 minutes here).
export CARGO_PROFILE_TEST_OPT_LEVEL=2
cargo test --target "$TARGET" --test forward_parity -- --nocapture --test-threads 1 neon 2>&1 | tee /tmp/neon-test.log
grep -q "\[neon\]: out rel L2" /tmp/neon-test.log || { echo "the NEON path did not run" >&2; exit 1; }
# The Winograd conv in both of its modes (the fixtures above only reach the weight-major one),
# the attention kernel, LayerNorm and GEGLU against the scalar reference.
cargo test --target "$TARGET" --test kernels_simd -- --test-threads 1 winograd attention layer_norm
# Every op of every fixture on the NEON kernels (Winograd on and off) against the scalar
# reference, op by op.
cargo test --target "$TARGET" --test backend_ops -- --nocapture --test-threads 1 2>&1 | tee /tmp/neon-ops.log
grep -q "\[neon\]" /tmp/neon-ops.log || { echo "the NEON op-by-op check did not run" >&2; exit 1; }
grep -q "\[neon-fp16\]" /tmp/neon-ops.log || { echo "the NEON FP16 op-by-op check did not run" >&2; exit 1; }
# Precision::F16 on the NEON FP16 kernels: every fixture's forward pass against float64 and a
# sampling run of the default model against f32 (accuracy only: QEMU timings mean nothing).
cargo test --target "$TARGET" --test f16_precision -- --nocapture --test-threads 1 2>&1 | tee /tmp/neon-f16.log
grep -q "\[neon-fp16\]: out rel L2" /tmp/neon-f16.log || { echo "the f16 forward check did not run" >&2; exit 1; }
# The trainer's matrix product on its portable kernel (what non-x86 machines train with).
cargo test --target "$TARGET" --features train --test train_gemm
