"""Pretraining of the tiny base model shipped in assets/tiny_arith (the start of the embedded default).

    quant pretrain --config configs/tiny_base.py            # ~5 minutes on 2 CPU cores

A 4-layer Qwen2-layout decoder (d=128, ~0.8M parameters) learns from scratch to solve d-digit additions
(d = 1..5), half of the time with a digit-by-digit trace inside <think>…</think>, half directly. Expect:
the loss falls below ~0.1; answers that think are almost always right at every d; direct answers are
right mostly for d = 1 only.
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.ops = "+"
    c.steps = 1200
    c.batch_size = 64
    c.seq_len = 64
    c.lr = 2e-3
    c.warmup_steps = 50
    c.weight_decay = 0.01
    c.think_frac = 0.5
    c.log_every = 100
    c.out_dir = "assets/tiny_arith"
    c.eval_per_difficulty = 100
    c.max_new_tokens = 48
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=32, hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4, num_kv_heads=2,
        qkv_bias=True, tie_embeddings=True, max_position_embeddings=128, rope_theta=10_000.0))
    if arg == "smoke":
        c.steps = 20
        c.warmup_steps = 5
        c.log_every = 10
        c.eval_per_difficulty = 8
    return c
