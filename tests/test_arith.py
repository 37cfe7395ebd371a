"""The synthetic arithmetic task and the embedded default (`quant train` with no arguments)."""

import json
from pathlib import Path

import pytest

from grpo.data import arith
from rewards import compose

ROOT = Path(__file__).resolve().parents[1]


def test_problems_traces_and_answers():
    row = arith.make_problem(57, 68)
    assert row == {"id": "57+68", "problem": "00057+00068=", "answer": "125", "difficulty": 2, "op": "+"}
    assert arith.trace(row) == "780=15561=12"  # 7+8+0 = 15, then 5+6+1 = 12
    assert arith.solution(row, think=True) == "<think>780=15561=12</think>125"
    assert arith.solution(row, think=False) == "<think></think>125"
    sub = arith.make_problem(305, 1170, "-")  # operands are swapped so the answer is not negative
    assert sub["problem"] == "01170-00305=" and sub["answer"] == "865"
    # 0-5-0 = -5: borrow 1, digit 5; 7-0-1 = 6; 1-3-0 = -2: borrow 1, digit 8; 1-0-1 = 0
    assert arith.trace(sub) == "050=15" + "701=06" + "130=18" + "101=00"
    rows = arith.train_rows(2000)
    assert {r["difficulty"] for r in rows} == {1, 2, 3, 4, 5}
    for r in rows[:200]:
        a, b = int(r["problem"][:5]), int(r["problem"][6:11])
        assert int(r["answer"]) == a + b and len(r["problem"]) == 12
        assert len(arith.trace(r)) == 6 * r["difficulty"]


def test_held_out_is_disjoint_from_train():
    test = arith.held_out(50)
    train = {r["problem"] for r in arith.train_rows(20000)}
    assert not train & {r["problem"] for r in test}
    assert len({r["problem"] for r in test}) == len(test)


def test_known_completions_get_the_right_rewards():
    reward = compose.build({"math": 1.0})
    samples = [{"answer": "125"}] * 5
    texts = ["<think>780=15561=12</think>125", "<think></think>125", "<think></think>124",
             "<think>780=15561=12</think>", "125 <think></think>"]
    total, parts = reward(texts, samples)
    assert total.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert parts["reward/math"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


@pytest.mark.slow
def test_default_config_smoke_run(tmp_path):
    from grpo import config as config_lib
    from grpo import trainer

    cfg = config_lib.load(str(ROOT / "configs" / "tiny_arith.py") + ":smoke")
    out = trainer.run(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "eval/arith/d5/accuracy" in rows[0] and "eval/arith/t0/accuracy" in rows[0]
    assert 0.0 <= rows[-1]["accuracy"] <= 1.0 and "reward/math" in rows[1]
    plots = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert {"reward.png", "accuracy.png", "eval_arith_accuracy_by_level.png",
            "eval_arith_think_len_by_level.png"} <= plots
    summary = (tmp_path / "summary.md").read_text()
    assert "| d5 |" in summary and "→" in summary
    assert out["before"] is not None and out["after"] is not None
