"""Batched KV-cache sampling: B prompts x G completions each, the whole decode loop in one jit.

Each prompt is prefilled once and its keys/values are shared by its G samples; `lax.while_loop`s then
draw a token for every sequence per iteration (the decode step of models/decode.py), stopping as soon as
all sequences are done. Shapes are static: prompts are left-padded to a length bucket and the batch to a
fixed size, so one compiled program serves every step of training.

Per token it returns the log-probability under the policy at temperature 1 (what the GRPO loss needs)
and under the distribution actually sampled from (temperature, top-k, top-p).

Thinking budget (budget forcing, s1 paper): once a sequence has spent `think_budget` tokens inside
<think> without closing it, the tokens of `budget_suffix` (containing </think>) are forced so it answers.
The opposite, `num_waits` > 0: when it emits </think>, that token is replaced by `wait_suffix`
("Wait") so it keeps thinking, up to `num_waits` times. Forced tokens are flagged in `forced`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.decode import decode_step, decode_weights, init_cache
from models.sharding import param_shardings, shard_batch, to_host
from models.transformer import KVCache, Transformer

# finish codes
LENGTH, EOS, STOP = 0, 1, 2
FINISH_NAMES = {LENGTH: "length", EOS: "eos", STOP: "stop"}


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static settings of one compiled sampler (hashable; a change means one new compile)."""

    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    eos_ids: tuple[int, ...] = ()
    stop_token_seqs: tuple[tuple[int, ...], ...] = ()  # token sequences that end a completion
    pad_id: int = 0
    think_open_id: int = -1  # -1: no thinking tags in this vocabulary
    think_close_id: int = -1
    think_budget: int = 0  # 0 = no budget
    budget_tokens: tuple[int, ...] = ()  # forced when the budget is spent; must contain think_close_id
    num_waits: int = 0
    wait_tokens: tuple[int, ...] = ()  # replaces </think> up to num_waits times

    def validate(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.think_budget and (self.think_close_id < 0 or self.think_close_id not in self.budget_tokens):
            raise ValueError("think_budget needs think tags in the vocabulary and budget_tokens containing </think>")
        if self.num_waits and (self.think_close_id < 0 or not self.wait_tokens):
            raise ValueError("num_waits needs think tags in the vocabulary and non-empty wait_tokens")


@flax.struct.dataclass
class SampleOutput:
    """Device arrays for N = B * G completions (row b * G + g is sample g of prompt b), T = max_new_tokens."""

    tokens: jax.Array  # (N, T) int32, pad after the end
    logp: jax.Array  # (N, T) f32, log p_policy(token) at temperature 1; 0 on pads
    logp_sample: jax.Array  # (N, T) f32, log prob under the sampling distribution; 0 for forced / greedy
    mask: jax.Array  # (N, T) bool, completion tokens (incl. the final EOS / stop tokens)
    forced: jax.Array  # (N, T) bool, tokens inserted by budget forcing / waits (not sampled)
    lengths: jax.Array  # (N,) int32
    think_lengths: jax.Array  # (N,) int32, tokens generated inside <think> ... </think>
    finish: jax.Array  # (N,) int32: LENGTH / EOS / STOP
    budget_forced: jax.Array  # (N,) bool


def _sampling_logits(logits_nv: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Logits of the distribution sampled from: temperature, then top-k, then top-p (nucleus)."""
    x = logits_nv / cfg.temperature
    if cfg.top_k and cfg.top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, cfg.top_k)[0][..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if cfg.top_p < 1.0:
        sorted_x = jnp.sort(x, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_x, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
        keep = before < cfg.top_p  # the most likely token is always kept
        cutoff = jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < cutoff, -jnp.inf, x)
    return x


def _suffix_table(seqs: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned stop sequences (n, width) with a validity mask."""
    table = np.full((max(len(seqs), 1), width), -1, np.int32)
    valid = np.zeros_like(table, bool)
    for i, s in enumerate(seqs):
        table[i, width - len(s):] = s
        valid[i, width - len(s):] = True
    return table, valid


def _left_aligned(seqs: Sequence[Sequence[int]]) -> np.ndarray:
    table = np.zeros((len(seqs), max([len(x) for x in seqs] + [1])), np.int32)
    for i, x in enumerate(seqs):
        table[i, :len(x)] = x
    return table


def generate(graphdef: nnx.GraphDef, params: Any, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             in_think: jax.Array, rng: jax.Array, cfg: SamplingConfig, group_size: int,
             num_segments: int = 4, gather_weights: bool = True) -> SampleOutput:
    """Samples `group_size` completions for each of B left-padded prompts (jit this; cfg/group_size static).

    Args:
      graphdef, params: `nnx.split(model)` of the policy.
      prompt_tokens: (B, P) int32, left-padded.
      prompt_mask: (B, P) bool, True on real tokens.
      in_think: (B,) bool, the prompt ends inside an open <think>.
      rng: PRNG key.
      cfg: SamplingConfig.
      group_size: G.
      num_segments: static; the decode loop is split into this many loops with growing attention windows
        (more segments: less attention work, one more compiled loop body each).
      gather_weights: static; see `decode_weights` (True: data-parallel decoding with the weights gathered
        over the batch axes once per call; False: FSDP-sharded weights, all-gathered at every token).

    Returns:
      SampleOutput with N = B * G rows.
    """
    model: Transformer = nnx.merge(graphdef, params)
    b, p = prompt_tokens.shape
    n, t_max = b * group_size, cfg.max_new_tokens
    prompt_len = prompt_mask.sum(-1).astype(jnp.int32)
    # Decode segments end at these steps; the decode cache grows segment by segment, so attention reads
    # about the live context rather than all max_new_tokens slots from the first step.
    ends = sorted({min(t_max, -(-t_max * (j + 1) // num_segments)) for j in range(num_segments)})

    # Prefill the B prompts once; only the last position's logits are needed. Their keys/values stay
    # shared by the G samples of each prompt.
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0)
    hidden, cache = model(prompt_tokens, positions, prompt_mask, KVCache.zeros(model.cfg, b, p), 0,
                          return_hidden=True)
    logits = model.logits(hidden[:, -1])
    cache = init_cache(cache.k, cache.v, prompt_mask, n, ends[0])
    weights = decode_weights(model, p + t_max, gather_weights)

    # Row i samples from prompt i // G.
    rep = lambda x: jnp.repeat(x, group_size, axis=0)
    logits, prompt_len, in_think = rep(logits), rep(prompt_len), rep(in_think)

    width = max([len(x) for x in cfg.stop_token_seqs] + [1])
    stop_table, stop_valid = _suffix_table(cfg.stop_token_seqs, width)
    forced_table = jnp.asarray(_left_aligned([cfg.budget_tokens, cfg.wait_tokens]))
    forced_len = jnp.asarray([len(cfg.budget_tokens), len(cfg.wait_tokens)], jnp.int32)
    eos_ids = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)

    zeros_i = jnp.zeros((n,), jnp.int32)
    state = dict(
        t=jnp.int32(0), logits=logits, cache=cache,
        tokens=jnp.full((n, t_max), cfg.pad_id, jnp.int32), logp=jnp.zeros((n, t_max)),
        logp_sample=jnp.zeros((n, t_max)), forced=jnp.zeros((n, t_max), bool),
        done=jnp.zeros((n,), bool), finish=zeros_i, lengths=zeros_i, think_len=zeros_i, in_think=in_think,
        force_kind=zeros_i - 1, force_pos=zeros_i, waits_left=zeros_i + cfg.num_waits,
        budget_forced=jnp.zeros((n,), bool), window=jnp.full((n, width), -1, jnp.int32),
    )

    def body(st):
        t, active = st["t"], ~st["done"]
        logits = st["logits"]
        policy_logp = jax.nn.log_softmax(logits, axis=-1)
        if cfg.temperature == 0:
            sampled = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            sample_logp = jnp.zeros((n,))
        else:
            x = _sampling_logits(logits, cfg)
            sampled = jax.random.categorical(jax.random.fold_in(rng, t), x, axis=-1).astype(jnp.int32)
            sample_logp = jnp.take_along_axis(jax.nn.log_softmax(x, axis=-1), sampled[:, None], -1)[:, 0]

        # Forced tokens: start the budget suffix, or turn a </think> into "Wait" while waits are left.
        kind, pos = st["force_kind"], st["force_pos"]
        in_think = st["in_think"]
        start_budget = (cfg.think_budget > 0) & in_think & (st["think_len"] >= cfg.think_budget) & (kind < 0)
        start_wait = ((cfg.num_waits > 0) & in_think & (sampled == cfg.think_close_id) & (st["waits_left"] > 0)
                      & (kind < 0) & ~start_budget)
        kind = jnp.where(start_budget, 0, jnp.where(start_wait, 1, kind))
        pos = jnp.where(start_budget | start_wait, 0, pos)
        is_forced = kind >= 0
        forced_tok = forced_table[jnp.maximum(kind, 0), pos]
        tok = jnp.where(is_forced, forced_tok, sampled)
        sample_logp = jnp.where(is_forced, 0.0, sample_logp)
        tok_logp = jnp.take_along_axis(policy_logp, tok[:, None], -1)[:, 0]
        pos = pos + is_forced
        kind = jnp.where(is_forced & (pos >= forced_len[jnp.maximum(kind, 0)]), -1, kind)

        tok = jnp.where(active, tok, cfg.pad_id)
        think_len = st["think_len"] + (active & in_think & (tok != cfg.think_close_id))
        in_think = jnp.where(active & (tok == cfg.think_open_id), True,
                             jnp.where(active & (tok == cfg.think_close_id), False, in_think))
        window = jnp.concatenate([st["window"][:, 1:], tok[:, None]], axis=1)
        hit_stop = jnp.any(jnp.all((window[:, None, :] == stop_table[None]) | ~stop_valid[None], -1)
                           & jnp.asarray(stop_valid.any(-1))[None], -1) if cfg.stop_token_seqs else jnp.zeros(
            (n,), bool)
        hit_eos = jnp.any(tok[:, None] == eos_ids[None], -1)
        finish = jnp.where(active & hit_eos, EOS, jnp.where(active & hit_stop, STOP, st["finish"]))
        done = st["done"] | (active & (hit_eos | hit_stop))

        tokens = st["tokens"].at[:, t].set(tok)
        upd = lambda arr, v: arr.at[:, t].set(jnp.where(active, v, jnp.zeros_like(v)))
        # Feed the token: decode slot t, RoPE position prompt_len + t.
        logits, cache = decode_step(model.cfg, weights, st["cache"], tok, prompt_len + t, t)
        return dict(
            t=t + 1, logits=logits, cache=cache, tokens=tokens,
            logp=upd(st["logp"], tok_logp), logp_sample=upd(st["logp_sample"], sample_logp),
            forced=upd(st["forced"], is_forced), done=done, finish=finish,
            lengths=st["lengths"] + active, think_len=think_len, in_think=in_think,
            force_kind=jnp.where(active, kind, -1), force_pos=pos,
            waits_left=st["waits_left"] - (active & start_wait),
            budget_forced=st["budget_forced"] | (active & start_budget), window=window)

    st = state
    for end in ends:
        st = dict(st, cache=st["cache"].grow(end))
        st = jax.lax.while_loop(lambda st, end=end: (st["t"] < end) & ~jnp.all(st["done"]), body, st)
    mask = jnp.arange(t_max)[None, :] < st["lengths"][:, None]
    return SampleOutput(tokens=st["tokens"], logp=st["logp"], logp_sample=st["logp_sample"], mask=mask,
                        forced=st["forced"] & mask, lengths=st["lengths"], think_lengths=st["think_len"],
                        finish=st["finish"], budget_forced=st["budget_forced"])


# ---- host side -----------------------------------------------------------------------------------------

def bucket_length(n: int, minimum: int = 16) -> int:
    """Prompt length bucket: powers of two up to 256, then multiples of 256 (few compiles, little waste)."""
    if n <= 256:
        return max(minimum, 1 << max(n - 1, 0).bit_length())
    return -(-n // 256) * 256


@dataclasses.dataclass
class Completions:
    """Host (numpy) view of a SampleOutput plus decoded text; rows are prompt-major (b * G + g)."""

    tokens: np.ndarray
    logp: np.ndarray
    logp_sample: np.ndarray
    mask: np.ndarray
    forced: np.ndarray
    lengths: np.ndarray
    think_lengths: np.ndarray
    finish_reason: list[str]  # 'eos' | 'stop' | 'length' | 'budget' (budget forcing happened)
    budget_forced: np.ndarray
    prompt_tokens: np.ndarray  # (B, P) left-padded, as fed to the model
    prompt_mask: np.ndarray
    group_size: int
    texts: list[str] | None = None
    device: SampleOutput | None = None  # the device arrays, for the trainer

    @property
    def prompt_index(self) -> np.ndarray:
        return np.arange(len(self.lengths)) // self.group_size


class Sampler:
    """Compiles `generate` once per (SamplingConfig, G, batch, prompt bucket) and runs it on a mesh.

    The batch is split over the mesh's ('data', 'fsdp') axes. With `gather_weights` (the default) each
    device decodes its rows with the whole weights (split over 'tensor' only), gathered once per call;
    set it False when a model's weights (divided by the tensor axis) do not fit one device.
    """

    def __init__(self, model: Transformer, tokenizer=None, mesh: jax.sharding.Mesh | None = None,
                 gather_weights: bool = True):
        self.graphdef, state = nnx.split(model)
        self.tokenizer = tokenizer
        self.mesh = mesh
        # parameters are kept as a plain nested dict (what the trainer's state holds too)
        self.shardings = nnx.to_pure_dict(param_shardings(state, mesh)) if mesh is not None else None
        self.set_params(nnx.to_pure_dict(state))
        self._generate = jax.jit(functools.partial(generate, self.graphdef, gather_weights=gather_weights),
                                 static_argnames=("cfg", "group_size"))

    def set_params(self, params: Any) -> None:
        """Uses new policy parameters (a nested dict as from `nnx.to_pure_dict`), placed on the mesh."""
        self.params = jax.device_put(params, self.shardings) if self.mesh is not None else params

    def config(self, max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               stop: Sequence[str] = (), think_budget: int = 0, budget_suffix: str = "</think>",
               num_waits: int = 0, wait_suffix: str = "Wait", eos_ids: Sequence[int] | None = None,
               pad_id: int | None = None) -> SamplingConfig:
        """A SamplingConfig with stop strings and forced suffixes tokenized by this sampler's tokenizer."""
        tok = self.tokenizer
        enc = (lambda s: tuple(tok.encode(s))) if tok is not None else None
        if (stop or think_budget or num_waits) and tok is None:
            raise ValueError("stop strings, think_budget and num_waits need a tokenizer")
        cfg = SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            eos_ids=tuple(eos_ids if eos_ids is not None else (tok.eos_ids if tok else ())),
            stop_token_seqs=tuple(enc(s) for s in stop),
            pad_id=pad_id if pad_id is not None else (tok.pad_id if tok else 0),
            think_open_id=tok.think_open_id if tok is not None and tok.think_open_id is not None else -1,
            think_close_id=tok.think_close_id if tok is not None and tok.think_close_id is not None else -1,
            think_budget=think_budget, budget_tokens=enc(budget_suffix) if think_budget else (),
            num_waits=num_waits, wait_tokens=enc(wait_suffix) if num_waits else ())
        cfg.validate()
        return cfg

    def pad_prompts(self, prompts: Sequence[Sequence[int]], batch_size: int | None = None,
                    pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Left-pads token lists to a length bucket (and the batch to batch_size, repeating the last prompt)."""
        if not prompts or any(len(x) == 0 for x in prompts):
            raise ValueError("every prompt needs at least one token")
        rows = list(prompts)
        if batch_size is not None:
            if len(rows) > batch_size:
                raise ValueError(f"{len(rows)} prompts do not fit batch_size {batch_size}")
            rows += [rows[-1]] * (batch_size - len(rows))
        p = bucket_length(max(len(x) for x in rows))
        tokens = np.full((len(rows), p), pad_id, np.int32)
        mask = np.zeros((len(rows), p), bool)
        for i, x in enumerate(rows):
            tokens[i, p - len(x):] = x
            mask[i, p - len(x):] = True
        return tokens, mask

    def sample(self, prompts: Sequence[Sequence[int]] | Sequence[str], cfg: SamplingConfig, group_size: int = 1,
               seed: int | jax.Array = 0, batch_size: int | None = None, decode: bool = True) -> Completions:
        """Draws `group_size` completions per prompt.

        Args:
          prompts: token id lists, or strings (encoded with the tokenizer).
          cfg: from `self.config(...)`.
          group_size: G.
          seed: int or PRNG key.
          batch_size: pad the number of prompts to this (a fixed shape: no recompiles on a short last batch).
          decode: also decode completions to text (needs the tokenizer).
        """
        if prompts and isinstance(prompts[0], str):
            prompts = self.tokenizer.encode_batch(prompts)
        num = len(prompts)
        tokens, mask = self.pad_prompts(prompts, batch_size, cfg.pad_id)
        in_think = np.zeros(len(tokens), bool)
        if cfg.think_open_id >= 0:  # does the prompt end inside an open <think>?
            for i, row in enumerate(tokens):
                opens, closes = np.nonzero(row == cfg.think_open_id)[0], np.nonzero(row == cfg.think_close_id)[0]
                in_think[i] = len(opens) > 0 and (len(closes) == 0 or opens[-1] > closes[-1])
        rng = jax.random.key(seed) if isinstance(seed, int) else seed
        args = (tokens, mask, in_think)
        if self.mesh is not None:
            args = shard_batch(self.mesh, args)
            with jax.set_mesh(self.mesh):
                out = self._generate(self.params, *args, rng, cfg=cfg, group_size=group_size)
        else:
            out = self._generate(self.params, *args, rng, cfg=cfg, group_size=group_size)
        n = num * group_size
        host = jax.tree.map(lambda x: to_host(x)[:n], out)
        finish = [("budget" if bf else FINISH_NAMES[int(f)]) for f, bf in zip(host.finish, host.budget_forced)]
        result = Completions(
            tokens=host.tokens, logp=host.logp, logp_sample=host.logp_sample, mask=host.mask, forced=host.forced,
            lengths=host.lengths, think_lengths=host.think_lengths, finish_reason=finish,
            budget_forced=host.budget_forced, prompt_tokens=tokens[:num], prompt_mask=mask[:num],
            group_size=group_size, device=out)
        if decode and self.tokenizer is not None:  # text without the final EOS token
            ends = result.lengths - (host.finish == EOS)
            result.texts = self.tokenizer.decode_batch([row[:end] for row, end in zip(result.tokens, ends)])
        return result
