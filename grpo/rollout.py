"""Rollouts: prompts -> G completions each -> rewards -> group advantages -> a fixed-shape train batch.

Device work (sampling) and host work (decoding, rewards) alternate here; everything that reaches the
train step has a fixed shape, so the step compiles once: dropped groups (dynamic sampling) and
masked-out completions become rows with `valid = False` instead of a smaller batch.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import flax.struct
import jax
import numpy as np

from grpo import loss as loss_lib
from models.sampler import Completions, Sampler, SamplingConfig


@flax.struct.dataclass
class Batch:
    """One rollout batch for the train step. N = prompts_per_step * G rows, L = P + T tokens."""

    tokens: jax.Array  # (N, L) int32: left-padded prompt then completion (pads after its end)
    positions: jax.Array  # (N, L) int32 RoPE positions
    kv_mask: jax.Array  # (N, L) bool: real tokens (prompt and completion)
    completion_mask: jax.Array  # (N, T) bool: tokens that enter the loss
    sampler_logp: jax.Array  # (N, T) f32: log p of each token under the sampling policy at temperature 1
    ref_logp: jax.Array  # (N, T) f32: reference-model log p (zeros when beta = 0)
    advantages: jax.Array  # (N,) or (N, T)
    valid: jax.Array  # (N,) bool: rows that count

    @property
    def prompt_len(self) -> int:
        return self.tokens.shape[1] - self.completion_mask.shape[1]


@dataclasses.dataclass
class Rollout:
    """A batch plus what the host knows about it (texts, rewards) for logging."""

    batch: Batch
    texts: list[str]
    samples: list[dict]
    rewards: np.ndarray  # (N,) total reward (0 on invalid rows)
    parts: dict[str, np.ndarray]
    stats: dict[str, float]


def build_batch(comp: Completions, advantages: np.ndarray, valid: np.ndarray,
                mask_truncated: bool = False) -> Batch:
    """Concatenates prompts and completions into fixed-shape arrays.

    Args:
      comp: the sampler's completions for B prompts x G.
      advantages: (N,) or (N, T).
      valid: (N,) rows that count.
      mask_truncated: drop completions that hit the length limit from the loss (DAPO's overlong
        filtering), so the model is not pushed on answers it never finished.
    """
    g = comp.group_size
    prompt_tokens = np.repeat(comp.prompt_tokens, g, axis=0)
    prompt_mask = np.repeat(comp.prompt_mask, g, axis=0)
    tokens = np.concatenate([prompt_tokens, comp.tokens], axis=1).astype(np.int32)
    kv_mask = np.concatenate([prompt_mask, comp.mask], axis=1)
    positions = np.maximum(np.cumsum(kv_mask, axis=1) - 1, 0).astype(np.int32)
    truncated = np.array([r == "length" for r in comp.finish_reason])
    rows = valid & ~truncated if mask_truncated else valid
    completion_mask = comp.mask & rows[:, None] & ~comp.forced  # forced tokens were never sampled
    return Batch(tokens=tokens, positions=positions, kv_mask=kv_mask, completion_mask=completion_mask,
                 sampler_logp=comp.logp.astype(np.float32), ref_logp=np.zeros_like(comp.logp, np.float32),
                 advantages=np.where(rows.reshape((-1,) + (1,) * (advantages.ndim - 1)), advantages, 0.0
                                     ).astype(np.float32),
                 valid=rows)


def _concat_completions(parts: Sequence[Completions]) -> Completions:
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])
    width = max(p.prompt_tokens.shape[1] for p in parts)
    pad = lambda a, fill: np.pad(a, ((0, 0), (width - a.shape[1], 0)), constant_values=fill)
    return Completions(
        tokens=cat("tokens"), logp=cat("logp"), logp_sample=cat("logp_sample"), mask=cat("mask"),
        forced=cat("forced"), lengths=cat("lengths"), think_lengths=cat("think_lengths"),
        finish_reason=sum((p.finish_reason for p in parts), []), budget_forced=cat("budget_forced"),
        prompt_tokens=np.concatenate([pad(p.prompt_tokens, 0) for p in parts]),
        prompt_mask=np.concatenate([pad(p.prompt_mask, False) for p in parts]),
        group_size=parts[0].group_size, texts=sum((p.texts for p in parts), []))


def _select(comp: Completions, groups: np.ndarray) -> Completions:
    g = comp.group_size
    rows = (groups[:, None] * g + np.arange(g)[None]).reshape(-1)
    take = lambda a: a[rows]
    return dataclasses.replace(
        comp, tokens=take(comp.tokens), logp=take(comp.logp), logp_sample=take(comp.logp_sample),
        mask=take(comp.mask), forced=take(comp.forced), lengths=take(comp.lengths),
        think_lengths=take(comp.think_lengths), finish_reason=[comp.finish_reason[r] for r in rows],
        budget_forced=take(comp.budget_forced), prompt_tokens=comp.prompt_tokens[groups],
        prompt_mask=comp.prompt_mask[groups], texts=[comp.texts[r] for r in rows], device=None)


def collect(sampler: Sampler, prompts_fn: Callable[[int], list[dict]], encode: Callable[[dict], list[int]],
            reward_fn: Callable, scfg: SamplingConfig, lcfg: loss_lib.LossConfig, *, num_prompts: int,
            group_size: int, rng: jax.Array, dynamic_sampling: bool = False, max_rounds: int = 1,
            mask_truncated: bool = False) -> Rollout:
    """Samples, scores and turns one step's prompts into a train batch.

    Args:
      sampler: holds the current policy parameters.
      prompts_fn: n -> the next n dataset rows (advances the data position).
      encode: row -> prompt token ids.
      reward_fn: `rewards.compose.ComposedReward` (texts, samples) -> (total, parts).
      scfg, lcfg: sampling and loss settings.
      num_prompts, group_size: B and G.
      rng: this step's key (each round folds in its index).
      dynamic_sampling: DAPO: keep only groups whose rewards differ; sample further rounds of B prompts
        (up to `max_rounds` in all) to fill the batch; leftover slots become invalid rows.
      mask_truncated: exclude completions that hit the length limit from the loss.
    """
    t0 = time.perf_counter()
    kept: list[Completions] = []
    kept_samples: list[dict] = []
    kept_rewards, kept_parts = [], []
    drawn_rewards, drawn_parts, drawn_lengths, drawn_think = [], [], [], []  # everything sampled, for logging
    sample_s = reward_s = 0.0
    rounds = drawn_groups = zero_std_groups = 0
    n_kept = 0
    while n_kept < num_prompts and rounds < (max_rounds if dynamic_sampling else 1):
        rows = prompts_fn(num_prompts)
        ts = time.perf_counter()
        comp = sampler.sample([encode(r) for r in rows], scfg, group_size=group_size,
                              seed=jax.random.fold_in(rng, rounds), batch_size=num_prompts)
        sample_s += time.perf_counter() - ts
        ts = time.perf_counter()
        per_row = [r for r in rows for _ in range(group_size)]
        samples = [dict(r, num_tokens=int(n)) for r, n in zip(per_row, comp.lengths)]
        total, parts = reward_fn(comp.texts, samples)
        reward_s += time.perf_counter() - ts
        drawn_rewards.append(total)
        drawn_parts.append(parts)
        drawn_lengths.append(comp.lengths)
        drawn_think.append(comp.think_lengths)
        spread = total.reshape(num_prompts, group_size).std(axis=1) > 0
        zero_std_groups += int((~spread).sum())
        drawn_groups += num_prompts
        rounds += 1
        groups = np.nonzero(spread)[0] if dynamic_sampling else np.arange(num_prompts)
        groups = groups[:num_prompts - n_kept]
        if len(groups) == 0:
            continue
        sel = np.concatenate([g * group_size + np.arange(group_size) for g in groups])
        kept.append(_select(comp, groups))
        kept_samples += [samples[i] for i in sel]
        kept_rewards.append(total[sel])
        kept_parts.append({k: v[sel] for k, v in parts.items()})
        n_kept += len(groups)

    if not kept:  # nothing with any spread: an all-invalid batch (the step is a no-op but still logged)
        kept, kept_samples = [_select(comp, np.arange(num_prompts))], samples
        kept_rewards, kept_parts, n_kept_valid = [total], [parts], 0
    else:
        n_kept_valid = n_kept
    comp = _concat_completions(kept)
    total = np.concatenate(kept_rewards)
    parts = {k: np.concatenate([p[k] for p in kept_parts]) for k in kept_parts[0]}
    n_groups = len(comp.prompt_tokens)
    valid = np.repeat(np.arange(n_groups) < n_kept_valid, group_size)
    if n_groups < num_prompts:  # pad with copies of the first group, marked invalid
        pad = np.zeros(num_prompts - n_groups, int)
        comp = _concat_completions([comp, _select(comp, pad)])
        kept_samples += [kept_samples[i] for i in np.repeat(pad * group_size, group_size)]
        total = np.concatenate([total, np.zeros(len(pad) * group_size, np.float32)])
        parts = {k: np.concatenate([v, np.zeros(len(pad) * group_size, np.float32)]) for k, v in parts.items()}
        valid = np.concatenate([valid, np.zeros(len(pad) * group_size, bool)])
    adv = np.asarray(loss_lib.compute_advantages(total, group_size, lcfg, valid_n=valid))
    batch = build_batch(comp, adv, valid, mask_truncated)

    # Logged over every completion drawn this step (dynamic sampling keeps only the informative groups,
    # whose mean reward is ~0.5 by construction); frac_valid / frac_zero_std_groups describe the filter.
    all_total = np.concatenate(drawn_rewards)
    all_parts = {k: np.concatenate([p[k] for p in drawn_parts]) for k in drawn_parts[0]}
    stats = {
        "reward/mean": float(all_total.mean()),
        "reward/std": float(all_total.std()),
        **{k: float(p.mean()) for k, p in all_parts.items()},
        **reward_fn.metrics(),
        "completion_len/mean": float(np.concatenate(drawn_lengths).mean()),
        "think_len/mean": float(np.concatenate(drawn_think).mean()),
        "think_rate": float((np.concatenate(drawn_think) > 0).mean()),
        "frac_truncated": float(np.mean([r == "length" for r, ok in zip(comp.finish_reason, valid) if ok]))
        if valid.any() else 0.0,
        "frac_zero_std_groups": zero_std_groups / max(drawn_groups, 1),
        "sampling_rounds": rounds,
        "frac_valid": float(valid.mean()),
        "time/sample_s": sample_s,
        "time/reward_s": reward_s,
        "tokens_per_s/sample": float(np.concatenate(drawn_lengths).sum()) / max(sample_s, 1e-9),
        "time/rollout_s": time.perf_counter() - t0,
    }
    if "reward/math" in all_parts:  # correct answers (the math reward is > 0 exactly then)
        stats["accuracy"] = float((all_parts["reward/math"] > 0).mean())
    return Rollout(batch=batch, texts=comp.texts, samples=kept_samples, rewards=total, parts=parts, stats=stats)
