"""Math answer verification: is the final answer of a completion equal to the gold answer?

The reward is the only teacher in GRPO, so a verdict must be right, must come back in bounded time,
and must be cheap enough to score thousands of completions per step. Per item:

  1. Extract the final answer (trainer process, stdlib only, linear time): the last `<answer>…</answer>`,
     else the last `\\boxed{…}`/`\\fbox{…}` (with the boxes right before it, for several answers),
     else "the answer is …", else GSM8K's "#### …", else the whole completion if it is nothing but
     an answer, else (optional, off by default for AIME-style strictness) the last number.
  2. Reject absurd answers (too long, braces nested too deep) without a worker round trip.
  3. Clean both sides (unicode math, delimiters, thousands separators, units, degrees, percent).
  4. Decide here what needs no sympy: identical answers, and answers made only of plain numbers
     (numbers, tuples, intervals, sets of numbers), compared exactly: GSM8K never touches sympy.
  5. Otherwise send the pair to a worker process (`rewards.math_worker`: math-verify parsing and
     sympy comparison) under a hard per-item timeout; a timeout, crash or parse failure scores 0
     and is counted in `VerifyStats`. Identical pairs in a batch are sent once, verdicts are cached,
     and workers cache parsed gold answers.

Public contract: `verify(pred_text, gold) -> bool` and `verify_batch(preds, golds) -> list[bool]`.
`MathReward` wraps them as a batched reward function for `rewards.compose`.
"""

from __future__ import annotations

import collections
import dataclasses
import decimal
import functools
import re
import threading
from fractions import Fraction
from typing import Sequence

from rewards import pool as pool_lib

# ----------------------------------------------------------------------------- extraction

_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|was|would be|will be|=|:)\s*[:=]?", re.IGNORECASE)
_HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
_LAST_NUMBER_RE = re.compile(
    r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# What may stand between two boxes that together form one answer: "\boxed{1}, \boxed{2}",
# "$\boxed{1}$ and $\boxed{2}$", "x = \boxed{1} \text{ or } x = \boxed{2}".
_BOX_SEPARATOR_RE = re.compile(
    r"(?:\s|\$|,|;|\\[,;!]|\\q?quad|\\text\{\s*(?:and|or|,)\s*\}|\band\b|\bor\b|\b[A-Za-z]\s*=)*")
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|\*\*")
_COMMAND_ARG_RE = re.compile(r"\\[a-zA-Z]+\s*(?:\{[^{}]*\})?")

NO_ANSWER = "no_answer"  # nothing that looks like a final answer
TOO_LONG = "too_long"  # answer longer than max_answer_chars
TOO_DEEP = "too_deep"  # braces nested deeper than max_brace_depth


def _scan_group(text: str, open_idx: int, max_chars: int, max_depth: int) -> tuple[int, str]:
    """Finds the brace matching text[open_idx] == "{", skipping escaped braces like `\\{`.

    Returns (index of the closing brace, "") or (-1, reason). Scans at most max_chars characters,
    so a 100k-character or 5,000-deep box costs no more than a normal one.
    """
    depth = 0
    i, end = open_idx, min(len(text), open_idx + max_chars + 2)
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
            if depth > max_depth:
                return -1, TOO_DEEP
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i, ""
        i += 1
    return -1, TOO_LONG if end < len(text) else NO_ANSWER


def _box_before(text: str, stop: int, max_chars: int, max_depth: int) -> tuple[int, str, str]:
    """The last `\\boxed{…}`/`\\fbox{…}` starting before `stop`: (start, content, reason)."""
    start = max(text.rfind("\\boxed", 0, stop), text.rfind("\\fbox", 0, stop))
    if start < 0:
        return -1, "", NO_ANSWER
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close, why = _scan_group(text, i, max_chars, max_depth)
        if close < 0:
            return start, "", why
        return start, text[i + 1 : close], ""
    # "\boxed 5": the argument is the next token.
    token = re.match(r"[^\s$]+", text[i : i + max_chars + 1])
    return start, token.group(0) if token else "", "" if token else NO_ANSWER


def _last_boxed(text: str, max_chars: int, max_depth: int) -> tuple[str | None, str]:
    start, content, why = _box_before(text, len(text), max_chars, max_depth)
    if start < 0 or why:
        return None, why
    parts = [content]
    # Several answers boxed one by one: gather the boxes just before, if only separators intervene.
    for _ in range(7):
        prev, prev_content, prev_why = _box_before(text, start, max_chars, max_depth)
        if prev < 0 or prev_why:
            break
        gap_start = text.find(prev_content, prev) + len(prev_content) + 1
        gap = text[gap_start:start]
        if len(gap) > 24 or not _BOX_SEPARATOR_RE.fullmatch(gap):
            break
        if prev_content != parts[0]:
            parts.insert(0, prev_content)
        start = prev
    return ", ".join(p.strip() for p in parts), ""


def _after_answer_is(text: str, max_chars: int) -> str | None:
    last = None
    for last in _ANSWER_IS_RE.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end() : last.end() + max_chars + 64].lstrip(" \t*:")
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_):
            # The closing delimiter is the first one not escaped: "$\\$18$" is "\\$18".
            end = re.compile(r"(?<!\\)" + re.escape(close)).search(rest, len(open_))
            if end:
                return rest[len(open_) : end.start()]
            break
    line = rest.split("\n", 1)[0]
    cut = _SENTENCE_END_RE.search(line)
    line = line[: cut.start()] if cut else line
    return line if line.strip() else None


def _is_bare_answer(text: str) -> bool:
    """True if the whole text is just an answer ("18", "x = 2", "$\\frac{1}{2}$"), not prose."""
    text = text.strip()
    if not text or "\n" in text or len(text) > 200:
        return False
    return not re.search(r"[A-Za-z]{3,}", _COMMAND_ARG_RE.sub(" ", text))


def _extract(text: str, fallback_last_number: bool, max_chars: int, max_depth: int,
             inside_tag: bool = False) -> tuple[str | None, str]:
    if not inside_tag:
        start = text.rfind("<answer>")
        end = text.find("</answer>", start + 8) if start >= 0 else -1
        if end >= 0:
            return _extract(text[start + 8 : end], fallback_last_number, max_chars, max_depth, True)
    if "\\boxed" in text or "\\fbox" in text:
        answer, why = _last_boxed(text, max_chars, max_depth)
        if why != NO_ANSWER:
            return answer, why
    answer = _after_answer_is(text, max_chars)
    if answer is not None:
        return answer, ""
    hashes = None
    for hashes in _HASHES_RE.finditer(text):
        pass
    if hashes is not None and hashes.group(1).strip():
        return hashes.group(1), ""
    if _is_bare_answer(text):
        return text, ""
    if fallback_last_number:
        number = None
        for number in _LAST_NUMBER_RE.finditer(text):
            pass
        if number is not None:
            return number.group(0), ""
    return None, NO_ANSWER


def extract_answer(text: str, fallback_last_number: bool = False, max_answer_chars: int = 1000,
                   max_brace_depth: int = 50) -> str | None:
    """Extracts the final answer from a completion (see the module docstring for the order).

    Args:
      text: the completion.
      fallback_last_number: if no explicit answer is found, use the last number in the text.
      max_answer_chars: longer answers are refused (None).
      max_brace_depth: answers with braces nested deeper are refused (None).

    Returns:
      The answer as written (not yet cleaned), or None if there is none or it was refused.
    """
    answer, why = _extract(_as_text(text), fallback_last_number, max_answer_chars, max_brace_depth)
    return None if why else answer


def _as_text(value) -> str:
    """Any input as a str that encodes cleanly (bytes may be non-UTF-8; str may hold surrogates)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", errors="replace").decode("utf-8")


# ----------------------------------------------------------------------------- cleaning

_UNICODE = str.maketrans({
    "−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "÷": "\\div ", "π": "\\pi ",
    "√": "\\sqrt", "∞": "\\infty ", "°": "^\\circ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ",
})
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))
_OUTER_BOX_RE = re.compile(r"^\\(?:boxed|fbox)\s*\{(.*)\}$", re.DOTALL)


def _clean(answer: str) -> str:
    """Strips what is presentation, not value: delimiters, markdown, end punctuation, unicode."""
    s = answer.translate(_UNICODE).strip()
    for _ in range(4):
        before = s
        s = s.strip().rstrip(".,;:").strip()
        box = _OUTER_BOX_RE.match(s)
        if box:
            s = box.group(1)
        for open_, close in _DELIMITERS:
            if len(s) > len(open_) + len(close) and s.startswith(open_) and s.endswith(close):
                s = s[len(open_) : -len(close)]
        s = s.replace("\\displaystyle", "")
        if s == before:
            break
    return s.strip()


# ----------------------------------------------------------------------------- numbers

@dataclasses.dataclass(frozen=True)
class _Number:
    value: Fraction
    inexact: bool  # written with decimals: compared to 6 places, like math-verify does
    percent: bool  # "50%": equals 50 and 0.5


_NUMBER_RE = re.compile(r"([+-]?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")
_SCI_RE = re.compile(
    r"([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*(?:[eE]|\\times\s*10\s*\^|\\cdot\s*10\s*\^)\s*\{?\s*([+-]?\d{1,3})\s*\}?")
_FRAC_RE = re.compile(r"([+-]?)\\[dt]?frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))")
_SLASH_RE = re.compile(r"([+-]?)(\d+)\s*/\s*(\d+)")
_UNIT_RE = re.compile(
    r"(.*?[\d}])\s*((?:\\(?:text|mbox|mathrm|textrm)\s*\{[^{}]*\}|(?<![\\A-Za-z])[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*)"
    r"(?:\s*\^\s*\{?[23]\}?)?)")
# Words after a number that are mathematics, not units: never strip them.
_NOT_UNITS = {"pi", "sqrt", "sin", "cos", "tan", "log", "ln", "exp", "inf", "infty", "infinity",
              "and", "or", "hundred", "thousand", "million", "billion", "trillion", "dozen"}
_DEGREES_RE = re.compile(r"\s*\^\s*\{?\s*\\circ\s*\}?|\s*\\circ|\s*\\degree")


def _parse_number(s: str) -> _Number | None:
    """Reads a plain number: 18, -3, 033, 1,000, 10,\\!080, 0.5, .5, 1.5e3, 1.5\\times10^{3},
    \\frac{1}{2}, \\dfrac12, 3/4, 50\\%, 90^\\circ, \\$18, 18 dollars. Anything else is None."""
    s = s.replace("\\$", "").replace("$", "").replace("{,}", ",")
    s = re.sub(r",\\!\s*", ",", s)  # "11,\! 111" is how MATH writes thousands
    s = re.sub(r"(?<=\d)\\[,!;: ](?=\d{3})", "", s)  # 1\,000
    s = re.sub(r"\\[!,;:]", "", s).strip()
    percent = False
    unit = _UNIT_RE.fullmatch(s)
    if unit:
        words = re.sub(r"\\[A-Za-z]+|[{}^\d]", " ", unit.group(2)).lower().split()
        if any(w in _NOT_UNITS for w in words):
            return None
        percent = any(w.startswith("percent") for w in words)
        s = unit.group(1)
    s = _DEGREES_RE.sub("", s).strip()
    if s.endswith("\\%") or s.endswith("%"):
        percent, s = True, s.rstrip("%").rstrip("\\").strip()
    if len(s) > 400:
        return None
    if m := _NUMBER_RE.fullmatch(s):
        digits = m.group(2).replace(",", "")
        value = Fraction(digits if not digits.endswith(".") else digits[:-1])
        return _Number(-value if m.group(1) == "-" else value, "." in digits, percent)
    if m := _SCI_RE.fullmatch(s):
        value = Fraction(m.group(2).rstrip(".")) * Fraction(10) ** int(m.group(3))
        return _Number(-value if m.group(1) == "-" else value, "." in m.group(2), percent)
    if m := _FRAC_RE.fullmatch(s):
        num, den = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
    elif m := _SLASH_RE.fullmatch(s):
        num, den = int(m.group(2)), int(m.group(3))
    else:
        return None
    if den == 0:
        return None
    value = Fraction(num, den)
    return _Number(-value if m.group(1) == "-" else value, False, percent)


def _numbers_equal(a: _Number, b: _Number) -> bool:
    """Exact equality; to 6 decimal places if either side was written with decimals (0.333333 =
    1/3, as in math-verify); a percentage matches both its number and its fraction (50% = 50 = 0.5)."""
    xs = [a.value] + ([a.value / 100] if a.percent and not b.percent else [])
    ys = [b.value] + ([b.value / 100] if b.percent and not a.percent else [])
    rounded = a.inexact or b.inexact
    return any(x == y or (rounded and round(x, 6) == round(y, 6)) for x in xs for y in ys)


# Digits (starting with a digit, or upper-case like A3) and a subscript base; "x_1" is a variable.
_BASED_RE = re.compile(r"([0-9][0-9A-Za-z]*|[A-Z][0-9A-Z]*)_\{?\s*(\d{1,2})\s*\}?")


@dataclasses.dataclass(frozen=True)
class _Based:
    """A numeral in a stated base, "52_8": the parser drops the subscript, so 204_2 would equal
    204_5; here the digits and the base must both match."""

    digits: str
    base: int


def _parse_based(s: str) -> _Based | None:
    m = _BASED_RE.fullmatch(s.strip())
    if not m:
        return None
    return _Based(m.group(1).upper().lstrip("0") or "0", int(m.group(2)))


_INFINITY_RE = re.compile(r"([+-]?)\s*(?:\\infty|\\inf|oo)")


@dataclasses.dataclass(frozen=True)
class _Sequence:
    """A tuple, interval, set or bare list whose items are all plain numbers (or ±infinity)."""

    brackets: str  # "()", "[]", "(]", "[)" for tuples/intervals; "{}" for sets; "" for "1, 2"
    items: tuple  # of _Number, or float("inf") / float("-inf")

    @property
    def is_set(self) -> bool:
        return self.brackets in ("{}", "")


def _parse_sequence(s: str) -> _Sequence | None:
    """Reads "(1, 2)", "[1,3)", "\\left( 3, -13 \\right)", "(-\\infty, 0]", "\\{1, 2\\}", "1, -2"."""
    s = re.sub(r"\\(?:left|right|big|Big)\s*", "", s).strip()
    if s.startswith("\\{") and s.endswith("\\}"):
        brackets, inner = "{}", s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        brackets, inner = s[0] + s[-1], s[1:-1]
    else:
        brackets, inner = "", s
    if any(c in inner for c in "()[]"):  # nested tuples and unions are the worker's
        return None
    parts, depth, start = [], 0, 0
    for i, c in enumerate(inner):  # split at commas outside braces: (\\frac{3}{2}, -13)
        depth += (c == "{") - (c == "}")
        if c == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    if not 2 <= len(parts) <= 64:
        return None
    items = []
    for part in parts:
        if inf := _INFINITY_RE.fullmatch(part.strip()):
            items.append(float("-inf") if inf.group(1) == "-" else float("inf"))
        elif (number := _parse_number(part)) is not None:
            items.append(number)
        else:
            return None
    return _Sequence(brackets, tuple(items))


def _items_equal(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == b  # infinities equal only themselves
    return _numbers_equal(a, b)


def _plain_equal(a, b) -> bool | None:
    """Compares two plain answers (_Number, _Sequence, _Based); None when their shapes need the
    worker to decide (e.g. the interval (1, 2) against the list 1, 2)."""
    if isinstance(a, _Based) or isinstance(b, _Based):
        if isinstance(a, _Based) and isinstance(b, _Based):
            return a == b
        # The base is fixed by the question, so "52" answers "52_8"; any other value does not.
        number = b if isinstance(a, _Based) else a
        based = a if isinstance(a, _Based) else b
        if not isinstance(number, _Number) or number.percent or number.value.denominator != 1:
            return False if isinstance(number, _Number) else None
        return str(abs(number.value.numerator)) == based.digits and number.value >= 0
    if isinstance(a, _Number) and isinstance(b, _Number):
        return _numbers_equal(a, b)
    if isinstance(a, _Number):
        a = _Sequence("{}", (a,))  # a single answer against a set of answers
    if isinstance(b, _Number):
        b = _Sequence("{}", (b,))
    if a.is_set and b.is_set:  # order and repeats do not matter
        return (all(any(_items_equal(x, y) for y in b.items) for x in a.items)
                and all(any(_items_equal(x, y) for x in a.items) for y in b.items))
    if a.is_set or b.is_set:
        return None
    if len(a.items) != len(b.items):
        return False
    if not all(_items_equal(x, y) for x, y in zip(a.items, b.items)):
        return False
    # Brackets matter ([1,2) is not [1,2]), except at an infinite end, which is always open.
    return all(ba == bb or isinstance(x, float)
               for ba, bb, x in ((a.brackets[0], b.brackets[0], a.items[0]),
                                 (a.brackets[1], b.brackets[1], a.items[-1])))


def _canonical(number: _Number) -> str:
    """The number as a worker should see it, when the other side is an expression: units, \\$ and
    separators gone, exact values as integers or \\frac, decimals kept as decimals (their digits
    decide the rounding)."""
    v = number.value
    if number.inexact:
        with decimal.localcontext(decimal.Context(prec=1000)):
            text = format(decimal.Decimal(v.numerator) / decimal.Decimal(v.denominator), "f")
    elif v.denominator == 1:
        text = str(v.numerator)
    else:
        text = f"\\frac{{{v.numerator}}}{{{v.denominator}}}"
    return text + ("\\%" if number.percent else "")


# ----------------------------------------------------------------------------- verification

@dataclasses.dataclass
class VerifyStats:
    """What happened to the items of one batch (or, summed, of a verifier's lifetime).

    A verdict of False because of `no_answer`, `rejected`, `timeouts`, `crashes`, `errors` or
    `parse_errors` is a failure to verify rather than a wrong answer; log them to see which.
    """

    items: int = 0
    no_answer: int = 0  # no final answer could be extracted from the completion
    rejected: int = 0  # answer too long or too deeply nested; refused without a worker
    bad_gold: int = 0  # the gold answer itself was empty or refused
    fast_path: int = 0  # identical, or plain numbers/tuples/sets: decided in the trainer process
    cached: int = 0  # decided by an earlier identical (answer, gold) pair
    sympy: int = 0  # distinct pairs sent to worker processes
    timeouts: int = 0  # worker exceeded the per-item timeout (killed and replaced)
    crashes: int = 0  # worker died on the item (killed, segfault, out of memory)
    errors: int = 0  # the comparison raised (counted, scored 0)
    parse_errors: int = 0  # the predicted answer could not be parsed
    gold_parse_errors: int = 0  # the gold answer could not be parsed
    too_big: int = 0  # an answer would need astronomically large numbers (9^{9^{9^9}})

    def add(self, other: "VerifyStats") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# Worker verdict reasons (rewards.math_worker) -> VerifyStats fields.
_WHY_TO_STAT = {"parse_error": "parse_errors", "gold_parse_error": "gold_parse_errors",
                "too_big": "too_big"}


@dataclasses.dataclass(frozen=True)
class _Answer:
    text: str  # cleaned answer, what a worker compares
    plain: _Number | _Sequence | _Based | None  # set if made of plain numbers only


class MathVerifier:
    """Verifies answers against gold answers with a pool of sympy worker processes.

    Args:
      timeout_s: hard wall-clock limit per (answer, gold) comparison in a worker.
      num_workers: worker processes (default: usable CPUs, at most 8).
      fallback_last_number: default for extraction (see `extract_answer`).
      max_answer_chars, max_brace_depth: answers beyond these are refused in the trainer process.
      max_items_per_worker: workers are recycled after this many comparisons.
      memory_limit_mb: address-space limit of each worker.
      chunk_size: comparisons per message to a worker.
      cache_size: verdicts and prepared gold answers kept.
      handler: the worker module (tests substitute one that can hang or crash on demand).
    """

    def __init__(self, *, timeout_s: float = 1.5, num_workers: int | None = None,
                 fallback_last_number: bool = False, max_answer_chars: int = 1000,
                 max_brace_depth: int = 50, max_items_per_worker: int = 10_000,
                 memory_limit_mb: int = 2048, chunk_size: int = 16, cache_size: int = 65_536,
                 handler: str = "rewards.math_worker"):
        self.fallback_last_number = fallback_last_number
        self.max_answer_chars = max_answer_chars
        self.max_brace_depth = max_brace_depth
        self.pool = pool_lib.WorkerPool(
            handler, num_workers=num_workers, timeout_s=timeout_s,
            max_items_per_worker=max_items_per_worker, memory_limit_mb=memory_limit_mb,
            chunk_size=chunk_size)
        self.stats = VerifyStats()
        self._cache_size = cache_size
        self._verdicts: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self._gold = functools.lru_cache(maxsize=cache_size)(self._prepare_gold)

    def close(self) -> None:
        self.pool.close()

    def clear_cache(self) -> None:
        """Forgets cached verdicts and prepared gold answers (workers keep their parse caches,
        which cannot change a verdict)."""
        with self._lock:
            self._verdicts.clear()
            self._gold.cache_clear()

    def _prepare(self, answer: str | None, why: str) -> _Answer | str:
        if answer is None:
            return why or NO_ANSWER
        text = _clean(answer)
        if not text:
            return NO_ANSWER
        if len(text) > self.max_answer_chars:
            return TOO_LONG
        depth = max_depth = 0
        for c in text:
            depth += (c == "{") - (c == "}")
            max_depth = max(max_depth, depth)
        if max_depth > self.max_brace_depth:
            return TOO_DEEP
        number = _parse_number(text)
        if number is not None:
            return _Answer(_canonical(number), number)
        return _Answer(text, _parse_sequence(text) or _parse_based(text))

    def _prepare_gold(self, gold: str) -> _Answer | str:
        # A gold answer is an answer, not a completion; only a boxed one (a MATH solution) needs
        # extracting.
        gold = _as_text(gold)
        if "\boxed" in gold or "\fbox" in gold:
            answer, why = _last_boxed(gold, self.max_answer_chars, self.max_brace_depth)
            return self._prepare(answer, why)
        return self._prepare(gold, "")

    def _prepare_pred(self, text, fallback_last_number: bool) -> _Answer | str:
        answer, why = _extract(_as_text(text), fallback_last_number, self.max_answer_chars,
                               self.max_brace_depth)
        return self._prepare(answer, why)

    def verify(self, pred_text: str, gold: str, **kwargs) -> bool:
        """Whether the final answer in `pred_text` equals `gold`. See `verify_batch`."""
        return self.verify_batch([pred_text], [gold], **kwargs)[0]

    def verify_batch(self, preds: Sequence[str], golds: Sequence[str], *,
                     fallback_last_number: bool | None = None, return_stats: bool = False):
        """Verifies many completions against their gold answers, in parallel across workers.

        Args:
          preds: completions (str; bytes are decoded leniently).
          golds: gold answers, one per completion (str, or numbers).
          fallback_last_number: overrides the verifier's default for this call.
          return_stats: also return this batch's `VerifyStats`.

        Returns:
          A list of bools (and the stats if requested). Never raises on bad input: anything that
          cannot be verified in time is False and counted in the stats.
        """
        if len(preds) != len(golds):
            raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
        if fallback_last_number is None:
            fallback_last_number = self.fallback_last_number
        with self._lock:
            verdicts, stats = self._verify_locked(preds, golds, fallback_last_number)
            self.stats.add(stats)
        return (verdicts, stats) if return_stats else verdicts

    def _verify_locked(self, preds, golds, fallback_last_number):
        stats = VerifyStats(items=len(preds))
        verdicts = [False] * len(preds)
        todo: dict[tuple[str, str], list[int]] = {}
        for i, (pred, gold) in enumerate(zip(preds, golds)):
            g = self._gold(gold if isinstance(gold, str) else _as_text(gold))
            if isinstance(g, str):
                stats.bad_gold += 1
                continue
            p = self._prepare_pred(pred, fallback_last_number)
            if isinstance(p, str):
                stats.no_answer += p == NO_ANSWER
                stats.rejected += p != NO_ANSWER
                continue
            # Decided here, without sympy: identical answers, and answers made of plain numbers.
            equal = True if p.text == g.text else None
            if equal is None and p.plain is not None and g.plain is not None:
                equal = _plain_equal(p.plain, g.plain)
            if equal is not None:
                stats.fast_path += 1
                verdicts[i] = equal
                continue
            key = (p.text, g.text)
            if key in self._verdicts:
                stats.cached += 1
                self._verdicts.move_to_end(key)
                verdicts[i] = self._verdicts[key]
                continue
            todo.setdefault(key, []).append(i)
        # Pairs sharing a gold answer travel together, so a worker parses each gold once.
        keys = sorted(todo, key=lambda k: k[1])
        stats.sympy = len(keys)
        for key, (status, value) in zip(keys, self.pool.map(keys)):
            equal = False
            if status == pool_lib.OK:
                equal, why = value
                if why:
                    field = _WHY_TO_STAT[why]
                    setattr(stats, field, getattr(stats, field) + 1)
            elif status == pool_lib.TIMEOUT:
                stats.timeouts += 1
            elif status == pool_lib.CRASH:
                stats.crashes += 1
            else:
                stats.errors += 1
            if status != pool_lib.CRASH:  # a crash may be the machine's fault, not the input's
                self._verdicts[key] = equal
                if len(self._verdicts) > self._cache_size:
                    self._verdicts.popitem(last=False)
            for i in todo[key]:
                verdicts[i] = equal
        return verdicts, stats


# ----------------------------------------------------------------------------- module-level API

_default: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    """The process-wide verifier behind `verify`/`verify_batch`, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathVerifier()
        return _default


def configure(**options) -> MathVerifier:
    """Replaces the process-wide verifier with one built from `MathVerifier` options."""
    global _default
    with _default_lock:
        old, _default = _default, MathVerifier(**options)
    if old is not None:
        old.close()
    return _default


def verify(pred_text: str, gold: str, *, fallback_last_number: bool | None = None) -> bool:
    """Whether the final answer in a completion equals the gold answer.

    Args:
      pred_text: the completion (its final answer is extracted, see `extract_answer`).
      gold: the gold answer ("18", "\\frac{1}{2}", "[1,2)", a boxed solution, ...).
      fallback_last_number: use the last number if no explicit answer is found.

    Returns:
      True if equal. False if not, or if it could not be decided in time (never raises, never hangs).
    """
    return default_verifier().verify(pred_text, gold, fallback_last_number=fallback_last_number)


def verify_batch(preds: Sequence[str], golds: Sequence[str], *,
                 fallback_last_number: bool | None = None, return_stats: bool = False):
    """`verify` for many pairs at once, in parallel across worker processes.

    Returns:
      list[bool], or (list[bool], VerifyStats) with return_stats=True.
    """
    return default_verifier().verify_batch(
        preds, golds, fallback_last_number=fallback_last_number, return_stats=return_stats)


class MathReward:
    """Batched reward: `correct` if a completion's final answer equals `sample[answer_key]`.

    Args:
      correct, incorrect: reward values for the two verdicts.
      fallback_last_number: see `extract_answer` (off: AIME-style strictness).
      answer_key: where the gold answer lives in each sample.
      **verifier_options: if given, this reward gets its own `MathVerifier` with these options;
        otherwise it shares the process-wide one.
    """

    batched = True

    def __init__(self, *, correct: float = 1.0, incorrect: float = 0.0,
                 fallback_last_number: bool = False, answer_key: str = "answer",
                 **verifier_options):
        self.correct, self.incorrect = float(correct), float(incorrect)
        self.fallback_last_number = fallback_last_number
        self.answer_key = answer_key
        self._verifier = MathVerifier(**verifier_options) if verifier_options else None
        self.last_stats = VerifyStats()

    def __call__(self, completions: Sequence[str], samples: Sequence[dict]) -> list[float]:
        verifier = self._verifier or default_verifier()
        golds = [s[self.answer_key] for s in samples]
        verdicts, self.last_stats = verifier.verify_batch(
            completions, golds, fallback_last_number=self.fallback_last_number, return_stats=True)
        return [self.correct if v else self.incorrect for v in verdicts]

    def metrics(self) -> dict[str, float]:
        """Counters of the last call worth logging (why items scored 0 without a wrong answer)."""
        s = self.last_stats
        return {"no_answer": s.no_answer, "rejected": s.rejected, "timeouts": s.timeouts,
                "crashes": s.crashes, "errors": s.errors, "parse_errors": s.parse_errors,
                "bad_gold": s.bad_gold + s.gold_parse_errors}
