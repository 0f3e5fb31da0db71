#!/usr/bin/env bash
# Build every cowfs fuzz target and run each for a short time (CI smoke fuzzing).
#
#   fuzz/run-short.sh [SECONDS_PER_TARGET]     (default 20)
#
# Needs cargo-fuzz (installed from crates.io if missing) and runs on a stable
# toolchain through RUSTC_BOOTSTRAP=1. Exits non-zero on the first target that
# crashes; libFuzzer leaves the input under fuzz/artifacts/<target>/. Keep such an
# input under fuzz/regressions/<target>/ once fixed: tests/fuzz_regressions.rs replays
# that folder in every `cargo test`, and this script uses it as a seed corpus.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz build -O
for target in $(cargo fuzz list); do
    case "$target" in
        pool_image) max_len=262144 ;;
        *) max_len=4200 ;;
    esac
    mkdir -p "corpus/$target"
    dirs=("corpus/$target")
    # Seeds (valid inputs, so the fuzzer starts from files that load) and kept
    # crash inputs: read, never written (new inputs go to corpus/).
    for d in "seeds/$target" "regressions/$target"; do
        if [ -d "$d" ]; then
            dirs+=("$d")
        fi
    done
    echo "== $target: ${secs}s"
    log="$(mktemp)"
    if ! cargo fuzz run -O "$target" "${dirs[@]}" -- \
        -max_total_time="$secs" -max_len="$max_len" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "== $target FAILED: the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E 'stat::number_of_executed_units|^Done' "$log" || true
    rm -f "$log"
done
echo "== all fuzz targets ran ${secs}s without a failure"
