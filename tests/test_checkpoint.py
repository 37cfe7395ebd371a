"""Checkpoints restore exactly, onto a different mesh too."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grpo.checkpoint import Checkpointer
from grpo.trainer import TrainState
from models.config import ModelConfig
from models.sharding import make_mesh, param_shardings
from models.transformer import init_model

CFG = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                  qkv_bias=True, tie_embeddings=True)


def state_on(mesh, seed=0):
    model = init_model(CFG, seed=seed)
    sh = nnx.to_pure_dict(param_shardings(nnx.state(model), mesh))
    params = jax.device_put(nnx.to_pure_dict(nnx.state(model)), sh)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    put = lambda x: jax.device_put(x, rep)
    return TrainState(step=put(jnp.int32(7)), params=params, opt_state={"mu": jax.tree.map(jnp.ones_like, params)},
                      rng=put(jax.random.key_data(jax.random.key(3))), data_pos=put(jnp.int32(123)))


def test_restore_onto_other_meshes(tmp_path):
    saved = state_on(make_mesh((1, 8, 1)))
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    ckpt.save(7, saved)
    ckpt.wait()
    for shape in ((2, 2, 2), (1, 1, 1)):
        devices = jax.devices() if shape != (1, 1, 1) else jax.devices()[:1]
        target = state_on(make_mesh(shape, devices), seed=1)  # different values, the layout we want
        got = Checkpointer(tmp_path / "ckpt").restore(target)
        assert int(got.step) == 7 and int(got.data_pos) == 123
        for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(got)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for want, have in zip(jax.tree.leaves(target), jax.tree.leaves(got)):
            assert have.sharding.is_equivalent_to(want.sharding, have.ndim)
    ckpt.close()


def test_keeps_only_the_newest(tmp_path):
    state = state_on(make_mesh((1, 8, 1)))
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, state)
    ckpt.close()
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [2, 3]
