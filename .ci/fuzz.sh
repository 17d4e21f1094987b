#!/usr/bin/env bash
# Fuzzing in CI: every cargo-fuzz target (fuzz/) for a bounded time, first on the stable
# toolchain without a sanitizer, then with AddressSanitizer where it builds (nightly features
# through RUSTC_BOOTSTRAP=1). Fails on any crash, leak, timeout or out-of-memory.
# Budget on 2 cores: about 4 x 60 s + 4 x 30 s of fuzzing, clip_tokenizer 20 s + 10 s, text_encoder 30 s + 15 s, plus two
# builds.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
TARGETS=(load_model scheduler_config c_api forward_bytes clip_tokenizer text_encoder)
SECS="${FUZZ_SECONDS:-60}"
ASAN_SECS="${FUZZ_ASAN_SECONDS:-30}"
# The tokenizer is small, plain Rust with no unsafe: a third of the time is plenty.
secs_for() {
    local target=$1 secs=$2
    if [ "$target" = clip_tokenizer ]; then
        echo $(( secs / 3 > 0 ? secs / 3 : 1 ))
    elif [ "$target" = text_encoder ]; then
        # Its kernels are the UNet's (fuzzed by load_model/forward_bytes): half the time.
        echo $(( secs / 2 > 0 ? secs / 2 : 1 ))
    else
        echo "$secs"
    fi
}
# libFuzzer options: fail on a slow input (10 s) or more than 2 GiB.
OPTS=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Each run works on a scratch copy of the seeds so the committed corpus is untouched.
run_target() {
    local target=$1 secs=$2; shift 2
    local work log rc=0
    work=$(mktemp -d)
    log=$(mktemp)
    cp fuzz/corpus/"$target"/seed-* "$work"/
    echo "== fuzz $target ${secs}s $*"
    cargo fuzz run "$@" "$target" "$work" -- -max_total_time="$secs" "${OPTS[@]}" >"$log" 2>&1 || rc=$?
    # libFuzzer's summary: executions, coverage (cov:), corpus, speed.
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|Done )' "$log" || true
    if [ "$rc" -ne 0 ]; then
        echo "!! $target failed (exit $rc):"
        tail -80 "$log"
    fi
    rm -rf "$work" "$log"
    return "$rc"
}

echo "== build (stable, no sanitizer)"
cargo fuzz build -s none
for t in "${TARGETS[@]}"; do
    run_target "$t" "$(secs_for "$t" "$SECS")" -s none
done

echo "== build (AddressSanitizer)"
if RUSTC_BOOTSTRAP=1 cargo fuzz build >/tmp/fuzz-asan-build.log 2>&1; then
    for t in "${TARGETS[@]}"; do
        RUSTC_BOOTSTRAP=1 run_target "$t" "$(secs_for "$t" "$ASAN_SECS")"
    done
else
    echo "skipping the AddressSanitizer runs: the ASan build failed on this toolchain:"
    tail -5 /tmp/fuzz-asan-build.log
fi
echo "== fuzzing: no crash"
