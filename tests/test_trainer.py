"""The jitted GRPO train step: sharded == unsharded, micro-batching == one batch, non-finite updates skipped."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from grpo import loss as loss_lib
from grpo.rollout import Batch
from grpo.trainer import TrainState, make_logp_fn, make_optimizer, make_train_step, token_logps
from models.config import ModelConfig
from models.sharding import make_mesh, shard_batch
from models.transformer import init_model

CFG = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                  qkv_bias=True, tie_embeddings=True)
N, P, T = 8, 4, 6
LCFG = loss_lib.LossConfig(beta=0.04, eps_low=0.2, eps_high=0.28, loss_agg="token_mean")


def make_batch(seed=0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, 96, (N, P + T)).astype(np.int32)
    lengths = rng.randint(1, T + 1, N)
    completion_mask = np.arange(T)[None] < lengths[:, None]
    kv_mask = np.concatenate([np.ones((N, P), bool), completion_mask], 1)
    kv_mask[::3, 0] = False  # some left padding
    positions = np.maximum(np.cumsum(kv_mask, 1) - 1, 0).astype(np.int32)
    return Batch(tokens=tokens, positions=positions, kv_mask=kv_mask, completion_mask=completion_mask,
                 sampler_logp=(-rng.rand(N, T)).astype(np.float32), ref_logp=(-rng.rand(N, T)).astype(np.float32),
                 advantages=rng.randn(N).astype(np.float32), valid=np.ones(N, bool))


@pytest.fixture(scope="module")
def setup():
    graphdef, state = nnx.split(init_model(CFG, seed=0))
    params = nnx.to_pure_dict(state)
    ocfg = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.01,
                                          grad_clip=1.0, b1=0.9, b2=0.99))
    optimizer, _ = make_optimizer(ocfg, 10)
    return graphdef, params, optimizer


def fresh_state(params, optimizer):
    params = jax.tree.map(jnp.array, params)
    return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                      rng=jax.random.key_data(jax.random.key(0)), data_pos=jnp.int32(0))


def off_policy_old(graphdef, params, batch):
    logp, _ = token_logps(graphdef, params, batch)
    return np.asarray(logp) + 0.05 * np.random.RandomState(1).randn(N, T).astype(np.float32)


def test_microbatches_equal_one_batch(setup):
    graphdef, params, _ = setup
    optimizer = optax.sgd(1.0)  # parameters move by exactly the gradient: compares gradients, not Adam's sign
    batch = make_batch()
    old = off_policy_old(graphdef, params, batch)  # ratio != 1, so clipping and KL are exercised
    one = jax.jit(make_train_step(graphdef, LCFG, optimizer, microbatches=1, on_policy=False))
    two = jax.jit(make_train_step(graphdef, LCFG, optimizer, microbatches=2, on_policy=False))
    s1, m1 = one(fresh_state(params, optimizer), batch, old)
    s2, m2 = two(fresh_state(params, optimizer), batch, old)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    assert float(m1["grad_norm"]) > 0 and int(m1["skipped"]) == 0
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(params)))
    assert moved > 1e-4  # the update really happened


def test_chunked_logits_equal_all_at_once(setup):
    """Vocabulary projection over chunks of 4 positions (T = 6: one padded chunk), recomputed in backward:
    same loss, entropy, log-probs and update as projecting all positions at once."""
    graphdef, params, _ = setup
    optimizer = optax.sgd(1.0)
    batch = make_batch(seed=3)
    old = off_policy_old(graphdef, params, batch)
    whole = jax.jit(make_train_step(graphdef, LCFG, optimizer, on_policy=False))
    chunked = jax.jit(make_train_step(graphdef, LCFG, optimizer, on_policy=False, logits_chunk=4))
    s1, m1 = whole(fresh_state(params, optimizer), batch, old)
    s2, m2 = chunked(fresh_state(params, optimizer), batch, old)
    for key in ("loss", "entropy", "grad_norm", "clip_frac"):
        np.testing.assert_allclose(float(m1[key]), float(m2[key]), rtol=1e-5, atol=1e-7, err_msg=key)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    logp = jax.jit(make_logp_fn(graphdef, logits_chunk=4))(params, batch)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(jax.jit(make_logp_fn(graphdef))(params, batch)),
                               atol=1e-5)


def test_on_policy_step_ratio_is_one(setup):
    graphdef, params, optimizer = setup
    step = jax.jit(make_train_step(graphdef, LCFG, optimizer, on_policy=True))
    _, m = step(fresh_state(params, optimizer), make_batch(), jnp.zeros((N, T)))
    assert float(m["ratio/min"]) == pytest.approx(1.0) and float(m["ratio/max"]) == pytest.approx(1.0)
    assert float(m["clip_frac"]) == 0.0


def test_sharded_step_equals_single_device(setup):
    graphdef, params, optimizer = setup
    batch = make_batch(seed=2)
    old = off_policy_old(graphdef, params, batch)
    optimizer = optax.sgd(1.0)
    step = make_train_step(graphdef, LCFG, optimizer, microbatches=2, on_policy=False)
    want_state, want = jax.jit(step)(fresh_state(params, optimizer), batch, old)

    mesh = make_mesh((2, 2, 2))
    from models.sharding import param_shardings
    from models.transformer import Transformer
    abstract = nnx.state(nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0))))
    p_sh = nnx.to_pure_dict(param_shardings(abstract, mesh))
    state = fresh_state(params, optimizer)
    state = state.replace(params=jax.device_put(state.params, p_sh))
    with jax.set_mesh(mesh):
        state = state.replace(opt_state=jax.jit(optimizer.init)(state.params))
        got_state, got = jax.jit(step)(state, shard_batch(mesh, batch), shard_batch(mesh, old))
    wq = got_state.params["layers"]["wq"]  # (2, 64, 4, 16) split over fsdp (embed) and tensor (heads)
    assert {s.data.shape for s in wq.addressable_shards} == {(2, 32, 2, 16)}
    np.testing.assert_allclose(float(got["loss"]), float(want["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(want_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_non_finite_update_is_skipped(setup):
    graphdef, params, optimizer = setup
    batch = make_batch()
    batch = batch.replace(advantages=np.where(np.arange(N) == 3, np.nan, batch.advantages).astype(np.float32))
    step = jax.jit(make_train_step(graphdef, LCFG, optimizer, on_policy=True))
    state = fresh_state(params, optimizer)
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    new, m = step(state, batch, jnp.zeros((N, T)))
    assert int(m["skipped"]) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((new.params, new.opt_state))):
        np.testing.assert_array_equal(a, np.asarray(b))
