"""The sandbox against real attacks, each actually run through it, and against honest programs.

Every attack runs only through the sandbox (never with it switched off); the only network target is a
listener this test opens on 127.0.0.1; the only process signalled from here is one this test started.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time

import pytest

from rewards import memcg, sandbox
from tests.sandbox_helpers import LIMITS, MARK, REPO, marker_files, stray_processes, wait_until_clean

ADD_IO = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"}]
ADD_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


def prog(source: str, **subs) -> str:
    """Dedented program text with @NAME@ placeholders filled in (MARK always)."""
    source = textwrap.dedent(source).replace("@MARK@", MARK)
    for name, value in subs.items():
        source = source.replace(f"@{name}@", str(value))
    return source


def run(program: str, tests=ADD_IO, **kwargs) -> sandbox.Result:
    return sandbox.run(program, tests, LIMITS, **kwargs)


def statuses(result: sandbox.Result) -> list[str]:
    return [t.status for t in result.tests]


@pytest.fixture(scope="module")
def pool():
    with sandbox.Pool(2, LIMITS) as p:
        yield p


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    yield
    assert wait_until_clean() == []
    assert marker_files() == []


# --- honest programs: a sandbox that blocks everything fails these ---


def test_correct_program_passes_and_wrong_one_fails():
    assert statuses(run(ADD_PROGRAM)) == ["pass", "pass"]
    wrong = run("a, b = map(int, input().split())\nprint(a - b)\n")
    assert statuses(wrong) == ["fail", "fail"]
    assert wrong.tests[0].output == "-1\n"
    assert (wrong.passed, wrong.reward("fraction"), wrong.reward("all")) == (0, 0.0, 0.0)


def test_partial_credit_fraction_or_all():
    half = run("a, b = map(int, input().split())\nprint(3)\n")
    assert statuses(half) == ["pass", "fail"]
    assert (half.reward("fraction"), half.reward("all")) == (0.5, 0.0)
    assert run(ADD_PROGRAM).reward("all") == 1.0


def test_whitespace_is_normalised_and_floats_have_a_tolerance():
    tests = [{"input": "", "output": "1 2\n0.3333333\n"}]
    loose = "print('  1   2  ')\nprint()\nprint(1/3)\nprint()\n"
    assert statuses(run(loose, tests, float_tol=1e-6)) == ["pass"]
    assert statuses(run(loose, tests)) == ["fail"]  # 0.3333333333333333 != 0.3333333 exactly
    assert statuses(run("print(1, 2)\nprint(0.34)\n", tests, float_tol=1e-6)) == ["fail"]


def test_call_based_tests_compare_return_values_here():
    tests = [{"fn_name": "pair", "args": [2], "expected": [2, 4]},
             {"fn_name": "pair", "args": [3], "kwargs": {"k": 3}, "expected": [3, 9]},
             {"fn_name": "pair", "args": [1], "expected": [1, 3]}]
    result = run("def pair(x, k=2):\n    return (x, x * k)\n", tests)
    assert statuses(result) == ["pass", "pass", "fail"]
    leetcode = run("class Solution:\n    def pair(self, x, k=2):\n        return [x, x * k]\n", tests[:1])
    assert statuses(leetcode) == ["pass"]
    floats = [{"fn_name": "third", "args": [], "expected": 0.333333}]
    assert statuses(run("def third():\n    return 1 / 3\n", floats, float_tol=1e-5)) == ["pass"]


def test_assert_blocks():
    program = "def add(a, b):\n    return a + b\n"
    tests = [{"assert": "assert add(1, 2) == 3\nassert add(2, 2) != 5\nassert 4 == add(2, 2)"},
             {"assert": "x = add(1, 1)\nassert x == add(0, 2)\nassert isinstance(x, int)"},
             {"assert": "assert add(1, 2) == 3\nassert add(2, 2) == 5"},
             {"assert": "def check(f):\n    assert f(1, 1) == 3\ncheck(add)"}]
    assert statuses(run(program, tests)) == ["pass", "pass", "fail", "runtime_error"]


def test_runtime_and_syntax_errors():
    crash = run("x = int(input())\n")
    assert statuses(crash) == ["runtime_error"] * 2 and "ValueError" in crash.tests[0].detail
    broken = run("def f(:\n")
    assert statuses(broken) == ["runtime_error"] * 2 and "SyntaxError" in broken.tests[0].detail
    assert broken.error == ""


def test_each_test_starts_from_a_fresh_process():
    program = prog("""
        import builtins
        builtins.counter = getattr(builtins, "counter", 0) + 1
        input()
        print(builtins.counter)
    """)
    tests = [{"input": "x", "output": "1"}] * 3
    assert statuses(run(program, tests)) == ["pass"] * 3


# --- resource attacks ---


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run("while True:\n    pass\n", ADD_IO[:1])
    assert statuses(result) == ["timeout"]
    assert time.monotonic() - start < LIMITS.test_seconds + 1.5


def test_sleeping_program_hits_the_per_test_wall_clock():
    result = run("import time\ntime.sleep(60)\n", ADD_IO)
    assert statuses(result) == ["timeout", "timeout"]
    assert result.seconds < LIMITS.wall_seconds + 1.0


def test_the_run_wall_clock_keeps_finished_tests():
    program = "import time\ntime.sleep(1.5)\nprint(input())\n"
    tests = [{"input": str(i), "output": str(i)} for i in range(5)]
    limits = dataclasses.replace(LIMITS, test_seconds=2.5, wall_seconds=6.0)  # room for 3 tests, not 4
    start = time.monotonic()
    result = sandbox.run(program, tests, limits)
    assert statuses(result) == ["pass", "pass", "pass", "timeout", "timeout"]
    assert result.error == "wall-clock limit"
    assert time.monotonic() - start < limits.wall_seconds + 1.0


def test_cpu_burn_in_threads():
    # hashlib releases the GIL, so these threads really burn every core they can get.
    program = prog("""
        import hashlib, threading
        def burn():
            data = b"x" * (1 << 20)
            while True:
                hashlib.sha256(data).digest()
        for _ in range(4):
            threading.Thread(target=burn, daemon=True).start()
        burn()
    """)
    # A generous wall clock, so what stops it is the CPU rlimit, summed over all its threads.
    limits = dataclasses.replace(LIMITS, test_seconds=6.0, wall_seconds=8.0)
    result = sandbox.run(program, ADD_IO[:1], limits)
    assert statuses(result) == ["timeout"]
    assert "SIGXCPU" in result.tests[0].detail  # the CPU limit, not the 6 s wall clock


def test_fork_bomb_is_contained():
    program = prog("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    result = run(program, ADD_IO[:1])
    assert statuses(result) == ["timeout"]
    assert wait_until_clean() == []
    assert statuses(run(ADD_PROGRAM)) == ["pass", "pass"]  # the process budget is back


def test_memory_bomb():
    at_once = run("x = bytearray(2 << 30)\nprint(3)\n", ADD_IO[:1])
    assert statuses(at_once) == ["memory"]
    growing = run("chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))\n", ADD_IO[:1])
    assert statuses(growing) == ["memory"]


def test_memory_of_a_whole_run_is_capped(caplog):
    # Five processes of 200 MB each: every one is within memory_mb (256), together they are not
    # within total_memory_mb (512), which the slot's memory cgroup enforces.
    program = prog("""
        import os, time
        kids = []
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                block = b"x" * (200 << 20)
                time.sleep(0.6)
                os._exit(0)
            kids.append(pid)
        codes = [os.waitpid(pid, 0)[1] for pid in kids]
        print("ok" if codes == [0] * 5 else "killed")
    """)
    if memcg.find() is None:  # no writable cgroups here: the documented fallback, said out loud
        sandbox._SETUPS.clear()
        with caplog.at_level(logging.WARNING, logger="rewards.sandbox"):
            run("print(1)\n", [{"input": "", "output": "1"}])
        assert "no writable memory cgroup" in caplog.text
        return
    limits = dataclasses.replace(LIMITS, test_seconds=5.0, wall_seconds=6.0)  # reclaim can be slow
    result = sandbox.run(program, [{"input": "", "output": "ok"}], limits)
    assert statuses(result) == ["fail"] and result.tests[0].output == "killed\n"


def test_disk_fill():
    free_before = shutil.disk_usage("/").free
    one_file = prog("""
        with open("big", "wb") as f:
            for _ in range(1024):
                f.write(b"x" * (1 << 20))
        print("filled")
    """)
    many_files = prog("""
        for i in range(10000):
            with open(f"f{i}", "wb") as f:
                f.write(b"x" * (1 << 20))
        print("filled")
    """)
    memory_backed = prog("""
        for path in ("/dev/shm/fill", "/dev/fill"):  # tmpfs there would be host memory
            with open(path, "wb") as f:
                for _ in range(64):
                    f.write(b"x" * (1 << 20))
        print("filled")
    """)
    for program, error in [(one_file, "File too large"), (many_files, "No space left"),
                           (memory_backed, "Read-only file system")]:
        result = run(program, [{"input": "", "output": "filled"}])
        assert statuses(result) == ["runtime_error"]
        assert error in result.tests[0].detail
    assert free_before - shutil.disk_usage("/").free < 50 << 20


def test_gigabytes_of_output():
    for stream in ("stdout", "stderr"):
        result = run(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 65536)\n", ADD_IO[:1])
        assert statuses(result) == ["output_limit"]
        assert len(result.tests[0].output) <= 1000
        assert result.tests[0].seconds < 1.0  # cut off at the cap, not at the 1.5 s timeout


def test_reading_stdin_forever():
    spin = run("import sys\nwhile True:\n    sys.stdin.read()\n", ADD_IO[:1])
    assert statuses(spin) == ["timeout"]
    past_end = run("input()\ninput()\n", ADD_IO[:1])
    assert statuses(past_end) == ["runtime_error"] and "EOFError" in past_end.tests[0].detail


def test_ctypes_segfault_fails_only_its_test():
    program = prog("""
        import ctypes
        line = input()
        if line == "crash":
            ctypes.string_at(0)
        print(line)
    """)
    result = run(program, [{"input": "crash", "output": "crash"}, {"input": "ok", "output": "ok"}])
    assert statuses(result) == ["runtime_error", "pass"]
    assert "SIGSEGV" in result.tests[0].detail


# --- escaping the sandbox ---


def test_writing_outside_the_working_directory():
    targets = [f"{d.rstrip('/')}/{MARK}-write" for d in ("/tmp", os.path.expanduser("~"), os.getcwd(), str(REPO), "/")]
    program = prog("""
        import os
        for path in @TARGETS@:
            try:
                with open(path, "w") as f:
                    f.write("escaped")
                print("wrote", path)
            except OSError as e:
                print("blocked", path, e.strerror)
        with open("inside", "w") as f:  # the working directory itself is writable
            f.write("fine")
        print("cwd", os.getcwd(), open("inside").read())
    """, TARGETS=repr(targets))
    result = run(program, [{"input": "", "output": ""}])
    assert "cwd /tmp fine" in result.tests[0].output
    assert marker_files() == []


def test_environment_secrets_and_project_files_are_out_of_reach(monkeypatch):
    secret = f"{MARK}-secret"
    monkeypatch.setenv("QUANT_SBX_SECRET", secret)
    program = prog("""
        import glob, os
        found = [os.environ.get("QUANT_SBX_SECRET", "")]
        for path in glob.glob("/proc/*/environ") + ["/proc/@PID@/environ", "@REPO@/pyproject.toml",
                                                    "@REPO@/tests/test_sandbox.py", "/etc/shadow", "/root/.bashrc"]:
            try:
                found.append(open(path, errors="replace").read())
            except OSError:
                pass
        print("".join(found))
    """, PID=os.getpid(), REPO=REPO)
    result = run(program, [{"input": "", "output": secret}])
    assert statuses(result) == ["fail"]
    assert secret not in result.tests[0].output and "[project]" not in result.tests[0].output


def test_no_network_even_to_a_local_listener():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        program = prog("""
            import socket
            try:
                socket.create_connection(("127.0.0.1", @PORT@), timeout=1).sendall(b"@MARK@")
                print("connected")
            except OSError as e:
                print("refused", e)
        """, PORT=port)
        result = run(program, [{"input": "", "output": "connected"}])
        assert statuses(result) == ["fail"] and "refused" in result.tests[0].output
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()


def test_no_new_namespaces_or_privileges_inside():
    program = prog("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for name, flag in [("user", 0x10000000), ("net", 0x40000000), ("mount", 0x00020000)]:
            print(name, libc.unshare(flag), os.strerror(ctypes.get_errno()))
        print("uid", os.getuid(), "caps", open("/proc/self/status").read().split("CapEff:")[1].split()[0])
        os.setuid(0)
    """)
    result = run(program, [{"input": "", "output": ""}])
    assert statuses(result) == ["runtime_error"] and "setuid" not in result.tests[0].output
    assert "Error: [Errno" in result.tests[0].detail  # setuid(0) refused (root is not even mapped)
    lines = result.tests[0].output.splitlines()
    assert all(line.split()[1] == "-1" for line in lines[:3]), lines
    assert lines[3] == f"uid {os.getuid() if os.getuid() else sandbox.FIRST_UID} caps 0000000000000000"


def test_killing_the_parent_hurts_only_the_attacker(pool):
    sleeper = subprocess.Popen(["sleep", "30"])  # a process of ours the attack tries to kill by pid
    try:
        attacks = [
            "import os\nos.kill(os.getppid(), 9)\n",
            "import os\nos.killpg(os.getpgid(os.getppid()), 9)\n",
            "import os\nos.killpg(0, 9)\n",
            "import os\nos.kill(1, 9)\n",
            f"import os\nos.kill({sleeper.pid}, 9)\n",
        ]
        programs = [p for attack in attacks for p in (attack, ADD_PROGRAM)]
        results = pool.map(programs, [ADD_IO] * len(programs))
        for attack, honest in zip(results[::2], results[1::2]):
            assert attack.passed == 0
            assert statuses(honest) == ["pass", "pass"]
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_double_forked_daemon_does_not_outlive_the_run():
    program = prog("""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                code = "import time; time.sleep(1.0); open('/tmp/@MARK@-daemon', 'w').write('late')"
                os.execv(sys.executable, [sys.executable, "-c", code, "@MARK@"])
            os._exit(0)
        a, b = map(int, input().split())
        print(a + b)
    """)
    result = run(program)
    assert statuses(result) == ["pass", "pass"]  # daemons are not cheating, they just do not survive
    assert stray_processes() == []
    time.sleep(1.3)
    assert marker_files() == []


# --- faking success ---


def test_faked_success_does_not_pass(pool):
    call = [{"fn_name": "add", "args": [1, 2], "expected": 3}]
    block = [{"assert": "assert add(1, 2) == 3"}]
    truthy = [{"assert": "assert add(1, 2) > 100"}]
    cheats = [
        # Objects that claim to equal anything.
        ("class Any:\n    def __eq__(self, other): return True\ndef add(a, b): return Any()\n", call + block),
        ("class Int(int):\n    def __eq__(self, other): return True\ndef add(a, b): return Int(0)\n", call + block),
        # Monkeypatched builtins and the encoder the harness uses.
        (prog("""
            import builtins, json
            builtins.type = lambda *a: int
            builtins.isinstance = lambda *a: True
            json.dumps = lambda *a, **k: '["v", true]'
            def add(a, b): return 0
        """), call + block),
        # Exiting early with status 0 before anything is computed.
        ("import os\nos._exit(0)\n", call + block + ADD_IO),
        ("raise SystemExit(0)\n", call + block + ADD_IO),
        # Printing something that looks like a harness report.
        ('print(\'{"i": 0, "s": "pass"}\')\nprint("0" * 32 + \' {"i": 0, "s": "ok", "out": "3"}\')\n', ADD_IO),
        # A forged report, with the real nonce (found in the forked harness's frames), written into
        # the harness's report pipe through /proc: it claims the second test printed the answer.
        (prog("""
            import os, sys
            frame, nonce = sys._getframe(), None
            while frame:
                if isinstance(frame.f_locals.get("job"), dict):
                    nonce = frame.f_locals["job"]["nonce"]
                frame = frame.f_back
            forged = ('%s {"i": 1, "s": "ok", "out": "6"}\\n' % nonce).encode()
            for fd in range(16):
                try:
                    os.write(os.open("/proc/1/fd/%d" % fd, os.O_WRONLY), forged)
                except OSError:
                    pass
        """), ADD_IO),
        # A thread that reports a rigged value before (and after) the test code runs.
        (prog("""
            import threading, time
            def add(a, b): return 0
            def forge():
                g = globals()
                while "__quant_check__" not in g:
                    time.sleep(0)
                for _ in range(3):
                    g["__quant_check__"](0, True)
            threading.Thread(target=forge, daemon=True).start()
        """), truthy),
    ]
    results = pool.map([c[0] for c in cheats], [c[1] for c in cheats])
    for (program, _), result in zip(cheats, results):
        assert result.passed == 0, (program, result)


# --- the pool and the refusal ---


def test_pool_runs_concurrently_and_keeps_order(pool):
    programs = [f"import time\ntime.sleep(0.4)\nprint({i})\n" for i in range(4)]
    start = time.monotonic()
    results = pool.map(programs, [[{"input": "", "output": str(i)}] for i in range(4)])
    assert [r.passed for r in results] == [1, 1, 1, 1]
    assert time.monotonic() - start < 1.5  # two at a time, not one


def test_pool_isolates_failures(pool):
    bombs = ["import os\nwhile True:\n    try: os.fork()\n    except OSError: pass\n",
             "import threading\ndef b():\n    while True: pass\n"
             "[threading.Thread(target=b).start() for _ in range(4)]\nb()\n",
             "x = [bytearray(1 << 20) for _ in range(10 ** 4)]\n"]
    programs = [p for bomb in bombs for p in (bomb, ADD_PROGRAM)]
    results = pool.map(programs, [ADD_IO] * len(programs))
    assert [r.passed for r in results] == [0, 2, 0, 2, 0, 2]


def test_refuses_without_bubblewrap():
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install -y bubblewrap.*allow_weak"):
        sandbox.run(ADD_PROGRAM, ADD_IO, LIMITS, bwrap="/nonexistent/bwrap")
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap"):
        sandbox.Pool(1, LIMITS, bwrap="/nonexistent/bwrap")


def test_refuses_without_user_namespaces():
    # A stand-in for bwrap on a kernel without unprivileged user namespaces: it fails the same way.
    directory = tempfile.mkdtemp(prefix=f"{MARK}-")
    try:
        fake = os.path.join(directory, "bwrap")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
        os.chmod(fake, 0o755)
        os.chmod(directory, 0o755)  # the sandbox uid must be able to run it
        with pytest.raises(sandbox.SandboxUnavailable, match="No permissions to creating new namespace.*sysctl"):
            sandbox.run(ADD_PROGRAM, ADD_IO, LIMITS, bwrap=fake)
    finally:
        shutil.rmtree(directory)


def test_weak_mode_is_opt_in_and_loud(caplog):
    # Only honest programs here: attacks never run with the isolation switched off.
    with caplog.at_level(logging.WARNING, logger="rewards.sandbox"):
        result = sandbox.run(ADD_PROGRAM + "import os, sys\nprint(os.getcwd(), file=sys.stderr)\nsys.exit(1)\n",
                             ADD_IO[:1], LIMITS, bwrap="/nonexistent/bwrap", allow_weak=True)
        good = sandbox.run(ADD_PROGRAM, ADD_IO, LIMITS, bwrap="/nonexistent/bwrap", allow_weak=True)
    assert "UNSAFE SANDBOX" in caplog.text
    assert statuses(good) == ["pass", "pass"]
    workdir = result.tests[0].detail.split()[-1]
    assert "quant-sandbox-" in workdir and not os.path.exists(workdir)  # its working directory is gone


def test_limits_are_validated():
    with pytest.raises(ValueError, match="limits.memory_mb"):
        sandbox.Limits(memory_mb=0).validate()
    with pytest.raises(ValueError, match=r"tests\[1\]"):
        run(ADD_PROGRAM, [ADD_IO[0], {"fn_name": "f", "args": []}])


def test_zz_no_stray_processes_or_marker_files():
    assert wait_until_clean() == []
    assert marker_files() == []
