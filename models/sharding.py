"""Device mesh and the one table that maps logical axis names to mesh axes.

Models name only logical axes (`embed`, `heads`, `mlp`, ...). `LOGICAL_RULES` says where each lives on
the ('data', 'fsdp', 'tensor') mesh: parameters are sharded FSDP-style over 'fsdp' along their model
dimension and tensor-parallel over 'tensor' along heads / mlp / vocab; batches over ('data', 'fsdp').
A dimension whose size the mesh axes do not divide is replicated instead (e.g. 2 KV heads on a
tensor axis of 4), so every preset runs on every mesh.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: dict[str, Any] = {
    "batch": BATCH_AXES,
    "length": None,
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
}


ENV_CPU_DEVICES = "QUANT_CPU_DEVICES"
MAX_CPU_DEVICES = 8


def cpu_device_count(environ: dict[str, str] | None = None, cores: int | None = None) -> int | None:
    """How many CPU devices `use_cpu_cores` asks for (None: the user's XLA_FLAGS / JAX setting decides).

    QUANT_CPU_DEVICES=N asks for N (it wins over XLA's flag). Otherwise, unless XLA_FLAGS has
    --xla_force_host_platform_device_count or JAX_NUM_CPU_DEVICES is set, the largest power of two <=
    min(usable cores, 8), so that batch sizes that are powers of two divide; processes started together
    on this machine (a loopback coordinator) split its cores.
    """
    env = os.environ if environ is None else environ
    asked = env.get(ENV_CPU_DEVICES, "").strip()
    if asked:
        if not asked.isdigit() or int(asked) < 1:
            raise ValueError(f"{ENV_CPU_DEVICES}={asked!r} is not a positive integer")
        return int(asked)
    if "xla_force_host_platform_device_count" in env.get("XLA_FLAGS", "") or env.get("JAX_NUM_CPU_DEVICES"):
        return None
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    num = env.get("QUANT_NUM_PROCESSES", "")
    if env.get("QUANT_COORDINATOR", "").startswith(("127.", "localhost")) and num.isdigit() and int(num) > 1:
        cores //= int(num)  # several processes on this machine (launch/local.py) share its cores
    return 1 << (max(1, min(cores, MAX_CPU_DEVICES)).bit_length() - 1)


def use_cpu_cores(environ: dict[str, str] | None = None) -> int | None:
    """Makes JAX's CPU backend expose one device per core (see `cpu_device_count`); returns the count set.

    XLA:CPU runs one device's program on about one core; only large matrix products use its thread
    pool. With a device per core, a mesh over them runs data-parallel work (sampling, the train step) on
    every core. Must run before JAX starts its backends (the `quant` CLI calls it first); afterwards it
    changes nothing and returns None. GPU and TPU devices are unaffected: they stay the default devices.
    """
    count = cpu_device_count(environ)
    from jax._src import xla_bridge

    if count is None or xla_bridge.backends_are_initialized():
        return None
    jax.config.update("jax_num_cpu_devices", count)
    return count


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ('data', 'fsdp', 'tensor') mesh.

    Args:
      shape: three sizes; one of them may be -1 to take all remaining devices.
      devices: defaults to all devices of all processes.

    Returns:
      A `jax.sharding.Mesh` with Auto axis types (GSPMD decides the layouts of intermediates).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = [int(s) for s in shape]
    if len(shape) != 3:
        raise ValueError(f"mesh.shape must have 3 entries for {MESH_AXES}, got {tuple(shape)}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape {tuple(shape)}: sizes must be positive, with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh.shape {tuple(shape)} does not fit {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh.shape {tuple(shape)} needs {math.prod(shape)} devices but {len(devices)} are available")
    if devices[0].platform == "tpu":  # follow the physical torus (ICI) so neighbours on an axis are linked
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    else:  # devices are ordered by process: each host holds a contiguous block of the batch
        grid = np.asarray(devices, dtype=object).reshape(shape)
    # jax.make_mesh would default to Explicit axes in this JAX version; Mesh gives Auto axes.
    return Mesh(grid, MESH_AXES)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | jax.sharding.AbstractMesh | None = None) -> P:
    """Maps logical axis names to a PartitionSpec via `LOGICAL_RULES`.

    With `shape` and `mesh`, a dimension the mesh axes do not divide is replicated, and a mesh axis is
    used at most once (the first dimension that asks for it wins).
    """
    spec, used = [], set()
    for i, name in enumerate(names):
        if name is not None and name not in LOGICAL_RULES:
            raise KeyError(f"unknown logical axis {name!r}; known: {sorted(LOGICAL_RULES)}")
        axes = LOGICAL_RULES.get(name) if name is not None else None
        if axes is None:
            spec.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
            axes = tuple(a for a in axes if sizes.get(a, 1) > 1)
            if shape is not None and axes and shape[i] % math.prod(sizes[a] for a in axes):
                axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's layout by logical names under the current mesh (`jax.set_mesh`).

    Outside a mesh context (plain single-device calls) there is nothing to constrain.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def param_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """NamedShardings for an nnx.State of Params carrying `logical_axes` metadata."""

    def one(var):
        names = var.get_metadata().get("logical_axes")
        if names is None:
            return var.replace(NamedSharding(mesh, P()))
        return var.replace(named_sharding(mesh, names, var.get_value().shape))

    import flax.nnx as nnx  # local: keep this module importable without flax for the launcher

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_params(state: Any, mesh: Mesh) -> Any:
    """Places an nnx.State of parameters on the mesh by the logical rules (a no-op if already there)."""
    return jax.device_put(state, param_shardings(state, mesh))


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Shards the leading (batch) dimension over ('data', 'fsdp') (replicated if they do not divide it)."""
    return named_sharding(mesh, ("batch",) + (None,) * (len(shape) - 1), shape)


def put(x: Any, sharding: NamedSharding) -> jax.Array:
    """A host value placed with `sharding`; each process copies only its own shards.

    On several processes every process must hold the same value (the trainer gathers host work before
    it reaches the devices). `jax.device_put` would check that with a cross-host all-gather on every call.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_batch(mesh: Mesh, tree: Any) -> Any:
    """Places host arrays on the mesh, leading dimension over ('data', 'fsdp')."""
    return jax.tree.map(lambda x: put(x, batch_sharding(mesh, np.shape(x))), tree)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly multi-host) array as numpy, on every process.

    A sharded array whose shards live on other hosts is all-gathered (every process must call this
    in the same order); local or replicated arrays are read directly.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
