"""Test cases for generated programs, and the trusted half of judging them.

A test case is one of three dicts (the schema `rewards.sandbox.run` and `rewards.code` accept):

    {"input": "1 2\\n", "output": "3\\n"}                     # stdin/stdout
    {"fn_name": "add", "args": [1, 2], "expected": 3}         # call; optional "kwargs": {...}
    {"assert": "assert add(1, 2) == 3\\nassert add(0, 0) == 0"}  # an assert block

The sandbox only ever receives inputs: stdin text, call arguments, and assert blocks with their
expected literals taken out. Expected values stay in this (parent) process, which compares them with
what the program printed or returned. So a program cannot fake success by monkeypatching builtins
or `__eq__`, by printing a fake report, or by exiting early: its output is data judged here.

Assert blocks are rewritten before they are sent (`split_asserts`): a top-level `assert X == LIT`
(or `!=`, or `LIT == X`) whose other side is a Python literal becomes a report of `X` alone, so the
literal never enters the sandbox; `assert X == Y` with two computed sides reports both; any other
top-level `assert E` reports `E`, which must be plain data and truthy. Asserts nested inside
functions (HumanEval's `def check(candidate): ...`) stay ordinary Python: they can fail a test but
their passing is only as trustworthy as the program, so prefer call cases or top-level asserts.

Values are compared as plain data (`_harness.canon`): tuples equal lists, other types must match
exactly, and an object the encoding does not know (a custom class) never passes.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from typing import Any, Sequence

from rewards._harness import canon

STATUSES = ("pass", "fail", "timeout", "runtime_error", "memory", "output_limit")
_SHOWN = 1000  # characters of a test's output and stderr kept in its result


@dataclasses.dataclass(frozen=True)
class Case:
    """One parsed test case; `expected` fields never go to the sandbox."""

    kind: str  # "io" | "call" | "assert"
    payload: dict  # what the sandbox harness receives for this case
    expected: Any = None  # io: output text; call: canonical value; assert: list of checks


@dataclasses.dataclass(frozen=True)
class TestResult:
    """How one test went: `status` is one of STATUSES."""

    __test__ = False  # not a pytest class

    status: str
    seconds: float = 0.0
    detail: str = ""  # why it did not pass (stderr tail, signal, mismatch)
    output: str = ""  # the start of what the program printed, for debugging


def parse_tests(tests: Sequence[dict]) -> list[Case]:
    """Validates test dicts (schema in the module docstring) and splits inputs from expectations.

    Args:
        tests: the test cases of one problem.

    Returns:
        One Case per test, in order.

    Raises:
        ValueError: a test does not follow the schema; the message names its index and key.
    """
    cases = []
    for i, test in enumerate(tests):
        if not isinstance(test, dict):
            raise ValueError(f"tests[{i}] must be a dict, got {type(test).__name__}")
        if "assert" in test:
            code, checks = split_asserts(_field(test, i, "assert", str))
            cases.append(Case("assert", {"kind": "assert", "code": code}, checks))
        elif "fn_name" in test:
            if "expected" not in test:
                raise ValueError(f"tests[{i}] has 'fn_name' but no 'expected'")
            args = test.get("args", [])
            if not isinstance(args, (list, tuple)):
                raise ValueError(f"tests[{i}]['args'] must be a list, got {type(args).__name__}")
            kwargs = test.get("kwargs", {})
            if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
                raise ValueError(f"tests[{i}]['kwargs'] must be a dict with string keys")
            try:
                json.dumps([args, kwargs])
                expected = canon(test["expected"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"tests[{i}]: args and expected must be plain data ({e})") from None
            payload = {"kind": "call", "fn": _field(test, i, "fn_name", str), "args": list(args), "kwargs": kwargs}
            cases.append(Case("call", payload, expected))
        elif "input" in test or "output" in test:
            payload = {"kind": "io", "input": _field(test, i, "input", str)}
            cases.append(Case("io", payload, _field(test, i, "output", str)))
        else:
            raise ValueError(f"tests[{i}] needs 'input'/'output', 'fn_name'/'args'/'expected' or 'assert'; "
                             f"got keys {sorted(test)}")
    return cases


def _field(test: dict, i: int, key: str, kind: type):
    if key not in test:
        raise ValueError(f"tests[{i}] is missing {key!r}")
    if not isinstance(test[key], kind):
        raise ValueError(f"tests[{i}][{key!r}] must be a {kind.__name__}, got {type(test[key]).__name__}")
    return test[key]


_MISSING = object()


def _literal(node: ast.expr):
    """The canonical value of a literal expression, or _MISSING if it is not one."""
    try:
        return canon(ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _MISSING


def split_asserts(source: str) -> tuple[str, list[tuple]]:
    """Rewrites the top-level asserts of a block into reports, keeping expected literals here.

    Args:
        source: Python code with assert statements (trusted: it comes from the dataset).

    Returns:
        (code for the sandbox, checks) where the j-th top-level assert became
        `__quant_check__(j, ...)` and checks[j] says how to judge what it reports:
        ("eq", literal) / ("ne", literal) for one reported value, ("eq2",) / ("ne2",) for two,
        ("truthy",) for one.

    Raises:
        ValueError: the block is not valid Python.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"assert block is not valid Python: {e}") from None
    checks: list[tuple] = []
    body = []
    for node in tree.body:
        if not isinstance(node, ast.Assert):
            body.append(node)
            continue
        test = node.test
        reported = [test]
        check: tuple = ("truthy",)
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.NotEq)):
            op = "eq" if isinstance(test.ops[0], ast.Eq) else "ne"
            left, right = test.left, test.comparators[0]
            left_value, right_value = _literal(left), _literal(right)
            if right_value is not _MISSING:
                reported, check = [left], (op, right_value)
            elif left_value is not _MISSING:
                reported, check = [right], (op, left_value)
            else:
                reported, check = [left, right], (op + "2",)
        call = ast.Call(ast.Name("__quant_check__", ast.Load()), [ast.Constant(len(checks)), *reported], [])
        body.append(ast.copy_location(ast.Expr(call), node))
        checks.append(check)
    tree.body = body
    return ast.unparse(ast.fix_missing_locations(tree)), checks


def same_value(a: Any, b: Any, float_tol: float | None = None) -> bool:
    """Equality of two canonical values (`_harness.canon`), optionally with a float tolerance.

    Numbers compare by value as in Python (1 == 1.0 == True); with `float_tol`, two numbers of
    which one is a float are equal when `math.isclose` with that relative and absolute tolerance.
    """
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        if float_tol and (isinstance(a, float) or isinstance(b, float)):
            return math.isclose(a, b, rel_tol=float_tol, abs_tol=float_tol)
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y, float_tol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        if "$d" in a and "$d" in b:
            return _same_mapping(a["$d"], b["$d"], float_tol)
        if "$s" in a and "$s" in b:
            return sorted(map(_key, a["$s"])) == sorted(map(_key, b["$s"]))
        if "$f" in a and "$f" in b:
            return a["$f"] == b["$f"] != "nan"  # nan equals nothing, as in Python
        return a == b  # bytes
    return type(a) is type(b) and a == b  # str, None


def _key(value: Any) -> str:
    """A hashable, order-independent spelling of a canonical value, for sets and dict keys."""
    if isinstance(value, dict) and ("$s" in value or "$d" in value):
        tag = "$s" if "$s" in value else "$d"
        return json.dumps({tag: sorted(map(_key, value[tag]))})
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # {1.0: x} == {1: x} in Python
    return json.dumps(value, sort_keys=True)


def _same_mapping(a: list, b: list, float_tol: float | None) -> bool:
    a_map = {_key(k): v for k, v in a}
    b_map = {_key(k): v for k, v in b}
    return a_map.keys() == b_map.keys() and all(same_value(v, b_map[k], float_tol) for k, v in a_map.items())


def truthy(value: Any) -> bool:
    """Python truthiness of a canonical value."""
    if isinstance(value, dict):
        for tag in ("$d", "$s"):
            if tag in value:
                return bool(value[tag])
        if "$b" in value:
            return bool(value["$b"])
        return True  # non-finite floats
    return bool(value)


def same_output(got: str, want: str, float_tol: float | None = None) -> bool:
    """Whitespace-normalised line comparison of program output.

    Blank lines are ignored and each other line is compared as its list of whitespace-separated
    tokens, so trailing spaces, CRLF line ends and a missing final newline do not matter. With
    `float_tol`, two tokens that both parse as numbers are equal within that relative and absolute
    tolerance.
    """
    got_lines = [tokens for tokens in map(str.split, got.splitlines()) if tokens]
    want_lines = [tokens for tokens in map(str.split, want.splitlines()) if tokens]
    if len(got_lines) != len(want_lines):
        return False
    for got_tokens, want_tokens in zip(got_lines, want_lines):
        if len(got_tokens) != len(want_tokens):
            return False
        for g, w in zip(got_tokens, want_tokens):
            if g != w and not (float_tol and _close_numbers(g, w, float_tol)):
                return False
    return True


def _close_numbers(a: str, b: str, tol: float) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=tol, abs_tol=tol)


def grade(case: Case, record: dict | None, float_tol: float | None = None) -> TestResult:
    """Judges one test from the harness's record of it (None: the run ended before this test).

    Args:
        case: the parsed test, with its expected output.
        record: the harness's observation: status "s", printed "out", reported "vals", "err".
        float_tol: optional tolerance for float comparisons.

    Returns:
        The TestResult.
    """
    if record is None:
        return TestResult("timeout", detail="the run hit its wall-clock limit before this test finished")
    seconds = float(record.get("t", 0.0))
    output = str(record.get("out", ""))
    detail = " ".join(x for x in (str(record.get("why", "")), str(record.get("err", ""))[-_SHOWN:]) if x)
    shown = output[:_SHOWN]
    status = record.get("s")
    if status != "ok":
        status = status if status in STATUSES else "runtime_error"
        return TestResult(status, seconds, detail, shown)
    if case.kind == "io":
        passed = same_output(output, case.expected, float_tol)
        return TestResult("pass" if passed else "fail", seconds, "" if passed else "wrong output", shown)
    values, why = _decode_values(record.get("vals", []))
    if why:
        return TestResult("fail", seconds, why, shown)
    if case.kind == "call":
        if len(values) != 1 or values[0][0] != "v":
            return TestResult("runtime_error", seconds, detail or "the program returned no value", shown)
        passed = same_value(values[0][1], case.expected, float_tol)
        return TestResult("pass" if passed else "fail", seconds, "" if passed else "wrong return value", shown)
    return _grade_asserts(case, values, seconds, shown, float_tol)


def _decode_values(lines: list) -> tuple[list, str]:
    values = []
    for line in lines:
        try:
            value = json.loads(line)
        except (TypeError, ValueError):
            return [], "malformed value report"
        if not isinstance(value, list) or not value or not isinstance(value[0], str):
            return [], "malformed value report"
        if value[0] == "x":
            return [], f"value is not plain data: {value[1:]}"
        values.append(value)
    return values, ""


def _grade_asserts(case: Case, values: list, seconds: float, shown: str, float_tol) -> TestResult:
    """An assert block passes when each rewritten assert reported once, in order, and holds here.

    Reports out of order or repeated mean something other than the test code called the checker
    (a thread of the program, say), so they fail the test rather than being sorted out.
    """
    if not values or values[-1] != ["end"]:
        return TestResult("runtime_error", seconds, "the assert block did not finish", shown)
    reports = values[:-1]
    if [r[1] if r[0] == "c" and len(r) >= 2 else None for r in reports] != list(range(len(case.expected))):
        return TestResult("fail", seconds, "assert reports out of order", shown)
    for j, (check, report) in enumerate(zip(case.expected, reports)):
        if not _holds(check, report[2:], float_tol):
            return TestResult("fail", seconds, f"assert #{j + 1} failed", shown)
    return TestResult("pass", seconds, "", shown)


def _holds(check: tuple, got: list, float_tol) -> bool:
    kind = check[0]
    if kind in ("eq", "ne") and len(got) == 1:
        return same_value(got[0], check[1], float_tol) == (kind == "eq")
    if kind in ("eq2", "ne2") and len(got) == 2:
        return same_value(got[0], got[1], float_tol) == (kind == "eq2")
    if kind == "truthy" and len(got) == 1:
        return truthy(got[0])
    return False
