"""`quant pretrain`: the tiny base model for the embedded default, trained from scratch on arithmetic.

The corpus mixes direct answers with step-by-step digit traces inside <think>…</think>, regardless of
difficulty, so the base model knows the format, thinks about half of the time, and is right often when
it thinks and rarely when it answers directly on long numbers: the gap GRPO then closes.
The loss is next-token cross-entropy on the solution only (not on the prompt).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from grpo.data import arith
from models import hf
from models.config import ModelConfig
from models.sampler import Sampler
from models.tokenizer import train_char_tokenizer
from models.transformer import init_model

log = logging.getLogger("quant")


def encode_examples(tok, rows: list[dict], think: list[bool], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded token rows (prompt + solution + EOS) and the mask of solution tokens to learn."""
    tokens = np.full((len(rows), length), tok.pad_id, np.int32)
    loss_mask = np.zeros((len(rows), length), bool)
    for i, (row, t) in enumerate(zip(rows, think)):
        prompt = tok.encode(row["problem"])
        sol = tok.encode(arith.solution(row, t)) + [tok.eos_ids[0]]
        seq = (prompt + sol)[:length]
        tokens[i, :len(seq)] = seq
        loss_mask[i, len(prompt):len(seq)] = True
    return tokens, loss_mask


def make_step(graphdef, optimizer):
    def loss_fn(params, tokens, loss_mask):
        model = nnx.merge(graphdef, params)
        b, t = tokens.shape
        logits, _ = model(tokens, jnp.broadcast_to(jnp.arange(t), (b, t)), jnp.ones((b, t), bool))
        logp = jax.nn.log_softmax(logits[:, :-1])
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
        mask = loss_mask[:, 1:]  # position i predicts token i + 1
        return (nll * mask).sum() / mask.sum()

    def step(params, opt_state, tokens, loss_mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, loss_mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def run(cfg: ml_collections.ConfigDict, out_dir: str | None = None) -> dict:
    """Pretrains and writes the HF directory `out_dir` (default cfg.out_dir); returns the base evaluation."""
    out_dir = Path(out_dir or cfg.out_dir)
    rng = random.Random(cfg.seed)
    corpus_rows = arith.train_rows(4000, seed=cfg.seed, ops=cfg.ops)
    tok = train_char_tokenizer([r["problem"] + arith.solution(r, t) for r in corpus_rows for t in (0, 1)])
    mcfg = ModelConfig(**cfg.model.to_dict())
    if tok.vocab_size > mcfg.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens, model.vocab_size is {mcfg.vocab_size}")
    model = init_model(mcfg, seed=cfg.seed)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.lr * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=cfg.weight_decay))
    opt_state = optimizer.init(params)
    step = make_step(graphdef, optimizer)
    stream = arith.problems("train", cfg.seed, cfg.ops)
    start = time.perf_counter()
    for i in range(cfg.steps):
        rows = [next(stream) for _ in range(cfg.batch_size)]
        think = [rng.random() < cfg.think_frac for _ in rows]
        tokens, mask = encode_examples(tok, rows, think, cfg.seq_len)
        params, opt_state, loss = step(params, opt_state, tokens, mask)
        if (i + 1) % cfg.log_every == 0 or i + 1 == cfg.steps:
            log.info("pretrain step %d/%d loss %.4f (%.0f s)", i + 1, cfg.steps, float(loss),
                     time.perf_counter() - start)
    model = nnx.merge(graphdef, params)
    hf.save(model, out_dir, tokenizer=tok)
    sampler = Sampler(model, tok)
    rows = arith.held_out(cfg.eval_per_difficulty, seed=cfg.seed, ops=cfg.ops)
    result = {}
    for name, temp in (("greedy", 0.0), ("t1", 1.0)):
        scfg = sampler.config(max_new_tokens=cfg.max_new_tokens, temperature=temp)
        result[name] = arith.evaluate(sampler, scfg, rows, seed=cfg.seed)
    return result
