"""Synthetic arithmetic with graded difficulty: the task of the embedded tiny reasoning model.

A problem adds (or subtracts) two numbers of up to `d` digits, d = 1..5 being the difficulty. Operands are
zero-padded to 5 digits, so every prompt has the same length: `03339+01000=`. A solution either answers
directly, `<think></think>4339`, or first writes a right-to-left digit trace inside <think>: per digit
`xyc=kr` (digits x and y, incoming carry c, outgoing carry k, result digit r), e.g. for 57+68:
`<think>780=15561=12</think>125`. Subtraction uses the same layout with borrows.

Rows are plain dicts {"id", "problem", "answer", "difficulty", "op"}; the answer is checked by
`rewards.math`. Splits are disjoint: a problem is in "test" iff a hash of its text says so.
"""

from __future__ import annotations

import hashlib
import random
from typing import Iterator

WIDTH = 5  # operand width of the prompt
DIFFICULTIES = (1, 2, 3, 4, 5)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ALPHABET = "0123456789+-="


def _is_test(problem: str, test_frac: float = 0.1) -> bool:
    h = int.from_bytes(hashlib.sha256(problem.encode()).digest()[:8], "big")
    return h / 2**64 < test_frac


def make_problem(a: int, b: int, op: str = "+") -> dict:
    if op not in "+-":
        raise ValueError(f"op must be '+' or '-', got {op!r}")
    if op == "-" and b > a:
        a, b = b, a
    digits = max(len(str(a)), len(str(b)))
    problem = f"{a:0{WIDTH}d}{op}{b:0{WIDTH}d}="
    answer = a + b if op == "+" else a - b
    return {"id": f"{a}{op}{b}", "problem": problem, "answer": str(answer), "difficulty": digits, "op": op}


def trace(row: dict) -> str:
    """The right-to-left digit trace for a problem (without the think tags)."""
    a, b = int(row["problem"][:WIDTH]), int(row["problem"][WIDTH + 1:2 * WIDTH + 1])
    op, out, carry = row["op"], [], 0
    for i in range(row["difficulty"]):
        x, y = a // 10**i % 10, b // 10**i % 10
        if op == "+":
            total = x + y + carry
            k, r = total // 10, total % 10
        else:
            total = x - y - carry
            k, r = int(total < 0), total % 10
        out.append(f"{x}{y}{carry}={k}{r}")
        carry = k
    return "".join(out)


def solution(row: dict, think: bool) -> str:
    """The completion the base model is pretrained on (the caller appends EOS)."""
    reasoning = trace(row) if think else ""
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{row['answer']}"


def sample_problem(rng: random.Random, difficulty: int, op: str = "+") -> dict:
    lo = 0 if difficulty == 1 else 10 ** (difficulty - 1)
    hi = 10**difficulty - 1
    a = rng.randint(lo, hi)  # the larger operand has exactly `difficulty` digits
    b = rng.randint(0, hi)
    if rng.random() < 0.5:
        a, b = b, a
    return make_problem(a, b, op)


def problems(split: str, seed: int = 0, ops: str = "+", difficulties=DIFFICULTIES) -> Iterator[dict]:
    """An endless stream of problems of one split ("train" or "test"), difficulties mixed uniformly."""
    if split not in ("train", "test"):
        raise ValueError(f"arith split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"arith-{split}-{seed}")
    while True:
        row = sample_problem(rng, rng.choice(difficulties), rng.choice(ops))
        if _is_test(row["problem"]) == (split == "test"):
            yield row


def held_out(per_difficulty: int = 100, seed: int = 0, ops: str = "+") -> list[dict]:
    """A fixed evaluation set: `per_difficulty` distinct test-split problems of each difficulty."""
    out = []
    for d in DIFFICULTIES:
        seen, rows = set(), []
        for row in problems("test", seed, ops, difficulties=(d,)):
            if row["problem"] not in seen:
                seen.add(row["problem"])
                rows.append(row)
            if len(rows) == per_difficulty or (d == 1 and len(seen) >= _count_test(d, ops)):
                break
        out += rows
    return out


def _count_test(d: int, ops: str) -> int:
    """How many distinct test problems of difficulty d exist (only bounded for d = 1)."""
    pairs = [make_problem(a, b, op) for op in ops for a in range(10) for b in range(10)]
    return len({r["problem"] for r in pairs if _is_test(r["problem"]) and r["difficulty"] == d})


def train_rows(n: int, seed: int = 0, ops: str = "+") -> list[dict]:
    """The first n problems of the train stream (a finite list for the trainer's prompt stream)."""
    stream = problems("train", seed, ops)
    return [next(stream) for _ in range(n)]


def evaluate(sampler, scfg, rows: list[dict], seed: int = 0, batch_size: int = 512) -> dict:
    """Accuracy, share of answers that think, and thinking length, per difficulty and overall.

    Args:
      sampler: a `models.sampler.Sampler` with the tokenizer (prompts are the problem strings).
      scfg: its SamplingConfig (temperature 0 for greedy).
      rows: problems, e.g. `held_out()`.

    Returns:
      {"accuracy": a, "think_rate": r, "think_len": l, "d1": {...}, ..., "d5": {...}}
    """
    from rewards.math import verify_batch

    texts, thinks = [], []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        out = sampler.sample([r["problem"] for r in chunk], scfg, seed=seed + i, batch_size=batch_size)
        texts += out.texts
        thinks += list(out.think_lengths)
    correct = verify_batch(texts, [r["answer"] for r in rows])

    def summary(idx):
        if not idx:
            return {"accuracy": 0.0, "think_rate": 0.0, "think_len": 0.0, "n": 0}
        return {"accuracy": sum(correct[i] for i in idx) / len(idx),
                "think_rate": sum(thinks[i] > 0 for i in idx) / len(idx),
                "think_len": sum(thinks[i] for i in idx) / len(idx), "n": len(idx)}

    result = summary(list(range(len(rows))))
    for d in sorted({r["difficulty"] for r in rows}):
        result[f"d{d}"] = summary([i for i, r in enumerate(rows) if r["difficulty"] == d])
    return result


def flat(result: dict, prefix: str) -> dict:
    """`evaluate`'s result as flat metric names: prefix/accuracy, prefix/d3/think_len, ..."""
    out = {}
    for k, v in result.items():
        if isinstance(v, dict):
            out.update({f"{prefix}/{k}/{kk}": vv for kk, vv in v.items() if kk != "n"})
        elif k != "n":
            out[f"{prefix}/{k}"] = v
    return out
