"""Forward throughput of the decoder on this machine, as tokens/s and as a fraction of the matmul peak.

    python bench/forward.py            # tiny preset and a ~100M-parameter config

FLOPs count the useful work: 2 x (matmul parameters) per token plus causal attention (average context
T/2). The peak is one large f32 matmul timed in the same process.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import forward_setup, matmul_peak_flops, print_table, timeit  # noqa: E402
from models.config import preset  # noqa: E402
from models.transformer import init_model  # noqa: E402

SETTINGS = [("tiny", 8, 256), ("tiny", 32, 256), ("bench_100m", 4, 256)]


def main():
    peak = matmul_peak_flops()
    print(f"device: {jax.devices()[0].device_kind}  matmul peak: {peak / 1e9:.1f} GFLOP/s (f32, 2048^3)\n")
    rows = []
    for name, b, t in SETTINGS:
        cfg = preset(name)
        graphdef, params = nnx.split(init_model(cfg))

        forward, (tokens, positions, mask) = forward_setup(graphdef, cfg, b, t)
        sec = timeit(lambda: forward(params, tokens, positions, mask).block_until_ready())
        tok_s = b * t / sec
        flops = cfg.flops_per_token(context=t // 2) * tok_s
        rows.append([name, f"{cfg.num_params() / 1e6:.1f}M", b, t, f"{sec * 1e3:.1f}", f"{tok_s:,.0f}",
                     f"{flops / 1e9:.1f}", f"{flops / peak:.0%}"])
    print_table(["model", "params", "batch", "seq", "ms/fwd", "tokens/s", "GFLOP/s", "of peak"], rows)


if __name__ == "__main__":
    main()
