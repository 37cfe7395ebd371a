"""The model on a (2, 2, 2) mesh of 8 fake CPU devices: same numbers, parameters where the rules say."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from models import hf
from models.sharding import cpu_device_count, logical_to_spec, make_mesh, shard_batch
from models.transformer import positions_from_mask
from tests.hf_fixtures import make_checkpoint
from tests.test_transformer import batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("m"), arch="qwen2", tie=False)


def test_forward_on_mesh_equals_single_device(ckpt):
    assert jax.device_count() == 8
    mesh = make_mesh((2, 2, 2))
    single, _ = hf.load(ckpt, with_tokenizer=False)
    sharded, _ = hf.load(ckpt, mesh=mesh, with_tokenizer=False)
    ids, mask = batch(b=4)
    pos = positions_from_mask(jnp.asarray(mask))
    want, _ = single(jnp.asarray(ids), pos, jnp.asarray(mask))
    ids_s, pos_s, mask_s = shard_batch(mesh, (ids, np.asarray(pos), mask))
    assert ids_s.sharding.spec == P(("data", "fsdp"), None)
    with jax.set_mesh(mesh):
        got, _ = jax.jit(lambda m, *a: m(*a))(sharded, ids_s, pos_s, mask_s)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


def test_parameters_are_laid_out_by_the_rules(ckpt):
    mesh = make_mesh((2, 2, 2))
    model, _ = hf.load(ckpt, mesh=mesh, with_tokenizer=False)
    layers = model.layers
    expect = {
        # name: (array, spec, shape of one device's shard)
        "embed": (model.embed[...], P("tensor", "fsdp"), (48, 32)),
        "lm_head": (model.lm_head[...], P("fsdp", "tensor"), (32, 48)),
        "wq": (layers.wq[...], P(None, "fsdp", "tensor", None), (2, 32, 2, 16)),
        "wk": (layers.wk[...], P(None, "fsdp", "tensor", None), (2, 32, 1, 16)),
        "wo": (layers.wo[...], P(None, "tensor", None, "fsdp"), (2, 2, 16, 32)),
        "w_up": (layers.w_up[...], P(None, "fsdp", "tensor"), (2, 32, 64)),
        "w_down": (layers.w_down[...], P(None, "tensor", "fsdp"), (2, 64, 32)),
        "bq": (layers.bq[...], P(None, "tensor", None), (2, 2, 16)),
        "attn_norm": (layers.attn_norm[...], P(None, None), (2, 64)),
    }
    for name, (arr, spec, shard_shape) in expect.items():
        assert arr.sharding.spec == spec, name
        assert {s.data.shape for s in arr.addressable_shards} == {shard_shape}, name
    # bytes per device: the sharded weights (all but the tiny norms) take 1/4 of the full model per device
    total = sum(x.nbytes for x in jax.tree.leaves(jax.tree.map(np.asarray, model.layers.weights())))
    per_device = sum(s.data.nbytes for x in jax.tree.leaves(model.layers.weights())
                     for s in x.addressable_shards if s.device == jax.devices()[0])
    assert per_device < 0.27 * total


def test_rules_replicate_what_does_not_divide():
    mesh = make_mesh((1, 2, 4))
    # 2 KV heads cannot split over tensor=4: replicated; 'embed' 64 splits over fsdp=2
    assert logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (2, 64, 2, 16), mesh) == P(
        None, "fsdp", None, None)
    assert logical_to_spec(("batch", "length"), (6, 3), mesh) == P("fsdp", None)  # data=1 is dropped
    assert logical_to_spec(("batch", "length"), (5, 3), mesh) == P(None, None)
    with pytest.raises(KeyError, match="unknown logical axis 'bogus'"):
        logical_to_spec(("bogus",))


def test_make_mesh_errors():
    assert make_mesh((1, -1, 1)).shape == {"data": 1, "fsdp": 8, "tensor": 1}
    assert make_mesh((2, -1, 2)).shape == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match=r"mesh.shape \(3, -1, 1\) does not fit 8 devices"):
        make_mesh((3, -1, 1))
    with pytest.raises(ValueError, match=r"needs 16 devices but 8 are available"):
        make_mesh((2, 4, 2))
    with pytest.raises(ValueError, match="must have 3 entries"):
        make_mesh((8,))


def test_cpu_device_count_follows_cores_and_settings():
    count = lambda env, cores=None: cpu_device_count(env, cores)
    assert [count({}, c) for c in (1, 2, 3, 4, 6, 12, 64)] == [1, 2, 2, 4, 4, 8, 8]  # powers of two, <= 8
    assert count({"QUANT_CPU_DEVICES": "3"}, 2) == 3
    assert count({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, 2) is None  # the user's choice
    assert count({"JAX_NUM_CPU_DEVICES": "4"}, 2) is None
    local = {"QUANT_COORDINATOR": "127.0.0.1:5000", "QUANT_NUM_PROCESSES": "2"}  # launch/local.py
    assert count(local, 8) == 4 and count(local, 2) == 1
    assert count(dict(local, QUANT_COORDINATOR="node-1:5000"), 8) == 8  # processes on other hosts
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=f"QUANT_CPU_DEVICES='{bad}' is not a positive integer"):
            count({"QUANT_CPU_DEVICES": bad})


def test_use_cpu_cores_before_and_after_jax_starts():
    """In a fresh process it sets the device count; once the backend runs it changes nothing."""
    code = ("from models.sharding import use_cpu_cores; print(use_cpu_cores()); import jax; "
            "print(jax.device_count(), jax.devices()[0].platform); print(use_cpu_cores())")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, QUANT_CPU_DEVICES="3", JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.split("\n")[:3] == ["3", "3 cpu", "None"], out.stderr
