#!/usr/bin/env bash
# The core's unit tests under Miri (undefined-behaviour checker), on the scalar kernels: the
# SIMD intrinsics and the memory map are outside what Miri can run. Needs a nightly toolchain
# with the `miri` and `rust-src` components (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
TOOLCHAIN="${MIRI_TOOLCHAIN:-nightly}"
if ! cargo +"$TOOLCHAIN" miri --version >/dev/null 2>&1; then
    rustup component add --toolchain "$TOOLCHAIN" miri rust-src
fi
export TINYDIFFUSION_KERNELS=scalar
# Isolation off: the tests read the CPU count and the kernel-path environment variable.
# Permissive provenance: the C API tests pass made-up addresses (2, 4) to check alignment.
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation -Zmiri-permissive-provenance}"
cargo +"$TOOLCHAIN" miri setup
# The C API's pointer checks and panic boundary, the thread team, the memory plan, the noise
# generator: every unit test of the library crate.
cargo +"$TOOLCHAIN" miri test --lib
