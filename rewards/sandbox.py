"""Runs untrusted programs against tests: isolated, resource-limited, and fast enough for RL.

`run(program, tests, limits) -> Result` runs one program; `Pool` runs batches on worker threads.
Test dicts follow the schema in `rewards.judge`; the judging itself happens in this process.

Each run is one command chain, started without `preexec_fn` (unsafe in a multi-threaded JAX
process), in its own session:

    prlimit (CPU s, address space, processes, file size, open files, no core dumps)
      setpriv --reuid=UID --regid=UID --clear-groups   when we are root: a dedicated uid per slot
        taskset --cpu-list N                           Pool slots pinned to distinct CPUs
          bwrap --unshare-all --die-with-parent --new-session ...
            python3 -I -c <rewards/_harness.py>

Layers, and why each is there:
- A dedicated unprivileged uid per concurrent run (FIRST_UID + slot, locked across processes with
  flock): RLIMIT_NPROC is not enforced for root and counts per uid, so a fork bomb in one run cannot
  use up another's processes, and leftovers can be found by uid and killed.
- bubblewrap namespaces: no network (its own empty loopback), its own PID namespace (when its
  init dies the kernel kills every process inside, double-forked daemons included), no view of
  the trainer's processes or files: only /usr (and the interpreter's prefix) mounted read-only, a
  fresh /proc and /dev, a size-limited tmpfs /tmp as the working directory, everything else
  read-only. The tmpfs disappears with the namespace, so nothing is left to remove.
- A clean environment (nothing inherited from the trainer), `python -I` (no user site, no PYTHON*).
- rlimits inherited by every process inside; a per-test wall clock in the harness and a per-run wall
  clock here, after which the namespace's init is killed; a cap on captured output.
Where bubblewrap or user namespaces are missing, `run` and `Pool` refuse with the fix, unless
`allow_weak=True`: then the same chain runs without bwrap (rlimits, uid and a throwaway working
directory only) and every use is logged as a warning.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import json
import logging
import marshal
import os
import pathlib
import pwd
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Sequence

from rewards import judge
from rewards.judge import TestResult

log = logging.getLogger(__name__)

FIRST_UID = 61000  # sandboxes run as FIRST_UID + slot when we are root; no account should own these
MAX_SLOTS = 64  # concurrent runs per machine
_HELPERS = 2  # processes of the chain that count towards RLIMIT_NPROC: bwrap and the harness
_HARNESS = (pathlib.Path(__file__).parent / "_harness.py").read_text()
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
    memory_mb: int = 512  # RLIMIT_AS (virtual address space)
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
        if self.max_open_files < 16:
            raise ValueError(f"limits.max_open_files must be at least 16 (the harness needs ~12), got {self.max_open_files}")
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


# ----------------------------------------------------------------------------- setup and slots


@dataclasses.dataclass(frozen=True)
class _Setup:
    isolated: bool  # False only in the weak mode the caller opted into
    tools: dict  # name -> absolute path
    as_root: bool  # we can switch to the dedicated uids


_SETUPS: dict = {}
_SETUPS_LOCK = threading.Lock()


def _setup(limits: Limits, allow_weak: bool, bwrap: str | None) -> _Setup:
    """Finds the tools and checks, once per configuration, that isolation really works."""
    key = (limits.python, allow_weak, bwrap)
    with _SETUPS_LOCK:
        if key in _SETUPS:
            return _SETUPS[key]
        as_root = os.geteuid() == 0
        tools = {name: shutil.which(name, path=_TOOL_DIRS) for name in ("prlimit", "setpriv", "taskset")}
        needed = ["prlimit", "taskset"] + (["setpriv"] if as_root else [])
        missing = [name for name in needed if not tools[name]]
        if missing:  # rlimits and uid switching are required even in the weak mode
            raise SandboxUnavailable(f"{', '.join(missing)} not found: install util-linux (`apt-get install -y util-linux`).")
        if not os.access(limits.python, os.X_OK):
            raise SandboxUnavailable(f"limits.python={limits.python!r} is not an executable interpreter: "
                                     "install Debian's python3 (`apt-get install -y python3`) or point limits.python at one.")
        if as_root:  # leftovers are killed by uid, so no real account may own one of ours
            taken = [uid for uid in range(FIRST_UID, FIRST_UID + MAX_SLOTS) if _has_account(uid)]
            if taken:
                raise SandboxUnavailable(f"uid {taken[0]} belongs to an account; sandbox uids "
                                         f"{FIRST_UID}..{FIRST_UID + MAX_SLOTS - 1} must be unused (change FIRST_UID)")
        tools["bwrap"] = bwrap or shutil.which("bwrap", path=_TOOL_DIRS)
        tools["bwrap_flags"] = _bwrap_flags(tools["bwrap"])
        problem = _probe(_Setup(True, tools, as_root), limits) if tools["bwrap"] and os.access(tools["bwrap"], os.X_OK) else (
            f"bubblewrap not found (looked for {bwrap or 'bwrap in ' + _TOOL_DIRS})")
        if not problem:
            setup = _Setup(True, tools, as_root)
        elif allow_weak:
            setup = _Setup(False, tools, as_root)
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


def _probe(setup: _Setup, limits: Limits) -> str:
    """Runs a trivial program through the chain; returns what went wrong, or "" if it passed."""
    probe_limits = dataclasses.replace(limits, wall_seconds=30.0, test_seconds=20.0)
    with _SLOTS.take(setup.as_root) as slot:
        result = _execute("print(6 * 7)", judge.parse_tests([{"input": "", "output": "42"}]),
                          probe_limits, setup, slot, cpu=None, float_tol=None)
    if result.all_passed:
        return ""
    return (result.error or result.tests[0].detail or result.tests[0].status)[-1500:]


class _Slots:
    """Hands out slot numbers (hence uids and CPUs) to concurrent runs, across threads and processes.

    Within a process a set guards the slots; across processes (several trainers on one machine,
    test workers) an flock on /run/quant-sandbox/<uid>.lock, released by the kernel when its holder
    dies. Without root there are no dedicated uids and the set alone is enough.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._held: dict[int, int | None] = {}  # slot -> lock file descriptor

    def take(self, as_root: bool) -> "_Slot":
        return _Slot(self, as_root)

    def acquire(self, as_root: bool) -> int:
        with self._cond:
            while True:
                for slot in range(MAX_SLOTS):
                    if slot in self._held:
                        continue
                    fd = _lock_uid(FIRST_UID + slot) if as_root else None
                    if fd is not None or not as_root:
                        self._held[slot] = fd
                        return slot
                self._cond.wait(timeout=0.05)  # slots held by other processes free up without a notify

    def release(self, slot: int) -> None:
        with self._cond:
            fd = self._held.pop(slot)
            if fd is not None:
                os.close(fd)
            self._cond.notify()


class _Slot:
    def __init__(self, slots: _Slots, as_root: bool):
        self._slots, self._as_root = slots, as_root

    def __enter__(self) -> int:
        self.slot = self._slots.acquire(self._as_root)
        return self.slot

    def __exit__(self, *exc) -> None:
        self._slots.release(self.slot)


_SLOTS = _Slots()


def _lock_uid(uid: int) -> int | None:
    """An flock-ed descriptor proving this process owns `uid` now, or None if another process does."""
    directory = "/run/quant-sandbox" if os.access("/run", os.W_OK) else os.path.join(tempfile.gettempdir(), "quant-sandbox-locks")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, f"{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# ----------------------------------------------------------------------------- one run


def _command(setup: _Setup, limits: Limits, slot: int, cpu: int | None, info_fd: int | None) -> list[str]:
    """The prlimit -> setpriv -> taskset -> bwrap -> python chain for one run."""
    uid = FIRST_UID + slot if setup.as_root else None
    nproc = limits.max_processes + _HELPERS
    if uid is None:  # our own uid: the trainer's threads count towards the same limit
        nproc += _user_tasks(os.getuid())
    mb = 1 << 20
    cmd = [setup.tools["prlimit"], f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",  # soft: SIGXCPU
           f"--as={limits.memory_mb * mb}", f"--nproc={nproc}", f"--fsize={limits.max_file_mb * mb}",
           f"--nofile={limits.max_open_files}", "--core=0", "--"]
    if uid is not None:
        cmd += [setup.tools["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    if cpu is not None:
        cmd += [setup.tools["taskset"], "--cpu-list", str(cpu)]
    if setup.isolated:
        # --as-pid-1: the harness is the namespace's init. Its exit takes every process inside down
        # and bwrap reaps it (bwrap's own init would be orphaned and left to the machine's init); and
        # the program cannot signal it, since the kernel drops signals to an init from inside.
        cmd += [setup.tools["bwrap"], "--unshare-all", "--die-with-parent", "--new-session", "--as-pid-1",
                "--hostname", "sandbox", *setup.tools["bwrap_flags"]]
        cmd += _system_mounts(limits.python)
        cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.tmp_mb * mb), "--tmpfs", "/tmp",
                "--chdir", "/tmp", "--remount-ro", "/", "--clearenv"]
        for name, value in _ENV.items():
            cmd += ["--setenv", name, value]
        cmd += ["--info-fd", str(info_fd)]
    return cmd + [limits.python, "-I", "-c", _HARNESS]


_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}


def _system_mounts(python: str) -> list[str]:
    """Read-only /usr, the merged-/usr symlinks, and the interpreter's prefix if it lives elsewhere."""
    args = ["--ro-bind", "/usr", "/usr", "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))
    if not (prefix + "/").startswith("/usr/"):
        args += ["--ro-bind", prefix, prefix]
    return args


def _user_tasks(uid: int) -> int:
    """Threads currently owned by `uid` (RLIMIT_NPROC counts them all)."""
    total = 0
    for status in _proc_statuses():
        if status.get("Uid", [""])[0] == str(uid):
            total += int(status.get("Threads", ["1"])[0])
    return total


def _proc_statuses():
    """Parsed /proc/<pid>/status of every process, each with its "Pid"; vanished ones skipped."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                yield {k: v.split() for k, _, v in (line.partition(":") for line in f)}
        except OSError:
            continue


def _kill_uid(uid: int) -> int:
    """SIGKILLs every process of a dedicated sandbox uid (pidfds, so a reused pid is never hit)."""
    killed = 0
    for status in _proc_statuses():
        if status.get("Uid", [""])[0] != str(uid) or status.get("State", ["Z"])[0] == "Z":
            continue
        pid = int(status["Pid"][0])
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            with open(f"/proc/{pid}/status") as f:  # still the same process, still that uid?
                if f"Uid:\t{uid}\t" in f.read():
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    killed += 1
        except OSError:
            pass
        finally:
            os.close(pidfd)
    return killed


def _execute(program: str, cases: list[judge.Case], limits: Limits, setup: _Setup, slot: int,
             cpu: int | None, float_tol: float | None) -> Result:
    """Runs the harness through the chain in `slot` and grades what it reports."""
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    # marshal: the harness starts faster without `json`; version 4 reads the same in any Python 3.4+.
    job = marshal.dumps({"nonce": nonce, "program": program, "tests": [c.payload for c in cases],
                         "test_seconds": float(limits.test_seconds), "max_output": limits.max_output_bytes}, 4)
    info_r, info_w = os.pipe() if setup.isolated else (None, None)
    workdir = None
    if not setup.isolated:  # the weak mode's throwaway working directory, removed below
        workdir = tempfile.mkdtemp(prefix="quant-sandbox-")
        if setup.as_root:
            os.chown(workdir, FIRST_UID + slot, FIRST_UID + slot)
    env = {} if setup.isolated else {**_ENV, "HOME": workdir, "TMPDIR": workdir}
    try:
        try:
            proc = subprocess.Popen(_command(setup, limits, slot, cpu, info_w), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=workdir or "/",
                                    start_new_session=True, pass_fds=(info_w,) if info_w is not None else ())
        finally:
            if info_w is not None:
                os.close(info_w)
        ended, info = False, b""
        try:
            # The harness's report: per test at most its output cap (JSON-escaped: up to 6x), plus slack.
            cap = (len(cases) + 1) * (7 * limits.max_output_bytes + 4096)
            out, err, info, ended = _communicate(proc, job, info_r, start + limits.wall_seconds, cap)
        finally:
            if ended:  # the pipes closed; bwrap exits right after its init (the harness)
                try:
                    proc.wait(timeout=max(1.0, start + limits.wall_seconds - time.monotonic()))
                except subprocess.TimeoutExpired:
                    ended = False
            if not ended:
                _kill_tree(proc, info)
            proc.wait()
            if setup.as_root and (not ended or not setup.isolated):
                _kill_uid(FIRST_UID + slot)  # the namespace already took everything with it; a backstop
    finally:
        if info_r is not None:
            os.close(info_r)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    records, done = _parse_report(out, nonce, len(cases))
    error, missing = "", "runtime_error"  # what a test without a record gets
    if not ended and time.monotonic() - start >= limits.wall_seconds:
        error, missing = "wall-clock limit", "timeout"
    elif not ended:
        error, missing = "report too large", "output_limit"
    elif not done:
        error = "the harness stopped early: " + err.decode("utf-8", "replace")[-1500:]
    tests = []
    for i, case in enumerate(cases):
        if i in records:
            tests.append(judge.grade(case, records[i], float_tol))
        else:
            tests.append(TestResult(missing, detail=error))
    return Result(tuple(tests), time.monotonic() - start, error)


def _communicate(proc, job: bytes, info_r: int | None, deadline: float, cap: int):
    """Feeds the job and reads stdout/stderr/info until EOF, the deadline, or `cap` bytes.

    Returns:
        (stdout, stderr tail, bwrap info, ended) where ended is False if it had to stop early.
    """
    selector = selectors.DefaultSelector()
    stdin = proc.stdin.fileno()
    os.set_blocking(stdin, False)
    selector.register(stdin, selectors.EVENT_WRITE)
    chunks = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    if info_r is not None:
        chunks[info_r] = []
    for fd in chunks:
        selector.register(fd, selectors.EVENT_READ)
    sizes = dict.fromkeys(chunks, 0)
    reading = set(chunks)
    view, ended = memoryview(job), True
    while reading or view:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or sizes[proc.stdout.fileno()] > cap:
            ended = False
            break
        for key, _ in selector.select(remaining):
            if key.fd == stdin:
                try:
                    view = view[os.write(stdin, view[:65536]):]
                except BrokenPipeError:  # the harness died before reading its job
                    view = view[:0]
                if not view:
                    selector.unregister(stdin)
                    proc.stdin.close()
                continue
            data = os.read(key.fd, 65536)
            if not data:
                selector.unregister(key.fd)
                reading.discard(key.fd)
                continue
            chunks[key.fd].append(data)
            sizes[key.fd] += len(data)
            if key.fd == proc.stderr.fileno() and sizes[key.fd] > 65536:  # keep only a tail of stderr
                chunks[key.fd] = [b"".join(chunks[key.fd])[-8192:]]
                sizes[key.fd] = 8192
    selector.close()
    if not proc.stdin.closed:
        proc.stdin.close()
    out, err = (b"".join(chunks[f.fileno()]) for f in (proc.stdout, proc.stderr))
    info = b"".join(chunks[info_r]) if info_r is not None else b""
    proc.stdout.close()
    proc.stderr.close()
    return out, err, info, ended


def _kill_tree(proc, info: bytes) -> None:
    """Kills the sandbox's PID-namespace init (the harness), which takes every process inside with it.

    Killing it rather than the bwrap we started lets bwrap reap it and exit normally, so no
    zombie is orphaned to the machine's init.
    """
    try:
        inner = int(json.loads(info)["child-pid"])
        os.kill(inner, signal.SIGKILL)
    except (ValueError, KeyError, TypeError, OSError):
        pass  # no info yet: bwrap was still starting, or the weak mode
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # --die-with-parent then takes the namespace down
        except OSError:
            pass


def _parse_report(out: bytes, nonce: str, n: int) -> tuple[dict[int, dict], bool]:
    """Records of the harness, trusting only lines that carry this run's nonce."""
    prefix = nonce.encode() + b" "
    records: dict[int, dict] = {}
    done = False
    for line in out.split(b"\n"):
        if not line.startswith(prefix):
            continue
        try:
            record = json.loads(line[len(prefix):])
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("done") is True:
            done = True
        i = record.get("i")
        if type(i) is int and 0 <= i < n and i not in records:
            records[i] = record
    return records, done


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
    with _SLOTS.take(setup.as_root) as slot:
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
            with _SLOTS.take(self._setup.as_root) as slot:
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
