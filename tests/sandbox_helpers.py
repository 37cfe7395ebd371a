"""Shared by the sandbox tests: tight limits, a per-session marker, and the check for leftovers."""

from __future__ import annotations

import os
import pathlib
import time
import uuid

from rewards import sandbox

# Tight limits keep every attack short: a timeout costs at most TEST_SECONDS.
LIMITS = sandbox.Limits(cpu_seconds=1, wall_seconds=4.0, test_seconds=1.5, memory_mb=256, max_processes=16,
                        max_file_mb=4, max_open_files=32, max_output_bytes=1 << 16, tmp_mb=16)

# Attack programs put MARK into the names of files they try to create outside the sandbox and into the
# command lines of processes that try to outlive it, so leftovers are easy to find (and are ours).
MARK = f"quant-sbx-marker-{uuid.uuid4().hex[:12]}"
REPO = pathlib.Path(__file__).resolve().parent.parent
MARKER_DIRS = ("/tmp", os.path.expanduser("~"), os.getcwd(), str(REPO), "/")


def stray_processes() -> list[tuple[int, int, str]]:
    """(pid, uid, command line) of processes run by a sandbox uid or carrying MARK."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except (OSError, StopIteration):
            continue
        if sandbox.FIRST_UID <= uid < sandbox.FIRST_UID + sandbox.MAX_SLOTS or MARK in cmdline:
            found.append((int(entry.name), uid, cmdline[:120]))
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
