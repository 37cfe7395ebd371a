#!/usr/bin/env bash
# Installs Quant and its system dependency (bubblewrap, the sandbox for code rewards).
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh --test   # the package plus test-only references (pytest, torch CPU, transformers)
#   bash scripts/setup.sh --tpu    # the package plus JAX's TPU runtime (Cloud TPU VMs; launch/tpu.py uses it)
#   bash scripts/setup.sh --cuda   # the package plus JAX's CUDA 12 runtime (GPU nodes; launch/slurm.py)
set -euo pipefail
cd "$(dirname "$0")/.."
# The code sandbox (rewards/sandbox.py) needs bubblewrap, util-linux (prlimit, setpriv, taskset) and a
# system python3 at /usr/bin/python3 that an unprivileged uid can read.
pkgs=""
command -v bwrap >/dev/null 2>&1 || pkgs="$pkgs bubblewrap"
for tool in prlimit setpriv taskset; do
  command -v "$tool" >/dev/null 2>&1 || { pkgs="$pkgs util-linux"; break; }
done
[ -x /usr/bin/python3 ] || pkgs="$pkgs python3"
if [ -n "$pkgs" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $pkgs >/dev/null
  else
    echo "warning: missing$pkgs; install them to run code rewards in the sandbox" >&2
  fi
fi
extra=""; accel=""
for arg in "$@"; do
  case "$arg" in
    --test) extra="[test]" ;;
    --tpu) accel="tpu" ;;
    --cuda) accel="cuda12" ;;
    *) echo "setup.sh: unknown option $arg (use --test, --tpu or --cuda)" >&2; exit 2 ;;
  esac
done
PY=python3
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  # The pinned JAX needs Python >= 3.11; older systems (e.g. Cloud TPU VM images with 3.10) get a
  # virtual environment in .venv with a uv-managed Python 3.11: activate it (or use .venv/bin/quant).
  echo "python3 is $(python3 -V 2>&1 | cut -d' ' -f2) (< 3.11): creating .venv with Python 3.11" >&2
  python3 -m pip install -q --user --disable-pip-version-check uv
  python3 -m uv venv --seed --python 3.11 .venv
  PY=.venv/bin/python
fi
"$PY" -m pip install -q --disable-pip-version-check -e ".${extra}"
if [ -n "$accel" ]; then  # the accelerator runtime of the same JAX version as the CPU one pinned above
  jax_version=$("$PY" -c "import jax; print(jax.__version__)")
  "$PY" -m pip install -q --disable-pip-version-check "jax[${accel}]==${jax_version}"
fi
