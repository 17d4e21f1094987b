#!/usr/bin/env bash
# The firmware example (examples/mcu/) under QEMU: build it for thumbv7em-none-eabihf, run it on
# the mps2-an500 machine (Cortex-M7) with semihosting, and check its ten digits against the
# same model, seeds and sampler on the host (scalar kernels, direct convs: the firmware's float
# path, so bit-identical). TD_MCU_STEPS (default 10 here, 20 in the firmware) sets the DDIM
# steps. Installs what it needs: the Rust target and Debian's qemu-system-arm.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add thumbv7em-none-eabihf
if ! command -v qemu-system-arm >/dev/null; then
    SUDO=
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends qemu-system-arm
fi

STEPS=${TD_MCU_STEPS:-10}
(cd examples/mcu && TD_MCU_STEPS=$STEPS cargo build --release)
ELF=$PWD/examples/mcu/target/thumbv7em-none-eabihf/release/tinydiffusion-mcu
if command -v llvm-size >/dev/null; then llvm-size -A "$ELF" | grep -E '^(section|\.text|\.rodata|\.data|\.bss)'; fi

cargo build --release --bin sample
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT
# -icount shift=0: virtual time advances 1 ns an instruction, which the firmware's SysTick
# readings turn into instruction counts.
(cd "$RUN" && timeout 600 qemu-system-arm -machine mps2-an500 -cpu cortex-m7 -nographic \
    -icount shift=0 -semihosting-config enable=on,target=native -kernel "$ELF") | tee "$RUN/qemu.log"
for k in 0 1 2 3 4 5 6 7 8 9; do
    target/release/sample --model weights/mcu --scheduler ddim --steps "$STEPS" --batch 1 \
        --class-label "$k" --seed "$k" --kernels scalar --conv direct --threads 1 --quiet \
        --out none --save-tensor "$RUN/host-$k.safetensors"
done
python3 .ci/mcu_compare.py "$RUN/qemu.log" "$RUN/digits.f32" "$RUN"
if [ -n "${TD_MCU_OUT:-}" ]; then cp "$RUN/digits.pgm" "$RUN/digits.f32" "$RUN/qemu.log" "$TD_MCU_OUT/"; fi
