#!/usr/bin/env bash
# Installs etcd 3.4 from Debian (bookworm) for the etcd client tests (tests/etcd_client.rs) and,
# later, cluster mode:
#   etcd-server   the etcd daemon (/usr/bin/etcd); the tests start their own members on free
#                 loopback ports with their own data directories
#   etcd-client   etcdctl, for looking at a test cluster by hand
# No system service is started: policy-rc.d refuses every start during the install, and
# nothing here enables or starts the package's etcd unit (nothing listens on 2379 afterwards).
# Idempotent: when etcd is already on PATH it only prints its path.
# Usage: scripts/setup-etcd.sh      (needs root, or sudo without a password)
# Prints one line on success: the path of the etcd binary.
set -euo pipefail

ok() {
  command -v etcd >/dev/null 2>&1 && etcd --version >/dev/null 2>&1
}

if ! ok; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup-etcd: needs root (apt-get install)" >&2; exit 1; }
    sudo="sudo -n"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Apt's lists may be absent (fresh machine) or stale: refresh when the candidate is unknown.
  if ! apt-cache policy etcd-server 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    $sudo apt-get update -qq >&2
  fi
  # Keep maintainer scripts from starting services (the package's etcd unit) while installing.
  rc=/usr/sbin/policy-rc.d
  made_rc=""
  if [ ! -e "$rc" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$rc" >/dev/null
    $sudo chmod 755 "$rc"
    made_rc=1
  fi
  cleanup() { if [ -n "$made_rc" ]; then $sudo rm -f "$rc"; fi; }
  trap cleanup EXIT
  $sudo apt-get install -y -qq --no-install-recommends etcd-server etcd-client >&2
fi

ok || { echo "setup-etcd: etcd missing or not runnable after install" >&2; exit 1; }
command -v etcd
