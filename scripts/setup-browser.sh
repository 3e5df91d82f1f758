#!/usr/bin/env bash
# Installs what the status page's browser test (tests/console_browser.rs) drives:
#   chromium, chromium-driver   Debian's headless browser and its WebDriver server
#                               (/usr/bin/chromium, /usr/bin/chromedriver), by apt
#   selenium                    the WebDriver client from PyPI, in a private virtualenv
#                               (default target/peers/browser)
# Idempotent: what is already there is reused.
# Usage: scripts/setup-browser.sh [VENV_DIR]   (apt needs root, or sudo without a password)
# Prints three lines on success: python=VENV_PYTHON, chromium=PATH, chromedriver=PATH.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/target/peers/browser}

browser_ok() {
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
    && chromedriver --version >/dev/null 2>&1
}

if ! browser_ok; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup-browser: needs root (apt-get install)" >&2; exit 1; }
    sudo="sudo -n"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Apt's lists may be absent (fresh machine) or stale: refresh when the candidate is unknown.
  if ! apt-cache policy chromium-driver 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    $sudo apt-get update -qq >&2
  fi
  $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >&2
fi
browser_ok || { echo "setup-browser: chromium or chromedriver missing or not runnable after install" >&2; exit 1; }

stamp=$venv/.heartsink-ok
if ! { [ -f "$stamp" ] && "$venv/bin/python" -c 'import selenium' 2>/dev/null; }; then
  py=""
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys, venv; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
      py=$cand; break
    fi
  done
  [ -n "$py" ] || { echo "setup-browser: no Python >= 3.9 with venv found" >&2; exit 1; }
  rm -rf "$venv"
  "$py" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'selenium==4.*' >&2
  "$venv/bin/python" -c 'import selenium.webdriver' >&2
  touch "$stamp"
fi
echo "python=$venv/bin/python"
echo "chromium=$(command -v chromium)"
echo "chromedriver=$(command -v chromedriver)"
