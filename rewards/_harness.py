"""The in-sandbox harness: runs one program against test inputs and reports raw observations.

`rewards.isolate` compiles this file once with the sandbox's interpreter and sends the bytecode
with each job (compiling it per run would cost 5 ms), so it must work on its own with only the
standard library of whatever Python the sandbox runs (3.8 or newer). It never sees an expected
output: it reports what each test printed or returned, and the trusted parent process decides
pass or fail. Each test runs in a fresh `fork()` of this process, so one
test's crash, timeout or global mutation cannot leak into the next, and a fork costs about a
millisecond where a new interpreter costs fifteen.

Start-up time is most of the cost of a run, so the harness imports only light modules: the job
arrives as `marshal` data and reports are written by a small JSON encoder (`json` and `traceback`
pull in `re` and `enum`, about 10 ms each); `traceback` and `signal` load only on error paths.

Protocol. The parent writes (bytecode of this file, job) to stdin (marshal), where the job is
    {"nonce": str, "program": str, "test_seconds": float, "max_output": int,
     "tests": [{"kind": "io", "input": str}
               | {"kind": "call", "fn": str, "args": list, "kwargs": dict}
               | {"kind": "assert", "code": str}]}
and reads lines "<nonce> <json>" from our stdout: one record per test, then {"done": true}.
A test process reports values on its fd 3 as JSON lines: ["v", value] for a call's return value,
["c", j, value, ...] for the j-th rewritten top-level assert, ["end"] when an assert block
finished, ["x", why] when a value has no plain-data form.

`canon` is imported by the parent too, so both sides encode values the same way.
"""

import builtins
import marshal
import os
import select
import sys
import time

try:
    from _json import encode_basestring as _quote  # CPython's C string escaper, without `re`
except ImportError:  # pragma: no cover - other interpreters
    from json.encoder import py_encode_basestring as _quote

MEMORY_EXIT = 86  # exit status a test process uses to say it ran out of memory
_SIGKILL, _SIGXCPU = 9, 24  # Linux signal numbers (the `signal` module costs an `enum` import)
_STDERR_TAIL = 2000  # bytes of stderr kept per test for the report
_MAX_DEPTH = 64


def canon(value, depth=0):
    """Encodes a value as plain JSON data that compares the same way on both sides.

    Only exact built-in types are accepted (`type(x) is int`, not `isinstance`), so an object
    with a rigged `__eq__` or a subclass of a built-in cannot pass itself off as plain data.
    Tuples become lists; dicts, sets, bytes and non-finite floats become tagged objects, which
    no other value produces.

    Args:
        value: a return value or a literal from a test.
        depth: recursion depth so far.

    Returns:
        JSON-serializable data.

    Raises:
        TypeError: the value (or something inside it) is not plain data.
    """
    if depth > _MAX_DEPTH:
        raise TypeError("value is nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            return {"$f": repr(value)}
        return value
    if kind is list or kind is tuple:
        return [canon(item, depth + 1) for item in value]
    if kind is dict:
        return {"$d": [[canon(k, depth + 1), canon(v, depth + 1)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {"$s": [canon(item, depth + 1) for item in value]}
    if kind is bytes:
        return {"$b": value.hex()}
    raise TypeError("a %s is not plain data" % kind.__name__)


def dump(value):
    """JSON text of canonical data (None, bool, int, finite float, str, list, dict with str keys)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    kind = type(value)
    if kind is str:
        return _quote(value)
    if kind is int:
        return int.__repr__(value)  # ValueError past the int-to-str digit limit
    if kind is float:
        return float.__repr__(value)
    if kind is list:
        return "[" + ",".join([dump(item) for item in value]) + "]"
    if kind is dict:
        return "{" + ",".join([_quote(k) + ":" + dump(v) for k, v in value.items()]) + "}"
    raise TypeError("cannot encode a %s" % kind.__name__)


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _send(message):
    """Sends one value record from a test process to the harness (fd 3)."""
    try:
        line = dump(message)
    except (TypeError, ValueError, RecursionError) as e:
        line = dump(["x", str(e)[:200]])
    _write_all(3, line.encode("utf-8", "surrogatepass") + b"\n")


def _send_value(tag, values):
    try:
        encoded = [canon(v) for v in values]
    except (TypeError, RecursionError) as e:
        _send(["x", str(e)[:200]])
        return
    _send(tag + encoded)


def _check(j, *values):
    """Stands in for the j-th top-level assert of a test block: reports the values to compare."""
    _send_value(["c", j], values)


def _solution_function(namespace, name):
    if name in namespace:
        return namespace[name]
    if "Solution" in namespace:  # LeetCode-style `class Solution: def fn(self, ...)`
        return getattr(namespace["Solution"](), name)
    raise NameError("the program defines no function %r" % name)


def _exec_case(case, program):
    """Runs the program (and the call or the assert block) in this process; returns an exit code."""
    kind = case["kind"]
    namespace = {"__name__": "__main__" if kind == "io" else "solution", "__builtins__": builtins}
    status = 0
    try:
        exec(program, namespace)
        if kind == "call":
            fn = _solution_function(namespace, case["fn"])
            _send_value(["v"], [fn(*case["args"], **case["kwargs"])])
        elif kind == "assert":
            namespace["__quant_check__"] = _check
            exec(case["compiled"], namespace)
            _send(["end"])
    except SystemExit as e:
        # exit() and sys.exit(0) end a stdin/stdout program normally; any other code is an error.
        if e.code not in (None, 0):
            status = 1
            if isinstance(e.code, str):
                sys.stderr.write(e.code + "\n")
    except MemoryError:
        status = MEMORY_EXIT
    except BaseException as e:  # the program's own exception, reported as a runtime error
        status = 1
        try:  # without the harness's own frame
            import traceback

            traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        except BaseException:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    return status


def _child(case, program, stdin_fd, out_w, err_w, val_w):
    """The forked test process: wires its fds, runs the case, never returns."""
    status = 70
    try:
        os.setpgid(0, 0)  # its own process group, so the harness can kill everything it started
        os.dup2(stdin_fd, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(val_w, 3)
        # Everything else (the report pipe above all) is closed before untrusted code runs.
        os.closerange(4, 65536)
        status = _exec_case(case, program)
    finally:
        os._exit(status)


def _read_some(fd, chunks, budget):
    """Reads what is available on a non-blocking fd; returns (bytes read, reached EOF)."""
    got = 0
    while got <= budget:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return got, False
        if not data:
            return got, True
        chunks.append(data)
        got += len(data)
    return got, False


def _run_case(case, program, test_seconds, max_output):
    """Runs one test in a forked process under a wall-clock limit; returns its record."""
    stdin_fd = os.memfd_create("stdin")
    try:
        _write_all(stdin_fd, case.get("input", "").encode("utf-8", "surrogateescape"))
    except OSError as e:  # an input larger than the file-size limit
        os.close(stdin_fd)
        return {"s": "runtime_error", "err": "could not write the test input: %s" % e}
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    val_r, val_w = os.pipe()
    start = time.monotonic()
    try:
        pid = os.fork()
    except OSError as e:  # usually the process limit, still full from an earlier test's leftovers
        for fd in (stdin_fd, out_r, out_w, err_r, err_w, val_r, val_w):
            os.close(fd)
        return {"s": "runtime_error", "err": "could not start the test process: %s" % e}
    if pid == 0:
        _child(case, program, stdin_fd, out_w, err_w, val_w)
    for fd in (stdin_fd, out_w, err_w, val_w):
        os.close(fd)

    streams = {out_r: [], err_r: [], val_r: []}
    poller = select.poll()
    for fd in streams:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    pidfd = None
    if hasattr(os, "pidfd_open"):  # readable when the child exits: no polling delay
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    status, total, exited, wait_status = None, 0, False, None
    deadline = start + test_seconds
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status = "timeout"
            break
        wait_ms = int(remaining * 1000) + 1 if pidfd is not None else 5
        for fd, _ in poller.poll(wait_ms):
            if fd == pidfd:
                exited = True
                continue
            got, eof = _read_some(fd, streams[fd], max_output - total)
            total += got
            if eof:
                poller.unregister(fd)
        if total > max_output:
            status = "output_limit"
            break
        if pidfd is None:
            reaped, polled = os.waitpid(pid, os.WNOHANG)
            if reaped == pid:
                exited, wait_status = True, polled
    elapsed = time.monotonic() - start

    # Kill what the test left behind in its process group (a direct kill too, in case it left it).
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, _SIGKILL)
        except OSError:
            pass
    for fd in streams:  # whatever the test wrote before it ended is still in the pipes
        got, _ = _read_some(fd, streams[fd], max_output - total)
        total += got
        os.close(fd)
    if pidfd is not None:
        os.close(pidfd)
    if wait_status is None:  # not yet reaped by the polling fallback
        _, wait_status = os.waitpid(pid, 0)
    _reap_orphans()
    if total > max_output:
        status = "output_limit"

    err = b"".join(streams[err_r])
    record = {
        "out": b"".join(streams[out_r])[:max_output].decode("utf-8", "replace"),
        "vals": b"".join(streams[val_r])[:max_output].decode("utf-8", "replace").splitlines(),
        "err": err[-_STDERR_TAIL:].decode("utf-8", "replace"),
        "t": round(elapsed, 4),
    }
    if status is None:
        status, record["why"] = _classify(wait_status, err)
    record["s"] = status
    return record


def _reap_orphans():
    """Collects exited orphans of the program, whose zombies would count against its process limit.

    In the sandbox the harness is PID 1 of its namespace, so orphans are reparented to it.
    """
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _classify(wait_status, err):
    """Turns a test process's wait status into (status name, a few words on why)."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        import signal

        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        # SIGXCPU is the CPU-seconds rlimit running out.
        return ("timeout" if sig == _SIGXCPU else "runtime_error"), "killed by " + name
    code = os.WEXITSTATUS(wait_status)
    if code == 0:
        return "ok", ""
    if code == MEMORY_EXIT or b"MemoryError" in err[-_STDERR_TAIL:]:
        return "memory", "out of memory"
    return "runtime_error", "exit status %d" % code


def _no_dump():
    """Makes this process non-dumpable so a test, running as the same uid, cannot open
    /proc/<harness>/fd or /proc/<harness>/mem (defence in depth: the expected outputs are not
    here to steal, but the report pipe is)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except Exception:
        pass


def read_stdin():
    """Everything on fd 0 (read directly: `sys.stdin` stays untouched for the tests' children)."""
    chunks = []
    while True:
        data = os.read(0, 1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def main(job):
    """Runs the job's program on each of its tests and reports on fd 1; see the module docstring."""
    report = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    _no_dump()
    prefix = job["nonce"].encode() + b" "

    def emit(record):
        _write_all(report, prefix + dump(record).encode("utf-8", "replace") + b"\n")

    tests = job["tests"]
    try:
        program = compile(job["program"], "program.py", "exec")
        for case in tests:
            if case["kind"] == "assert":
                case["compiled"] = compile(case["code"], "test.py", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        import traceback

        detail = "".join(traceback.format_exception_only(type(e), e))[-_STDERR_TAIL:]
        for i in range(len(tests)):
            emit({"i": i, "s": "runtime_error", "err": detail})
        emit({"done": True})
        return
    for i, case in enumerate(tests):
        record = _run_case(case, program, job["test_seconds"], job["max_output"])
        record["i"] = i
        emit(record)
    emit({"done": True})


if __name__ == "__main__":  # run as a script: the job alone on stdin
    main(marshal.loads(read_stdin()))
