"""Seconds per GRPO step, split into sample / reward / train, on the reference tiny model.

    python bench/grpo_step.py

Setting (issue 6): Qwen2 layout, vocab 64, hidden 256, 4 layers, ~3.2M parameters, f32; 8 prompts x G=8 =
64 completions, 64 new tokens forced (no early stop), prompts padded to the longest in the batch,
beta = 0, mu = 1, one optimizer step per rollout batch. Baselines measured on this machine (issue text):
TRL ~1.8 s/step (0.9 s sampling + 0.9 s forward/backward); target <= 0.9 s.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import print_table  # noqa: E402
from grpo import loss as loss_lib  # noqa: E402
from grpo.rollout import collect  # noqa: E402
from grpo.trainer import TrainState, make_optimizer, make_train_step  # noqa: E402
from models.config import preset  # noqa: E402
from models.sampler import Sampler, SamplingConfig  # noqa: E402
from models.transformer import init_model  # noqa: E402
from rewards import compose  # noqa: E402

B, G, NEW, STEPS = 8, 8, 64, 5


def main():
    cfg = preset("tiny")
    model = init_model(cfg, seed=0)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    sampler = Sampler(model)
    scfg = SamplingConfig(max_new_tokens=NEW, temperature=1.0, eos_ids=(), pad_id=0)
    lcfg = loss_lib.LossConfig(beta=0.0)
    ocfg = ml_collections.ConfigDict(dict(lr=1e-5, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                          grad_clip=1.0, b1=0.9, b2=0.99))
    optimizer, _ = make_optimizer(ocfg, 100)
    step_fn = jax.jit(make_train_step(graphdef, lcfg, optimizer, on_policy=True), donate_argnums=0)
    state = TrainState(step=0, params=params, opt_state=optimizer.init(params),
                       rng=jax.random.key_data(jax.random.key(0)), data_pos=0)
    rng = np.random.RandomState(0)
    rows = [{"id": str(i), "prompt": rng.randint(0, 64, rng.randint(12, 33)).tolist(), "answer": "7"}
            for i in range(1000)]
    pos = [0]

    def take(k):
        pos[0] += k
        return rows[pos[0] - k:pos[0]]

    # random token ids decode to nothing meaningful; score them as text anyway (the math path still runs)
    reward_fn = compose.build({"math": 1.0, "format": 0.1})

    times = []
    for step in range(STEPS + 1):
        t0 = time.perf_counter()
        sampler.set_params(state.params)
        r = collect(_Decoding(sampler), take, lambda row: row["prompt"], reward_fn, scfg, lcfg, num_prompts=B,
                    group_size=G, rng=jax.random.key(step))
        t1 = time.perf_counter()
        state, m = step_fn(state, r.batch, r.batch.sampler_logp)
        jax.block_until_ready(m)
        t2 = time.perf_counter()
        if step > 0:  # step 0 compiles
            times.append((r.stats["time/sample_s"], r.stats["time/reward_s"], t2 - t1, t2 - t0))
    t = np.mean(times, axis=0)
    tokens = B * G * NEW
    print_table(["phase", "s/step", "share"], [
        ["sample", f"{t[0]:.3f}", f"{t[0] / t[3]:.0%}"],
        ["reward", f"{t[1]:.3f}", f"{t[1] / t[3]:.0%}"],
        ["train (fwd+bwd+adam)", f"{t[2]:.3f}", f"{t[2] / t[3]:.0%}"],
        ["total", f"{t[3]:.3f}", "100%"]])
    print(f"\nsample {tokens / t[0]:,.0f} new tokens/s; step {tokens / t[3]:,.0f} completion tokens/s; "
          f"vs TRL ~1.8 s/step: {1.8 / t[3]:.2f}x; target <= 0.9 s")


class _Decoding:
    """Wraps the sampler so completions come back as digit strings (random weights have no tokenizer)."""

    def __init__(self, sampler):
        self.sampler = sampler

    def sample(self, prompts, cfg, **kw):
        out = self.sampler.sample(prompts, cfg, decode=False, **kw)
        # GSM8K-shaped completions: reasoning, then a boxed integer taken from the tokens
        out.texts = [f"<think>{' '.join(map(str, row[:n - 2]))}</think> The answer is \\boxed{{{row[n - 1] % 10}}}"
                     for row, n in zip(out.tokens, out.lengths)]
        return out


if __name__ == "__main__":
    main()
