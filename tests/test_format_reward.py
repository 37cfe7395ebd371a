"""Tests for rewards.format: the R1 template, DAPO's overlong punishment, the token budget."""

import pytest

from rewards.format import length_reward, overlong_penalty, overlong_reward, think_format_reward

GOOD = "<think>\n2 + 2 is 4.\n</think>\nThe answer is $\\boxed{4}$."


@pytest.mark.parametrize("completion, want", [
    (GOOD, 1.0),
    ("  " + GOOD, 1.0),  # leading whitespace is fine
    ("<think>reason</think><answer>4</answer>", 1.0),
    # missing, misplaced or empty parts
    ("2 + 2 is 4. The answer is 4.", 0.0),
    ("<think>2 + 2 is 4.\nThe answer is 4.", 0.0),  # never closed
    ("2 + 2 is 4.</think>The answer is 4.", 0.0),  # never opened
    ("Sure! <think>2 + 2</think> 4", 0.0),  # does not start with <think>
    ("<think>   </think> 4", 0.0),  # empty reasoning
    ("<think>2 + 2 is 4.</think>   ", 0.0),  # nothing after the reasoning
    ("</think>4<think>", 0.0),  # wrong order
    ("<Think>2 + 2</Think> 4", 0.0),  # not the exact tags
    ("<think>2 + 2</think><answer>4", 0.0),  # unbalanced optional answer tags
    # repeated tags: the reward hack, penalised below a plain miss
    ("<think>a</think><think>b</think> 4", -1.0),
    ("<think>a</think></think> 4", -1.0),
    ("<think>a <think> b</think> 4", -1.0),
    ("<think>a</think><answer>4</answer><answer>4</answer>", -1.0),
    ("<think>a</think>< think >b 4", -1.0),  # spelled loosely still counts as a repeat
])
def test_think_format(completion, want):
    assert think_format_reward(completion, {}) == want


def test_think_already_opened_by_the_prompt():
    assert think_format_reward("2 + 2 is 4.\n</think>\n4", {}, think_in_prompt=True) == 1.0
    assert think_format_reward("<think>2 + 2</think> 4", {}, think_in_prompt=True) == -1.0
    assert think_format_reward("2 + 2 is 4. So 4.", {}, think_in_prompt=True) == 0.0


def test_answer_tags_required():
    kw = dict(require_answer_tags=True)
    assert think_format_reward("<think>r</think>\n<answer> 4 </answer>\n", {}, **kw) == 1.0
    assert think_format_reward("<think>r</think> 4", {}, **kw) == 0.0
    assert think_format_reward("<think>r</think><answer> </answer>", {}, **kw) == 0.0
    assert think_format_reward("<think>r</think><answer>4</answer> and more", {}, **kw) == 0.0


def test_custom_reward_values():
    kw = dict(correct=0.5, missing=-0.1, repeated=-2.0)
    assert think_format_reward(GOOD, {}, **kw) == 0.5
    assert think_format_reward("4", {}, **kw) == -0.1
    assert think_format_reward("<think><think></think>4", {}, **kw) == -2.0


@pytest.mark.parametrize("num_tokens, want", [
    (0, 0.0), (16384, 0.0),  # within L_max - L_cache: no punishment
    (16385, -1 / 4096), (18432, -0.5), (20480, -1.0),  # linear over the cache window
    (20481, -1.0), (99999, -1.0),  # beyond L_max
])
def test_overlong_penalty_matches_dapo(num_tokens, want):
    # DAPO's setting: L_max = 20480, L_cache = 4096.
    assert overlong_penalty(num_tokens, 20480, 4096) == pytest.approx(want)


def test_overlong_reward_reads_token_counts():
    assert overlong_reward("", {"num_tokens": 900}, max_tokens=1000, cache_tokens=200) == -0.5
    assert overlong_reward("", {"num_tokens": 900}, max_tokens=1000) == -0.5  # cache = max/5
    assert overlong_reward("", {"length": 900}, max_tokens=1000, tokens_key="length") == -0.5
    with pytest.raises(KeyError, match="num_tokens"):
        overlong_reward("text", {"answer": "4"}, max_tokens=1000)
    with pytest.raises(ValueError):
        overlong_penalty(10, 100, 0)


@pytest.mark.parametrize("num_tokens, want", [(0, 0.0), (500, 0.0), (750, -0.5), (1000, -1.0),
                                              (5000, -1.0)])
def test_length_budget(num_tokens, want):
    assert length_reward("", {"num_tokens": num_tokens}, target_tokens=500,
                         max_tokens=1000) == pytest.approx(want)
