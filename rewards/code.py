"""Code reward: run the last fenced Python block of each completion against its sample's tests.

    reward = CodeReward(mode="fraction", workers=2)        # or code_reward_from_config(cfg.rewards.code)
    reward(completions, samples) -> [1.0, 0.5, 0.0, ...]

Each sample carries its tests under "tests", in the schema of `rewards.judge`:

    sample = {"tests": [
        {"input": "1 2\\n", "output": "3\\n"},                        # stdin -> stdout
        {"fn_name": "add", "args": [1, 2], "expected": 3},            # call (optional "kwargs")
        {"assert": "assert add(1, 2) == 3"},                          # assert block
    ]}

The program runs in `rewards.sandbox` (bubblewrap namespaces, a dedicated uid, rlimits) and is judged
in this process. A completion without a code block scores 0 without running anything.

Options (keyword arguments, or keys of a config mapping):
    mode                "fraction" (share of tests passed) or "all" (1 only if every test passes)
    workers             concurrent sandboxes (about one per free CPU core)
    allow_weak_sandbox  run without namespaces where bubblewrap cannot work (logged as UNSAFE); False
    float_tol           tolerance for floats in outputs and return values; None compares exactly
    limits              `rewards.sandbox.Limits` fields: cpu_seconds, wall_seconds, test_seconds,
                        memory_mb, total_memory_mb, max_processes, max_file_mb, max_open_files,
                        max_output_bytes, tmp_mb, python
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from rewards import judge, sandbox

MODES = ("fraction", "all")
OPTIONS = ("mode", "workers", "allow_weak_sandbox", "float_tol", "limits")

# A fence opens at the start of a line with an optional language tag and closes at the start of a
# later line; an unclosed fence (a truncated completion) holds no program.
_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = ("python", "python3", "py")


def extract_program(completion: str) -> str | None:
    """The last fenced Python block of a completion (or, if none is tagged, the last untagged one).

    Args:
        completion: model output, possibly with a <think> section and several code blocks.

    Returns:
        The code inside the fence, or None if there is no closed block.
    """
    blocks = _FENCE_RE.findall(completion)
    tagged = [code for tag, code in blocks if tag.lower() in _PYTHON_TAGS]
    if tagged:
        return tagged[-1]
    untagged = [code for tag, code in blocks if not tag]
    return untagged[-1] if untagged else None


class CodeReward:
    """Batched code-execution reward `fn(completions, samples) -> list[float]` over a sandbox Pool.

    The pool (and the check that the sandbox really isolates) is created here, so a machine that
    cannot sandbox fails before training starts rather than at the first reward.
    """

    batched = True  # scores a whole batch per call (rewards.compose calls it once per step)

    def __init__(self, mode: str = "fraction", workers: int = 2, allow_weak_sandbox: bool = False,
                 float_tol: float | None = None, limits: sandbox.Limits | Mapping[str, Any] | None = None):
        if mode not in MODES:
            raise ValueError(f"code reward: mode must be one of {MODES}, got {mode!r}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"code reward: workers must be a positive int, got {workers!r}")
        if float_tol is not None and not float_tol >= 0:
            raise ValueError(f"code reward: float_tol must be None or >= 0, got {float_tol!r}")
        self.mode = mode
        self.limits = _limits(limits)
        self.pool = sandbox.Pool(workers, self.limits, float_tol=float_tol, allow_weak=allow_weak_sandbox)
        self._last: list[sandbox.Result | None] = []

    def score(self, completions: Sequence[str], samples: Sequence[Mapping]) -> list[sandbox.Result | None]:
        """Sandbox results per completion; None where the completion has no code block.

        Args:
            completions: model outputs.
            samples: one dict per completion, each with "tests".

        Returns:
            The Results, in order.
        """
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
        for i, sample in enumerate(samples):
            if "tests" not in sample:
                raise ValueError(f"samples[{i}] has no 'tests' (keys: {sorted(sample)})")
        futures = []
        for completion, sample in zip(completions, samples):
            program = extract_program(completion)
            futures.append(None if program is None else self.pool.submit(program, sample["tests"]))
        self._last = [None if f is None else f.result() for f in futures]
        return self._last

    def __call__(self, completions: Sequence[str], samples: Sequence[Mapping]) -> list[float]:
        """Rewards in [0, 1]: the fraction of tests passed, or 1/0 for all-or-nothing."""
        return [0.0 if r is None else r.reward(self.mode) for r in self.score(completions, samples)]

    def metrics(self) -> dict[str, float]:
        """The last batch at a glance: completions without code, and each test status's share."""
        results = [r for r in self._last if r is not None]
        tests = [t.status for r in results for t in r.tests]
        out = {"no_program": (len(self._last) - len(results)) / max(len(self._last), 1), "tests": len(tests)}
        out.update({status: tests.count(status) / max(len(tests), 1) for status in judge.STATUSES})
        return out

    @staticmethod
    def merge_metrics(shards: Sequence[tuple[int, dict[str, float]]]) -> dict[str, float]:
        """`metrics()` of one batch scored in shards (items scored, metrics): no_program is a share of
        items, each status a share of tests run."""
        items = max(sum(n for n, _ in shards), 1)
        tests = sum(m.get("tests", 0) for _, m in shards)
        out = {"no_program": sum(n * m.get("no_program", 0.0) for n, m in shards) / items, "tests": tests}
        out.update({status: sum(m.get("tests", 0) * m.get(status, 0.0) for _, m in shards) / max(tests, 1)
                    for status in judge.STATUSES})
        return out

    def close(self) -> None:
        self.pool.close()


def _limits(limits: sandbox.Limits | Mapping[str, Any] | None) -> sandbox.Limits:
    if limits is None:
        return sandbox.Limits()
    if isinstance(limits, sandbox.Limits):
        limits.validate()
        return limits
    known = [f.name for f in dataclasses.fields(sandbox.Limits)]
    unknown = sorted(set(limits) - set(known))
    if unknown:
        raise ValueError(f"code reward: unknown limits.{unknown[0]}; allowed: {', '.join(known)}")
    result = sandbox.Limits(**dict(limits))
    result.validate()
    return result


def code_reward_from_config(config: Mapping[str, Any] | None) -> CodeReward:
    """Builds the reward from a config mapping (e.g. `cfg.rewards.code`), naming any bad key.

    Args:
        config: options from the module docstring; missing ones take their defaults.

    Returns:
        A CodeReward.
    """
    options = dict(config or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"code reward: unknown option {unknown[0]!r}; allowed: {', '.join(OPTIONS)}")
    if "limits" in options and options["limits"] is not None and not isinstance(options["limits"], sandbox.Limits):
        options["limits"] = dict(options["limits"])
    return CodeReward(**options)
