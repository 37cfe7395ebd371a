"""A memory cgroup per sandbox slot: one cap on all the memory a run uses, whatever holds it.

rlimits are per process: RLIMIT_AS bounds each process, so a program that forks 30 children of
500 MB each stays within them, and memory held outside any address space (tmpfs files, SysV shared
memory, memfds, pipes) is not counted at all. A memory cgroup counts every page the run touches.

Available only as root with a writable cgroup file system: cgroup v1 (a `memory` hierarchy) or v2
(when our own cgroup is the namespace root, the one place where a v2 cgroup may have both processes
and children). Elsewhere `find()` returns None and the rlimits are the only memory bound.
A run joins its cgroup through `sh -c 'echo $$ > cgroup.procs; exec ...'` at the head of its
command chain, since a `preexec_fn` is not safe in the trainer.
"""

from __future__ import annotations

import atexit
import os

_PREFIX = "quant-sandbox"


class MemoryCgroups:
    """Per-slot memory cgroups under `base` (a directory of a v1 memory hierarchy or of cgroup v2)."""

    def __init__(self, base: str, v2: bool):
        self.base, self.v2 = base, v2
        atexit.register(self.remove)

    def remove(self) -> None:
        """Removes the (empty) slot cgroups at exit; ones still in use by another process stay."""
        root = os.path.join(self.base, _PREFIX)
        names = [name for name in os.listdir(root) if name.startswith("slot-")] if os.path.isdir(root) else []
        for path in [os.path.join(root, name) for name in names] + [root]:
            try:
                os.rmdir(path)
            except OSError:
                pass

    def prepare(self, slot: int, limit_bytes: int) -> str:
        """Creates (or reuses) the slot's cgroup with this memory limit; returns its cgroup.procs path."""
        path = os.path.join(self.base, _PREFIX, f"slot-{slot}")
        os.makedirs(path, exist_ok=True)
        if self.v2:
            _write(os.path.join(path, "memory.max"), limit_bytes)
            _try_write(os.path.join(path, "memory.swap.max"), 0)  # absent without swap accounting
        else:
            # memory+swap must stay >= memory: the order of the two writes depends on the direction.
            memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
            if not _try_write(memsw, limit_bytes):
                _write(os.path.join(path, "memory.limit_in_bytes"), limit_bytes)
                _try_write(memsw, limit_bytes)
            else:
                _write(os.path.join(path, "memory.limit_in_bytes"), limit_bytes)
        return os.path.join(path, "cgroup.procs")

    def oom_kills(self, slot: int) -> int:
        """How many processes the kernel has killed for this slot's limit so far."""
        path = os.path.join(self.base, _PREFIX, f"slot-{slot}", "memory.events" if self.v2 else "memory.oom_control")
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            pass
        return 0


def _write(path: str, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _try_write(path: str, value: int) -> bool:
    try:
        _write(path, value)
        return True
    except OSError:
        return False


def _own_path(controller: str) -> str | None:
    """Our cgroup's path in the hierarchy of `controller` ("" for cgroup v2), from /proc/self/cgroup."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    return None


def find() -> MemoryCgroups | None:
    """The memory cgroups this process can create for its sandboxes, checked by making one; or None."""
    if os.geteuid() != 0:
        return None
    candidates = []
    try:
        v1 = _own_path("memory")
        if v1 is not None and os.path.isdir("/sys/fs/cgroup/memory"):
            candidates.append((os.path.join("/sys/fs/cgroup/memory", v1.lstrip("/")), False))
        if _own_path("") == "/" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            candidates.append(("/sys/fs/cgroup", True))
    except (OSError, ValueError):
        return None
    for base, v2 in candidates:
        try:
            if v2:  # let our sandboxes' parent cgroup hand the memory controller down
                with open(os.path.join(base, "cgroup.controllers")) as f:
                    if "memory" not in f.read().split():
                        continue
                _write_text(os.path.join(base, "cgroup.subtree_control"), "+memory")
                os.makedirs(os.path.join(base, _PREFIX), exist_ok=True)
                _write_text(os.path.join(base, _PREFIX, "cgroup.subtree_control"), "+memory")
            groups = MemoryCgroups(base, v2)
            groups.prepare(0, 1 << 30)
            return groups
        except OSError:
            continue
    return None


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
