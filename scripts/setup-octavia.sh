#!/usr/bin/env bash
# Installs the real Octavia 19.0.0 receive/send code into a private virtualenv for the
# interop tests and the bench. Idempotent: an existing, complete venv is reused.
# Usage: scripts/setup-octavia.sh [VENV_DIR]   (default: target/peers/octavia)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/target/peers/octavia}
stamp=$venv/.heartsink-ok
if [ -f "$stamp" ] && "$venv/bin/python" -c 'import octavia' 2>/dev/null; then
  echo "$venv"
  exit 0
fi
py=""
for cand in python3.11 python3.12 python3.13 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    py=$cand; break
  fi
done
[ -n "$py" ] || { echo "setup-octavia: no Python >= 3.11 with venv found" >&2; exit 1; }
rm -rf "$venv"
"$py" -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check 'octavia==19.0.0' pyroute2 >&2
"$venv/bin/python" -c 'import octavia.amphorae.backends.health_daemon.status_message' >&2
touch "$stamp"
echo "$venv"
