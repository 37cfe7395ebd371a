"""GRPO on GSM8K for Qwen2.5-Math-1.5B (or DeepSeek-R1-Distill-Qwen-1.5B), DAPO-style.

    quant train --config configs/gsm8k_qwen_math.py --workdir runs/gsm8k \
        --config.model.hf_path=/path/to/Qwen2.5-Math-1.5B

    quant train --config configs/gsm8k_qwen_math.py:smoke --workdir /tmp/smoke   # tiny preset, CPU, ~1 min

Hyper-parameters follow DeepSeekMath (GRPO: lr 1e-6, G per prompt, KL to the reference) and DAPO
(clip-higher eps_high 0.28, token-level loss, dynamic sampling, no KL). Expect GSM8K test pass@1 of the
1.5B math model to rise from ~0.7 towards ~0.8 after a few hundred steps on an 8-accelerator node.
The smoke variant runs the same code path on the in-repo `tiny` preset with random weights.
"""

from pathlib import Path

from grpo.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.seed = 0
    c.total_steps = 500
    c.log_every = 1
    c.eval_every = 50
    c.checkpoint_every = 50
    c.model.hf_path = ""  # set on the command line
    c.model.dtype = "bfloat16"
    c.data.dataset = "gsm8k"
    c.data.split = "train"
    c.data.prompt_template = "r1"
    c.data.prompts_per_step = 64
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 1024
    c.rollout.temperature = 1.0
    c.rollout.dynamic_sampling = True
    c.rollout.max_sampling_rounds = 3
    c.rollout.mask_truncated = True
    c.rl.advantage = "grpo"
    c.rl.loss_agg = "token_mean"
    c.rl.eps_low, c.rl.eps_high = 0.2, 0.28
    c.rl.beta = 0.0
    c.rewards = {"math": 1.0, "format": 0.1}
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 10
    c.optim.schedule = "constant"
    c.optim.grad_clip = 1.0
    c.optim.microbatches = 8
    c.mesh.shape = (1, -1, 1)
    c.eval.datasets = ("gsm8k",)
    c.eval.num_problems = 500
    c.eval.max_new_tokens = 1024
    if arg == "smoke":
        c.total_steps = 3
        c.eval_every = 0
        c.checkpoint_every = 2
        c.model.hf_path = ""
        c.model.preset = "tiny"
        c.model.tokenizer = "char"
        c.model.dtype = "float32"
        c.data.dataset = str(Path(__file__).with_name("smoke_arith.jsonl"))
        c.data.prompt_template = "plain"
        c.data.prompts_per_step = 4
        c.rollout.group_size = 4
        c.rollout.max_new_tokens = 16
        c.rollout.dynamic_sampling = False
        c.rl.beta = 0.04  # exercise the reference-model path
        c.rewards = {"math": 1.0, "format": 0.1}
        c.optim.lr = 1e-4
        c.optim.warmup_steps = 0
        c.optim.microbatches = 2
        c.eval.datasets = ()
    return c
