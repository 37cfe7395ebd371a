"""Answers made only of plain numbers, parsed and compared exactly without sympy.

Most GRPO answers are plain numbers (every GSM8K answer, two thirds of MATH-500, all of AIME), and
many of the rest are tuples, intervals or sets of numbers; deciding those here keeps them off the
sympy workers. `plain_equal` returns None for shapes only sympy can judge, and the caller then
asks a worker.
"""

from __future__ import annotations

import dataclasses
import decimal
import re
from fractions import Fraction


@dataclasses.dataclass(frozen=True)
class PlainNumber:
    """An exact number as written: its value and how it was written."""

    value: Fraction
    inexact: bool  # written with decimals: compared to 6 places, like math-verify does
    percent: bool  # "50%": equals 50 and 0.5


_NUMBER_RE = re.compile(r"([+-]?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")
_SCI_RE = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*(?:[eE]|\\times\s*10\s*\^|\\cdot\s*10\s*\^)"
                     r"\s*\{?\s*([+-]?\d{1,3})\s*\}?")
_FRAC_RE = re.compile(r"([+-]?)\\[dt]?frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))"
                      r"\s*(?:\{\s*(\d+)\s*\}|(\d))")
_SLASH_RE = re.compile(r"([+-]?)(\d+)\s*/\s*(\d+)")
# A number followed by a unit: \text{...}-like (any content) or plain words of 2+ letters, maybe
# squared or cubed ("864 \mbox{ inches}^2", "18 dollars").
_UNIT_RE = re.compile(
    r"(.*?[\d}])\s*((?:\\(?:text|mbox|mathrm|textrm)\s*\{[^{}]*\}"
    r"|(?<![\\A-Za-z])[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*)(?:\s*\^\s*\{?[23]\}?)?)")
# Words after a number that are mathematics, not units: never strip them.
_NOT_UNITS = {"pi", "sqrt", "sin", "cos", "tan", "log", "ln", "exp", "inf", "infty", "infinity",
              "and", "or", "hundred", "thousand", "million", "billion", "trillion", "dozen"}
_DEGREES_RE = re.compile(r"\s*\^\s*\{?\s*\\circ\s*\}?|\s*\\circ|\s*\\degree")


def parse_number(s: str) -> PlainNumber | None:
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
        return PlainNumber(-value if m.group(1) == "-" else value, "." in digits, percent)
    if m := _SCI_RE.fullmatch(s):
        value = Fraction(m.group(2).rstrip(".")) * Fraction(10) ** int(m.group(3))
        return PlainNumber(-value if m.group(1) == "-" else value, "." in m.group(2), percent)
    if m := _FRAC_RE.fullmatch(s):
        num, den = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
    elif m := _SLASH_RE.fullmatch(s):
        num, den = int(m.group(2)), int(m.group(3))
    else:
        return None
    if den == 0:
        return None
    value = Fraction(num, den)
    return PlainNumber(-value if m.group(1) == "-" else value, False, percent)


def numbers_equal(a: PlainNumber, b: PlainNumber) -> bool:
    """Exact equality; to 6 decimal places if either side was written with decimals (0.333333 =
    1/3, as in math-verify); a percentage matches both its number and its fraction (50% = 50 = 0.5)."""
    xs = [a.value] + ([a.value / 100] if a.percent and not b.percent else [])
    ys = [b.value] + ([b.value / 100] if b.percent and not a.percent else [])
    rounded = a.inexact or b.inexact
    return any(x == y or (rounded and round(x, 6) == round(y, 6)) for x in xs for y in ys)


# Digits (starting with a digit, or upper-case like A3) and a subscript base; "x_1" is a variable.
_BASED_RE = re.compile(r"([0-9][0-9A-Za-z]*|[A-Z][0-9A-Z]*)_\{?\s*(\d{1,2})\s*\}?")


@dataclasses.dataclass(frozen=True)
class BasedNumeral:
    """A numeral in a stated base, "52_8": the parser drops the subscript, so 204_2 would equal
    204_5; here the digits and the base must both match."""

    digits: str
    base: int


def parse_based(s: str) -> BasedNumeral | None:
    m = _BASED_RE.fullmatch(s.strip())
    if not m:
        return None
    return BasedNumeral(m.group(1).upper().lstrip("0") or "0", int(m.group(2)))


_INFINITY_RE = re.compile(r"([+-]?)\s*(?:\\infty|\\inf|oo)")


@dataclasses.dataclass(frozen=True)
class PlainSequence:
    """A tuple, interval, set or bare list whose items are all plain numbers (or ±infinity)."""

    brackets: str  # "()", "[]", "(]", "[)" for tuples/intervals; "{}" for sets; "" for "1, 2"
    items: tuple  # of PlainNumber, or float("inf") / float("-inf")

    @property
    def is_set(self) -> bool:
        return self.brackets in ("{}", "")


def parse_sequence(s: str) -> PlainSequence | None:
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
        elif (number := parse_number(part)) is not None:
            items.append(number)
        else:
            return None
    return PlainSequence(brackets, tuple(items))


def _items_equal(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == b  # infinities equal only themselves
    return numbers_equal(a, b)


def plain_equal(a, b) -> bool | None:
    """Compares two plain answers (PlainNumber, PlainSequence, BasedNumeral); None when their shapes need the
    worker to decide (e.g. the interval (1, 2) against the list 1, 2)."""
    if isinstance(a, BasedNumeral) or isinstance(b, BasedNumeral):
        if isinstance(a, BasedNumeral) and isinstance(b, BasedNumeral):
            return a == b
        # The base is fixed by the question, so "52" answers "52_8"; any other value does not.
        number = b if isinstance(a, BasedNumeral) else a
        based = a if isinstance(a, BasedNumeral) else b
        if not isinstance(number, PlainNumber) or number.percent or number.value.denominator != 1:
            return False if isinstance(number, PlainNumber) else None
        return str(abs(number.value.numerator)) == based.digits and number.value >= 0
    if isinstance(a, PlainNumber) and isinstance(b, PlainNumber):
        return numbers_equal(a, b)
    if isinstance(a, PlainNumber):
        a = PlainSequence("{}", (a,))  # a single answer against a set of answers
    if isinstance(b, PlainNumber):
        b = PlainSequence("{}", (b,))
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


def canonical(number: PlainNumber) -> str:
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
