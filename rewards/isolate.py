"""The process layer of the sandbox: one command chain per run, its slot, and its clean-up.

`rewards.sandbox` decides what runs and judges it; this module starts

    prlimit -> setpriv (dedicated uid) -> taskset (CPU) -> bwrap (namespaces) -> python3 -I -c <harness>

without `preexec_fn`, feeds the harness its job, collects its report under a wall clock and an
output cap, and makes sure nothing of the run survives it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import marshal
import os
import pathlib
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from rewards import memcg

FIRST_UID = 61000  # sandboxes run as FIRST_UID + slot when we are root; no account should own these
MAX_SLOTS = 64  # concurrent runs per machine
HELPERS = 2  # processes of the chain that count towards RLIMIT_NPROC: bwrap and the harness
HARNESS = (pathlib.Path(__file__).parent / "_harness.py").read_text()
# What `python -c` runs: unpack (harness bytecode, job) from stdin and run the harness on the job.
BOOT = ("import marshal, os\nchunks = []\nwhile True:\n    chunk = os.read(0, 1 << 20)\n    if not chunk:\n"
        "        break\n    chunks.append(chunk)\ncode, job = marshal.loads(b''.join(chunks))\n"
        "scope = {'__name__': 'quant_harness'}\nexec(marshal.loads(code), scope)\nscope['main'](job)\n")
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}


@dataclasses.dataclass(frozen=True)
class Setup:
    """How runs are started on this machine (found once by `rewards.sandbox`)."""

    isolated: bool  # False only in the weak mode the caller opted into
    tools: dict  # name -> absolute path; "bwrap_flags": optional bwrap hardening flags
    as_root: bool  # we can switch to the dedicated uids
    harness: bytes  # the harness compiled by the sandbox's interpreter (`compile_harness`)
    cgroups: memcg.MemoryCgroups | None = None  # a memory cap for each run as a whole, when available


def compile_harness(python: str) -> bytes:
    """Bytecode of the harness made by `python` itself, so it matches that interpreter's version.

    Raises:
        RuntimeError: the interpreter could not compile it (the message has its stderr).
    """
    script = ("import marshal, sys\n"
              "sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.read(), '<harness>', 'exec')))")
    proc = subprocess.run([python, "-I", "-c", script], input=HARNESS.encode(), capture_output=True, env={}, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode("utf-8", "replace")[-1000:])
    return proc.stdout


@dataclasses.dataclass(frozen=True)
class RawRun:
    """What one run produced, before judging."""

    records: dict  # test index -> the harness's record of it
    error: str  # a problem with the run as a whole, or ""
    missing: str  # the status of a test without a record
    seconds: float
    oom_killed: bool = False  # the kernel killed a process of the run for its memory cgroup limit


class Slots:
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
    def __init__(self, slots: Slots, as_root: bool):
        self._slots, self._as_root = slots, as_root

    def __enter__(self) -> int:
        self.slot = self._slots.acquire(self._as_root)
        return self.slot

    def __exit__(self, *exc) -> None:
        self._slots.release(self.slot)


SLOTS = Slots()


def _lock_uid(uid: int) -> int | None:
    """An flock-ed descriptor proving this process owns `uid` now, or None if another process does."""
    directory = "/run/quant-sandbox"
    if not os.access("/run", os.W_OK):
        directory = os.path.join(tempfile.gettempdir(), "quant-sandbox-locks")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, f"{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def command(setup: Setup, limits, slot: int, cpu: int | None, info_fd: int | None) -> list[str]:
    """The prlimit -> setpriv -> taskset -> bwrap -> python chain for one run."""
    uid = FIRST_UID + slot if setup.as_root else None
    nproc = limits.max_processes + HELPERS
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
                "--chdir", "/tmp", "--remount-ro", "/", "--remount-ro", "/dev", "--clearenv"]
        for name, value in ENV.items():
            cmd += ["--setenv", name, value]
        cmd += ["--info-fd", str(info_fd)]
    return cmd + [limits.python, "-I", "-c", BOOT]


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
    return sum(threads for _, owner, _, threads in _processes() if owner == uid)


_WANTED = (b"State", b"Uid", b"Threads")


def _processes():
    """(pid, real uid, state letter, threads) of every process; vanished ones are skipped."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                text = f.read()
        except OSError:
            continue
        fields = {}
        for line in text.split(b"\n"):
            key = line[:line.find(b":")]
            if key in _WANTED:
                fields[key] = line.split()[1]
        state = fields.get(b"State", b"?").decode()
        yield int(name), int(fields.get(b"Uid", -1)), state, int(fields.get(b"Threads", 1))


def kill_uid(uid: int) -> int:
    """SIGKILLs every process of a dedicated sandbox uid (pidfds, so a reused pid is never hit)."""
    killed = 0
    for pid, owner, state, _ in _processes():
        if owner != uid or state == "Z":
            continue
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


def execute(program: str, payloads: list[dict], limits, setup: Setup, slot: int, cpu: int | None) -> RawRun:
    """Runs the harness on one program and its test inputs through the chain, in `slot`.

    Args:
        program: the untrusted source.
        payloads: per test, what the harness may see (`rewards.judge.Case.payload`).
        limits: a `rewards.sandbox.Limits`.
        setup: how to start the chain.
        slot: the slot held for this run (its uid when root).
        cpu: the CPU to pin the run to, or None.

    Returns:
        The harness's records and what went wrong with the run as a whole.
    """
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    # marshal: the harness starts faster without `json`; version 4 reads the same in any Python 3.4+.
    job = marshal.dumps((setup.harness, {"nonce": nonce, "program": program, "tests": payloads,
                         "test_seconds": float(limits.test_seconds), "max_output": limits.max_output_bytes}), 4)
    info_r, info_w = os.pipe() if setup.isolated else (None, None)
    workdir = None
    if not setup.isolated:  # the weak mode's throwaway working directory, removed below
        workdir = tempfile.mkdtemp(prefix="quant-sandbox-")
        if setup.as_root:
            os.chown(workdir, FIRST_UID + slot, FIRST_UID + slot)
    env = {} if setup.isolated else {**ENV, "HOME": workdir, "TMPDIR": workdir}
    cmd = command(setup, limits, slot, cpu, info_w)
    cgroups = setup.cgroups if limits.total_memory_mb else None
    if cgroups:  # join the slot's memory cgroup first; everything the chain starts stays in it
        procs = cgroups.prepare(slot, limits.total_memory_mb << 20)
        ooms_before = cgroups.oom_kills(slot)
        cmd = [setup.tools["sh"], "-c", 'echo $$ > "$0" && exec "$@"', procs] + cmd
    try:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=workdir or "/",
                                    start_new_session=True, pass_fds=(info_w,) if info_w is not None else ())
        finally:
            if info_w is not None:
                os.close(info_w)
        stop, info = "interrupted", b""  # why the run was cut short; "" if it ended by itself
        try:
            # The harness's report: per test at most its output cap (JSON-escaped: up to 6x), plus slack.
            cap = (len(payloads) + 1) * (7 * limits.max_output_bytes + 4096)
            out, err, info, stop = _communicate(proc, job, info_r, start + limits.wall_seconds, cap)
        finally:
            if not stop:  # the pipes closed; bwrap exits right after its init (the harness)
                try:
                    proc.wait(timeout=max(1.0, start + limits.wall_seconds - time.monotonic()))
                except subprocess.TimeoutExpired:
                    stop = "wall-clock limit"
            if stop:
                _kill_tree(proc, info, setup.isolated)
            proc.wait()
            if setup.as_root and (stop or not setup.isolated):
                kill_uid(FIRST_UID + slot)  # the namespace already took everything with it; a backstop
    finally:
        if info_r is not None:
            os.close(info_r)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    records, done = _parse_report(out, nonce, len(payloads))
    # A test without a record: the run was cut off before it, or the harness died (killed itself).
    missing = {"": "runtime_error", "wall-clock limit": "timeout", "report too large": "output_limit"}[stop]
    error = stop or ("" if done else "the harness stopped early: " + err.decode("utf-8", "replace")[-1500:])
    oom_killed = bool(cgroups) and cgroups.oom_kills(slot) > ooms_before
    if oom_killed and missing == "runtime_error":
        missing = "memory"
    return RawRun(records, error, missing, time.monotonic() - start, oom_killed)


def _communicate(proc, job: bytes, info_r: int | None, deadline: float, cap: int):
    """Feeds the job and reads stdout/stderr/info until EOF, the deadline, or `cap` bytes.

    Returns:
        (stdout, stderr tail, bwrap info, why it stopped early: "" if it did not).
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
    view, stop = memoryview(job), ""
    while reading or view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stop = "wall-clock limit"
            break
        if sizes[proc.stdout.fileno()] > cap:
            stop = "report too large"
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
    return out, err, info, stop


def _kill_tree(proc, info: bytes, isolated: bool) -> None:
    """Kills the sandbox's PID-namespace init (the harness), which takes every process inside with it.

    Killing it rather than the bwrap we started lets bwrap reap it and exit normally, so no
    zombie is orphaned to the machine's init. Without namespaces (weak mode) the harness is our
    child and leads its process group; what left the group is found by uid afterwards.
    """
    if isolated:
        try:
            os.kill(int(json.loads(info)["child-pid"]), signal.SIGKILL)
            proc.wait(timeout=1.0)
            return
        except (ValueError, KeyError, TypeError, OSError, subprocess.TimeoutExpired):
            pass  # no info yet (bwrap was still starting), or bwrap did not exit
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # with bwrap, --die-with-parent takes the namespace down
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


