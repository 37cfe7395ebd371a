"""Math answer verification: is the final answer of a completion equal to the gold answer?

The reward is the only teacher in GRPO, so a verdict must be right, must come back in bounded time,
and must be cheap enough to score thousands of completions per step. Per item:

  1. Extract the final answer (trainer process, stdlib only, linear time): the last `<answer>…</answer>`,
     else the last `\\boxed{…}`/`\\fbox{…}` (with the boxes right before it, for several answers),
     else "the answer is …", else GSM8K's "#### …", else the whole completion if it is nothing but
     an answer, else (optional, off by default for AIME-style strictness) the last number.
  2. Reject absurd answers (too long, braces nested too deep) without a worker round trip.
  3. Clean both sides (unicode math, delimiters, thousands separators, units, degrees, percent).
  4. Decide here what needs no sympy: identical answers, and answers made only of plain numbers
     (numbers, tuples, intervals, sets of numbers), compared exactly: GSM8K never touches sympy.
  5. Otherwise send the pair to a worker process (`rewards.math_worker`: math-verify parsing and
     sympy comparison) under a hard per-item timeout; a timeout, crash or parse failure scores 0
     and is counted in `VerifyStats`. Identical pairs in a batch are sent once, verdicts are cached,
     and workers cache parsed gold answers.

Public contract: `verify(pred_text, gold) -> bool` and `verify_batch(preds, golds) -> list[bool]`.
`MathReward` wraps them as a batched reward function for `rewards.compose`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from typing import Sequence

from rewards import pool as pool_lib
from rewards.extract import NO_ANSWER, TOO_DEEP, TOO_LONG, as_text, clean, extract, last_boxed
from rewards.extract import extract_answer  # noqa: F401 - part of this module's API
from rewards.numbers import (BasedNumeral, PlainNumber, PlainSequence, canonical, parse_based,
                             parse_number, parse_sequence, plain_equal)


@dataclasses.dataclass
class VerifyStats:
    """What happened to the items of one batch (or, summed, of a verifier's lifetime).

    A verdict of False because of `no_answer`, `rejected`, `timeouts`, `crashes`, `errors` or
    `parse_errors` is a failure to verify rather than a wrong answer; log them to see which.
    """

    items: int = 0
    no_answer: int = 0  # no final answer could be extracted from the completion
    rejected: int = 0  # answer too long or too deeply nested; refused without a worker
    bad_gold: int = 0  # the gold answer itself was empty or refused
    fast_path: int = 0  # identical, or plain numbers/tuples/sets: decided in the trainer process
    cached: int = 0  # decided by an earlier identical (answer, gold) pair
    sympy: int = 0  # distinct pairs sent to worker processes
    timeouts: int = 0  # worker exceeded the per-item timeout (killed and replaced)
    crashes: int = 0  # worker died on the item (killed, segfault, out of memory)
    errors: int = 0  # the comparison raised (counted, scored 0)
    parse_errors: int = 0  # the predicted answer could not be parsed
    gold_parse_errors: int = 0  # the gold answer could not be parsed
    too_big: int = 0  # an answer would need astronomically large numbers (9^{9^{9^9}})

    def add(self, other: "VerifyStats") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# Worker verdict reasons (rewards.math_worker) -> VerifyStats fields.
_WHY_TO_STAT = {"parse_error": "parse_errors", "gold_parse_error": "gold_parse_errors",
                "too_big": "too_big"}


@dataclasses.dataclass(frozen=True)
class _Answer:
    text: str  # cleaned answer, what a worker compares
    plain: PlainNumber | PlainSequence | BasedNumeral | None  # set if made of plain numbers only


class MathVerifier:
    """Verifies answers against gold answers with a pool of sympy worker processes.

    Args:
      timeout_s: hard wall-clock limit per (answer, gold) comparison in a worker.
      num_workers: worker processes (default: usable CPUs, at most 8).
      fallback_last_number: default for extraction (see `extract_answer`).
      max_answer_chars, max_brace_depth: answers beyond these are refused in the trainer process.
      max_items_per_worker: workers are recycled after this many comparisons.
      memory_limit_mb: address-space limit of each worker.
      chunk_size: comparisons per message to a worker.
      cache_size: verdicts and prepared gold answers kept.
      handler: the worker module (tests substitute one that can hang or crash on demand).
    """

    def __init__(self, *, timeout_s: float = 1.5, num_workers: int | None = None,
                 fallback_last_number: bool = False, max_answer_chars: int = 1000,
                 max_brace_depth: int = 50, max_items_per_worker: int = 10_000,
                 memory_limit_mb: int = 2048, chunk_size: int = 16, cache_size: int = 65_536,
                 handler: str = "rewards.math_worker"):
        self.fallback_last_number = fallback_last_number
        self.max_answer_chars = max_answer_chars
        self.max_brace_depth = max_brace_depth
        self.pool = pool_lib.WorkerPool(
            handler, num_workers=num_workers, timeout_s=timeout_s,
            max_items_per_worker=max_items_per_worker, memory_limit_mb=memory_limit_mb,
            chunk_size=chunk_size)
        self.stats = VerifyStats()
        self._cache_size = cache_size
        self._verdicts: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self._gold = functools.lru_cache(maxsize=cache_size)(self._prepare_gold)

    def close(self) -> None:
        self.pool.close()

    def clear_cache(self) -> None:
        """Forgets cached verdicts and prepared gold answers (workers keep their parse caches,
        which cannot change a verdict)."""
        with self._lock:
            self._verdicts.clear()
            self._gold.cache_clear()

    def _prepare(self, answer: str | None, why: str) -> _Answer | str:
        if answer is None:
            return why or NO_ANSWER
        text = clean(answer)
        if not text:
            return NO_ANSWER
        if len(text) > self.max_answer_chars:
            return TOO_LONG
        depth = max_depth = 0
        for c in text:
            depth += (c == "{") - (c == "}")
            max_depth = max(max_depth, depth)
        if max_depth > self.max_brace_depth:
            return TOO_DEEP
        number = parse_number(text)
        if number is not None:
            return _Answer(canonical(number), number)
        return _Answer(text, parse_sequence(text) or parse_based(text))

    def _prepare_gold(self, gold: str) -> _Answer | str:
        # A gold answer is an answer, not a completion; only a boxed one (a MATH solution) needs
        # extracting.
        gold = as_text(gold)
        if "\\boxed" in gold or "\\fbox" in gold:
            answer, why = last_boxed(gold, self.max_answer_chars, self.max_brace_depth)
            return self._prepare(answer, why)
        return self._prepare(gold, "")

    def _prepare_pred(self, text, fallback_last_number: bool) -> _Answer | str:
        answer, why = extract(as_text(text), fallback_last_number, self.max_answer_chars,
                               self.max_brace_depth)
        return self._prepare(answer, why)

    def verify(self, pred_text: str, gold: str, **kwargs) -> bool:
        """Whether the final answer in `pred_text` equals `gold`. See `verify_batch`."""
        return self.verify_batch([pred_text], [gold], **kwargs)[0]

    def verify_batch(self, preds: Sequence[str], golds: Sequence[str], *,
                     fallback_last_number: bool | None = None, return_stats: bool = False):
        """Verifies many completions against their gold answers, in parallel across workers.

        Args:
          preds: completions (str; bytes are decoded leniently).
          golds: gold answers, one per completion (str, or numbers).
          fallback_last_number: overrides the verifier's default for this call.
          return_stats: also return this batch's `VerifyStats`.

        Returns:
          A list of bools (and the stats if requested). Never raises on bad input: anything that
          cannot be verified in time is False and counted in the stats.
        """
        if len(preds) != len(golds):
            raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
        if fallback_last_number is None:
            fallback_last_number = self.fallback_last_number
        with self._lock:
            verdicts, stats = self._verify_locked(preds, golds, fallback_last_number)
            self.stats.add(stats)
        return (verdicts, stats) if return_stats else verdicts

    def _verify_locked(self, preds, golds, fallback_last_number):
        stats = VerifyStats(items=len(preds))
        verdicts = [False] * len(preds)
        todo: dict[tuple[str, str], list[int]] = {}
        for i, (pred, gold) in enumerate(zip(preds, golds)):
            g = self._gold(gold if isinstance(gold, str) else as_text(gold))
            if isinstance(g, str):
                stats.bad_gold += 1
                continue
            p = self._prepare_pred(pred, fallback_last_number)
            if isinstance(p, str):
                stats.no_answer += p == NO_ANSWER
                stats.rejected += p != NO_ANSWER
                continue
            # Decided here, without sympy: identical answers, and answers made of plain numbers.
            equal = True if p.text == g.text else None
            if equal is None and p.plain is not None and g.plain is not None:
                equal = plain_equal(p.plain, g.plain)
            if equal is not None:
                stats.fast_path += 1
                verdicts[i] = equal
                continue
            key = (p.text, g.text)
            if key in self._verdicts:
                stats.cached += 1
                self._verdicts.move_to_end(key)
                verdicts[i] = self._verdicts[key]
                continue
            todo.setdefault(key, []).append(i)
        # Pairs sharing a gold answer travel together, so a worker parses each gold once.
        keys = sorted(todo, key=lambda k: k[1])
        stats.sympy = len(keys)
        for key, (status, value) in zip(keys, self.pool.map(keys)):
            equal = False
            if status == pool_lib.OK:
                equal, why = value
                if why:
                    field = _WHY_TO_STAT[why]
                    setattr(stats, field, getattr(stats, field) + 1)
            elif status == pool_lib.TIMEOUT:
                stats.timeouts += 1
            elif status == pool_lib.CRASH:
                stats.crashes += 1
            else:
                stats.errors += 1
            if status != pool_lib.CRASH:  # a crash may be the machine's fault, not the input's
                self._verdicts[key] = equal
                if len(self._verdicts) > self._cache_size:
                    self._verdicts.popitem(last=False)
            for i in todo[key]:
                verdicts[i] = equal
        return verdicts, stats


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    """The process-wide verifier behind `verify`/`verify_batch`, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathVerifier()
        return _default


def configure(**options) -> MathVerifier:
    """Replaces the process-wide verifier with one built from `MathVerifier` options."""
    global _default
    with _default_lock:
        old, _default = _default, MathVerifier(**options)
    if old is not None:
        old.close()
    return _default


def verify(pred_text: str, gold: str, *, fallback_last_number: bool | None = None) -> bool:
    """Whether the final answer in a completion equals the gold answer.

    Args:
      pred_text: the completion (its final answer is extracted, see `extract_answer`).
      gold: the gold answer ("18", "\\frac{1}{2}", "[1,2)", a boxed solution, ...).
      fallback_last_number: use the last number if no explicit answer is found.

    Returns:
      True if equal. False if not, or if it could not be decided in time (never raises, never hangs).
    """
    return default_verifier().verify(pred_text, gold, fallback_last_number=fallback_last_number)


def verify_batch(preds: Sequence[str], golds: Sequence[str], *,
                 fallback_last_number: bool | None = None, return_stats: bool = False):
    """`verify` for many pairs at once, in parallel across worker processes.

    Returns:
      list[bool], or (list[bool], VerifyStats) with return_stats=True.
    """
    return default_verifier().verify_batch(
        preds, golds, fallback_last_number=fallback_last_number, return_stats=return_stats)


class MathReward:
    """Batched reward: `correct` if a completion's final answer equals `sample[answer_key]`.

    Args:
      correct, incorrect: reward values for the two verdicts.
      fallback_last_number: see `extract_answer` (off: AIME-style strictness).
      answer_key: where the gold answer lives in each sample.
      **verifier_options: if given, this reward gets its own `MathVerifier` with these options;
        otherwise it shares the process-wide one.
    """

    metrics_are_counts = True  # metrics() counts items of the last batch (multi-host shards are summed)

    batched = True

    def __init__(self, *, correct: float = 1.0, incorrect: float = 0.0,
                 fallback_last_number: bool = False, answer_key: str = "answer",
                 **verifier_options):
        self.correct, self.incorrect = float(correct), float(incorrect)
        self.fallback_last_number = fallback_last_number
        self.answer_key = answer_key
        self._verifier = MathVerifier(**verifier_options) if verifier_options else None
        self.last_stats = VerifyStats()

    def __call__(self, completions: Sequence[str], samples: Sequence[dict]) -> list[float]:
        verifier = self._verifier or default_verifier()
        golds = [s[self.answer_key] for s in samples]
        verdicts, self.last_stats = verifier.verify_batch(
            completions, golds, fallback_last_number=self.fallback_last_number, return_stats=True)
        return [self.correct if v else self.incorrect for v in verdicts]

    def metrics(self) -> dict[str, float]:
        """Counters of the last call worth logging (why items scored 0 without a wrong answer)."""
        s = self.last_stats
        return {"no_answer": s.no_answer, "rejected": s.rejected, "timeouts": s.timeouts,
                "crashes": s.crashes, "errors": s.errors, "parse_errors": s.parse_errors,
                "bad_gold": s.bad_gold + s.gold_parse_errors}
