"""Shared benchmark helpers: timing with warm-up, the matmul peak of this machine, table printing."""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp


def timeit(fn: Callable[[], object], warmup: int = 1, min_time: float = 2.0, min_iters: int = 3) -> float:
    """Seconds per call of `fn` (which must block until its result is ready), after warm-up calls."""
    for _ in range(warmup):
        fn()
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < min_time:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def matmul_peak_flops(n: int = 2048, dtype=jnp.float32, min_time: float = 2.0) -> float:
    """Achieved FLOP/s of one large jitted matmul: the practical compute ceiling of this device."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    sec = timeit(lambda: f(a, b).block_until_ready(), warmup=2, min_time=min_time)
    return 2 * n**3 / sec


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:,.3g}" if isinstance(c, float) else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def forward_setup(graphdef, cfg, batch: int, length: int):
    """A jitted full forward (params, tokens, positions, mask) -> logits, and a random full batch for it."""
    from flax import nnx

    @jax.jit
    def forward(params, tokens_bt, positions_bt, mask_bt):
        logits_btv, _ = nnx.merge(graphdef, params)(tokens_bt, positions_bt, mask_bt)
        return logits_btv

    tokens = jax.random.randint(jax.random.key(0), (batch, length), 0, cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    return forward, (tokens, positions, jnp.ones((batch, length), bool))
