"""Runs untrusted programs against tests: isolated, resource-limited, and fast enough for RL.

`run(program, tests, limits) -> Result` runs one program; `Pool` runs batches on worker threads.
Test dicts follow the schema in `rewards.judge`; the judging happens in this (trusted) process, from
what the program printed or returned, never from a verdict of the sandboxed side.

Each run is one command chain (`rewards.isolate`), started without `preexec_fn` (unsafe in a
multi-threaded JAX process), in its own session:

    sh -c 'echo $$ > cgroup.procs; exec ...'         when we are root: the slot's memory cgroup
    prlimit (CPU s, address space, processes, file size, open files, no core dumps)
      setpriv --reuid=UID --regid=UID --clear-groups   when we are root: a dedicated uid per slot
        taskset --cpu-list N                           Pool slots pinned to distinct CPUs
          bwrap --unshare-all --as-pid-1 --die-with-parent --new-session --disable-userns ...
            python3 -I -c <rewards/_harness.py>        forks one process per test

Layers, and why each is there:
- A dedicated unprivileged uid per concurrent run (FIRST_UID + slot, locked across processes with
  flock): RLIMIT_NPROC is not enforced for root and counts per uid, so a fork bomb in one run cannot
  use up another's processes, and leftovers can be found by uid and killed.
- bubblewrap namespaces: no network (only its own loopback), its own PID namespace whose init is
  the harness (when it exits the kernel kills every process inside, double-forked daemons
  included, and signals from inside cannot kill it), no view of the trainer's processes or files.
  The file system is a read-only root holding only /usr (plus the interpreter's prefix if it lives
  elsewhere), a fresh /proc, a read-only /dev with the usual device nodes (null, zero, urandom,
  ...), and a size-limited tmpfs /tmp as the working directory (the only writable place),
  which disappears with the namespace, so there is nothing to remove afterwards.
- A clean environment (nothing inherited from the trainer), `python -I` (no user site, no PYTHON*).
- rlimits inherited by every process inside; a per-test wall clock in the harness and a per-run wall
  clock here, after which the namespace's init is killed; a cap on captured output.
- A memory cgroup per slot (`rewards.memcg`, root only) capping the run as a whole: rlimits are
  per process and do not see tmpfs, shared memory or memfds. Without one a warning says so.
Where bubblewrap or user namespaces are missing, `run` and `Pool` refuse with the fix, unless
`allow_weak=True`: then the same chain runs without bwrap (rlimits, uid and a throwaway working
directory, removed afterwards) and every use is logged as a warning.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import pwd
import shutil
import subprocess
import threading
from typing import Sequence

from rewards import isolate, judge, memcg
from rewards.isolate import FIRST_UID, MAX_SLOTS
from rewards.judge import TestResult

log = logging.getLogger(__name__)

_TOOL_DIRS = "/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin"
_FIX = (
    "Install bubblewrap (Debian/Ubuntu: `apt-get install -y bubblewrap`, or `bash scripts/setup.sh`) and "
    "allow unprivileged user namespaces (`sysctl -w kernel.unprivileged_userns_clone=1`, "
    "`sysctl -w user.max_user_namespaces=15000`; Ubuntu 24.04+: "
    "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`; in Docker run with "
    "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined`). "
    "Only if you accept running untrusted code without isolation, pass allow_weak=True "
    "(config: allow_weak_sandbox=True)."
)


class SandboxUnavailable(RuntimeError):
    """The isolation the sandbox needs is missing; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one run. rlimits apply to each process in the sandbox separately."""

    cpu_seconds: int = 4  # RLIMIT_CPU; each test runs in a fresh process, so this is per test
    wall_seconds: float = 20.0  # the whole run, all tests; then the process tree is killed
    test_seconds: float = 4.0  # wall clock per test, enforced inside the sandbox
    memory_mb: int = 512  # RLIMIT_AS (virtual address space) of each process
    # All of a run together, tmpfs and shared memory included (a memory cgroup, when available).
    # 0 turns it off: joining a cgroup costs ~10 ms a run on cgroup v1 (the cgroup.procs write waits
    # for an RCU grace period), leaving only the per-process memory_mb.
    total_memory_mb: int = 2048
    max_processes: int = 32  # RLIMIT_NPROC for the program's processes and threads
    max_file_mb: int = 16  # RLIMIT_FSIZE: the largest file a program may write
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 1 << 20  # stdout + stderr + returned values captured per test
    tmp_mb: int = 64  # size of the writable tmpfs working directory
    python: str = "/usr/bin/python3"  # must be readable by an unprivileged uid (not under /root)

    def validate(self) -> None:
        """Raises ValueError naming the first limit that is out of range."""
        for name in ("cpu_seconds", "wall_seconds", "test_seconds", "memory_mb", "max_processes",
                     "max_file_mb", "max_open_files", "max_output_bytes", "tmp_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.total_memory_mb < 0:
            raise ValueError(f"limits.total_memory_mb must be >= 0 (0: off), got {self.total_memory_mb}")
        if self.max_open_files < 16:
            raise ValueError(f"limits.max_open_files must be at least 16 (the harness needs ~12), "
                             f"got {self.max_open_files}")
        if not os.path.isabs(self.python):
            raise ValueError(f"limits.python must be an absolute path, got {self.python!r}")


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of running one program against its tests."""

    tests: tuple[TestResult, ...]
    seconds: float = 0.0
    error: str = ""  # a problem with the run as a whole (wall-clock limit, harness crash), else ""

    @property
    def passed(self) -> int:
        return sum(t.status == "pass" for t in self.tests)

    @property
    def fraction(self) -> float:
        return self.passed / len(self.tests) if self.tests else 0.0

    @property
    def all_passed(self) -> bool:
        return bool(self.tests) and self.passed == len(self.tests)

    def reward(self, mode: str = "fraction") -> float:
        """The fraction of tests passed ("fraction") or 1.0 only if all pass ("all")."""
        if mode == "fraction":
            return self.fraction
        if mode == "all":
            return float(self.all_passed)
        raise ValueError(f"reward mode must be 'fraction' or 'all', got {mode!r}")


_SETUPS: dict = {}
_SETUPS_LOCK = threading.Lock()


def _setup(limits: Limits, allow_weak: bool, bwrap: str | None) -> isolate.Setup:
    """Finds the tools and checks, once per configuration, that isolation really works."""
    key = (limits.python, allow_weak, bwrap)
    with _SETUPS_LOCK:
        if key in _SETUPS:
            return _SETUPS[key]
        as_root = os.geteuid() == 0
        tools = {name: shutil.which(name, path=_TOOL_DIRS) for name in ("prlimit", "setpriv", "taskset", "sh")}
        needed = ["prlimit", "taskset", "sh"] + (["setpriv"] if as_root else [])
        missing = [name for name in needed if not tools[name]]
        if missing:  # rlimits and uid switching are required even in the weak mode
            raise SandboxUnavailable(f"{', '.join(missing)} not found in {_TOOL_DIRS}: prlimit, setpriv and taskset "
                                     "come with util-linux (`apt-get install -y util-linux`).")
        if not os.access(limits.python, os.X_OK):
            raise SandboxUnavailable(f"limits.python={limits.python!r} is not an executable interpreter: "
                                     "install Debian's python3 (`apt-get install -y python3`) or point "
                                     "limits.python at one.")
        if as_root:  # leftovers are killed by uid, so no real account may own one of ours
            taken = [uid for uid in range(FIRST_UID, FIRST_UID + MAX_SLOTS) if _has_account(uid)]
            if taken:
                raise SandboxUnavailable(f"uid {taken[0]} belongs to an account; sandbox uids "
                                         f"{FIRST_UID}..{FIRST_UID + MAX_SLOTS - 1} must be unused (change FIRST_UID)")
        try:
            harness = isolate.compile_harness(limits.python)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            raise SandboxUnavailable(f"limits.python={limits.python!r} cannot compile the harness: {e}") from None
        cgroups = memcg.find()
        if cgroups is None:
            log.warning("sandbox: no writable memory cgroup (needs root and cgroup v1, or v2 at the namespace "
                        "root); each process is capped at limits.memory_mb, but a run as a whole is not.")
        tools["bwrap"] = bwrap or shutil.which("bwrap", path=_TOOL_DIRS)
        tools["bwrap_flags"] = _bwrap_flags(tools["bwrap"])
        if tools["bwrap"] and os.access(tools["bwrap"], os.X_OK):
            problem = _probe(isolate.Setup(True, tools, as_root, harness, cgroups), limits)
        else:
            problem = f"bubblewrap not found (looked for {bwrap or 'bwrap in ' + _TOOL_DIRS})"
        if not problem:
            setup = isolate.Setup(True, tools, as_root, harness, cgroups)
        elif allow_weak:
            setup = isolate.Setup(False, tools, as_root, harness, cgroups)
            problem = _probe(setup, limits)
            if problem:
                raise SandboxUnavailable(f"even the weak sandbox does not work: {problem}")
        else:
            raise SandboxUnavailable(f"cannot isolate untrusted code: {problem}. {_FIX}")
        _SETUPS[key] = setup
        return setup


def _bwrap_flags(bwrap: str | None) -> tuple[str, ...]:
    """Optional hardening this bwrap supports: no nested user namespaces (bwrap >= 0.8), which
    keeps the kernel code reachable only through them out of the program's reach."""
    try:
        usage = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, env={}).stdout
    except (OSError, TypeError, subprocess.SubprocessError):
        return ()
    return ("--unshare-user", "--disable-userns") if "--disable-userns" in usage else ()


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _warn_weak() -> None:
    log.warning("UNSAFE SANDBOX: running model-written code WITHOUT namespace isolation (allow_weak=True). It has "
                "rlimits%s, but can read your files, reach the network and see your processes. %s",
                " and its own uid" if os.geteuid() == 0 else "", _FIX)


def _probe(setup: isolate.Setup, limits: Limits) -> str:
    """Runs a trivial program through the chain; returns what went wrong, or "" if it passed."""
    probe_limits = dataclasses.replace(limits, wall_seconds=30.0, test_seconds=20.0)
    with isolate.SLOTS.take(setup.as_root) as slot:
        result = _execute("print(6 * 7)", judge.parse_tests([{"input": "", "output": "42"}]),
                          probe_limits, setup, slot, cpu=None, float_tol=None)
    if result.all_passed:
        return ""
    return (result.error or result.tests[0].detail or result.tests[0].status).strip()[-1500:]


def _execute(program: str, cases: list[judge.Case], limits: Limits, setup: isolate.Setup, slot: int,
             cpu: int | None, float_tol: float | None) -> Result:
    """Runs the program through the chain in `slot` and judges what the harness reports."""
    raw = isolate.execute(program, [c.payload for c in cases], limits, setup, slot, cpu)
    tests = [judge.grade(case, raw.records[i], float_tol) if i in raw.records
             else TestResult(raw.missing, detail=raw.error) for i, case in enumerate(cases)]
    if raw.oom_killed:  # a SIGKILL then came from the memory cgroup
        tests = [dataclasses.replace(t, status="memory", detail="out of memory (the run's total) " + t.detail)
                 if t.status == "runtime_error" and "SIGKILL" in t.detail else t for t in tests]
    return Result(tuple(tests), raw.seconds, raw.error)


def run(program: str, tests: Sequence[dict], limits: Limits | None = None, *, float_tol: float | None = None,
        allow_weak: bool = False, bwrap: str | None = None) -> Result:
    """Runs one untrusted program against its tests in the sandbox.

    Args:
        program: Python source (for completions, `rewards.code.extract_program` finds it).
        tests: test dicts, schema in `rewards.judge`.
        limits: resource limits; defaults to Limits().
        float_tol: tolerance for comparing floats in outputs and values; None compares exactly.
        allow_weak: run without namespaces if bubblewrap or user namespaces are unavailable.
        bwrap: path of the bwrap binary; found on the system if None.

    Returns:
        The Result, one TestResult per test.

    Raises:
        SandboxUnavailable: isolation is not possible here and allow_weak is False.
        ValueError: malformed tests or limits.
    """
    limits = limits or Limits()
    limits.validate()
    cases = judge.parse_tests(tests)
    setup = _setup(limits, allow_weak, bwrap)
    if not setup.isolated:
        _warn_weak()
    with isolate.SLOTS.take(setup.as_root) as slot:
        return _execute(program, cases, limits, setup, slot, None, float_tol)


class Pool:
    """Runs many programs concurrently, each in its own sandbox, on `workers` threads.

    A failure of one run (a crash, a timeout, even an exception here) becomes that program's
    Result and never touches the others. With pin_cpus and no more workers than CPUs, each
    concurrent run is pinned to its own CPU so a program burning every core cannot slow the
    others into timeouts.
    """

    def __init__(self, workers: int = 2, limits: Limits | None = None, *, float_tol: float | None = None,
                 allow_weak: bool = False, bwrap: str | None = None, pin_cpus: bool = True):
        if not 1 <= workers <= MAX_SLOTS:
            raise ValueError(f"workers must be in 1..{MAX_SLOTS}, got {workers}")
        self.limits = limits or Limits()
        self.limits.validate()
        self.float_tol = float_tol
        self._setup = _setup(self.limits, allow_weak, bwrap)
        if not self._setup.isolated:
            _warn_weak()
        cpus = sorted(os.sched_getaffinity(0))
        self._cpus = cpus if pin_cpus and workers <= len(cpus) else None
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sandbox")

    def _run_one(self, program: str, tests: Sequence[dict]) -> Result:
        try:
            cases = judge.parse_tests(tests)
        except ValueError as e:
            return Result((), error=f"bad tests: {e}")
        try:
            with isolate.SLOTS.take(self._setup.as_root) as slot:
                cpu = self._cpus[slot % len(self._cpus)] if self._cpus else None
                return _execute(program, cases, self.limits, self._setup, slot, cpu, self.float_tol)
        except Exception as e:  # e.g. out of file descriptors here: this program fails, the batch goes on
            log.exception("sandbox run failed")
            return Result(tuple(TestResult("runtime_error", detail=f"sandbox error: {e}") for _ in cases),
                          error=f"sandbox error: {e!r}")

    def submit(self, program: str, tests: Sequence[dict]) -> concurrent.futures.Future:
        """Starts one run; the future's result is its Result."""
        return self._executor.submit(self._run_one, program, tests)

    def map(self, programs: Sequence[str], tests: Sequence[Sequence[dict]]) -> list[Result]:
        """Runs programs[i] against tests[i] for all i, concurrently; Results in input order."""
        if len(programs) != len(tests):
            raise ValueError(f"{len(programs)} programs but {len(tests)} test lists")
        return [f.result() for f in [self.submit(p, t) for p, t in zip(programs, tests)]]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
