"""The embedded default: GRPO teaches the in-repo tiny model to think before it answers, on a laptop CPU.

    quant train                                            # = --config configs/tiny_arith.py
    quant train --config configs/tiny_arith.py:smoke       # a few steps, for tests

The base model (assets/tiny_arith, from `quant pretrain --config configs/tiny_base.py`) adds numbers of
1-5 digits; it writes a digit-by-digit trace inside <think>…</think> about half of the time and is then
almost always right, and answers directly otherwise, which only works for short numbers. GRPO with a
plain correctness reward (no reward for thinking) finds out that thinking pays: held-out accuracy rises
and the share of answers that think goes to ~1, most visibly on 4-5 digit problems. A few minutes on
2 CPU cores; a summary table (before -> after, per difficulty) and plots are written to the workdir.
"""

from pathlib import Path

from grpo.config import base_config

ROOT = Path(__file__).resolve().parents[1]


def get_config(arg=None):
    c = base_config()
    c.seed = 0
    c.total_steps = 60
    c.log_every = 1
    c.eval_every = 10
    c.checkpoint_every = 20
    c.model.hf_path = str(ROOT / "assets" / "tiny_arith")
    c.data.dataset = "arith"
    c.data.prompt_template = "plain"
    c.data.prompts_per_step = 32
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 48
    c.rollout.temperature = 1.0
    c.rollout.dynamic_sampling = True
    c.rollout.max_sampling_rounds = 2
    c.rl.advantage = "grpo"
    c.rl.loss_agg = "token_mean"
    c.rl.eps_low, c.rl.eps_high = 0.2, 0.28
    c.rl.beta = 0.0
    c.rewards = {"math": 1.0}
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 3
    c.optim.schedule = "constant"
    c.optim.grad_clip = 1.0
    c.mesh.shape = (1, -1, 1)
    c.eval.datasets = ("arith",)
    c.eval.per_difficulty = 100
    c.eval.temperature = 1.0
    c.eval.summary_temperatures = (0.0,)  # the summary also shows greedy accuracy
    c.eval.max_new_tokens = 48
    c.eval.batch_size = 512
    if arg == "smoke":
        c.total_steps = 2
        c.eval_every = 1
        c.checkpoint_every = 0
        c.data.prompts_per_step = 4
        c.rollout.group_size = 4
        c.eval.per_difficulty = 4
        c.eval.batch_size = 32
    return c
