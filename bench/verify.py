"""Throughput of rewards.math.verify_batch against math-verify called directly, in the same run.

    python bench/verify.py [--pairs 5000] [--cores 2] [--step 512]

Builds GRPO-shaped (completion, gold) pairs: groups of 8 completions per gold answer, golds taken
from bench/fixtures/gold_answers.json (GSM8K integers and MATH-500 LaTeX answers), completions with
reasoning text and a final answer in one of the usual forms (\\boxed{}, "The answer is", "####",
<answer> tags, Minerva's "Final Answer: ..."), about half of them right (as written, or rewritten
equivalently) and half wrong (perturbed). Both sides run pinned to the same `--cores` CPUs:

  math-verify  `verify(parse("\\boxed{" + gold + "}"), parse(completion))` per pair, one process
               (its default signal-based timeouts, which work here because this is the main thread);
  quant        `MathVerifier(num_workers=cores).verify_batch` on `--step` pairs at a time, the way a
               trainer calls it each step; workers are started (and timed) before the clock starts.

Prints a table with both throughputs, their ratio, and how often the two agree, plus the pairs they
disagree on. Target: ratio >= 3 on 2 cores with >= 99% agreement.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import random
import re
import sys
import time
from fractions import Fraction

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

FIXTURE = pathlib.Path(__file__).with_name("fixtures") / "gold_answers.json"
GROUP = 8

_FILLER = [
    "Let's think step by step.",
    "First, we compute $3 \\times 4 = 12$ and then add the remaining terms.",
    "We know that the total is split evenly, so each part is $\\frac{{{a}}}{{{b}}}$ of the whole.",
    "Substituting $x = {a}$ gives ${a}^2 - {b} = {c}$.",
    "Each box holds {a} items, and there are {b} boxes, giving {c} items in total.",
    "Note that $\\sqrt{{{d}}}$ is not an integer, so we keep it in radical form.",
    "By the Pythagorean theorem, $a^2 + b^2 = c^2$.",
    "Checking the boundary case, the inequality still holds.",
    "Hence the expression simplifies nicely after factoring.",
    "The remaining {a} dollars are spent on {b} tickets.",
    "Wait, let me double-check this computation: {a} + {b} = {c}.",
    "Therefore the pattern repeats every {b} steps.",
]


def _reasoning(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(4, 12)):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        lines.append(rng.choice(_FILLER).format(a=a, b=b, c=a * b, d=rng.randint(2, 99)))
    return "\n".join(lines)


def _equivalent(gold: str, rng: random.Random) -> str:
    """A rewrite of `gold` with the same value, as a model might write it."""
    if re.fullmatch(r"-?\d+", gold):
        n = int(gold)
        options = [f"{n:,}" if abs(n) >= 1000 else f"{n}.0", f"\\${n}" if n >= 0 else f"{n}.0",
                   f"{n} \\text{{ units}}", f"{n:03d}" if 0 <= n < 100 else str(n)]
        return rng.choice(options)
    frac = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", gold)
    if frac and rng.random() < 0.5:
        value = Fraction(int(frac.group(2)), int(frac.group(3)))
        if 1000 % value.denominator == 0 or value.denominator in (2, 4, 5, 8, 16, 20, 25):
            return frac.group(1) + str(float(value))
        return f"{frac.group(1)}{value.numerator}/{value.denominator}"
    rewrites = [
        lambda s: s.replace("\\frac", "\\dfrac"),
        lambda s: s.replace(" ", ""),
        lambda s: s.replace("\\left(", "(").replace("\\right)", ")"),
        lambda s: re.sub(r"\^\\circ$", "", s),
        lambda s: re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s),
    ]
    for _ in range(5):
        new = rng.choice(rewrites)(gold)
        if new != gold:
            return new
    return gold


def _wrong(gold: str, rng: random.Random) -> str:
    """A plausible wrong answer near `gold`."""
    if re.fullmatch(r"-?\d+", gold):
        n = int(gold)
        candidates = [n + rng.randint(1, 9), n - rng.randint(1, 9), 2 * n + 3, n + 10]
        return str(rng.choice([c for c in candidates if c != n]))
    # Flipping a bracket makes a different interval, except at an infinite end (always open).
    if gold.startswith(("(", "[")) and gold.endswith((")", "]")) and rng.random() < 0.5:
        if "infty" not in gold.split(",")[0]:
            return ("[" if gold[0] == "(" else "(") + gold[1:]
    # Change a digit of the value (not of a unit like \mbox{ cm}^2).
    value = re.split(r"\\(?:text|mbox)", gold)[0]
    digits = [m.start() for m in re.finditer(r"\d", value)]
    if digits:
        i = rng.choice(digits)
        return gold[:i] + str((int(gold[i]) + rng.randint(1, 8)) % 10) + gold[i + 1:]
    return gold + " + 1"


def _completion(answer: str | None, gsm: bool, rng: random.Random) -> str:
    text = _reasoning(rng)
    if answer is None:  # cut off before the answer
        return text + "\nSo now we need to combine these two results, which gives"
    form = rng.random()
    if form < 0.55:
        return f"{text}\nThus the answer is $\\boxed{{{answer}}}$."
    if form < 0.70:
        return f"{text}\nThe answer is {answer}." if gsm else f"{text}\nThe answer is ${answer}$."
    if form < 0.80:
        return f"{text}\n#### {answer}" if gsm else f"{text}\nSo we get $\\boxed{{{answer}}}$"
    if form < 0.88:
        return f"<think>\n{text}\n</think>\n<answer>${answer}$</answer>"
    return f"{text}\nFinal Answer: The final answer is ${answer}$. I hope it is correct."


def make_pairs(n: int, seed: int = 0, mix: float = 0.5) -> list[tuple[str, str, bool]]:
    """n (completion, gold, intended verdict) triples, in groups of GROUP per gold; a fraction
    `mix` of the groups has GSM8K golds, the rest MATH-500 golds."""
    rng = random.Random(seed)
    golds = json.loads(FIXTURE.read_text())
    pairs = []
    while len(pairs) < n:
        gsm = rng.random() < mix
        gold = rng.choice(golds["gsm8k" if gsm else "math"])
        for _ in range(GROUP):
            r = rng.random()
            if r < 0.35:
                answer, label = gold, True
            elif r < 0.50:
                answer, label = _equivalent(gold, rng), True
            elif r < 0.95:
                answer, label = _wrong(gold, rng), False
            else:
                answer, label = None, False
            pairs.append((_completion(answer, gsm, rng), gold, label))
    return pairs[:n]


def run_math_verify(pairs) -> tuple[list[bool], float]:
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    verify(parse("\\boxed{1}"), parse("1"))  # import-time and regex warm-up, not timed
    start = time.perf_counter()
    verdicts = [bool(verify(parse("\\boxed{" + gold + "}"), parse(text))) for text, gold, _ in pairs]
    return verdicts, time.perf_counter() - start


def run_quant(pairs, cores: int, step: int):
    from rewards.math import MathVerifier, VerifyStats

    verifier = MathVerifier(num_workers=cores)
    start = time.perf_counter()
    verifier.pool.start(wait_ready=True)
    startup = time.perf_counter() - start
    stats = VerifyStats()
    verdicts = []
    start = time.perf_counter()
    for i in range(0, len(pairs), step):
        chunk = pairs[i : i + step]
        got, batch_stats = verifier.verify_batch([p for p, _, _ in chunk], [g for _, g, _ in chunk],
                                                 return_stats=True)
        verdicts += got
        stats.add(batch_stats)
    elapsed = time.perf_counter() - start
    verifier.close()
    return verdicts, elapsed, startup, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--step", type=int, default=512, help="pairs per verify_batch call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix", type=float, default=0.5, help="fraction of GSM8K-shaped groups")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < args.cores:
        sys.exit(f"asked for {args.cores} cores, only {len(cpus)} available")
    os.sched_setaffinity(0, cpus[: args.cores])  # workers inherit it
    pairs = make_pairs(args.pairs, args.seed, args.mix)

    mv, mv_s = run_math_verify(pairs)
    ours, ours_s, startup_s, stats = run_quant(pairs, args.cores, args.step)

    n = len(pairs)
    agree = sum(a == b for a, b in zip(ours, mv)) / n
    intended = [label for _, _, label in pairs]
    mv_label = sum(a == b for a, b in zip(mv, intended)) / n
    ours_label = sum(a == b for a, b in zip(ours, intended)) / n
    print(f"\n{n} pairs ({n // GROUP} groups of {GROUP}; {args.mix:.0%} GSM8K-shaped, the rest "
          f"MATH-shaped), {args.cores} cores, verify_batch on {args.step} pairs per call\n")
    print(f"| {'verifier':<34} | {'pairs/s':>8} | {'seconds':>7} | {'agrees w/ math-verify':>21} "
          f"| {'matches intended label':>22} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 9}|{'-' * 23}|{'-' * 24}|")
    print(f"| {'math-verify parse+verify, 1 proc':<34} | {n / mv_s:8.1f} | {mv_s:7.2f} | "
          f"{'-':>21} | {mv_label:22.2%} |")
    print(f"| {f'quant verify_batch, {args.cores} workers':<34} | {n / ours_s:8.1f} | {ours_s:7.2f} | "
          f"{agree:21.2%} | {ours_label:22.2%} |")
    print(f"\nspeedup: {mv_s / ours_s:.2f}x   (worker start-up, once per trainer: {startup_s:.2f} s)")
    print(f"quant stats: {stats.as_dict()}")

    disagree = [(p, g, o, m, lab) for (p, g, lab), o, m in zip(pairs, ours, mv) if o != m]
    print(f"\n{len(disagree)} disagreements (ours / math-verify / intended):")
    for text, gold, o, m, label in disagree[:20]:
        tail = text.rsplit("\n", 1)[-1][-70:]
        print(f"  {o!s:5} {m!s:5} {label!s:5}  gold={gold!r:<28} pred=...{tail!r}")


if __name__ == "__main__":
    main()
