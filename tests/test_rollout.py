"""Rollout batches: dynamic sampling keeps informative groups, refills, pads with invalid rows."""

import jax
import numpy as np

from grpo import loss as loss_lib
from grpo.rollout import collect
from models.sampler import Completions

G, T = 2, 3


class FakeSampler:
    """Returns fixed completions; the reward of each is decided by the test through its text."""

    def __init__(self):
        self.calls = 0

    def sample(self, prompts, cfg, group_size, seed, batch_size):
        self.calls += 1
        n = len(prompts) * group_size
        return Completions(
            tokens=np.ones((n, T), np.int32), logp=np.full((n, T), -0.5, np.float32),
            logp_sample=np.zeros((n, T), np.float32), mask=np.ones((n, T), bool), forced=np.zeros((n, T), bool),
            lengths=np.full(n, T), think_lengths=np.zeros(n, np.int32), finish_reason=["eos"] * n,
            budget_forced=np.zeros(n, bool), prompt_tokens=np.asarray(prompts, np.int32),
            prompt_mask=np.ones((len(prompts), len(prompts[0])), bool), group_size=group_size,
            texts=[f"{p[0]}-{g}" for p in prompts for g in range(group_size)])


class Rewards:
    """Prompt id k: both samples right if k % 3 == 0, both wrong if k % 3 == 1, one right if k % 3 == 2."""

    def __call__(self, texts, samples):
        out = []
        for text in texts:
            k, g = map(int, text.split("-"))
            out.append(float(k % 3 == 0 or (k % 3 == 2 and g == 0)))
        out = np.asarray(out, np.float32)
        return out, {"reward/math": out}

    def metrics(self):
        return {}


def stream():
    pos = [0]

    def take(n):
        pos[0] += n
        return [{"id": str(k), "k": k} for k in range(pos[0] - n, pos[0])]

    return take


LCFG = loss_lib.LossConfig(std_scale="group")


def run(dynamic, rounds):
    sampler = FakeSampler()
    r = collect(sampler, stream(), lambda row: [row["k"], 0], Rewards(), None, LCFG, num_prompts=3, group_size=G,
                rng=jax.random.key(0), dynamic_sampling=dynamic, max_rounds=rounds)
    return sampler, r


def test_without_dynamic_sampling_every_group_is_kept():
    sampler, r = run(False, 3)
    assert sampler.calls == 1
    assert r.batch.valid.tolist() == [True] * 6
    # prompts 0, 1, 2: groups (1,1), (0,0), (1,0) -> only the last has non-zero advantages
    adv = np.asarray(r.batch.advantages)
    assert adv[:4].tolist() == [0, 0, 0, 0] and adv[4] > 0 > adv[5]
    assert r.stats["accuracy"] == 0.5 and r.stats["frac_zero_std_groups"] == 2 / 3


def test_dynamic_sampling_refills_then_pads_with_invalid_rows():
    sampler, r = run(True, 2)  # round 1: prompts 0-2 (keeps 2); round 2: prompts 3-5 (keeps 5)
    assert sampler.calls == 2
    assert r.batch.valid.tolist() == [True] * 4 + [False] * 2
    np.testing.assert_array_equal(r.batch.tokens[:4, 0], [2, 2, 5, 5])  # kept groups, in order
    assert not r.batch.completion_mask[4:].any() and (np.asarray(r.batch.advantages)[4:] == 0).all()
    assert r.stats["sampling_rounds"] == 2 and r.stats["frac_valid"] == 4 / 6
    # accuracy and reward are over everything drawn (12 completions, 6 right), not only the kept groups
    assert r.stats["accuracy"] == 0.5 and r.stats["frac_zero_std_groups"] == 4 / 6


def test_dynamic_sampling_stops_when_full():
    sampler, r = run(True, 10)  # kept: 2, 5, 8 after three rounds
    assert sampler.calls == 3 and r.batch.valid.all()
    np.testing.assert_array_equal(r.batch.tokens[::2, 0], [2, 5, 8])
