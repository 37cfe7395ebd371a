#!/usr/bin/env bash
# Installs Quant and its system dependency (bubblewrap, the sandbox for code rewards).
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh --test   # the package plus test-only references (pytest, torch CPU, transformers)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bwrap >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "warning: bubblewrap (bwrap) not found; install it to run code rewards in the sandbox" >&2
  fi
fi
extra=""; [ "${1:-}" = "--test" ] && extra="[test]"
python3 -m pip install -q --disable-pip-version-check -e ".${extra}"
