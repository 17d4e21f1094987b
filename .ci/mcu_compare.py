"""Compares the firmware's digits.f32 with the host's x_0 tensors (sample --save-tensor) and
sums the firmware's per-digit SysTick ticks into instructions. Python standard library only.

    python3 .ci/mcu_compare.py QEMU_LOG DIGITS_F32 HOST_DIR
"""
import json
import math
import re
import struct
import sys

log_path, digits_path, host_dir = sys.argv[1:4]
fw = struct.unpack("<2560f", open(digits_path, "rb").read())
host = []
for k in range(10):
    b = open(f"{host_dir}/host-{k}.safetensors", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    s, e = json.loads(b[8 : 8 + n])["x_0"]["data_offsets"]
    host += struct.unpack(f"<{(e - s) // 4}f", b[8 + n + s : 8 + n + e])
same = sum(struct.pack("<f", a) == struct.pack("<f", b) for a, b in zip(fw, host))
rel = math.sqrt(sum((a - b) ** 2 for a, b in zip(fw, host)) / sum(b * b for b in host))
print(f"firmware vs host (scalar kernels): {same} of {len(host)} values bit-identical, rel L2 {rel:.3e}")

log = open(log_path).read()
cal = re.search(r"calibration: (\d+) instructions in (\d+) core-clock ticks", log)
ticks = [int(t) for t in re.findall(r"digit \d+: \d+ evaluations, (\d+) core-clock ticks", log)]
evals = int(re.search(r"digit \d+: (\d+) evaluations", log).group(1))
if cal and len(ticks) == 10:
    per_tick = int(cal.group(1)) / int(cal.group(2))
    insns = sum(ticks) / 10 * per_tick
    print(f"instructions per digit (QEMU -icount, {per_tick:.0f} a tick): {insns:.4g} "
          f"({insns / evals:.4g} per evaluation, {evals} evaluations)")
if same != len(host):
    sys.exit(1)
