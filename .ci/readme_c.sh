#!/usr/bin/env bash
# The C API as a C programmer meets it (issue 25): the README's C example, extracted from
# README.md, compiled with `gcc -std=c99 -Wall -Wextra -pedantic -Werror` and run on the
# shipped model (`weights/`) from the repository root; both example programs in examples/c
# built the same way and run; the header included from C++. Needs
# target/release/libtinydiffusion.a (`cargo build --release -p tinydiffusion-capi`; built here
# if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-gcc}
CXX=${CXX:-g++}
LIB=target/release/libtinydiffusion.a
LIBS="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
CFLAGS="-std=c99 -Wall -Wextra -pedantic -Werror -O2 -I include"
OUT=target/readme_c
mkdir -p "$OUT"
[ -f "$LIB" ] || cargo build --release -p tinydiffusion-capi

echo "-- README.md's C example (## Using from C), on weights/"
awk '/^## Using from C/ {s = 1} s && /^```c$/ {c = 1; next} c && /^```$/ {exit} c {print}' \
    README.md > "$OUT/app.c"
[ -s "$OUT/app.c" ] || { echo "no \`\`\`c block under '## Using from C' in README.md"; exit 1; }
$CC $CFLAGS "$OUT/app.c" "$LIB" $LIBS -o "$OUT/app"
"$OUT/app"

echo "-- examples/c/sample.c"
$CC $CFLAGS examples/c/sample.c "$LIB" $LIBS -o "$OUT/sample_c"
"$OUT/sample_c" weights "$OUT/sample.pgm" --batch 2 --seed 1 --scheduler ddim --steps 5
[ -s "$OUT/sample.pgm" ]

echo "-- examples/c/from_memory.c"
$CC $CFLAGS examples/c/from_memory.c "$LIB" $LIBS -o "$OUT/from_memory"
"$OUT/from_memory" weights 1 2 5

echo "-- the header from C++"
printf '#include "tinydiffusion.h"\nint main() { td_sampler_desc d = td_sampler_desc_default();\n  return d.struct_size == sizeof d ? 0 : 1; }\n' > "$OUT/header.cpp"
$CXX -std=c++11 -Wall -Wextra -pedantic -Werror -I include "$OUT/header.cpp" "$LIB" $LIBS -o "$OUT/header_cpp"
"$OUT/header_cpp"
echo "readme_c: ok"
