#!/usr/bin/env bash
# GPU benchmark entry point for the rented H200 (device tool), run from the repo root:
#
#     bash bench/device.sh          # carry ['.whl']; about 5 min; suggested timeout_s 480
#
# .whl/ holds the pure-python wheels the image lacks or has in other versions (flax 0.12.8, optax 0.2.8,
# orbax-checkpoint 0.12.8, ml-collections 1.1.0); jax/jaxlib are the image's own (0.11.2, CUDA 13).
# Writes $OUT/gpu_bench.log (everything printed) and $OUT/gpu_bench.json (results, rewritten after each
# benchmark, so a timeout still leaves what finished). Extra arguments go to bench/gpu.py.
set -u -o pipefail
OUT=${OUT:-/tmp/quant_bench_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_bench.log
{
  echo "== $(date -u +%FT%TZ) $(uname -m) $(python3 --version)"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl || echo "WARNING: wheel install failed; using the image's packages"
  else
    echo "WARNING: no .whl/ carried; using the image's packages"
  fi
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit --format=csv
  python3 - <<'EOF'
import importlib.metadata as md
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "flax", "optax", "orbax-checkpoint",
             "ml-collections", "chex", "numpy", "ml-dtypes", "torch", "transformers", "safetensors"):
    try:
        print(f"{name:20s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name:20s} (not installed)")
import flax, optax
print("flax from", flax.__file__, "| optax from", optax.__file__)
EOF
  PYTHONUNBUFFERED=1 timeout 420 python3 bench/gpu.py --json "$OUT/gpu_bench.json" "$@"
  echo "== gpu.py exit code $?"
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
} 2>&1 | tee "$LOG"
