"""The worker-process half of math verification: parse two answers and compare them with sympy.

Runs only inside `rewards.pool` workers (the trainer process never imports sympy for this). Input
answers arrive already extracted and cleaned by `rewards.math`; here they are parsed with
math-verify (which drives latex2sympy2_extended) and compared with math-verify's `verify`, whose
signal-based timeout is disabled because the pool enforces a hard timeout from the parent.

What this module adds on top of the libraries:
  * a guard that refuses expressions whose evaluation would need astronomically large numbers
    (`9^{9^{9^9}}`, `(10^{10^{10}})!`): the parser leaves them unevaluated, but comparing them would
    evaluate them, which can hang a worker for hours or exhaust its memory;
  * `i` read as the imaginary unit (the parser keeps it a symbol, so e^{i\\pi} was not -1);
  * a numeric check that proves most wrong answers unequal before sympy's slow `simplify` runs;
  * a parse cache, so the gold answer shared by a GRPO group is parsed once per worker;
  * a verdict that says why it failed (unparseable prediction or gold, refused as too big).
"""

from __future__ import annotations

import functools
import logging
import math

# Why an item scored 0 beyond "not equal"; counted by the parent.
PARSE_ERROR = "parse_error"
GOLD_PARSE_ERROR = "gold_parse_error"
TOO_BIG = "too_big"

# Refuse any sub-expression whose value may have more than this many decimal digits. Real answers
# are nowhere near (AIME answers have 3 digits, 100! has 158); sympy handles 10^4 digits instantly.
_MAX_DIGITS = 10_000
# Refuse exponents and factorial arguments beyond these, whatever the base: x^{10^6} cannot be
# expanded or simplified in bounded time either.
_MAX_EXPONENT = 100_000
_MAX_FACTORIAL_ARG = 10_000

_parse = None  # math_verify.parse, bound in init()
_verify = None  # math_verify.verify


def init() -> None:
    """Imports and warms up the parser once per worker, before the worker reports ready."""
    global _parse, _verify
    import sys

    import math_verify

    # math-verify warns once per process that its own timeout is disabled; the pool owns timeouts.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    # Deeply nested input makes sympy recurse; a RecursionError is a clean per-item failure, while
    # a C-stack overflow would kill the worker, so keep Python's limit moderate.
    sys.setrecursionlimit(3000)
    _parse, _verify = math_verify.parse, math_verify.verify
    # The first parse compiles the extraction regexes and the ANTLR lexer; pay for it here.
    handle(("\\frac{1}{2}", "0.5"))
    handle(("x^2+2x", "x(x+2)"))


@functools.lru_cache(maxsize=8192)
def parse_answer(answer: str) -> tuple:
    """Parses one cleaned answer string into math-verify's list of candidates (sympy and/or str).

    Wrapping in \\boxed{} tells math-verify the whole string is the answer (no searching in prose).
    """
    return tuple(_parse("\\boxed{" + answer + "}", parsing_timeout=None))


def _has_sympy(parsed: tuple) -> bool:
    return any(not isinstance(p, str) for p in parsed)


def _log10_bound(expr, memo: dict) -> float:
    """Upper bound on log10 |value| of a parsed (unevaluated) expression; symbols count as 1.

    Raises OverflowError as soon as a sub-expression exceeds the limits above.
    """
    key = id(expr)
    if key in memo:
        return memo[key]
    import sympy

    if isinstance(expr, sympy.MatrixBase):
        bound = max((_log10_bound(e, memo) for e in expr), default=0.0)
    elif not isinstance(expr, sympy.Basic):
        bound = 0.0
    elif expr.is_Rational:
        p, q = abs(int(expr.p)), abs(int(expr.q))
        bound = max(p.bit_length(), q.bit_length()) * math.log10(2)
    elif expr.is_Float:
        magnitude = abs(float(expr))  # inf for floats beyond double range: refused below
        bound = abs(math.log10(magnitude)) if magnitude else 0.0
    elif expr.is_Pow:
        base = _log10_bound(expr.base, memo)
        exp = _log10_bound(expr.exp, memo)
        if exp > math.log10(_MAX_EXPONENT):
            raise OverflowError("exponent too large")
        bound = max(base, 1.0) * 10**exp
    elif isinstance(expr, (sympy.factorial, sympy.factorial2, sympy.subfactorial)):
        arg = _log10_bound(expr.args[0], memo)
        if arg > math.log10(_MAX_FACTORIAL_ARG):
            raise OverflowError("factorial argument too large")
        n = 10**arg
        bound = n * max(1.0, math.log10(n))
    else:
        # Sums, products and functions: the sum of the parts bounds products and (up to a few
        # digits) sums; for bounded functions (sin, ...) it is merely generous.
        bound = sum(_log10_bound(a, memo) for a in expr.args) + len(expr.args)
    if bound > _MAX_DIGITS:
        raise OverflowError("value too large")
    memo[key] = bound
    return bound


def _too_big(parsed: tuple) -> bool:
    try:
        for p in parsed:
            if not isinstance(p, str):
                _log10_bound(p, {})
    except (OverflowError, RecursionError):
        return True
    return False


# Values substituted for free symbols when looking for a point where two expressions differ:
# irrational-looking, so that no accidental cancellation (sin(pi x), x^2 = x) makes them agree.
_PROBES = (0.5772156649, 1.4142135624, 2.7182818285, 0.3183098862, 1.6180339887, 3.1415926536)


def _symbol_like(expr) -> bool:
    """A bare symbol or a product of symbols: math-verify compares those by name ("\\text{Evelyn}"
    against "Evelyn"), so numbers say nothing about them."""
    import sympy

    return isinstance(expr, sympy.Symbol) or (
        isinstance(expr, sympy.Mul)
        and all(isinstance(a, sympy.Symbol) or a == sympy.E for a in expr.args))


def _clearly_different(gold_parsed: tuple, pred_parsed: tuple) -> bool:
    """Proves two scalar answers unequal by evaluating them (at a few points if they have symbols).

    sympy's `simplify(a - b)` dominates the cost of verifying a wrong answer (10-30 ms for
    \\sqrt{46} against \\sqrt{66}); one evaluation costs well under a millisecond. Only inequality is
    decided here: values that differ by more than 1e-5 (relative, or absolute near 0) cannot be
    equal symbolically nor to math-verify's 6 decimal places. Anything else goes to math-verify.
    """
    import sympy

    gold = [g for g in gold_parsed if not isinstance(g, str)]
    pred = [p for p in pred_parsed if not isinstance(p, str)]
    if len(gold) != 1 or len(pred) != 1:
        return False
    a, b = gold[0], pred[0]
    for e in (a, b):
        if (not isinstance(e, sympy.Expr) or getattr(e, "is_Matrix", False) or _symbol_like(e)
                or e.has(sympy.UnevaluatedExpr)  # percentages: math-verify lets 9% equal 9
                or e.atoms(sympy.core.function.AppliedUndef)):
            return False
    symbols = sorted(a.free_symbols | b.free_symbols, key=lambda x: x.name)
    if len(symbols) > len(_PROBES):
        return False
    for shift in range(3 if symbols else 1):
        point = {x: _PROBES[(i + shift) % len(_PROBES)] for i, x in enumerate(symbols)}
        try:
            va = complex(a.evalf(20, subs=point))
            vb = complex(b.evalf(20, subs=point))
        except (TypeError, ValueError, ArithmeticError):
            return False  # not a number there (undefined, symbolic leftovers): cannot tell
        if not all(math.isfinite(v) for v in (va.real, va.imag, vb.real, vb.imag)):
            continue
        if abs(va - vb) > 1e-5 * max(1.0, abs(va), abs(vb)):
            return True
    return False


def _imaginary_unit(parsed: tuple) -> tuple:
    """Reads a free symbol `i` as the imaginary unit, as competition answers mean it.

    The parser keeps `i` a plain symbol, so "6-5i" matches "6 - 5i" but e^{i\\pi} is not -1 and
    (1+i)^2 is not 2i.
    """
    import sympy

    out = []
    for p in parsed:
        unit = [s for s in getattr(p, "free_symbols", ()) if s.name == "i"]
        if unit and not isinstance(p, str):
            try:
                p = p.xreplace({unit[0]: sympy.I})
            except Exception:  # noqa: BLE001 - keep the symbol if the structure refuses
                pass
        out.append(p)
    return tuple(out)


def handle(item: tuple[str, str]) -> tuple[bool, str]:
    """Compares a cleaned predicted answer with a cleaned gold answer.

    Args:
      item: (pred_answer, gold_answer), both already extracted and cleaned by `rewards.math`.

    Returns:
      (equal, why): `why` is "" for a normal comparison, else PARSE_ERROR, GOLD_PARSE_ERROR or
      TOO_BIG, and `equal` is then False.
    """
    pred, gold = item
    gold_parsed = parse_answer(gold)
    pred_parsed = parse_answer(pred)
    # (Identical answers never get here: the parent decides those, parseable or not.)
    if not _has_sympy(gold_parsed):
        return False, GOLD_PARSE_ERROR
    if not _has_sympy(pred_parsed):
        return False, PARSE_ERROR
    if _too_big(gold_parsed) or _too_big(pred_parsed):
        return False, TOO_BIG
    gold_parsed, pred_parsed = _imaginary_unit(gold_parsed), _imaginary_unit(pred_parsed)
    if _clearly_different(gold_parsed, pred_parsed):
        return False, ""
    return bool(_verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None)), ""
