"""Evaluation metrics against their definitions, a hand-scored completions file, and `quant eval` end to end."""

import argparse
import itertools
import json
import math
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest

from grpo import evaluate
from grpo.data import DataError, read_jsonl
from grpo.evaluate import (equal_answers, flat_metrics, k_values, majority_vote, pass_at_k, read_completions,
                           prompt_opened_thinking, score_completions, split_thinking)
from models import hf
from models.sampler import Sampler
from models.sharding import make_mesh
from tests.hf_fixtures import make_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def parse(argv):
    parser = argparse.ArgumentParser(prog="quant")
    evaluate.add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["eval", *argv])


def assert_same(got, want, path="report"):
    """Equal structures; floats to 1e-12 (means of exact fractions), everything else exactly."""
    if isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, float) and math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15), (path, got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (path, list(got), list(want))
        for key in want:
            assert_same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    else:
        assert type(got) is type(want) and got == want, (path, got, want)


# ---- pass@k, maj@k ----------------------------------------------------------------------------------------

def test_pass_at_k_equals_enumeration_of_all_k_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                # samples 0 .. c-1 are the correct ones; count the k-subsets that hold one of them
                subsets = list(itertools.combinations(range(n), k))
                hits = sum(min(s) < c for s in subsets)
                assert pass_at_k(n, c, k) == float(Fraction(hits, len(subsets))), (n, c, k)


def test_pass_at_k_defining_values():
    assert pass_at_k(4, 2, 2) == 5 / 6  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(64, 16, 1) == 0.25  # pass@1 is c/n
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 6, 5) == 1.0
    assert pass_at_k(1024, 1, 512) == 0.5  # large n: exact big-integer arithmetic
    for bad in [(4, 5, 1), (4, 2, 0), (4, 2, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_k_values():
    assert k_values(1) == [1] and k_values(2) == [1, 2] and k_values(6) == [1, 2, 4, 6]
    assert k_values(64) == [1, 2, 4, 8, 16, 32, 64]


def test_majority_vote_clusters_equivalent_answers():
    answers = ["3", "1/2", "0.5", None, "\\frac{1}{2}", "3", "\\dfrac12"]
    pairs = list(itertools.combinations(dict.fromkeys(a for a in answers if a), 2))
    table = dict(zip(pairs, equal_answers(pairs)))
    winner, clusters = majority_vote(answers, lambda a, b: table[(a, b)])
    assert clusters == [[0, 5], [1, 2, 4, 6]] and winner == 1


def test_majority_vote_ties_go_to_the_first_cluster_seen():
    same = lambda a, b: a == b  # noqa: E731
    assert majority_vote(["2", "3", "3", "2"], same) == (0, [[0, 3], [1, 2]])
    assert majority_vote(["2", "3", "3"], same) == (1, [[0], [1, 2]])
    assert majority_vote([None, None], same) == (None, [])


def test_split_thinking():
    assert split_thinking("<think>a b</think> c") == ("a b", " c")
    assert split_thinking("a b</think> c") == ("a b", " c")  # the prompt opened <think>
    assert split_thinking("x <think>still going") == ("still going", "x ")
    assert split_thinking("no tags") == ("", "no tags")
    assert split_thinking("cut off while thinking", opened=True) == ("cut off while thinking", "")
    assert prompt_opened_thinking(["\\boxed{1}", "a</think> b"]) and not prompt_opened_thinking(["<think>a</think>"])


def test_thinking_counted_when_prompts_opened_it():
    # The first completion closes a <think> it never opened, so the second, untagged one was cut off thinking.
    report = score_completions([{"id": "q", "answer": "1"}], {"q": ["a b</think> \\boxed{1}", "c d e"]})
    assert [(s["tokens"], s["think_tokens"]) for s in report["problems"][0]["samples"]] == [(3, 2), (3, 3)]


# ---- a completions file scored by hand --------------------------------------------------------------------

# tests/fixtures/eval: 3 problems x 4 completions. Verdicts, answers, word counts (thinking words):
#   p1 (gold \frac{1}{2}): 0.5 ok 7(3) | \frac{1}{2} ok 3(1) | 3 no 2(1) | none, truncated 5(5)
#   p2 (gold 7):           5 no 1(0) | 7 ok 5(0) | 5 no 4(0) | 5.0 no 1(0)
#   p3 (gold 12):          12 ok 1(0) | 12 ok 1(0) | 12 ok 2(1) | 13 no 1(0)
# pass@2 = 1 - C(n-c,2)/C(4,2): p1 1 - 1/6 = 5/6, p2 1 - 3/6 = 1/2, p3 1 (C(1,2) = 0).
# maj@2 (first two): p1 {0.5, \frac{1}{2}} one cluster, correct; p2 5 vs 7 tie, first seen 5, wrong; p3 12.
# maj@4: p1 {0.5, 1/2} x2 beats {3}; p2 {5, 5, 5.0} x3 beats {7}, wrong; p3 {12} x3.
def _sample(answer, correct, tokens, think, finish="stop"):
    return {"answer": answer, "correct": correct, "tokens": tokens, "think_tokens": think,
            "answer_tokens": tokens - think, "finish_reason": finish}


EXPECTED = {
    "token_unit": "words (whitespace-separated; no tokenizer given)",
    "metrics": {
        "pass@1": (2 / 4 + 1 / 4 + 3 / 4) / 3,
        "pass@2": (5 / 6 + 1 / 2 + 1) / 3,
        "pass@4": 1.0,
        "maj@2": 2 / 3,
        "maj@4": 2 / 3,
        "num_problems": 3,
        "samples_per_problem": 4,
        "mean_tokens": (17 + 11 + 5) / 12,
        "mean_think_tokens": (10 + 0 + 1) / 12,
        "mean_answer_tokens": (7 + 11 + 4) / 12,
        "truncation_rate": 1 / 12,
        "no_answer_rate": 1 / 12,
    },
    # Every answer here is a plain number, decided without sympy; one sample has no answer.
    "verify_stats": {"items": 12, "no_answer": 1, "rejected": 0, "bad_gold": 0, "fast_path": 11, "cached": 0,
                     "sympy": 0, "timeouts": 0, "crashes": 0, "errors": 0, "parse_errors": 0,
                     "gold_parse_errors": 0, "too_big": 0},
    "problems": [
        {"id": "p1", "answer": "\\frac{1}{2}", "num_samples": 4, "num_correct": 2, "pass@1": 0.5, "pass@2": 5 / 6,
         "pass@4": 1.0, "maj@2": 1.0, "maj@4": 1.0, "majority_answer": "0.5", "majority_votes": 2,
         "samples": [_sample("0.5", True, 7, 3), _sample("\\frac{1}{2}", True, 3, 1), _sample("3", False, 2, 1),
                     _sample(None, False, 5, 5, "length")]},
        {"id": "p2", "answer": "7", "num_samples": 4, "num_correct": 1, "pass@1": 0.25, "pass@2": 0.5,
         "pass@4": 1.0, "maj@2": 0.0, "maj@4": 0.0, "majority_answer": "5", "majority_votes": 3,
         "samples": [_sample("5", False, 1, 0), _sample("7", True, 5, 0), _sample("5", False, 4, 0),
                     _sample("5.0", False, 1, 0)]},
        {"id": "p3", "answer": "12", "num_samples": 4, "num_correct": 3, "pass@1": 0.75, "pass@2": 1.0,
         "pass@4": 1.0, "maj@2": 1.0, "maj@4": 1.0, "majority_answer": "12", "majority_votes": 3,
         "samples": [_sample("12", True, 1, 0), _sample("12", True, 1, 0), _sample("12", True, 2, 1),
                     _sample("13", False, 1, 0)]},
    ],
}


def test_score_completions_gives_the_hand_computed_report():
    problems = read_jsonl(FIXTURES / "problems.jsonl")
    report = score_completions(problems, read_completions(FIXTURES / "completions.jsonl"))
    assert_same(report, EXPECTED)


def test_quant_eval_completions_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    args = parse(["--completions", str(FIXTURES / "completions.jsonl"), "--dataset",
                  str(FIXTURES / "problems.jsonl"), "--out", str(out)])
    assert evaluate.run_eval(args) == 0
    header = {"dataset": "problems", "split": None, "completions": str(FIXTURES / "completions.jsonl"),
              "tokenizer": None}
    assert_same(json.loads(out.read_text()), {**header, **EXPECTED})
    printed = capsys.readouterr().out
    assert "### problems: 3 problems x 4 samples" in printed
    assert "| pass@1 | 50.00% |" in printed and "| maj@4 | 66.67% |" in printed and "| truncated | 8.33% |" in printed

    # --samples 2 scores the first two completions of each problem: pass@1 = (1 + 1/2 + 1) / 3.
    evaluate.run_eval(parse(["--completions", str(FIXTURES / "completions.jsonl"), "--dataset",
                             str(FIXTURES / "problems.jsonl"), "--samples", "2", "--out", str(out)]))
    metrics = json.loads(out.read_text())["metrics"]
    assert list(metrics)[:3] == ["pass@1", "pass@2", "maj@2"] and metrics["pass@1"] == pytest.approx(5 / 6)


def test_flat_metrics_names_for_the_training_log():
    flat = flat_metrics({"metrics": {**EXPECTED["metrics"], "truncation_rate": None}}, "aime24")
    assert flat["eval/aime24/pass@1"] == 0.5 and flat["eval/aime24/maj@4"] == 2 / 3
    assert flat["eval/aime24/num_problems"] == 3 and "eval/aime24/truncation_rate" not in flat


def test_completions_file_errors_name_the_row(tmp_path):
    path = tmp_path / "c.jsonl"
    cases = [
        ('{"id": "p1", "completions": ["a"]}\n{"id": "p9", "completions": ["b"]}\n', "row 2: id 'p9' is not"),
        ('{"id": "p1", "completions": ["a"]}\n{"id": "p1", "completions": ["b"]}\n', "row 2: duplicate id 'p1'"),
        ('{"id": "p1", "completions": "a"}\n', "row 1: 'completions' must be a non-empty list of strings"),
        ('{"id": "p1", "completions": ["a"], "finish_reasons": []}\n', "row 1: 'finish_reasons' must be a list"),
        ('{"completions": ["a"]}\n', 'row 1: expected {"id": ..., "completions": [...]}'),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(DataError) as e:
            read_completions(path, known_ids={"p1", "p2"})
        assert str(e.value).startswith(f"{path}, {message}"), str(e.value)
    problems = read_jsonl(FIXTURES / "problems.jsonl")
    with pytest.raises(DataError, match="2 of 3 problems have no completions: 'p2', 'p3'"):
        score_completions(problems, {"p1": ["\\boxed{1}"]})


def test_greedy_with_several_samples_is_refused():
    with pytest.raises(ValueError, match="2 greedy samples would all be the same"):
        evaluate.run_eval(parse(["--model", "unused", "--dataset", str(FIXTURES / "problems.jsonl"),
                                 "--samples", "2", "--temperature", "0"]))


# ---- quant eval --model on a tiny random checkpoint -------------------------------------------------------

TOKENIZER_VOCAB = 300  # tokens of the tests' BPE tokenizer (tests/hf_fixtures.py)


def test_model_must_cover_the_tokenizer():
    model, tokenizer = SimpleNamespace(cfg=SimpleNamespace(vocab_size=96)), SimpleNamespace(vocab_size=300)
    with pytest.raises(ValueError, match="the tokenizer has 300 tokens but the model only 96"):
        evaluate.generate_completions(model, tokenizer, [], samples=1, temperature=0.0, top_p=1.0, max_new_tokens=1)


def test_quant_eval_model_end_to_end(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt", tokenizer=True, seed=3, vocab_size=TOKENIZER_VOCAB)
    out, saved = tmp_path / "report.json", tmp_path / "completions.jsonl"
    args = parse(["--model", str(ckpt), "--dataset", str(FIXTURES / "problems.jsonl"), "--samples", "2",
                  "--temperature", "1.0", "--max-new-tokens", "8", "--batch-size", "8", "--seed", "5",
                  "--out", str(out), "--save-completions", str(saved)])
    assert evaluate.run_eval(args) == 0
    report = json.loads(out.read_text())
    assert report["settings"] == {"samples": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8,
                                  "top_k": 0, "template": "chat", "seed": 5}
    assert report["token_unit"] == "tokens" and report["model"] == str(ckpt)
    assert [p["id"] for p in report["problems"]] == ["p1", "p2", "p3"]
    samples = [s for p in report["problems"] for s in p["samples"]]
    assert len(samples) == 6
    for s in samples:
        assert 1 <= s["tokens"] <= 8 and s["think_tokens"] + s["answer_tokens"] == s["tokens"]
        assert s["finish_reason"] in ("eos", "length") and (s["finish_reason"] == "length") == (s["tokens"] == 8)
    m = report["metrics"]
    assert list(m)[:3] == ["pass@1", "pass@2", "maj@2"] and m["samples_per_problem"] == 2
    assert m["truncation_rate"] == sum(s["finish_reason"] == "length" for s in samples) / 6
    assert m["pass@1"] == sum(s["correct"] for s in samples) / 6
    assert "### problems: 3 problems x 2 samples" in capsys.readouterr().out

    # Evaluation inside training: the trainer's sampler (same mesh, seed and batch shape) gives the same samples.
    mesh = make_mesh((1, -1, 1))
    model, tokenizer = hf.load(ckpt, mesh)
    flat, reports = evaluate.evaluate_datasets(
        Sampler(model, tokenizer, mesh), tokenizer, {"fixture": read_jsonl(FIXTURES / "problems.jsonl")}, samples=2,
        temperature=1.0, top_p=1.0, max_new_tokens=8, seed=5, batch_size=8)
    assert reports["fixture"]["problems"] == report["problems"]
    assert reports["fixture"]["settings"] == report["settings"]
    assert flat == {f"eval/fixture/{k}": v for k, v in m.items() if v is not None}

    # The saved completions, scored without the model, give the same verdicts and accuracies.
    rescored = tmp_path / "rescored.json"
    evaluate.run_eval(parse(["--completions", str(saved), "--dataset", str(FIXTURES / "problems.jsonl"),
                             "--tokenizer", str(ckpt), "--out", str(rescored)]))
    again = json.loads(rescored.read_text())
    assert again["token_unit"] == "tokens"
    assert [s["correct"] for p in again["problems"] for s in p["samples"]] == [s["correct"] for s in samples]
    assert [s["finish_reason"] for p in again["problems"] for s in p["samples"]] == [
        s["finish_reason"] for s in samples]
    for key in ("pass@1", "pass@2", "maj@2", "truncation_rate", "no_answer_rate"):
        assert again["metrics"][key] == m[key]
