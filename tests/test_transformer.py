"""The NNX decoder against `transformers` on the same random checkpoints, and the KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import hf
from models.config import ModelConfig
from models.transformer import KVCache, positions_from_mask
from tests.hf_fixtures import VOCAB, make_checkpoint, torch_logits

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}

CASES = {
    "qwen2-bias-untied": dict(arch="qwen2", tie=False),
    "qwen2-bias-tied": dict(arch="qwen2", tie=True),
    "llama-nobias-untied-llama3rope": dict(arch="llama", tie=False, rope_scaling=LLAMA3),
    "llama-nobias-tied-linearrope": dict(arch="llama", tie=True, rope_scaling={"rope_type": "linear", "factor": 2.0}),
}


def batch(seed=0, b=3, t=9):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, VOCAB, (b, t))
    mask = np.ones((b, t), bool)
    mask[1, :4] = False  # left padding of different lengths
    mask[2, :1] = False
    ids[~mask] = 0
    return ids, mask


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(tmp_path, case):
    path = make_checkpoint(tmp_path / case, **CASES[case])
    model, _ = hf.load(path)
    assert model.cfg.tie_embeddings == CASES[case]["tie"]
    assert model.cfg.qkv_bias == (CASES[case]["arch"] == "qwen2")
    ids, mask = batch()
    want = torch_logits(path, ids, mask)
    got, cache = model(jnp.asarray(ids), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))
    assert cache is None
    assert got.dtype == jnp.float32 and got.shape == (3, 9, VOCAB)
    np.testing.assert_allclose(np.asarray(got)[mask], want[mask], atol=1e-4, rtol=1e-4)


def test_rope_scaling_changes_logits(tmp_path):
    """Guards the test above: llama3 scaling must matter at these positions, or parity would prove nothing."""
    path = make_checkpoint(tmp_path / "m", arch="llama", rope_scaling=LLAMA3)
    scaled, _ = hf.load(path, with_tokenizer=False)
    plain, _ = hf.load(path, with_tokenizer=False, rope_scaling=None)
    ids, mask = batch()
    pos = positions_from_mask(jnp.asarray(mask))
    a, _ = scaled(jnp.asarray(ids), pos, jnp.asarray(mask))
    b, _ = plain(jnp.asarray(ids), pos, jnp.asarray(mask))
    assert np.abs(np.asarray(a) - np.asarray(b))[mask].max() > 1e-2


def test_kv_cache_prefill_then_decode_equals_full_forward(tmp_path):
    path = make_checkpoint(tmp_path / "m", arch="qwen2")
    model, _ = hf.load(path)
    ids, mask = batch(seed=1, t=10)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    pos = positions_from_mask(mask)
    full, _ = model(ids, pos, mask)

    p, s = 6, 16  # prefill 6 tokens into a 16-slot cache, then decode the other 4 one at a time
    kv_mask = jnp.zeros((3, s), bool).at[:, :10].set(mask)
    cache = KVCache.zeros(model.cfg, 3, s)
    logits, cache = model(ids[:, :p], pos[:, :p], kv_mask, cache, 0)
    outs = [logits]
    for i in range(p, 10):
        logits, cache = model(ids[:, i:i + 1], pos[:, i:i + 1], kv_mask, cache, i)
        outs.append(logits)
    cached = jnp.concatenate(outs, axis=1)
    np.testing.assert_allclose(np.asarray(cached)[np.asarray(mask)], np.asarray(full)[np.asarray(mask)],
                               atol=1e-5, rtol=1e-5)


def test_bf16_compute_close_to_f32(tmp_path):
    path = make_checkpoint(tmp_path / "m", arch="qwen2")
    m32, _ = hf.load(path, with_tokenizer=False)
    m16, _ = hf.load(path, with_tokenizer=False, dtype="bfloat16")
    ids, mask = batch()
    pos = positions_from_mask(jnp.asarray(mask))
    a, _ = m32(jnp.asarray(ids), pos, jnp.asarray(mask))
    b, _ = m16(jnp.asarray(ids), pos, jnp.asarray(mask))
    assert b.dtype == jnp.float32  # logits stay f32 even with bf16 matmuls
    pa, pb = jax.nn.softmax(a)[np.asarray(mask)], jax.nn.softmax(b)[np.asarray(mask)]
    assert np.abs(np.asarray(pa) - np.asarray(pb)).max() < 0.05
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0  # bf16 really ran


def test_presets_and_param_count():
    from models.config import PRESETS, preset

    tiny = preset("tiny")
    assert 3.1e6 < tiny.num_params() < 3.3e6
    assert 90e6 < preset("bench_100m").num_params() < 110e6
    assert 1.4e9 < preset("qwen2.5-1.5b").num_params() < 1.6e9
    assert 1.2e9 < preset("llama-3.2-1b").num_params() < 1.3e9
    for name in PRESETS:
        cfg = preset(name)
        assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model preset 'gpt2'"):
        preset("gpt2")
