"""Shared by the sandbox tests: tight limits, a per-session marker, and the check for leftovers."""

from __future__ import annotations

import os
import pathlib
import time
import uuid

from rewards import sandbox

# Tight limits keep every attack short: a timeout costs at most TEST_SECONDS.
LIMITS = sandbox.Limits(cpu_seconds=1, wall_seconds=4.0, test_seconds=1.5, memory_mb=256, total_memory_mb=512,
                        max_processes=16, max_file_mb=4, max_open_files=32, max_output_bytes=1 << 16, tmp_mb=16)

# Attack programs put MARK into the names of files they try to create outside the sandbox and into the
# command lines of processes that try to outlive it, so leftovers are easy to find (and are ours).
MARK = f"quant-sbx-marker-{uuid.uuid4().hex[:12]}"
REPO = pathlib.Path(__file__).resolve().parent.parent
MARKER_DIRS = ("/tmp", os.path.expanduser("~"), os.getcwd(), str(REPO), "/")


def _status(pid: int) -> tuple[int, int, str]:
    """(real uid, parent pid, command line) of a process."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    return int(fields["Uid"].split()[0]), int(fields["PPid"]), cmdline


def _sandbox_uid(uid: int) -> bool:
    return sandbox.FIRST_UID <= uid < sandbox.FIRST_UID + sandbox.MAX_SLOTS


def stray_processes() -> list[tuple[int, int, str]]:
    """(pid, uid, command line) of leftover sandbox processes and of processes carrying MARK.

    A sandbox-uid process counts unless its chain of sandbox-uid parents leads to a live process of
    another program (a sandbox that another test session on this machine is running right now).
    """
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                table[int(entry.name)] = _status(int(entry.name))
            except (OSError, KeyError, ValueError):
                continue
    found = []
    for pid, (uid, ppid, cmdline) in table.items():
        if MARK in cmdline and pid != os.getpid():
            found.append((pid, uid, cmdline[:120]))
            continue
        if not _sandbox_uid(uid):
            continue
        while ppid in table and _sandbox_uid(table[ppid][0]):
            ppid = table[ppid][1]
        if ppid in (0, 1, os.getpid()) or ppid not in table:  # orphaned, or ours while nothing should run
            found.append((pid, uid, cmdline[:120]))
    return found


def marker_files() -> list[str]:
    """Files named after MARK in the places attacks try to write to."""
    return sorted(str(p) for d in MARKER_DIRS for p in pathlib.Path(d).glob(f"*{MARK}*"))


def wait_until_clean(timeout: float = 3.0) -> list[tuple[int, int, str]]:
    """Stray processes still there after up to `timeout` seconds (dying ones get a moment)."""
    deadline = time.monotonic() + timeout
    while (strays := stray_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return strays
