"""The KV-cache sampler against full forward passes, `transformers.generate`, and exact stop rules."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import hf
from models.sampler import LENGTH, Sampler, SamplingConfig, bucket_length
from models.sharding import make_mesh, shard_batch
from tests.hf_fixtures import make_checkpoint

PROMPTS = [[5, 17, 33, 2, 9], [40, 41], [7, 7, 8, 60, 61, 62, 3]]
OPEN, CLOSE = 90, 91  # token ids playing <think> / </think> in these tests


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("m"), arch="qwen2", tie=True, seed=1)


@pytest.fixture(scope="module")
def model(ckpt):
    return hf.load(ckpt, with_tokenizer=False)[0]


@pytest.fixture(scope="module")
def sampler(model):
    return Sampler(model)


_FORWARD = {}


def full_logits(model, seq, width=32):
    """Logits of one full forward pass (no cache). Right-padded to a fixed width so it compiles once;
    causal attention makes the padding invisible to the real positions."""
    if id(model) not in _FORWARD:
        _FORWARD[id(model)] = jax.jit(lambda m, ids: m(ids, jnp.arange(width)[None], jnp.ones((1, width), bool))[0])
    ids = np.zeros((1, width), np.int32)
    ids[0, :len(seq)] = seq
    return np.asarray(_FORWARD[id(model)](model, jnp.asarray(ids))[0, :len(seq)])


def reference_greedy(model, prompt, n, force=None):
    """Greedy decoding by a full forward pass per token (no cache); `force` maps step -> token."""
    seq, out = list(prompt), []
    for i in range(n):
        tok = (force or {}).get(i)
        if tok is None:
            tok = int(np.argmax(full_logits(model, seq)[-1]))
        seq.append(tok)
        out.append(tok)
    return out


GREEDY = SamplingConfig(max_new_tokens=10, temperature=0.0, pad_id=0)


def test_greedy_equals_full_forward_argmax(model, sampler):
    out = sampler.sample(PROMPTS, GREEDY, group_size=2)
    assert out.tokens.shape == (6, 10)
    for i, prompt in enumerate(PROMPTS):
        want = reference_greedy(model, prompt, 10)
        for g in range(2):
            np.testing.assert_array_equal(out.tokens[2 * i + g], want)
    assert list(out.lengths) == [10] * 6 and out.finish_reason == ["length"] * 6


def test_greedy_equals_transformers_generate(ckpt, sampler):
    import torch
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(ckpt), torch_dtype=torch.float32)
    tokens, mask = sampler.pad_prompts(PROMPTS)
    with torch.no_grad():
        gen = ref.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                           attention_mask=torch.tensor(mask, dtype=torch.long), max_new_tokens=10,
                           do_sample=False, pad_token_id=0, eos_token_id=None)
    out = sampler.sample(PROMPTS, GREEDY)
    np.testing.assert_array_equal(out.tokens, gen[:, tokens.shape[1]:].numpy())


def test_logprobs_equal_full_forward(model, sampler):
    cfg = SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=20, pad_id=0)
    out = sampler.sample(PROMPTS, cfg, group_size=2, seed=3)
    assert len({tuple(r) for r in out.tokens[:2]}) == 2  # the two samples of prompt 0 differ
    for row in range(6):
        prompt = PROMPTS[row // 2]
        logits = full_logits(model, prompt + list(out.tokens[row]))[len(prompt) - 1:-1]  # predicts each token
        logp = jax.nn.log_softmax(logits)
        want = np.take_along_axis(np.asarray(logp), out.tokens[row][:, None], 1)[:, 0]
        np.testing.assert_allclose(out.logp[row], want, atol=1e-4)
        x = logits / 0.7
        kth = np.sort(x, -1)[:, -20][:, None]
        x = np.where(x < kth, -np.inf, x)
        want_s = np.take_along_axis(np.asarray(jax.nn.log_softmax(x)), out.tokens[row][:, None], 1)[:, 0]
        np.testing.assert_allclose(out.logp_sample[row], want_s, atol=1e-4)


def test_top_p_keeps_only_the_nucleus(sampler):
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=0.3, pad_id=0)
    out = sampler.sample(PROMPTS, cfg, group_size=4, seed=1)
    # every sampled token was inside a nucleus of mass 0.3: its probability under the truncated
    # distribution is at least its policy probability (renormalised upwards)
    assert np.all(out.logp_sample >= out.logp - 1e-5)
    assert np.any(out.logp_sample > out.logp + 0.1)


def test_eos_stops_exactly(model, sampler):
    greedy = reference_greedy(model, PROMPTS[0], 10)
    k = next(i for i in range(2, 10) if greedy[i] not in greedy[:i])
    out = sampler.sample([PROMPTS[0]], SamplingConfig(max_new_tokens=10, temperature=0.0, eos_ids=(greedy[k],),
                                                      pad_id=0))
    assert out.lengths[0] == k + 1 and out.finish_reason == ["eos"]
    np.testing.assert_array_equal(out.tokens[0, :k + 1], greedy[:k + 1])
    assert np.all(out.tokens[0, k + 1:] == 0) and out.mask[0].sum() == k + 1
    assert np.all(out.logp[0, k + 1:] == 0)


def test_stop_sequence_stops_exactly(model, sampler):
    greedy = reference_greedy(model, PROMPTS[2], 10)
    k = next(i for i in range(3, 10) if (greedy[i - 1], greedy[i]) not in zip(greedy[:i - 1], greedy[1:i]))
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0, pad_id=0,
                         stop_token_seqs=((greedy[k - 1], greedy[k]), (95, 95, 95)))
    out = sampler.sample([PROMPTS[2]], cfg)
    assert out.lengths[0] == k + 1 and out.finish_reason == ["stop"]
    np.testing.assert_array_equal(out.tokens[0, :k + 1], greedy[:k + 1])


def test_length_limit(sampler):
    out = sampler.sample(PROMPTS, SamplingConfig(max_new_tokens=3, temperature=0.0, pad_id=0))
    assert list(out.lengths) == [3, 3, 3] and out.finish_reason == ["length"] * 3
    assert out.device.finish.tolist() == [LENGTH] * 3


def test_budget_forcing_closes_thinking(model, sampler):
    prompt = PROMPTS[1] + [OPEN]  # the prompt opens <think>
    cfg = SamplingConfig(max_new_tokens=8, temperature=0.0, pad_id=0, think_open_id=OPEN, think_close_id=CLOSE,
                         think_budget=3, budget_tokens=(CLOSE, 12))
    out = sampler.sample([prompt], cfg)
    want = reference_greedy(model, prompt, 8, force={3: CLOSE, 4: 12})
    np.testing.assert_array_equal(out.tokens[0], want)
    np.testing.assert_array_equal(out.forced[0], [0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(out.logp_sample[0, 3:5], [0.0, 0.0])
    assert out.think_lengths[0] == 3 and out.finish_reason == ["budget"]


def test_waits_replace_end_of_thinking(model, sampler):
    prompt = PROMPTS[0] + [OPEN]
    greedy = reference_greedy(model, prompt, 10)
    k = next(i for i in range(1, 10) if greedy[i] not in greedy[:i] + [OPEN])
    close = greedy[k]  # pretend this greedy token is </think>
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0, pad_id=0, think_open_id=OPEN, think_close_id=close,
                         num_waits=1, wait_tokens=(70, 71))
    out = sampler.sample([prompt], cfg)
    want = reference_greedy(model, prompt, 10, force={k: 70, k + 1: 71})
    np.testing.assert_array_equal(out.tokens[0], want)
    assert out.forced[0, k] and out.forced[0, k + 1] and out.forced[0].sum() == 2
    # after the wait, the next </think> (if any) is kept: at most one replacement
    assert out.think_lengths[0] == (want.index(close) if close in want[k + 2:] else 10)


def test_no_recompilation_within_a_bucket(sampler):
    cfg = SamplingConfig(max_new_tokens=5, temperature=1.0, pad_id=0)
    sampler.sample([[1, 2, 3]], cfg, group_size=2, seed=0, batch_size=2)
    size = sampler._generate._cache_size()
    sampler.sample([[4, 5, 6, 7, 8], [9]], cfg, group_size=2, seed=1, batch_size=2)
    sampler.sample([[1] * 16], cfg, group_size=2, seed=2, batch_size=2)
    assert sampler._generate._cache_size() == size
    assert bucket_length(3) == 16 and bucket_length(17) == 32 and bucket_length(300) == 512


NUCLEUS = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=0.9, pad_id=0)


def test_shared_prompt_cache_equals_one_copy_per_sample(sampler):
    """G samples read one copy of their prompt's keys/values; the same prompts repeated G times with
    G = 1 (a copy per row) give the same draws: row b * G + g sees the same noise either way."""
    shared = sampler.sample(PROMPTS + [[3, 4]], NUCLEUS, group_size=2, seed=7)
    repeated = sampler.sample([p for p in PROMPTS + [[3, 4]] for _ in range(2)], NUCLEUS, group_size=1, seed=7)
    assert len({tuple(r) for r in shared.tokens[:2]}) == 2  # the two samples of prompt 0 differ
    np.testing.assert_array_equal(shared.tokens, repeated.tokens)
    np.testing.assert_allclose(shared.logp, repeated.logp, atol=1e-5)
    np.testing.assert_allclose(shared.logp_sample, repeated.logp_sample, atol=1e-5)


def test_mesh_samples_equal_single_device(model, sampler):
    mesh_sampler = Sampler(model, mesh=make_mesh((2, 2, 2)))
    leaf = mesh_sampler.params["layers"]["wq"]
    assert leaf.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    a = sampler.sample(PROMPTS + [[3, 4]], NUCLEUS, group_size=2, seed=7)
    b = mesh_sampler.sample(PROMPTS + [[3, 4]], NUCLEUS, group_size=2, seed=7)
    assert len(b.device.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.logp, b.logp, atol=1e-5)


def _loop_collectives(compiled_text: str) -> set[str]:
    """The collective ops in the bodies of a compiled program's decode loops: the while loops without a
    known trip count (the prefill's scan over layers has one)."""
    bodies = {m.group(1) for line in compiled_text.splitlines() if " while(" in line and "known_trip_count" not in line
              for m in [re.search(r"body=%?([\w.\-]+)", line)] if m}
    assert len(bodies) == 4, bodies  # one loop per decode segment
    found = set()
    for block in re.split(r"\n(?=\S)", compiled_text):  # one computation per unindented header
        name = re.match(r"(?:ENTRY )?%?([\w.\-]+)", block)
        if name and name.group(1) in bodies:
            found |= set(re.findall(r"\b(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"
                                    r"(?:-start)?\(", block))
    return found


def test_gathered_weights_decode_without_collectives(model, sampler):
    """On an FSDP mesh, the decode loop uses weights gathered once per call (no collective per token);
    gather_weights=False keeps them sharded (all-gathered inside the loop). Both sample exactly alike."""
    mesh = make_mesh((1, 4, 1), devices=jax.devices()[:4])
    ref = sampler.sample(PROMPTS + [[3, 4]], NUCLEUS, group_size=2, seed=7)
    for gather in (True, False):
        s = Sampler(model, mesh=mesh, gather_weights=gather)
        assert s.params["layers"]["w_gate"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
        tokens, mask = s.pad_prompts(PROMPTS + [[3, 4]])
        args = shard_batch(mesh, (tokens, mask, np.zeros(len(tokens), bool)))
        with jax.set_mesh(mesh):
            text = s._generate.lower(s.params, *args, jax.random.key(7), cfg=NUCLEUS, group_size=2).compile().as_text()
        collectives = _loop_collectives(text)
        assert (collectives == set()) if gather else ("all-gather" in collectives), collectives
        out = s.sample(PROMPTS + [[3, 4]], NUCLEUS, group_size=2, seed=7)
        np.testing.assert_array_equal(out.tokens, ref.tokens)
        np.testing.assert_allclose(out.logp, ref.logp, atol=1e-5)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingConfig(top_p=0.0).validate()
    with pytest.raises(ValueError, match="think_budget needs"):
        SamplingConfig(think_budget=4).validate()
