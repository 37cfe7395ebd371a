"""Throughput and per-run overhead of the code sandbox on this machine.

    python bench/sandbox.py            # about a minute on 2 cores

Rows: a bare `python3 -I -c pass` (the floor any process-per-program design pays), one sandboxed
run at a time (latency), and pools of `workers` sandboxes (default: one per CPU) on trivial programs
and on typical 10-test suites (stdin/stdout and call-based). Rows marked "without memory cgroup"
use `total_memory_mb=0`; "weak" is the mode without namespaces (rlimits and uid only), run on the
same honest programs, to show what each layer costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import print_table  # noqa: E402
from rewards import sandbox  # noqa: E402

TRIVIAL = ("print(input())\n", [{"input": "7\n", "output": "7\n"}])
SORT_IO = ("n = int(input())\nprint(*sorted(map(int, input().split())))\n",
           [{"input": f"{k}\n{' '.join(str((7 * i) % 11) for i in range(k))}\n",
             "output": " ".join(str(x) for x in sorted((7 * i) % 11 for i in range(k)))} for k in range(1, 11)])
SORT_CALL = ("def sort_list(xs):\n    return sorted(xs)\n",
             [{"fn_name": "sort_list", "args": [[(5 * i) % 7 for i in range(k)]],
               "expected": sorted((5 * i) % 7 for i in range(k))} for k in range(1, 11)])


def latency_ms(fn, n: int) -> float:
    """Median milliseconds of `fn()` over n calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def throughput(pool: sandbox.Pool, case, n: int) -> float:
    """Programs per second through the pool, all of which must pass."""
    program, tests = case
    pool.map([program] * 4, [tests] * 4)  # warm-up
    start = time.perf_counter()
    results = pool.map([program] * n, [tests] * n)
    elapsed = time.perf_counter() - start
    assert all(r.all_passed for r in results), [r for r in results if not r.all_passed][:1]
    return n / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--n", type=int, default=200, help="programs per throughput row")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the weak-mode rows would otherwise warn loudly
    limits = sandbox.Limits()
    cpus = len(os.sched_getaffinity(0))
    print(f"{cpus} CPUs, {args.workers} workers, interpreter {limits.python}, {args.n} programs per pool row, "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine slows every row)\n")

    bare = latency_ms(lambda: subprocess.run([limits.python, "-I", "-c", "pass"], check=True), 30)
    no_cgroup = dataclasses.replace(limits, total_memory_mb=0)
    single = latency_ms(lambda: sandbox.run(*TRIVIAL, limits), 30)
    single_nocg = latency_ms(lambda: sandbox.run(*TRIVIAL, no_cgroup), 30)
    weak = latency_ms(lambda: sandbox.run(*TRIVIAL, no_cgroup, bwrap="/nonexistent", allow_weak=True), 30)
    rows = [["bare python3 -I -c pass", 1, 1, f"{bare:.1f}", f"{1e3 / bare:.0f}", "-"]]
    for name, ms in [("sandbox.run, trivial", single), ("  without memory cgroup", single_nocg),
                     ("  neither cgroup nor namespaces (weak)", weak)]:
        rows.append([name, 1, 1, f"{ms:.1f}", f"{1e3 / ms:.0f}", f"+{ms - bare:.1f} ms"])
    with sandbox.Pool(args.workers, limits) as pool:
        for name, case in [("pool, trivial", TRIVIAL), ("pool, 10 stdin/stdout tests", SORT_IO),
                           ("pool, 10 call tests", SORT_CALL)]:
            rate = throughput(pool, case, args.n)
            rows.append([name, args.workers, len(case[1]), f"{1e3 * args.workers / rate:.1f}", f"{rate:.0f}", "-"])
    with sandbox.Pool(args.workers, no_cgroup) as pool:
        rate = throughput(pool, SORT_IO, args.n)
        rows.append(["  without memory cgroup", args.workers, 10, f"{1e3 * args.workers / rate:.1f}", f"{rate:.0f}", "-"])
    print_table(["what", "workers", "tests", "ms/program/worker", "programs/s", "overhead vs bare"], rows)


if __name__ == "__main__":
    main()
