#!/usr/bin/env bash
# Installs the real Ganeti 3.0.2 confd peers from Debian (bookworm) for the confd interop tests:
#   ganeti-3.0          the Python code, incl. the real ConfdClient (/usr/share/ganeti/3.0)
#   ganeti-haskell-3.0  the real ganeti-confd daemon (/usr/lib/ganeti/3.0/usr/sbin/ganeti-confd)
# and the directories the daemon needs to run standalone (/var/lib/ganeti, /var/run/ganeti,
# /var/log/ganeti). No system service is started: policy-rc.d refuses every start during the
# install, and nothing here enables or starts a unit.
# Idempotent: when both peers are usable it only prints their paths.
# Usage: scripts/setup-ganeti.sh      (needs root, or sudo without a password)
# Prints two lines on success: the daemon's path, and the PYTHONPATH for the Python client.
set -euo pipefail

confd=/usr/lib/ganeti/3.0/usr/sbin/ganeti-confd
pypath=/usr/share/ganeti/3.0
py=/usr/bin/python3

ok() {
  [ -x "$confd" ] && PYTHONPATH=$pypath "$py" -c 'import ganeti.confd.client' 2>/dev/null
}

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "setup-ganeti: needs root (apt-get install)" >&2; exit 1; }
  sudo="sudo -n"
fi

if ! ok; then
  export DEBIAN_FRONTEND=noninteractive
  # Apt's lists may be absent (fresh machine) or stale: refresh when the candidate is unknown.
  if ! apt-cache policy ganeti-haskell-3.0 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    $sudo apt-get update -qq >&2
  fi
  # Keep maintainer scripts from starting services (ssh, ganeti, lvm…) while installing.
  rc=/usr/sbin/policy-rc.d
  made_rc=""
  if [ ! -e "$rc" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$rc" >/dev/null
    $sudo chmod 755 "$rc"
    made_rc=1
  fi
  cleanup() { if [ -n "$made_rc" ]; then $sudo rm -f "$rc"; fi; }
  trap cleanup EXIT
  $sudo apt-get install -y -qq --no-install-recommends ganeti-3.0 ganeti-haskell-3.0 >&2
fi

$sudo mkdir -p /var/lib/ganeti /var/run/ganeti /var/log/ganeti

[ -x "$confd" ] || { echo "setup-ganeti: $confd missing after install" >&2; exit 1; }
PYTHONPATH=$pypath "$py" -c 'import ganeti.confd.client' >&2 || {
  echo "setup-ganeti: the Ganeti Python client does not import under $py" >&2
  exit 1
}
echo "$confd"
echo "$pypath"
