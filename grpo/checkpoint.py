"""Orbax checkpoints of the whole TrainState in WORKDIR/checkpoints: atomic, async, resumable, re-shardable.

Orbax writes each step into a temporary directory and renames it when complete, so a kill (even during
a save) leaves the previous complete step as the latest; leftover temporaries are cleaned at start-up.
Restoring passes a target that carries shardings, so the state comes back laid out for the current
mesh (a different mesh or process count than the one that saved it works too).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("quant")


def directory(cfg, workdir: str | Path):
    """Where a run's checkpoints live: cfg.checkpoint_dir (a path or a gs:// URL) or WORKDIR/checkpoints."""
    where = cfg.get("checkpoint_dir", "")
    return where if where else Path(workdir) / "checkpoints"


def _path(directory):
    if "://" in str(directory):  # a bucket: orbax's own path type handles it
        from etils import epath
        return epath.Path(str(directory))
    return Path(directory).absolute()


class Checkpointer:
    """Saves/restores a TrainState pytree under `directory`, keeping the newest `keep` steps."""

    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = _path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, force: bool = False) -> None:
        """Starts saving `state` as `step` (returns before the write finishes when async)."""
        self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restores `step` (default: latest) into the structure, dtypes and shardings of `abstract_state`.

        Args:
          abstract_state: a pytree of arrays or jax.ShapeDtypeStruct with `.sharding` set.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
        return self.manager.restore(step, args=ocp.args.StandardRestore(target))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_trained(workdir: str | Path, step: int | None = None, mesh=None):
    """The policy of a training run: (model, tokenizer, step) from WORKDIR/config.json + its checkpoint.

    Args:
      workdir: a `quant train` output directory.
      step: which checkpoint (default: the newest).
      mesh: place the parameters on this mesh (default: one device).
    """
    import json

    import ml_collections
    from flax import nnx

    from grpo.trainer import _opt_shardings, load_policy
    from models.sharding import param_shardings

    workdir = Path(workdir)
    if not is_train_workdir(workdir):
        raise FileNotFoundError(f"{workdir} is not a quant train workdir (no config.json with a training config)")
    cfg = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    if mesh is None:
        from models.sharding import make_mesh
        mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    model, tok = load_policy(cfg, mesh)
    graphdef, state = nnx.split(model)
    shardings = nnx.to_pure_dict(param_shardings(state, mesh))
    shapes = jax.tree.map(lambda x: tuple(x.shape), nnx.to_pure_dict(state))
    where = _path(directory(cfg, workdir))
    with ocp.CheckpointManager(where, item_handlers=ocp.StandardCheckpointHandler()) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {where}")
        saved = manager.item_metadata(step).tree
        got = jax.tree.map(lambda x: tuple(x.shape), saved["params"])
        if jax.tree.structure(shapes) != jax.tree.structure(got) or shapes != got:
            raise ValueError(f"checkpoint {step} in {where} does not match the model in {workdir}/config.json")
        # Lay the saved state out on `mesh` (whatever mesh and process count wrote it): parameters and
        # their optimizer moments like the parameters, the rest replicated.
        layout = _opt_shardings(saved, shardings, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        target = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sh), saved, layout)
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    return nnx.merge(graphdef, restored["params"]), tok, step


def is_train_workdir(path: str | Path) -> bool:
    """Whether `path` is a `quant train` output directory (its config.json is a training config)."""
    import json

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "rl" in cfg and "model" in cfg
