"""Multi-controller JAX: one process per host, all running the same program on one global mesh.

    QUANT_DISTRIBUTED=auto quant train ...                  # TPU pod / SLURM: JAX finds its peers
    QUANT_COORDINATOR=10.0.0.1:8476 QUANT_NUM_PROCESSES=2 QUANT_PROCESS_ID=0 quant train ...

`initialize()` (called by the `quant` CLI before anything touches a device) starts `jax.distributed`
when the environment asks for it. After that every process sees every device, and the trainer's jitted
programs run on global arrays. What stays on the host is split, then gathered:

  * prompts: the data order is the same on every host (a seeded permutation of a small index); each host
    encodes only its contiguous shard of a step's prompts and the token ids are gathered;
  * rewards: each host scores only its shard of the completions (math verification and code sandboxes
    are the expensive host work) and the scores are gathered, so every host makes the same decisions
    (dynamic sampling, advantages) and computes the same metrics;
  * logs, plots and metadata are written by process 0; orbax checkpoints by all processes.

Small Python objects travel through the coordinator's key-value store (`allgather`), not the devices,
so no program is compiled for them.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Callable, Sequence

import jax
import numpy as np

log = logging.getLogger("quant")

ENV_MODE = "QUANT_DISTRIBUTED"  # "auto": jax.distributed.initialize() detects the cluster (TPU pod, SLURM, ...)
ENV_COORDINATOR = "QUANT_COORDINATOR"  # host:port of process 0's coordinator service
ENV_NUM_PROCESSES = "QUANT_NUM_PROCESSES"
ENV_PROCESS_ID = "QUANT_PROCESS_ID"
ENV_TIMEOUT = "QUANT_GATHER_TIMEOUT_S"  # how long a host waits for the others' shards (default 1 h)

_started = False
_round = 0


def initialize(environ: dict[str, str] | None = None) -> bool:
    """Starts multi-process JAX if the environment asks for it; returns whether it did.

    Must run before any other JAX call that touches devices. Explicit settings need all three of
    QUANT_COORDINATOR, QUANT_NUM_PROCESSES and QUANT_PROCESS_ID; QUANT_DISTRIBUTED=auto leaves the
    detection to JAX (Cloud TPU pod slices, SLURM, Open MPI, ...).
    """
    global _started
    env = os.environ if environ is None else environ
    mode = env.get(ENV_MODE, "").strip().lower()
    explicit = {k: env.get(k) for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)}
    given = {k: v for k, v in explicit.items() if v}
    if _started:
        return True
    if mode not in ("", "auto", "off"):
        raise ValueError(f"{ENV_MODE}={mode!r} is not one of 'auto', 'off'")
    if mode == "off" or (not mode and not given):
        return False
    if given and len(given) < 3:
        missing = sorted(set(explicit) - set(given))
        raise ValueError(f"multi-process settings are incomplete: {', '.join(sorted(given))} set but "
                         f"{', '.join(missing)} missing")
    if given:
        coordinator = given[ENV_COORDINATOR]
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{ENV_COORDINATOR}={coordinator!r} is not HOST:PORT")
        try:
            num, pid = int(given[ENV_NUM_PROCESSES]), int(given[ENV_PROCESS_ID])
        except ValueError:
            raise ValueError(f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers, got "
                             f"{given[ENV_NUM_PROCESSES]!r} and {given[ENV_PROCESS_ID]!r}") from None
        if num < 1 or not 0 <= pid < num:
            raise ValueError(f"{ENV_PROCESS_ID}={pid} is not in [0, {ENV_NUM_PROCESSES}={num})")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
    else:
        jax.distributed.initialize()
    _started = True
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def started() -> bool:
    """Whether this process joined a multi-process run."""
    return _started


def is_primary() -> bool:
    """Process 0: the one that writes logs, plots and metadata."""
    return jax.process_index() == 0


def shard_range(n: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
    """This process's contiguous part [lo, hi) of n items (earlier processes get the extra ones)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    base, extra = divmod(n, count)
    lo = index * base + min(index, extra)
    return lo, lo + base + (index < extra)


def allgather(obj: Any) -> list[Any]:
    """Every process's `obj` (picklable), in process order; all processes must call it in the same order."""
    global _round
    if jax.process_count() == 1:
        return [obj]
    from jax._src import distributed  # the coordinator's key-value store (what orbax uses too)

    client = distributed.global_state.client
    timeout_ms = int(float(os.environ.get(ENV_TIMEOUT, 3600)) * 1000)
    me, n = jax.process_index(), jax.process_count()
    _round += 1
    key = lambda r, p: f"quant/allgather/{r}/{p}"
    client.key_value_set_bytes(key(_round, me), pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    out = [obj if p == me else pickle.loads(client.blocking_key_value_get_bytes(key(_round, p), timeout_ms))
           for p in range(n)]
    # Everyone has now written this round, so everyone has finished reading the previous one.
    if _round > 1:
        client.key_value_delete(key(_round - 1, me))
    return out


class HostError(RuntimeError):
    """Raised on every process when some processes failed a step that all of them take together."""


def gather_results(fn: Callable[[], Any]) -> list[Any]:
    """Runs `fn` here and returns every process's result, in process order.

    If `fn` raises on any process, every process raises `HostError` naming the failures, instead of the
    healthy ones waiting for a result that never comes.
    """
    if jax.process_count() == 1:
        return [fn()]
    try:
        out, err = fn(), None
    except Exception as e:  # noqa: BLE001 - reported to (and raised on) every process
        out, err = None, f"{type(e).__name__}: {e}"
    parts = allgather((err, out))
    failed = [(p, e) for p, (e, _) in enumerate(parts) if e is not None]
    if failed:
        raise HostError("; ".join(f"process {p}: {e}" for p, e in failed))
    return [o for _, o in parts]


def gather_shards(fn: Callable[[], Sequence[Any]]) -> list[Any]:
    """Concatenates each process's list `fn()` in process order (errors as in `gather_results`)."""
    return [x for part in gather_results(lambda: list(fn())) for x in part]


def check_shared_directory(directory, what: str = "checkpoint_dir") -> None:
    """Fails on every process unless all of them see the same `directory` (a path or a gs:// URL).

    Multi-host checkpoints are written by all processes into one directory, so it must be shared (a
    network file system or a bucket); per-host disks would give each host a different latest step.
    """
    if jax.process_count() == 1:
        return
    import secrets

    from etils import epath

    token = allgather(secrets.token_hex(8) if is_primary() else None)[0]
    marker = epath.Path(str(directory)) / f".quant-shared-{token}"
    if is_primary():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    allgather(None)  # written before anyone looks

    def look():
        if not (marker.exists() and marker.read_text() == token):
            raise ValueError(f"{what}={str(directory)!r} is not shared with process 0 (a file it wrote there is "
                             "not visible here): use a shared file system or a gs:// bucket")

    try:
        gather_results(look)
    finally:
        allgather(None)  # everyone has looked
        if is_primary():
            marker.unlink()


class ShardedReward:
    """A composed reward that scores only this host's shard of a batch and gathers the scores.

    Every host gets the same (total, parts) as a single process scoring the whole batch, and the
    components' diagnostics merged over hosts (counters summed, shares weighted by items scored).
    """

    def __init__(self, reward_fn):
        self.fn = reward_fn
        self._metrics: dict[str, float] = {}

    def __call__(self, completions: Sequence[str], samples: Sequence[dict]):
        if jax.process_count() == 1:
            total, parts = self.fn(completions, samples)
            self._metrics = self.fn.metrics()
            return total, parts
        lo, hi = shard_range(len(completions))

        def score():
            total, parts = self.fn(list(completions[lo:hi]), list(samples[lo:hi]))
            return np.asarray(total), {k: np.asarray(v) for k, v in parts.items()}, hi - lo, self.fn.metrics()

        shards = gather_results(score)
        total = np.concatenate([s[0] for s in shards]).astype(np.float32)
        parts = {k: np.concatenate([s[1][k] for s in shards]).astype(np.float32) for k in shards[0][1]}
        self._metrics = self.fn.merge_metrics([(s[2], s[3]) for s in shards])
        return total, parts

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)
