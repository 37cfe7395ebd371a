"""A weighted sum of named rewards, built from the config, with every component logged on its own.

Config (the `rewards` block; ml_collections ConfigDict or any mapping):

    rewards = {"math": 1.0, "format": 0.2}                       # name -> weight
    rewards = {"math": 1.0,
               "format": {"weight": 0.2, "think_in_prompt": True},  # name -> weight + options
               "overlong": {"weight": 1.0, "max_tokens": 4096}}

`build(cfg.rewards)` returns a `ComposedReward`; calling it on a batch returns the total reward per
completion and `{"reward/<name>": values}` with each component's unweighted values.

New rewards (code execution, PRMs) join by name with `@register("name")` on a factory that takes the
options as keyword arguments and returns a reward function: `fn(completion, sample) -> float`, or a
batched `fn(completions, samples) -> list[float]` marked with a true `batched` attribute.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

_REGISTRY: dict[str, Callable[..., Callable]] = {}


def register(name: str):
    """Decorator adding a reward factory to the registry under `name`."""

    def decorate(factory):
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def registered() -> list[str]:
    """Names `build` accepts."""
    return sorted(_REGISTRY)


def _bind(fn, **options):
    """fn with options bound, as a per-item reward `(completion, sample) -> float`."""

    def reward(completion, sample):
        return fn(completion, sample, **options)

    return reward


# Factories import their module lazily, so building only a format reward never imports math.


@register("math")
def _math(**options):
    """Final-answer correctness (1/0), see `rewards.math.MathReward` for the options."""
    from rewards.math import MathReward

    return MathReward(**options)


@register("format")
def _format(*, think_in_prompt: bool = False, require_answer_tags: bool = False,
            correct: float = 1.0, missing: float = 0.0, repeated: float = -1.0):
    """R1 template, see `rewards.format.think_format_reward`."""
    from rewards.format import think_format_reward

    return _bind(think_format_reward, think_in_prompt=think_in_prompt,
                 require_answer_tags=require_answer_tags, correct=correct, missing=missing,
                 repeated=repeated)


@register("overlong")
def _overlong(*, max_tokens: int, cache_tokens: int | None = None, tokens_key: str = "num_tokens"):
    """DAPO soft overlong punishment, see `rewards.format.overlong_reward`."""
    from rewards.format import overlong_reward

    return _bind(overlong_reward, max_tokens=max_tokens, cache_tokens=cache_tokens,
                 tokens_key=tokens_key)


@register("length")
def _length(*, target_tokens: int, max_tokens: int, tokens_key: str = "num_tokens"):
    """Soft token budget, see `rewards.format.length_reward`."""
    from rewards.format import length_reward

    return _bind(length_reward, target_tokens=target_tokens, max_tokens=max_tokens,
                 tokens_key=tokens_key)


@register("code")
def _code(*, mode: str = "fraction", workers: int = 2, allow_weak_sandbox: bool = False,
          float_tol: float | None = None, limits: Mapping[str, Any] | None = None):
    """The last Python block run against sample["tests"] in the sandbox, see `rewards.code`."""
    from rewards.code import CodeReward

    return CodeReward(mode=mode, workers=workers, allow_weak_sandbox=allow_weak_sandbox,
                      float_tol=float_tol, limits=limits)


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    weight: float
    fn: Callable
    batched: bool


class ComposedReward:
    """Calls each component on a batch and sums them with their weights."""

    def __init__(self, components: Sequence[Component]):
        if not components:
            raise ValueError("no rewards configured")
        self.components = list(components)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def __call__(self, completions: Sequence[str],
                 samples: Sequence[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Scores a batch.

        Args:
          completions: generated texts, B of them.
          samples: the dataset record of each completion (at least "answer"; "num_tokens" for
            length rewards).

        Returns:
          (total, parts): total[B] = sum_k weight_k * parts[f"reward/{name_k}"], each part being
          the component's unweighted values, float32[B].
        """
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
        total = np.zeros(len(completions), np.float32)
        parts = {}
        for c in self.components:
            if c.batched:
                values = list(c.fn(completions, samples))
            else:
                values = [c.fn(text, sample) for text, sample in zip(completions, samples)]
            if len(values) != len(completions):
                raise ValueError(f"reward {c.name!r} returned {len(values)} values "
                                 f"for {len(completions)} completions")
            values = np.asarray(values, np.float32)
            if not np.all(np.isfinite(values)):
                raise ValueError(f"reward {c.name!r} returned a non-finite value")
            parts[f"reward/{c.name}"] = values
            total += np.float32(c.weight) * values
        return total, parts

    def metrics(self) -> dict[str, float]:
        """Diagnostics of the last call from components that keep them (e.g. math timeouts),
        as `reward/<name>/<counter>`."""
        out = {}
        for c in self.components:
            if hasattr(c.fn, "metrics"):
                out.update({f"reward/{c.name}/{k}": v for k, v in c.fn.metrics().items()})
        return out


    def merge_metrics(self, shards: Sequence[tuple[int, dict[str, float]]]) -> dict[str, float]:
        """`metrics()` of one batch scored in shards, from each shard's (items scored, metrics()).

        A component merges its own metrics if it has `merge_metrics`; otherwise counts
        (`metrics_are_counts = True`) are summed and shares of the items scored are averaged weighted
        by the items.
        """
        out: dict[str, float] = {}
        items = sum(n for n, _ in shards)
        for c in self.components:
            prefix = f"reward/{c.name}/"
            own = [(n, {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)}) for n, m in shards]
            if hasattr(c.fn, "merge_metrics"):
                merged = c.fn.merge_metrics(own)
            else:
                merged = {}
                for key in dict.fromkeys(k for _, m in own for k in m):
                    values = [(n, m[key]) for n, m in own if key in m]
                    merged[key] = (sum(v for _, v in values) if getattr(c.fn, "metrics_are_counts", False)
                                   else sum(n * v for n, v in values) / max(items, 1))
            out.update({prefix + k: v for k, v in merged.items()})
        return out


def _as_dict(value) -> dict | None:
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
        value = value.to_dict()
    return dict(value) if isinstance(value, Mapping) else None


def build(config: Mapping[str, Any]) -> ComposedReward:
    """Builds the weighted set of rewards named in `config`.

    Args:
      config: name -> weight, or name -> {"weight": w, **options}. Names must be registered.

    Returns:
      A ComposedReward with one component per entry, in the mapping's iteration order.
    """
    entries = _as_dict(config)
    if entries is None:
        raise TypeError(f"rewards config must be a mapping, got {type(config).__name__}")
    components = []
    for name, value in entries.items():
        if name not in _REGISTRY:
            raise ValueError(f"unknown reward {name!r}; allowed: {', '.join(registered())}")
        options = _as_dict(value)
        if options is None:
            weight, options = value, {}
        elif "weight" not in options:
            raise ValueError(f"rewards.{name} has options but no 'weight'")
        else:
            weight = options.pop("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"rewards.{name}: weight must be a finite number, got {weight!r}")
        factory = _REGISTRY[name]
        params = inspect.signature(factory).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = [k for k in options if k not in params and not takes_any]
        if unknown:
            raise ValueError(f"rewards.{name}: unknown option(s) {unknown}; "
                             f"allowed: {', '.join(params)}")
        try:
            fn = factory(**options)
        except TypeError as e:  # e.g. a required option such as max_tokens is missing
            raise ValueError(f"rewards.{name}: {e}") from None
        components.append(Component(name, float(weight), fn, bool(getattr(fn, "batched", False))))
    return ComposedReward(components)
