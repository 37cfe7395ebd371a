"""`quant export`: a training workdir's checkpoint becomes a HF directory with identical logits."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grpo import cli
from grpo import config as config_lib
from grpo.checkpoint import Checkpointer, load_trained
from grpo.trainer import TrainState, load_policy
from models.sharding import make_mesh
from tests.hf_fixtures import torch_logits

ROOT = Path(__file__).resolve().parents[1]


def test_export_of_a_train_workdir(tmp_path):
    cfg = config_lib.load(str(ROOT / "configs" / "gsm8k_qwen_math.py") + ":smoke")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), default=list))
    model, _ = load_policy(cfg, make_mesh((1, 1, 1), jax.devices()[:1]))
    # "trained" parameters: the initial ones moved, so the export must take them from the checkpoint
    params = jax.tree.map(lambda x: x + 0.01 * jnp.sign(x), nnx.to_pure_dict(nnx.state(model)))
    state = TrainState(step=jnp.int32(3), params=params, opt_state={}, rng=jax.random.key_data(jax.random.key(0)),
                       data_pos=jnp.int32(12))
    ckpt = Checkpointer(workdir / "checkpoints")
    ckpt.save(3, state)
    ckpt.close()

    assert cli.main(["export", f"--checkpoint={workdir}", f"--out={tmp_path / 'hf'}"]) == 0
    trained, tok, step = load_trained(workdir)
    assert step == 3
    np.testing.assert_array_equal(np.asarray(trained.embed[...]), np.asarray(params["embed"]))
    ids = np.asarray([tok.encode("12+30=?")], np.int64)
    mask = np.ones_like(ids, bool)
    ours, _ = trained(jnp.asarray(ids), jnp.arange(ids.shape[1])[None], jnp.asarray(mask))
    theirs = torch_logits(tmp_path / "hf", ids, mask)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)
    assert (tmp_path / "hf" / "tokenizer.json").exists()
