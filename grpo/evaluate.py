"""Evaluation: K samples per problem, each verified against the gold answer; pass@1, pass@k, maj@k.

The numbers follow the definitions the field reports:
  pass@1  per problem the fraction c/n of its n samples that are correct, averaged over problems
          (DeepSeek-R1, sec. 3.1: pass@1 = 1/k sum_i p_i over k samples at temperature 0.6, top-p 0.95).
  pass@k  the unbiased estimator of Chen et al. 2021 (Codex, eq. 1), 1 - C(n-c, k) / C(n, k), averaged
          over problems, for k = 1, 2, 4, ... below K and for K itself.
  maj@k   majority vote (self-consistency, Wang et al. 2023; DeepSeek-R1's cons@64) over the final
          answers of the first k samples: answers that are mathematically equal form one cluster, the
          largest cluster wins (a tie goes to the cluster seen first), and the problem counts if the
          winning answer is correct. Samples without a final answer do not vote.
A sample is correct if `rewards.math.verify_batch` says so for the whole completion: the final answer
is extracted exactly as for the training reward.

Entry points: `score_completions` (texts made anywhere), `evaluate_model` (sample with our sampler,
then score), `flat_metrics` (names for the training log), and `quant eval` (`add_eval_parser`, `run_eval`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from grpo.data.rows import DataError, parse_jsonl
from rewards.math import VerifyStats, extract_answer, verify_batch

log = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
WORDS = "words (whitespace-separated; no tokenizer given)"


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Default sampling settings for a data set."""

    samples: int
    temperature: float
    top_p: float
    max_new_tokens: int


# DeepSeek-R1 / open-r1 on AIME: 64 samples at temperature 0.6, top-p 0.95, 32k tokens, pass@1 averaged.
AIME = Protocol(samples=64, temperature=0.6, top_p=0.95, max_new_tokens=32768)
# Elsewhere one greedy sample, the usual base-model protocol (e.g. Qwen2.5-Math on GSM8K / MATH-500).
GREEDY = Protocol(samples=1, temperature=0.0, top_p=1.0, max_new_tokens=4096)
PROTOCOLS = {"aime24": AIME, "aime25": AIME}


@dataclasses.dataclass
class Sample:
    """One completion; counts left None are counted from the text when scored."""

    text: str
    tokens: int | None = None  # completion length
    think_tokens: int | None = None  # of which inside <think> ... </think>
    finish_reason: str | None = None  # 'length' means truncated at max_new_tokens; None: unknown


# ---- metrics ----------------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1).

    The probability that k samples drawn without replacement from the n contain a correct one:
    1 - C(n-c, k) / C(n, k), computed exactly and rounded once.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    total = math.comb(n, k)
    return float(Fraction(total - math.comb(n - c, k), total))


def k_values(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def majority_vote(answers: Sequence[str | None], equal_fn: Callable[[str, str], bool]
                  ) -> tuple[int | None, list[list[int]]]:
    """Clusters equal answers and picks the largest cluster.

    Args:
      answers: final answers, None where a sample has none (it does not vote).
      equal_fn: (representative, answer) -> whether they are equal; each cluster is represented by its
        first answer, so equal_fn is only asked about an earlier answer and a later, different one.

    Returns:
      (index of the winning cluster's first answer, or None if nobody voted;
       the clusters as lists of indices, in order of first appearance). Ties go to the cluster seen first.
    """
    clusters: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for cluster in clusters:
            if answers[cluster[0]] == answer or equal_fn(answers[cluster[0]], answer):
                cluster.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return None, clusters
    return max(clusters, key=len)[0], clusters  # max keeps the first of equal-sized clusters


def equal_answers(pairs: Sequence[tuple[str, str]]) -> list[bool]:
    """For (a, b) pairs of final answers, whether b equals a by `rewards.math` (a plays the gold answer)."""
    return _verify_shared([f"\\boxed{{{b}}}" for _, b in pairs], [a for a, _ in pairs])[0]


def _verify_shared(texts: Sequence[str], golds: Sequence[str]) -> tuple[list[bool], VerifyStats]:
    """`verify_batch` with stats. In a multi-process run each process verifies its contiguous share of
    the items and every process gets all verdicts (the completions are the same on every host)."""
    from grpo import multihost

    if not multihost.started():
        return verify_batch(texts, golds, return_stats=True)
    lo, hi = multihost.shard_range(len(texts))

    def part():
        ok, stats = verify_batch(texts[lo:hi], golds[lo:hi], return_stats=True)
        return ok, stats.as_dict()

    verdicts, total = [], VerifyStats()
    for ok, stats in multihost.gather_results(part):
        verdicts += ok
        total.add(VerifyStats(**stats))
    return verdicts, total


def split_thinking(text: str, opened: bool = False) -> tuple[str, str]:
    """(thinking, the rest) of a completion.

    The thinking is what comes before the first </think> (after an opening <think>, if any), or all that
    follows an unclosed <think>. `opened`: the prompt ended inside <think> (R1 templates), so a completion
    without any tag (cut off while thinking) is all thinking.
    """
    close = text.find(THINK_CLOSE)
    if close >= 0:
        start = text.rfind(THINK_OPEN, 0, close)
        begin = start + len(THINK_OPEN) if start >= 0 else 0
        return text[begin:close], text[:max(start, 0)] + text[close + len(THINK_CLOSE):]
    start = text.find(THINK_OPEN)
    if start >= 0:
        return text[start + len(THINK_OPEN):], text[:start]
    return (text, "") if opened else ("", text)


def prompt_opened_thinking(texts: Sequence[str]) -> bool:
    """Whether completions look like their prompts ended inside <think>: one closes it without opening it."""
    for text in texts:
        close = text.find(THINK_CLOSE)
        if close >= 0 and THINK_OPEN not in text[:close]:
            return True
    return False


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _equivalence(answers: Sequence[Sequence[str | None]]) -> dict[tuple[str, str], bool]:
    """Equality of every (earlier, later) pair of different answers within each group, in one batch."""
    pairs = set()
    for group in answers:
        pairs.update(itertools.combinations(dict.fromkeys(a for a in group if a is not None), 2))
    pairs = sorted(pairs)
    return dict(zip(pairs, equal_answers(pairs))) if pairs else {}


def score_completions(problems: Sequence[Mapping[str, Any]], completions: Mapping[str, Sequence[str | Sample]], *,
                      samples: int | None = None, count_tokens: Callable[[str], int] | None = None) -> dict:
    """Scores K completions per problem against the gold answers.

    Args:
      problems: rows with "id" and "answer" (e.g. from `grpo.data.load`); completions for other ids are ignored.
      completions: problem id -> its completions (text, or `Sample` with token counts and finish reason).
      samples: use the first `samples` completions of each problem (default: all; K is the fewest any has).
      count_tokens: text -> tokens, for completions without counts (default: whitespace-separated words).

    Returns:
      The report: {"token_unit", "metrics", "verify_stats", "problems": [per-problem records]}.
    """
    missing = [p["id"] for p in problems if not completions.get(p["id"])]
    if missing:
        raise DataError(f"{len(missing)} of {len(problems)} problems have no completions: "
                        f"{', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''}")
    # Copies: counting tokens below must not change the caller's samples.
    groups = [[dataclasses.replace(s) if isinstance(s, Sample) else Sample(s) for s in completions[p["id"]]]
              for p in problems]
    if samples is not None:
        short = [p["id"] for p, g in zip(problems, groups) if len(g) < samples]
        if short:
            raise DataError(f"{len(short)} problems have fewer than {samples} completions, e.g. {short[0]!r}")
        groups = [g[:samples] for g in groups]
    if not groups:
        raise DataError("no problems to score")
    num_k = min(len(g) for g in groups)  # K
    ks = k_values(num_k)
    maj_ks = [k for k in ks if k >= 2] or [1]

    # Token counts where the sampler did not give them.
    unit = "tokens" if count_tokens is not None or all(s.tokens is not None for g in groups for s in g) else WORDS
    count = count_tokens or (lambda text: len(text.split()))
    opened = prompt_opened_thinking([s.text for g in groups for s in g])
    for s in (s for g in groups for s in g):
        if s.tokens is None:
            s.tokens = count(s.text)
        if s.think_tokens is None:
            s.think_tokens = count(split_thinking(s.text, opened)[0])

    # Verdicts and final answers of every sample.
    texts = [s.text for g in groups for s in g]
    golds = [p["answer"] for p, g in zip(problems, groups) for _ in g]
    flat_correct, stats = _verify_shared(texts, golds)
    flat_answers = [extract_answer(t) for t in texts]
    flat_answers = [a.strip() if a is not None and a.strip() else None for a in flat_answers]

    correct, answers, start = [], [], 0
    for g in groups:
        correct.append(flat_correct[start:start + len(g)])
        answers.append(flat_answers[start:start + len(g)])
        start += len(g)
    equal = _equivalence(answers)

    records = []
    for p, g, ok, ans in zip(problems, groups, correct, answers):
        n, c = len(g), sum(ok)
        record = {"id": p["id"], "answer": p["answer"], "num_samples": n, "num_correct": c}
        record.update({f"pass@{k}": pass_at_k(n, c, k) for k in ks})
        for k in maj_ks:
            winner, clusters = majority_vote(ans[:k], lambda a, b: equal[(a, b)])
            record[f"maj@{k}"] = float(winner is not None and ok[winner])
            if k == maj_ks[-1]:
                record["majority_answer"] = None if winner is None else ans[winner]
                record["majority_votes"] = max((len(cl) for cl in clusters), default=0)
        record["samples"] = [{"answer": a, "correct": v, "tokens": s.tokens, "think_tokens": s.think_tokens,
                              "answer_tokens": s.tokens - s.think_tokens, "finish_reason": s.finish_reason}
                             for s, v, a in zip(g, ok, ans)]
        records.append(record)

    every = [s for g in groups for s in g]
    known_finish = all(s.finish_reason is not None for s in every)
    metrics: dict[str, Any] = {f"pass@{k}": _mean([r[f"pass@{k}"] for r in records]) for k in ks}
    metrics.update({f"maj@{k}": _mean([r[f"maj@{k}"] for r in records]) for k in maj_ks})
    metrics.update({
        "num_problems": len(records),
        "samples_per_problem": num_k,
        "mean_tokens": _mean([s.tokens for s in every]),
        "mean_think_tokens": _mean([s.think_tokens for s in every]),
        "mean_answer_tokens": _mean([s.tokens - s.think_tokens for s in every]),
        "truncation_rate": _mean([s.finish_reason == "length" for s in every]) if known_finish else None,
        "no_answer_rate": _mean([a is None for a in flat_answers]),
    })
    return {"token_unit": unit, "metrics": metrics, "verify_stats": stats.as_dict(), "problems": records}


def flat_metrics(report: Mapping[str, Any], dataset: str) -> dict[str, float]:
    """The report's numeric metrics under their training-log names, `eval/<dataset>/<metric>`."""
    return {f"eval/{dataset}/{k}": v for k, v in report["metrics"].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def markdown_summary(report: Mapping[str, Any]) -> str:
    """A short markdown table of the report's metrics."""
    m = report["metrics"]
    title = f"{report.get('dataset', 'eval')}" + (f" ({report['split']})" if report.get("split") else "")
    plural = lambda n, word: f"{n} {word}{'' if n == 1 else 's'}"  # noqa: E731
    lines = [f"### {title}: {plural(m['num_problems'], 'problem')} x {plural(m['samples_per_problem'], 'sample')}", "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {100 * v:.2f}% |" for k, v in m.items() if k.startswith(("pass@", "maj@"))]
    unit = "tokens" if report["token_unit"] == "tokens" else "words"
    lines.append(f"| mean {unit} (thinking / answer) | {m['mean_tokens']:.1f} "
                 f"({m['mean_think_tokens']:.1f} / {m['mean_answer_tokens']:.1f}) |")
    truncated = "unknown" if m["truncation_rate"] is None else f"{100 * m['truncation_rate']:.2f}%"
    lines += [f"| truncated | {truncated} |", f"| no final answer | {100 * m['no_answer_rate']:.2f}% |"]
    if report["token_unit"] != "tokens":
        lines += ["", f"Lengths are in {report['token_unit']}."]
    return "\n".join(lines)


# ---- completions files ------------------------------------------------------------------------------------

def read_completions(path: str | Path, known_ids: set[str] | None = None) -> dict[str, list[Sample]]:
    """Reads a JSONL file of `{"id": ..., "completions": [text, ...]}` (optionally `"finish_reasons"`).

    Args:
      path: the file.
      known_ids: if given, an id outside it is an error (completions for another data set).
    """
    out: dict[str, list[Sample]] = {}
    first_row: dict[str, int] = {}
    for n, row in parse_jsonl(path):
        where = f"{path}, row {n}"
        if not isinstance(row, dict) or "id" not in row or "completions" not in row:
            raise DataError(f'{where}: expected {{"id": ..., "completions": [...]}}')
        pid = str(row["id"])
        texts, reasons = row["completions"], row.get("finish_reasons")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise DataError(f"{where}: 'completions' must be a non-empty list of strings")
        if reasons is not None and (not isinstance(reasons, list) or len(reasons) != len(texts)):
            raise DataError(f"{where}: 'finish_reasons' must be a list as long as 'completions'")
        if known_ids is not None and pid not in known_ids:
            raise DataError(f"{where}: id {pid!r} is not a problem of this data set")
        if pid in first_row:
            raise DataError(f"{where}: duplicate id {pid!r} (first used in row {first_row[pid]})")
        first_row[pid] = n
        out[pid] = [Sample(t, finish_reason=r) for t, r in zip(texts, reasons or [None] * len(texts))]
    return out


def write_completions(path: str | Path, problems: Sequence[Mapping[str, Any]],
                      completions: Mapping[str, Sequence[Sample]]) -> None:
    """Writes completions in the format `read_completions` (and `quant eval --completions`) reads."""
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            group = completions[p["id"]]
            f.write(json.dumps({"id": p["id"], "completions": [s.text for s in group],
                                "finish_reasons": [s.finish_reason for s in group]}, ensure_ascii=False) + "\n")


# ---- sampling with our model ------------------------------------------------------------------------------

def generate_completions(model, tokenizer, problems: Sequence[Mapping[str, Any]], *, samples: int,
                         temperature: float, top_p: float, max_new_tokens: int, top_k: int = 0,
                         template: str | None = None, seed: int = 0, mesh=None, batch_size: int | None = None,
                         sampler=None, gather_weights: bool = True) -> dict[str, list[Sample]]:
    """K completions per problem from the sampler: each batch of prompts is one `Sampler.sample` call
    with group_size K (rows b*K ... b*K+K-1 belong to prompt b).

    Args:
      model, tokenizer: the policy (a `models.transformer.Transformer`) and its `models.tokenizer.Tokenizer`.
      problems: rows with "id" and "problem".
      samples: K.
      temperature, top_p, top_k, max_new_tokens: sampling settings.
      template: prompt template (see `grpo.data.prompts`); default: chat if the tokenizer has one, else r1.
      seed: batch i samples with fold_in(key(seed), i).
      mesh: device mesh for a new sampler.
      batch_size: prompts per call (default: 64 // K, at least 1), rounded up to fill the mesh's batch axes;
        the last batch is padded, so one program is compiled.
      sampler: an existing `models.sampler.Sampler` (the trainer's), instead of building one from `model`.
      gather_weights: for a new sampler: decode with the weights gathered over the batch axes (False: kept
        FSDP-sharded, for a model that does not fit one device).
    """
    import jax

    from grpo.data.prompts import default_template, render_prompt
    from models.sampler import Sampler

    if model is not None and tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.cfg.vocab_size}: "
                         "they do not belong together")
    template = template or default_template(tokenizer)
    prompts = [render_prompt(p["problem"], template, tokenizer) for p in problems]
    sampler = sampler or Sampler(model, tokenizer, mesh, gather_weights=gather_weights)
    cfg = sampler.config(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    batch_size = batch_size or max(1, 64 // samples)
    if sampler.mesh is not None:  # prompts are sharded over ('data', 'fsdp')
        shards = sampler.mesh.shape["data"] * sampler.mesh.shape["fsdp"]
        batch_size = -(-batch_size // shards) * shards
    key = jax.random.key(seed)
    out: dict[str, list[Sample]] = {}
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start:start + batch_size]
        comp = sampler.sample(chunk, cfg, group_size=samples, seed=jax.random.fold_in(key, b),
                              batch_size=batch_size, decode=False)
        # Text as a serving engine returns it: without the final EOS token.
        ends = [int(n) - (reason == "eos") for n, reason in zip(comp.lengths, comp.finish_reason)]
        texts = tokenizer.decode_batch([row[:end] for row, end in zip(comp.tokens, ends)])
        for i in range(len(chunk)):
            rows = range(i * samples, (i + 1) * samples)
            out[problems[start + i]["id"]] = [
                Sample(texts[r], int(comp.lengths[r]), int(comp.think_lengths[r]), comp.finish_reason[r])
                for r in rows]
        log.info("sampled %d / %d problems", min(start + batch_size, len(prompts)), len(prompts))
    return out


def evaluate_model(model, tokenizer, problems: Sequence[Mapping[str, Any]], *, samples: int, temperature: float,
                   top_p: float, max_new_tokens: int, **sampling) -> dict:
    """Samples K completions per problem (`generate_completions`, same arguments) and scores them.

    Returns:
      The report of `score_completions`, with the settings under "settings".
    """
    from grpo.data.prompts import default_template

    sampling["template"] = sampling.get("template") or default_template(tokenizer)
    completions = generate_completions(model, tokenizer, problems, samples=samples, temperature=temperature,
                                       top_p=top_p, max_new_tokens=max_new_tokens, **sampling)
    settings = dict(samples=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                    top_k=sampling.get("top_k", 0), template=sampling["template"], seed=sampling.get("seed", 0))
    return {"settings": settings, **score_completions(problems, completions)}


def evaluate_datasets(sampler, tokenizer, datasets: Mapping[str, Sequence[Mapping[str, Any]]], *, samples: int,
                      temperature: float, top_p: float, max_new_tokens: int, **sampling
                      ) -> tuple[dict[str, float], dict[str, dict]]:
    """Evaluation at a training eval step: each data set sampled with the trainer's sampler (current params).

    Args:
      sampler: the trainer's `models.sampler.Sampler`.
      tokenizer: its tokenizer.
      datasets: name -> problems.
      samples, temperature, top_p, max_new_tokens, **sampling: as for `generate_completions`.

    Returns:
      (metrics named `eval/<dataset>/<metric>` for the training log, reports by data set name).
    """
    metrics, reports = {}, {}
    for name, problems in datasets.items():
        reports[name] = evaluate_model(None, tokenizer, problems, samples=samples, temperature=temperature,
                                       top_p=top_p, max_new_tokens=max_new_tokens, sampler=sampler, **sampling)
        metrics.update(flat_metrics(reports[name], name))
    return metrics, reports


# ---- quant eval -------------------------------------------------------------------------------------------

def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `quant eval` to a `quant` sub-command parser set (runs `run_eval`)."""
    p = subparsers.add_parser(
        "eval", help="pass@1 / pass@k / maj@k of a model (or of completions made elsewhere) on a data set",
        description="Samples K completions per problem and verifies their final answers. On aime24/aime25 the "
                    "defaults are the DeepSeek-R1 protocol (64 samples, temperature 0.6, top-p 0.95, 32768 "
                    "tokens); elsewhere one greedy sample.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="Hugging Face model directory")
    source.add_argument("--completions", help='JSONL of {"id": ..., "completions": [text, ...]} made elsewhere '
                                              "(e.g. by vLLM); no model is loaded")
    p.add_argument("--dataset", required=True, help="aime24, aime25, math500, gsm8k, or a .jsonl file")
    p.add_argument("--split", help="split of a registered data set (default: test)")
    p.add_argument("--data-dir", help="TFDS data dir (default: $QUANT_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--limit", type=int, help="evaluate only the first N problems")
    p.add_argument("--samples", type=int, help="K completions per problem (with --completions: use the first K)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--template", help="prompt template: r1, chat, boxed, plain (default: chat if the "
                                      "tokenizer has one, else r1)")
    p.add_argument("--batch-size", type=int, help="prompts per sampler call, each with K samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-weights", action="store_true",
                   help="decode with FSDP-sharded weights (slower), for a model that does not fit one device")
    p.add_argument("--tokenizer", help="with --completions: count tokens with this tokenizer directory")
    p.add_argument("--save-completions", help="with --model: also write the completions as JSONL")
    p.add_argument("--out", help="write the report (JSON) here")
    p.set_defaults(func=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    """`quant eval`: prints a markdown summary and writes the report if --out is given."""
    from grpo import data

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    dataset = data.load(args.dataset, args.split, data_dir=args.data_dir)
    problems = dataset[:args.limit] if args.limit else list(dataset)
    header = {"dataset": dataset.name, "split": dataset.split}
    if args.completions:
        given = [f"--{k.replace('_', '-')}" for k in ("temperature", "top_p", "top_k", "max_new_tokens", "template",
                                                      "batch_size", "save_completions") if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} cannot apply to --completions (they were sampled elsewhere)")
        completions = read_completions(args.completions, known_ids={p["id"] for p in dataset})
        count = None
        if args.tokenizer:
            from models.tokenizer import Tokenizer
            tokenizer = Tokenizer.from_dir(args.tokenizer)
            count = lambda text: len(tokenizer.encode(text))  # noqa: E731
        report = {**header, "completions": args.completions, "tokenizer": args.tokenizer,
                  **score_completions(problems, completions, samples=args.samples, count_tokens=count)}
    else:
        report = {**header, "model": args.model, **_eval_model(args, dataset.name, problems)}
    import jax
    if jax.process_index() != 0:  # a multi-host run: every host computed the same report
        return 0
    print(markdown_summary(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        log.info("report written to %s", args.out)
    return 0


def _eval_model(args: argparse.Namespace, dataset: str, problems: list[dict]) -> dict:
    from models import hf
    from models.sharding import make_mesh

    proto = PROTOCOLS.get(dataset, GREEDY)
    pick = lambda value, default: default if value is None else value  # noqa: E731
    settings = dict(samples=pick(args.samples, proto.samples), temperature=pick(args.temperature, proto.temperature),
                    top_p=pick(args.top_p, proto.top_p), max_new_tokens=pick(args.max_new_tokens, proto.max_new_tokens),
                    top_k=pick(args.top_k, 0), template=args.template, seed=args.seed)
    if settings["samples"] < 1:
        raise ValueError(f"--samples must be at least 1, got {settings['samples']}")
    if settings["samples"] > 1 and settings["temperature"] == 0:
        raise ValueError(f"{settings['samples']} greedy samples would all be the same; set --temperature")
    mesh = make_mesh((1, -1, 1))
    from grpo.checkpoint import is_train_workdir, load_trained
    if is_train_workdir(args.model):  # its newest checkpoint
        model, tokenizer, _ = load_trained(args.model, mesh=mesh)
    else:
        model, tokenizer = hf.load(args.model, mesh)
    if tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer.json")
    if settings["template"] is None:
        from grpo.data.prompts import default_template
        settings["template"] = default_template(tokenizer)
    completions = generate_completions(model, tokenizer, problems, mesh=mesh, batch_size=args.batch_size,
                                       gather_weights=not args.shard_weights, **settings)
    import jax
    if args.save_completions and jax.process_index() == 0:
        write_completions(args.save_completions, problems, completions)
        log.info("completions written to %s", args.save_completions)
    return {"settings": settings, **score_completions(problems, completions)}
