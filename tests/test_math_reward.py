"""Tests for rewards.math: answer extraction, the equivalence table, and the worker pool's safety."""

import os
import subprocess
import sys
import threading
import time

import pytest

from tests.math_cases import ALL_CASES
from rewards import math as rm


@pytest.fixture(scope="module")
def table_verdicts():
    # One batched call scores the whole table (the way the trainer calls it); each case is then
    # asserted on its own below.
    preds = [pred for _, pred, _, _ in ALL_CASES]
    golds = [gold for _, _, gold, _ in ALL_CASES]
    verdicts, stats = rm.verify_batch(preds, golds, return_stats=True)
    assert stats.timeouts == 0 and stats.crashes == 0 and stats.errors == 0
    return verdicts


def test_table_is_large_and_balanced():
    assert len(ALL_CASES) >= 150
    by_category = {}
    for category, _, _, want in ALL_CASES:
        by_category.setdefault(category, set()).add(want)
    # Every category with a "not equal" case has an "equal" case too (except pure hack checks).
    assert sum(len(wants) == 2 for wants in by_category.values()) >= 18


@pytest.mark.parametrize("index", range(len(ALL_CASES)),
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(ALL_CASES)])
def test_table(table_verdicts, index):
    category, pred, gold, want = ALL_CASES[index]
    assert table_verdicts[index] is want, (category, pred, gold)


def test_trainer_process_stays_light():
    # Importing the rewards must not pull sympy/math-verify into the (JAX) trainer process.
    code = ("import sys, rewards.math, rewards.compose, rewards.format; "
            "print(sorted(m for m in ('sympy', 'math_verify', 'latex2sympy2_extended') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.stdout.strip() == "[]"


def test_single_verify_matches_contract():
    assert rm.verify("The answer is $\\boxed{\\dfrac{1}{2}}$.", "0.5") is True
    assert rm.verify("The answer is $\\boxed{[1,2)}$.", "[1,2]") is False
    assert rm.verify("\\boxed{42}", "41") is False


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("text, want", [
    ("so \\boxed{\\frac{a}{b}} done", "\\frac{a}{b}"),
    ("\\boxed{1} then \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\fbox{x^{2}}", "x^{2}"),
    ("$\\boxed{1}$ and $\\boxed{2}$", "1, 2"),
    ("<think>\\boxed{3}</think><answer>4</answer>", "4"),
    ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("The answer is 3.5 meters.\nDone.", "3.5 meters"),
    ("#### 1,234", "1,234"),
    ("x = 2", "x = 2"),
    ("I think it is 12 apples", None),
    ("\\boxed{" + "1" * 2000 + "}", None),  # longer than max_answer_chars
    ("\\boxed{" + "{" * 60 + "}" * 60 + "}", None),  # deeper than max_brace_depth
])
def test_extract_answer(text, want):
    assert rm.extract_answer(text) == want


def test_last_number_fallback_is_opt_in():
    text = "I computed 5 + 7 = 12, so there are 12 apples."
    assert rm.extract_answer(text) is None
    assert rm.extract_answer(text, fallback_last_number=True) == "12"
    assert rm.verify(text, "12") is False
    assert rm.verify(text, "12", fallback_last_number=True) is True
    assert rm.extract_answer("It costs 1,250.50 dollars.", fallback_last_number=True) == "1,250.50"


def test_numbers_are_decided_without_workers():
    verdicts, stats = rm.verify_batch(["\\boxed{1,000}", "#### 17", "\\boxed{033}"],
                                      ["1000", "18", "33"], return_stats=True)
    assert verdicts == [True, False, True]
    assert stats.fast_path == 3 and stats.sympy == 0


@pytest.mark.parametrize("pred, gold, want", [
    ("\\boxed{\\left( \\frac{3}{2}, -13 \\right)}", "(1.5, -13)", True),
    ("\\boxed{(-13, 1.5)}", "(1.5, -13)", False),
    ("\\boxed{[1,2)}", "[1,2]", False),
    ("\\boxed{[-\\infty, 0]}", "(-\\infty, 0]", True),  # an infinite end is open anyway
    ("\\boxed{(2, \\infty)}", "(2, -\\infty)", False),
    ("\\boxed{\\{2, 1, 2\\}}", "1, 2", True),  # sets: order and repeats do not matter
    ("\\boxed{5}", "5, 5", True),
    ("\\boxed{1, 2}", "1, 2, 3", False),
])
def test_plain_tuples_intervals_sets_are_decided_without_workers(pred, gold, want):
    rm.default_verifier().clear_cache()
    verdicts, stats = rm.verify_batch([pred], [gold], return_stats=True)
    assert verdicts == [want]
    assert stats.fast_path == 1 and stats.sympy == 0


def test_ambiguous_shapes_go_to_sympy():
    # (1, 2) may be an open interval or a point; against the list "1, 2" only sympy can judge.
    rm.default_verifier().clear_cache()
    verdicts, stats = rm.verify_batch(["\\boxed{(1, 2)}"], ["1, 2"], return_stats=True)
    assert verdicts == [True] and stats.sympy == 1


def test_worker_proves_inequality_numerically():
    from rewards import math_worker

    math_worker.init()
    parse = math_worker.parse_answer
    assert math_worker._clearly_different(parse("\\sqrt{66}"), parse("\\sqrt{46}"))
    assert math_worker._clearly_different(parse("\\frac{11+9a}{20}"), parse("\\frac{11+9a}{23}"))
    assert math_worker._clearly_different(parse("2k+2"), parse("2n+2"))  # variables matter
    # Equal, or equal only in math-verify's lenient sense: left for math-verify to decide.
    assert not math_worker._clearly_different(parse("x(x+2)"), parse("x^2+2x"))
    assert not math_worker._clearly_different(parse("\\frac{1}{3}"), parse("0.3333333"))
    assert not math_worker._clearly_different(parse("9"), parse("9\\%"))
    assert not math_worker._clearly_different(parse("\\text{Evelyn}"), parse("Evelyn"))
    assert math_worker.handle(("\\sqrt{46}", "\\sqrt{66}")) == (False, "")
    assert math_worker.handle(("x^2+2x", "x(x+2)")) == (True, "")


def test_empty_batch_and_length_mismatch():
    assert rm.verify_batch([], []) == []
    with pytest.raises(ValueError, match="2 predictions but 1 gold"):
        rm.verify_batch(["1", "2"], ["1"])


def test_boxed_gold_solution_is_extracted_in_the_parent():
    # A MATH-style solution as the gold: its last box is the answer, decided without sympy.
    gold = "We add them: $2 + 3 = 5$, so the sum is $\\boxed{5}$."
    verdicts, stats = rm.verify_batch(["\\boxed{5}", "\\boxed{6}"], [gold] * 2, return_stats=True)
    assert verdicts == [True, False]
    assert stats.fast_path == 2 and stats.sympy == 0


def test_duplicate_pairs_are_verified_once_and_cached():
    v = rm.default_verifier()
    preds = ["\\boxed{\\frac{\\sqrt{12}}{2}}"] * 6 + ["\\boxed{\\sqrt{2}}"] * 2
    verdicts, stats = v.verify_batch(preds, ["\\sqrt{3}"] * 8, return_stats=True)
    assert verdicts == [True] * 6 + [False] * 2
    assert stats.sympy == 2
    verdicts, stats = v.verify_batch(preds[:1], ["\\sqrt{3}"], return_stats=True)
    assert verdicts == [True] and stats.cached == 1 and stats.sympy == 0


# ----------------------------------------------------------------------------- adversarial


# name -> (completion, gold, the VerifyStats counter that must record why it scored 0)
ADVERSARIAL = {
    "power_tower": ("\\boxed{9^{9^{9^{9}}}}", "5", "too_big"),
    "power_tower_gold": ("\\boxed{5}", "9^{9^{9^{9}}}", "too_big"),
    "huge_factorial": ("\\boxed{(10^{10^{10}})!}", "5", "too_big"),
    "huge_exponent": ("\\boxed{x^{10^{12}}}", "x", "too_big"),
    "answer_100k_chars": ("\\boxed{" + "7" * 100_000 + "}", "7", "rejected"),
    "text_100k_chars": ("The answer is " + "1+" * 50_000 + "1", "2", "rejected"),
    "nested_braces_5000": ("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "1", "rejected"),
    "unclosed_braces_5000": ("\\boxed{" + "{" * 5000, "1", "rejected"),
    "invalid_latex": ("\\boxed{\\frac{1}{\\sqrt{}}^^__}{\\left( \\right]}", "1", "parse_errors"),
    "bad_environment": ("\\boxed{\\begin{pmatrix} & \\\\ \\end{bmatrix}}", "1", "parse_errors"),
    "non_utf8_bytes": (b"\\boxed{\xff\xfe\xfd5}", "5", "parse_errors"),
    "lone_surrogate": ("\\boxed{5\udc80}", "5", "parse_errors"),
    "many_open_boxes": ("\\boxed{" * 20_000, "1", "no_answer"),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_input_answers_fast(name):
    pred, gold, reason = ADVERSARIAL[name]
    verifier = rm.default_verifier()
    verifier.pool.start(wait_ready=True)  # time the verdict, not the workers' start
    verifier.clear_cache()
    start = time.monotonic()
    verdicts, stats = verifier.verify_batch([pred], [gold], return_stats=True)
    assert time.monotonic() - start < 2.0
    assert verdicts == [False]
    assert getattr(stats, reason) == 1
    assert stats.timeouts == 0 and stats.crashes == 0


def test_adversarial_inputs_do_not_disturb_a_batch():
    preds = [p for p, _, _ in ADVERSARIAL.values()] + ["\\boxed{\\frac{1}{2}}", "\\boxed{7}"]
    golds = [g for _, g, _ in ADVERSARIAL.values()] + ["0.5", "7"]
    rm.default_verifier().clear_cache()
    start = time.monotonic()
    verdicts = rm.verify_batch(preds, golds)
    assert time.monotonic() - start < 2.0
    assert verdicts == [False] * len(ADVERSARIAL) + [True, True]
    # Valid bytes decode: non-UTF-8 input elsewhere in the text does not spoil the answer.
    assert rm.verify(b"\\boxed{5} \xff\xfe", "5") is True


# ----------------------------------------------------------------------------- the worker pool


@pytest.fixture(scope="module")
def flaky():
    v = rm.MathVerifier(handler="tests.flaky_math_worker", num_workers=2, timeout_s=0.5,
                        memory_limit_mb=1024)
    v.pool.start(wait_ready=True)
    yield v
    v.close()


def _batch_with(poison):
    good = [("\\boxed{\\frac{1}{2}}", "0.5", True), ("\\boxed{x(x+1)}", "x^2+x", True),
            ("\\boxed{[1,2)}", "[1,2]", False), ("\\boxed{\\sqrt{8}}", "2\\sqrt2", True),
            ("\\boxed{(1,2)}", "(2,1)", False), ("\\boxed{\\pi}", "\\frac{\\pi}{1}", True)] * 2
    items = good[:5] + [(f"\\boxed{{{poison}}}", "1", False)] + good[5:]
    # Distinct golds per good item, so none of them is answered from the verdict cache.
    items = [(p, g if i == 5 else f"{g}+{i}-{i}", want) for i, (p, g, want) in enumerate(items)]
    return [p for p, _, _ in items], [g for _, g, _ in items], [w for _, _, w in items]


def test_hung_worker_is_killed_and_replaced(flaky):
    pids = set(flaky.pool.worker_pids())
    preds, golds, want = _batch_with("HANG")
    start = time.monotonic()
    verdicts, stats = flaky.verify_batch(preds, golds, return_stats=True)
    assert verdicts == want
    assert stats.timeouts == 1
    assert time.monotonic() - start < 5.0
    assert len(set(flaky.pool.worker_pids()) - pids) >= 1  # a fresh worker took the hung one's place


def test_killed_worker_is_replaced(flaky):
    preds, golds, want = _batch_with("DIE")
    verdicts, stats = flaky.verify_batch(preds, golds, return_stats=True)
    assert verdicts == want
    assert stats.crashes == 1
    # Workers killed from outside while idle are noticed and replaced before the next batch.
    for pid in flaky.pool.worker_pids():
        os.kill(pid, 9)
    verdicts = flaky.verify_batch(["\\boxed{2\\sqrt{2}}", "\\boxed{3}"], ["\\sqrt{8}", "\\sqrt{9}"])
    assert verdicts == [True, True]


def test_memory_blowup_fails_only_its_item(flaky):
    pid = flaky.pool.worker_pids()[0]
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    assert str(1024 * 1024 * 1024) in next(l for l in limits.splitlines() if "address space" in l)
    preds, golds, want = _batch_with("HOG")
    verdicts, stats = flaky.verify_batch(preds, golds, return_stats=True)
    assert verdicts == want
    assert stats.errors + stats.crashes == 1


def test_workers_die_with_their_parent_even_when_busy(tmp_path):
    # A trainer killed with SIGKILL while a worker is stuck must not leave the worker running.
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, threading, time\n"
        "from rewards.math import MathVerifier\n"
        "v = MathVerifier(handler='tests.flaky_math_worker', num_workers=1, timeout_s=600)\n"
        "v.pool.start(wait_ready=True)\n"
        "threading.Thread(target=v.verify_batch, args=(['\\\\boxed{HANG}'], ['1']), daemon=True).start()\n"
        "time.sleep(0.3)\n"
        "print(*v.pool.worker_pids(), flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert pids
    parent.kill()
    parent.wait()

    def running(pid):  # a zombie waiting for its new parent to reap it counts as gone
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(running, pids)):
        time.sleep(0.1)
    assert not [p for p in pids if running(p)]


def test_unstartable_workers_raise_instead_of_spinning():
    from rewards.pool import WorkerPool

    pool = WorkerPool("no_such_handler_module", num_workers=1, timeout_s=1.0)
    with pytest.raises(RuntimeError, match="keep failing to start"):
        pool.map([1])
    pool.close()


def test_workers_are_recycled():
    v = rm.MathVerifier(num_workers=1, max_items_per_worker=3)
    try:
        ks = range(1, 7)
        preds = [f"\\boxed{{{k}\\sqrt{{2}}}}" for k in ks]
        golds = [f"\\sqrt{{{2 * k * k + (k % 2 == 0)}}}" for k in ks]  # odd k: equal
        verdicts = v.verify_batch(preds, golds)
        assert verdicts == [k % 2 == 1 for k in ks]
        assert v.pool.stats.workers_recycled == 1
        assert v.pool.stats.workers_started == 2
    finally:
        v.close()


def test_verify_from_a_non_main_thread():
    out = {}

    def run():
        out["verdicts"] = rm.verify_batch(["\\boxed{x^2-1}", "\\boxed{x^2+1}"], ["(x-1)(x+1)"] * 2)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert out["verdicts"] == [True, False]


def test_math_reward_scores_and_reports():
    reward = rm.MathReward(correct=1.0, incorrect=-0.5)
    samples = [{"answer": "\\frac{1}{2}"}, {"answer": "3"}, {"answer": "3"}]
    completions = ["\\boxed{0.5}", "\\boxed{4}", "no answer here"]
    assert reward(completions, samples) == [1.0, -0.5, -0.5]
    assert reward.metrics()["no_answer"] == 1


def test_only_the_text_after_the_reasoning_is_the_answer():
    assert rm.verify("<think>12+30=42</think>42", "42")
    assert rm.verify("<think>try \\boxed{41}</think> so \\boxed{42}", "42")
    assert not rm.verify("<think>the answer is 42</think>", "42")  # no final answer after </think>
    assert not rm.verify("<think>\\boxed{42}</think> I give up", "42")
