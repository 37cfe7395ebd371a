"""A small pool of worker processes with a hard wall-clock timeout per item.

Rewards run untrusted, model-written inputs through libraries (sympy, later code sandboxes) that can
spin for minutes or eat all memory on a single bad input. The trainer is a multi-threaded JAX process,
so the usual tricks are off the table: `signal.alarm` only works on the main thread (math-verify's
timeouts silently return False in worker threads) and `fork` from a threaded process can deadlock.

This pool therefore:
  * starts each worker as a fresh interpreter (`subprocess`, i.e. fork+exec like multiprocessing's
    'spawn', never a bare fork) that imports a handler module and serves items over two pipes;
  * sends items in chunks (one message per chunk, not per item) but gets one reply per item, so the
    parent always knows which item a worker is on;
  * enforces the timeout in the parent: if a worker makes no progress for `timeout_s`, the item it is
    on scores `TIMEOUT`, the worker is killed and replaced, and the rest of its chunk goes to others;
  * treats a worker that dies (segfault, SIGKILL, OOM) the same way, with status `CRASH`;
  * recycles workers after `max_items_per_worker` items, and caps each worker's address space so a
    memory blow-up kills only that worker;
  * starts lazily, is reusable, is safe to call from any thread (calls are serialised by a lock) and
    is closed at interpreter exit.

The handler module must define `handle(item) -> value` (picklable in and out) and may define `init()`,
which runs once per worker before it reports ready (use it to import and warm up heavy libraries).
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import os
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection, wait

OK = "ok"  # handler returned normally; value is its return value
ERROR = "error"  # handler raised; value is a short description
TIMEOUT = "timeout"  # no reply within timeout_s; the worker was killed
CRASH = "crash"  # the worker died while on this item


@dataclasses.dataclass
class PoolStats:
    """Counters since the pool was created (monotonic, for logging deltas)."""

    items: int = 0
    timeouts: int = 0
    crashes: int = 0
    errors: int = 0
    workers_started: int = 0
    workers_recycled: int = 0


class _Worker:
    """Parent-side handle of one worker process and the items it is working on."""

    def __init__(self, cmd: list[str], env: dict, memory_limit_mb: int):
        # Two one-way pipes; the child gets its ends as inherited fds (pass_fds), nothing else.
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        args = [*cmd, str(to_child_r), str(from_child_w), str(memory_limit_mb)]
        try:
            self.proc = subprocess.Popen(
                args,
                env=env,
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the protocol has its own fds; libraries may print
                start_new_session=True,  # a Ctrl-C in the terminal should reach only the parent
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.recv_conn = Connection(from_child_r, writable=False)
        self.started_at = time.monotonic()
        self.ready = False
        self.inflight: collections.deque = collections.deque()  # item indices, in processing order
        self.last_progress = 0.0
        self.items_done = 0

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        self.send_conn.close()
        self.recv_conn.close()

    def retire(self) -> None:
        """Asks an idle worker to exit without waiting for it; `reap` collects it later."""
        try:
            self.send_conn.send(None)
        except OSError:
            pass
        self.send_conn.close()
        self.recv_conn.close()


class WorkerPool:
    """Runs `handler.handle(item)` for many items across worker processes, each under a timeout.

    Args:
      handler: importable module name defining `handle(item)` and optionally `init()`.
      num_workers: worker processes; defaults to the CPUs this process may use (at most 8).
      timeout_s: hard wall-clock limit per item, measured from when the worker could start it.
      max_items_per_worker: a worker is replaced after this many items (bounds cache/memory growth).
      memory_limit_mb: RLIMIT_AS for each worker; 0 disables the limit.
      chunk_size: most items sent to a worker in one message.
      start_timeout_s: how long a new worker may take to import and warm up before it is retried.
    """

    def __init__(
        self,
        handler: str,
        num_workers: int | None = None,
        timeout_s: float = 1.5,
        max_items_per_worker: int = 10_000,
        memory_limit_mb: int = 2048,
        chunk_size: int = 16,
        start_timeout_s: float = 60.0,
    ):
        if num_workers is None:
            num_workers = min(8, len(os.sched_getaffinity(0)))
        if num_workers < 1 or timeout_s <= 0 or chunk_size < 1 or max_items_per_worker < 1:
            raise ValueError("num_workers, timeout_s, chunk_size, max_items_per_worker must be > 0")
        self.handler = handler
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.max_items_per_worker = max_items_per_worker
        self.memory_limit_mb = memory_limit_mb
        self.chunk_size = chunk_size
        self.start_timeout_s = start_timeout_s
        self.stats = PoolStats()
        self._workers: list[_Worker] = []
        self._retired: list[subprocess.Popen] = []  # asked to exit, not yet reaped
        self._lock = threading.Lock()
        entry = f"from rewards.pool import _child_main; _child_main({handler!r})"
        self._cmd = [sys.executable, "-c", entry]
        # The child must import the same code as the parent, wherever it came from (PYTHONPATH=.,
        # an editable install, pytest's rootdir insertion), so hand it our sys.path explicitly.
        paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
        self._env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1")
        _live_pools.add(self)

    def start(self, wait_ready: bool = False) -> None:
        """Starts missing workers; with wait_ready, blocks until all have warmed up."""
        with self._lock:
            self._ensure_workers()
            if wait_ready:
                deadline = time.monotonic() + self.start_timeout_s
                failed_starts = 0
                while not all(w.ready for w in self._workers):
                    if time.monotonic() > deadline or failed_starts >= 3 * self.num_workers:
                        raise RuntimeError(f"workers for {self.handler!r} did not start; see "
                                           "their stderr above (is the package importable?)")
                    failed_starts += self._poll(results=None, pending=None, timeout=0.05)

    def close(self) -> None:
        """Stops all workers. The pool can be started again afterwards."""
        # Bounded wait: at interpreter exit a daemon thread may still hold the lock mid-batch, and
        # exiting must not hang on it; the workers are killed either way.
        locked = self._lock.acquire(timeout=5.0)
        try:
            workers, self._workers = self._workers, []
            for w in workers:
                w.retire()
            deadline = time.monotonic() + 0.5
            for proc in [w.proc for w in workers] + self._retired:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._retired = []
        finally:
            if locked:
                self._lock.release()

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def _spawn(self) -> _Worker:
        self.stats.workers_started += 1
        return _Worker(self._cmd, self._env, self.memory_limit_mb)

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())

    def _replace(self, w: _Worker, kill: bool = True) -> None:
        if kill:
            w.kill()
        else:
            w.retire()
            self._retired.append(w.proc)
        self._retired = [p for p in self._retired if p.poll() is None]
        self._workers[self._workers.index(w)] = self._spawn()

    def map(self, items: list) -> list[tuple[str, object]]:
        """Runs the handler on every item.

        Args:
          items: picklable inputs for `handle`.

        Returns:
          One `(status, value)` per item, in order; status is OK, ERROR, TIMEOUT or CRASH.
        """
        if not items:
            return []
        with self._lock:
            return self._map_locked(items)

    def _map_locked(self, items: list) -> list[tuple[str, object]]:
        results: list = [None] * len(items)
        pending = collections.deque(range(len(items)))
        self._ensure_workers()
        failed_starts = 0
        while pending or any(w.inflight for w in self._workers):
            now = time.monotonic()
            # Hand out work: one chunk per idle, warmed-up worker. Sizing chunks from what is left
            # keeps all workers busy at the end of a batch instead of one worker holding the tail.
            chunk = max(1, min(self.chunk_size, -(-len(pending) // (2 * self.num_workers))))
            for w in list(self._workers):
                if w.ready and not w.inflight and w.items_done >= self.max_items_per_worker:
                    self.stats.workers_recycled += 1
                    self._replace(w, kill=False)
                    continue
                if w.ready and not w.inflight and pending:
                    budget = self.max_items_per_worker - w.items_done
                    idx = [pending.popleft() for _ in range(min(chunk, len(pending), budget))]
                    try:
                        w.send_conn.send([(i, items[i]) for i in idx])
                    except OSError:  # died while idle: nobody to blame, retry the items elsewhere
                        pending.extendleft(reversed(idx))
                        self._replace(w)
                        continue
                    w.inflight.extend(idx)
                    w.last_progress = now
            # Wait for replies, or for the earliest deadline.
            deadlines = [w.last_progress + self.timeout_s for w in self._workers if w.inflight]
            deadlines += [w.started_at + self.start_timeout_s for w in self._workers if not w.ready]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.05
            failed_starts += self._poll(results, pending, timeout)
            # Enforce deadlines.
            now = time.monotonic()
            for w in list(self._workers):
                if w.inflight and now > w.last_progress + self.timeout_s:
                    self._fail_current(w, TIMEOUT, results, pending)
                elif not w.ready and now > w.started_at + self.start_timeout_s:
                    failed_starts += 1
                    self._replace(w)
            if failed_starts >= 3 * self.num_workers:
                raise RuntimeError(
                    f"worker processes for {self.handler!r} keep failing to start; "
                    "see their stderr above (is the package importable?)"
                )
        self.stats.items += len(items)
        return results

    def _poll(self, results, pending, timeout: float) -> int:
        """Reads every available reply; handles dead workers. Returns the number of failed starts."""
        failed_starts = 0
        by_conn = {w.recv_conn: w for w in self._workers}
        for conn in wait(list(by_conn), timeout=timeout):
            w = by_conn[conn]
            try:
                while conn.poll():
                    msg = conn.recv()
                    if msg == "ready":
                        w.ready = True
                        continue
                    idx, status, value = msg
                    if w.inflight and w.inflight[0] == idx:
                        w.inflight.popleft()
                        results[idx] = (status, value)
                        self.stats.errors += status == ERROR
                        w.items_done += 1
                        w.last_progress = time.monotonic()
            except (EOFError, OSError):
                if not w.ready:
                    failed_starts += 1
                    self._replace(w)
                else:
                    self._fail_current(w, CRASH, results, pending)
        return failed_starts

    def _fail_current(self, w: _Worker, status: str, results, pending) -> None:
        """Scores the item `w` is stuck on as `status`, requeues the rest, replaces the worker."""
        if w.inflight:
            results[w.inflight.popleft()] = (status, None)
            if status == TIMEOUT:
                self.stats.timeouts += 1
            else:
                self.stats.crashes += 1
            pending.extendleft(reversed(w.inflight))
            w.inflight.clear()
        self._replace(w)


# Pools still alive at interpreter exit get their workers stopped (a weak set, so pools that were
# garbage collected are not kept alive by this registry).
_live_pools: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for pool in list(_live_pools):
        pool.close()


def _child_main(handler: str) -> None:
    """Entry point of a worker process: `python -c ... _child_main(handler) <rfd> <wfd> <mem_mb>`."""
    import importlib
    import resource

    rfd, wfd, mem_mb = (int(a) for a in sys.argv[1:4])
    if mem_mb > 0:
        limit = mem_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # An idle worker exits when its pipe closes, but a busy one would finish its item first (maybe
    # hours, for a hung one) if the parent died without closing it (SIGKILL). A watchdog thread
    # notices the re-parenting and exits at once. (PR_SET_PDEATHSIG would fire when the parent
    # *thread* that started us exits, which a multi-threaded trainer does routinely.)
    parent = os.getppid()

    def watchdog():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    recv_conn = Connection(rfd, writable=False)
    send_conn = Connection(wfd, readable=False)
    module = importlib.import_module(handler)
    if hasattr(module, "init"):
        module.init()
    try:
        send_conn.send("ready")
        while True:
            chunk = recv_conn.recv()
            if chunk is None:
                return
            for idx, item in chunk:
                try:
                    reply = (idx, OK, module.handle(item))
                except BaseException as e:  # noqa: BLE001 - any failure of one item is that item's
                    reply = (idx, ERROR, _describe(e))
                try:
                    send_conn.send(reply)
                except (OSError, EOFError):
                    raise
                except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result
                    send_conn.send((idx, ERROR, _describe(e)))
    except (EOFError, OSError):  # the parent closed our pipes or went away: just exit
        return


def _describe(e: BaseException) -> str:
    # str() of an exception can itself be slow or fail (it may hold a huge sympy expression or an
    # int too long to print), so keep only what is cheap and bounded.
    try:
        text = str(e)[:200]
    except Exception:  # noqa: BLE001
        text = ""
    return f"{type(e).__name__}: {text}"
