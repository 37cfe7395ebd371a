"""Tests for rewards.compose: building from config, weighting, per-component logging, registry."""

import ml_collections
import numpy as np
import pytest

from rewards import compose

COMPLETIONS = [
    "<think>2 + 2 = 4</think> The answer is \\boxed{4}.",  # right, well formed
    "<think>2 + 2 = 5</think> The answer is \\boxed{5}.",  # wrong, well formed
    "The answer is \\boxed{4}.",  # right, no template
    "<think>a</think><think>b</think> \\boxed{4}",  # right, repeated tags
]
SAMPLES = [{"answer": "4", "num_tokens": n} for n in (100, 850, 100, 1000)]


def test_weighted_sum_and_components():
    reward = compose.build({"math": 1.0, "format": 0.2})
    total, parts = reward(COMPLETIONS, SAMPLES)
    assert sorted(parts) == ["reward/format", "reward/math"]
    np.testing.assert_array_equal(parts["reward/math"], [1, 0, 1, 1])
    np.testing.assert_array_equal(parts["reward/format"], [1, 1, 0, -1])
    np.testing.assert_allclose(total, [1.2, 0.2, 1.0, 0.8], rtol=1e-6)
    assert total.dtype == np.float32 and parts["reward/math"].dtype == np.float32


def test_options_and_ml_collections_config():
    cfg = ml_collections.ConfigDict({
        "math": {"weight": 2.0, "incorrect": -1.0},
        "overlong": {"weight": 1.0, "max_tokens": 1000, "cache_tokens": 300},
        "length": {"weight": 0.5, "target_tokens": 500, "max_tokens": 1000},
    })
    reward = compose.build(cfg)
    assert sorted(reward.names) == ["length", "math", "overlong"]
    total, parts = reward(COMPLETIONS, SAMPLES)
    np.testing.assert_array_equal(parts["reward/math"], [1, -1, 1, 1])
    np.testing.assert_allclose(parts["reward/overlong"], [0, -0.5, 0, -1], rtol=1e-6)
    np.testing.assert_allclose(parts["reward/length"], [0, -0.7, 0, -1], rtol=1e-6)
    np.testing.assert_allclose(total, [2.0, -2.85, 2.0, 0.5], rtol=1e-6)


def test_math_diagnostics_are_exposed():
    reward = compose.build({"math": 1.0})
    reward(["no answer at all", "\\boxed{4}"], [{"answer": "4"}, {"answer": "4"}])
    assert reward.metrics()["reward/math/no_answer"] == 1


def test_unknown_reward_lists_the_allowed_names():
    with pytest.raises(ValueError, match=r"unknown reward 'acuracy'; allowed: .*format.*math"):
        compose.build({"acuracy": 1.0})


@pytest.mark.parametrize("config, message", [
    ({"format": {"weight": 1.0, "think_in_promt": True}}, r"unknown option\(s\) \['think_in_promt'\]"),
    ({"format": {"think_in_prompt": True}}, "no 'weight'"),
    ({"format": "high"}, "weight must be a finite number"),
    ({"format": float("nan")}, "weight must be a finite number"),
    ({"overlong": {"weight": 1.0}}, "max_tokens"),
    ({}, "no rewards configured"),
])
def test_config_errors_name_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        compose.build(config)


def test_registry_accepts_new_rewards():
    @compose.register("test_length_chars")
    def _factory(scale: float = 1.0):
        return lambda completion, sample: scale * len(completion)

    @compose.register("test_batched_const")
    def _batched_factory():
        def fn(completions, samples):
            return [3.0] * len(completions)

        fn.batched = True
        return fn

    assert {"test_length_chars", "test_batched_const"} <= set(compose.registered())
    reward = compose.build({"test_length_chars": {"weight": 0.5, "scale": 2.0},
                            "test_batched_const": -1.0})
    total, parts = reward(["ab", "abcd"], [{}, {}])
    np.testing.assert_array_equal(parts["reward/test_length_chars"], [4, 8])
    np.testing.assert_array_equal(total, [-1, 1])
    with pytest.raises(ValueError, match="already registered"):
        compose.register("math")(_factory)


def test_bad_component_output_is_an_error():
    @compose.register("test_nan")
    def _factory():
        return lambda completion, sample: float("nan")

    with pytest.raises(ValueError, match="test_nan.*non-finite"):
        compose.build({"test_nan": 1.0})(["x"], [{}])
    with pytest.raises(ValueError, match="2 completions but 1 samples"):
        compose.build({"format": 1.0})(["a", "b"], [{}])
