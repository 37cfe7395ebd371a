"""The trusted half of judging: the test schema, assert rewriting, and output/value comparison."""

from __future__ import annotations

import pytest

from rewards import judge
from rewards._harness import canon, dump


def test_output_comparison_normalises_whitespace_only():
    assert judge.same_output("1  2 \r\n\n3\n\n", "1 2\n3")
    assert not judge.same_output("1 2 3", "1 2\n3")  # line structure matters
    assert not judge.same_output("12", "1 2")
    assert not judge.same_output("YES", "yes")
    assert not judge.same_output("", "0")


def test_output_float_tolerance():
    assert judge.same_output("0.33333334 x", "0.3333333 x", float_tol=1e-6)
    assert not judge.same_output("0.3334 x", "0.3333 x", float_tol=1e-6)
    assert not judge.same_output("0.33333334", "0.3333333")
    assert not judge.same_output("nan", "1", float_tol=1e-6)


def test_value_comparison_follows_python_on_plain_data():
    same = lambda a, b, tol=None: judge.same_value(canon(a), canon(b), tol)  # noqa: E731
    assert same((1, [2, "x"]), [1, [2, "x"]])  # tuples equal lists
    assert same({"b": 1, "a": [2]}, {"a": [2], "b": 1})
    assert same({1: "x"}, {1.0: "x"}) and same(True, 1) and same(2, 2.0)
    assert same({3, 1, 2}, frozenset({1, 2, 3}))
    assert same(b"ab", b"ab") and not same(b"ab", "ab")
    assert not same(None, 0) and not same("1", 1) and not same([1], [1, 1])
    assert not same(float("nan"), float("nan")) and same(float("inf"), float("inf"))
    assert same(0.1 + 0.2, 0.3, 1e-9) and not same(0.1 + 0.2, 0.3)


def test_canon_refuses_objects_that_could_lie():
    class Anything:
        def __eq__(self, other):
            return True

    class Int(int):
        pass

    for value in (Anything(), Int(3), [1, Anything()], {"k": Int(1)}, 1j):
        with pytest.raises(TypeError):
            canon(value)


def test_dump_writes_json():
    import json

    value = canon({"a\n\"": [1, 2.5, None, True, "é\x00"], "t": (float("nan"),)})
    assert json.loads(dump(value)) == value


def test_split_asserts_keeps_expected_literals_here():
    code, checks = judge.split_asserts(
        "x = 2\nassert f(x) == [1, 2]\nassert (3, 4) != g()\nassert f(1) == f(2)\nassert f(0)\n"
        "def check(h):\n    assert h(1) == 99\n")
    assert checks == [("eq", [1, 2]), ("ne", [3, 4]), ("eq2",), ("truthy",)]
    assert [line for line in code.splitlines() if line] == [
        "x = 2", "__quant_check__(0, f(x))", "__quant_check__(1, g())", "__quant_check__(2, f(1), f(2))",
        "__quant_check__(3, f(0))", "def check(h):", "    assert h(1) == 99"]
    assert "[1, 2]" not in code


def test_parse_tests_names_the_bad_test():
    cases = judge.parse_tests([{"input": "1", "output": "2"}, {"fn_name": "f", "args": [1], "expected": (1, 2)},
                               {"assert": "assert f(1) == 2"}])
    assert [c.kind for c in cases] == ["io", "call", "assert"]
    assert cases[1].payload == {"kind": "call", "fn": "f", "args": [1], "kwargs": {}}  # no expected value
    assert cases[1].expected == [1, 2]
    for tests, message in [([{"output": "2"}], r"tests\[0\] is missing 'input'"),
                           ([{"input": "1", "output": 2}], r"tests\[0\]\['output'\] must be a str"),
                           ([{}, {"fn_name": "f", "expected": object()}], r"tests\[0\] needs"),
                           ([{"fn_name": "f", "args": [], "expected": object()}], r"tests\[0\]: args and expected"),
                           ([{"assert": "assert ("}], "not valid Python")]:
        with pytest.raises(ValueError, match=message):
            judge.parse_tests(tests)


def test_grade_from_records():
    io, call, block = judge.parse_tests([{"input": "", "output": "3"}, {"fn_name": "f", "args": [], "expected": 3},
                                         {"assert": "assert f() == 3\nassert f()"}])
    assert judge.grade(io, {"s": "ok", "out": "3\n"}).status == "pass"
    assert judge.grade(io, {"s": "ok", "out": "4\n"}).status == "fail"
    assert judge.grade(io, {"s": "memory"}).status == "memory"
    assert judge.grade(io, {"s": "made-up"}).status == "runtime_error"
    assert judge.grade(io, None).status == "timeout"
    assert judge.grade(call, {"s": "ok", "vals": ['["v",3]']}).status == "pass"
    assert judge.grade(call, {"s": "ok", "vals": []}).status == "runtime_error"
    assert judge.grade(call, {"s": "ok", "vals": ['["v",3]', '["v",3]']}).status == "runtime_error"
    assert judge.grade(call, {"s": "ok", "vals": ['["x","a Thing is not plain data"]']}).status == "fail"
    good = ['["c",0,3]', '["c",1,true]', '["end"]']
    assert judge.grade(block, {"s": "ok", "vals": good}).status == "pass"
    assert judge.grade(block, {"s": "ok", "vals": good[:2]}).status == "runtime_error"  # never finished
    assert judge.grade(block, {"s": "ok", "vals": ['["c",1,true]'] + good}).status == "fail"  # forged report
    assert judge.grade(block, {"s": "ok", "vals": ['["c",0,3]', '["c",1,0]', '["end"]']}).status == "fail"
