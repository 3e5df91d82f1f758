#!/usr/bin/env bash
# Regression gate on the in-process pipeline's instructions per heartbeat, counted by
# valgrind's callgrind (repeatable on a noisy machine, unlike wall-clock time).
#
#   scripts/instructions.sh            compare with benches/instructions.budget; fail on > +10 %
#   scripts/instructions.sh --update   measure and write the budget
#
# Only `heartsink::bench::in_process_run` is counted (--toggle-collect): steady-state ver-3
# heartbeats (1 listener, 1 pool, 3 members) of 1000 known amphorae, verify → inflate → parse →
# apply, in batches of 64.
set -euo pipefail
cd "$(dirname "$0")/.."
budget_file=benches/instructions.budget
n=${HEARTSINK_INSTR_HEARTBEATS:-20000}
if ! command -v valgrind >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq valgrind) >&2
fi
cargo build --release --locked --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" --toggle-collect='*in_process_run*' \
  target/release/heartsink bench --pipeline-only "$n" >"$tmp/out" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
grep -q "\"accepted\":$n" "$tmp/out" || { echo "instructions: the pipeline did not accept all $n heartbeats: $(cat "$tmp/out")" >&2; exit 1; }
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$tmp/cg.out")
per=$((total / n))
if [ "${1:-}" = "--update" ]; then
  printf '# Instructions per heartbeat of the in-process pipeline (scripts/instructions.sh).\n# Measured %s; the gate fails above +10 %%.\nper_heartbeat = %s\n' "$(date -u +%F)" "$per" >"$budget_file"
  echo "instructions: $per per heartbeat (budget updated)"
  exit 0
fi
budget=$(awk -F' *= *' '/^per_heartbeat/ {print $2}' "$budget_file")
limit=$((budget * 110 / 100))
echo "instructions: $per per heartbeat (budget $budget, limit $limit)"
if [ "$per" -gt "$limit" ]; then
  echo "instructions: regression: $per > $limit (+10 % over the budget in $budget_file)" >&2
  exit 1
fi
