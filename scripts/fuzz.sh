#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded number of inputs.
#
# usage: scripts/fuzz.sh [RUNS]        (RUNS defaults to 20000 inputs per target)
#
# Targets (every [[bin]] of fuzz/Cargo.toml, as `cargo fuzz list` prints them): envelope,
# message, seqwin, confd, service, registry.
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/, copied into the gitignored
# working corpus fuzz/corpus/<target>/, which keeps what earlier runs found) and stops after RUNS
# inputs or 120 s, whichever comes first. Exits non-zero when any target crashes; the crashing
# input is left in fuzz/artifacts/<target>/ (replay it with
# `cd fuzz && cargo fuzz run -s none <target> artifacts/<target>/<file>`).
#
# Toolchain: works on plain stable Rust. cargo-fuzz's default AddressSanitizer build passes
# `-Zsanitizer=address`, which stable rustc refuses, so the targets are built with `-s none`
# (coverage instrumentation, debug assertions and overflow checks, no ASan). heartsink's
# protocol code is `#![forbid(unsafe_code)]`, so ASan would add little there. To get ASan
# anyway, set FUZZ_SANITIZER=address: the script then sets RUSTC_BOOTSTRAP=1 so that stable
# rustc accepts the -Z flag (ASan does not instrument libdeflate's C code either way).
#
# Environment: FUZZ_SANITIZER (none|address, default none), FUZZ_MAX_TOTAL_TIME (seconds per
# target, default 120), FUZZ_TARGETS (space-separated subset, default all).
set -euo pipefail

runs="${1:-20000}"
if ! [[ "$runs" =~ ^[0-9]+$ ]] || [ "$runs" -eq 0 ]; then
    echo "usage: $0 [RUNS]   (RUNS: a positive number of inputs per target, default 20000)" >&2
    exit 2
fi
max_total_time="${FUZZ_MAX_TOTAL_TIME:-120}"
sanitizer="${FUZZ_SANITIZER:-none}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
cd "$fuzz_dir"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

case "$sanitizer" in
    none) ;;
    *) export RUSTC_BOOTSTRAP=1 ;;
esac
fuzz_flags=(--sanitizer "$sanitizer")

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
lock_before="$(cksum < Cargo.lock 2>/dev/null || true)"

start=$(date +%s)
echo "== building fuzz targets (sanitizer: $sanitizer)"
# One build of all targets: `cargo fuzz run` below then finds them up to date.
cargo fuzz build "${fuzz_flags[@]}"
echo "== built in $(( $(date +%s) - start )) s"

failed=()
for target in $targets; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    if [ -d "seeds/$target" ]; then
        cp seeds/"$target"/* "$corpus"/
    fi
    echo "== $target: up to $runs inputs or ${max_total_time} s, corpus $corpus ($(ls "$corpus" | wc -l) files)"
    t0=$(date +%s)
    log="$(mktemp)"
    if cargo fuzz run "${fuzz_flags[@]}" "$target" "$corpus" -- \
        -runs="$runs" -max_total_time="$max_total_time" -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
        echo "== $target: ok in $(( $(date +%s) - t0 )) s"
    else
        # Show what crashed: the panic message and where libFuzzer saved the input.
        grep -A3 -E 'panicked at|ERROR: libFuzzer' "$log" | grep -v -E '^\s+[0-9]+: |^\s+at |^stack backtrace' >&2 || true
        grep -E 'Test unit written to' "$log" >&2 || tail -n 20 "$log" >&2
        echo "replay: (cd fuzz && cargo fuzz run --sanitizer $sanitizer $target artifacts/$target/<file>)" >&2
        echo "== $target: FAILED after $(( $(date +%s) - t0 )) s" >&2
        failed+=("$target")
    fi
    rm -f "$log"
done

if [ "$lock_before" != "$(cksum < Cargo.lock)" ]; then
    echo "note: fuzz/Cargo.lock changed (heartsink's dependencies moved); commit it" >&2
fi
echo "== total $(( $(date +%s) - start )) s"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: all targets ok ($runs inputs each)"
