"""The code reward end to end: completions -> last Python block -> sandbox -> reward per completion."""

from __future__ import annotations

import dataclasses

import ml_collections
import pytest

from rewards import code
from tests.sandbox_helpers import LIMITS, marker_files, wait_until_clean

SUM_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10\n"}]


def completion(program: str, tag: str = "python") -> str:
    return f"<think>Read two ints and add them.</think>\nHere is my solution:\n```{tag}\n{program}```\n"


@pytest.fixture(scope="module")
def reward():
    fn = code.CodeReward(mode="fraction", workers=2, limits=LIMITS)
    yield fn
    fn.close()


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    yield
    assert wait_until_clean() == []
    assert marker_files() == []


def test_extract_program_takes_the_last_python_block():
    text = "```python\nprint(1)\n```\nthen\n```py\nprint(2)\n```\n```text\nnot code\n```\n"
    assert code.extract_program(text) == "print(2)\n"
    assert code.extract_program("```\nprint(3)\n```") == "print(3)\n"  # untagged only if nothing is tagged
    assert code.extract_program("```python\nprint(4)\n```\n```\nprint(5)\n```") == "print(4)\n"
    assert code.extract_program("no code here") is None
    assert code.extract_program("```python\nprint(6)\n") is None  # truncated: the fence never closes
    assert code.extract_program("```python\ns = '```'\nprint(s)\n```") == "s = '```'\nprint(s)\n"


def test_rewards_for_a_batch(reward):
    completions = [
        completion("a, b = map(int, input().split())\nprint(a + b)\n"),  # right
        completion("a, b = map(int, input().split())\nprint(3)\n"),  # right on one test of two
        completion("print(0)\n"),  # wrong
        "I think the answer is 3.",  # no program
        completion("while True:\n    pass\n"),  # never finishes
        completion("import os\nos._exit(0)\n"),  # exits before printing
    ]
    samples = [{"tests": SUM_TESTS}] * len(completions)
    assert reward(completions, samples) == [1.0, 0.5, 0.0, 0.0, 0.0, 0.0]
    results = reward.score(completions[:4], samples[:4])
    assert results[3] is None
    assert [t.status for t in results[1].tests] == ["pass", "fail"]


def test_all_or_nothing_mode():
    fn = code.CodeReward(mode="all", workers=1, limits=LIMITS)
    try:
        completions = [completion("a, b = map(int, input().split())\nprint(a + b)\n"),
                       completion("a, b = map(int, input().split())\nprint(3)\n")]
        assert fn(completions, [{"tests": SUM_TESTS}] * 2) == [1.0, 0.0]
    finally:
        fn.close()


def test_call_and_assert_samples(reward):
    program = "def add(a, b):\n    return a + b\n"
    samples = [{"tests": [{"fn_name": "add", "args": [2, 3], "expected": 5},
                          {"fn_name": "add", "args": [[1], [2]], "expected": [1, 2]}]},
               {"tests": [{"assert": "assert add(2, 3) == 5\nassert add('a', 'b') == 'ab'"},
                          {"assert": "assert add(2, 2) == 5"}]}]
    assert reward([completion(program)] * 2, samples) == [1.0, 0.5]


def test_config_builds_and_validates():
    cfg = ml_collections.ConfigDict({"mode": "all", "workers": 1, "float_tol": 1e-6,
                                     "limits": {"cpu_seconds": 1, "memory_mb": 256, "wall_seconds": 4.0}})
    fn = code.code_reward_from_config(cfg)
    try:
        assert (fn.mode, fn.limits.cpu_seconds, fn.limits.memory_mb) == ("all", 1, 256)
        assert fn.limits == dataclasses.replace(code.sandbox.Limits(), cpu_seconds=1, memory_mb=256, wall_seconds=4.0)
        floats = [{"tests": [{"input": "", "output": "0.3333333"}]}]
        assert fn([completion("print(1 / 3)\n")], floats) == [1.0]
    finally:
        fn.close()
    with pytest.raises(ValueError, match="mode must be one of"):
        code.code_reward_from_config({"mode": "best"})
    with pytest.raises(ValueError, match="unknown option 'timeout'"):
        code.code_reward_from_config({"timeout": 3})
    with pytest.raises(ValueError, match="unknown limits.memory; allowed: cpu_seconds"):
        code.code_reward_from_config({"limits": {"memory": 3}})
    with pytest.raises(ValueError, match="limits.cpu_seconds must be positive"):
        code.code_reward_from_config({"limits": {"cpu_seconds": 0}})


def test_bad_samples_are_named(reward):
    with pytest.raises(ValueError, match=r"samples\[1\] has no 'tests'"):
        reward([completion("print(1)\n")] * 2, [{"tests": SUM_TESTS}, {"answer": "3"}])


def test_works_inside_a_multithreaded_jax_process(reward):
    import concurrent.futures

    import jax
    import jax.numpy as jnp

    total = jax.jit(lambda x: (x * x).sum())(jnp.arange(64.0))  # XLA's thread pools are running now
    right = completion("a, b = map(int, input().split())\nprint(a + b)\n")
    with concurrent.futures.ThreadPoolExecutor(3) as threads:  # rewards scored from several threads
        batches = list(threads.map(lambda _: reward([right] * 4, [{"tests": SUM_TESTS}] * 4), range(3)))
    assert batches == [[1.0] * 4] * 3
    assert float(total) == sum(i * i for i in range(64))


def test_registered_in_compose_with_its_metrics():
    from rewards import compose

    limits = {f.name: getattr(LIMITS, f.name) for f in dataclasses.fields(LIMITS)}
    composed = compose.build({"code": {"weight": 0.5, "mode": "all", "workers": 1, "limits": limits}})
    try:
        completions = [completion("a, b = map(int, input().split())\nprint(a + b)\n"), "no code"]
        total, parts = composed(completions, [{"tests": SUM_TESTS}] * 2)
        assert total.tolist() == [0.5, 0.0] and parts["reward/code"].tolist() == [1.0, 0.0]
        metrics = composed.metrics()
        assert metrics["reward/code/no_program"] == 0.5 and metrics["reward/code/pass"] == 1.0
    finally:
        composed.components[0].fn.close()
    with pytest.raises(ValueError, match=r"rewards.code: unknown option\(s\) \['timeout'\]"):
        compose.build({"code": {"weight": 1.0, "timeout": 3}})
