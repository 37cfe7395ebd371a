"""What the cluster launchers share: run (or, in dry-run mode, only print) shell commands."""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Sequence


class Shell:
    """Runs commands, echoing each as `+ cmd`; with dry_run=True it only prints them."""

    def __init__(self, dry_run: bool = False, out=None):
        self.dry_run = dry_run
        self.out = out or sys.stdout

    def __call__(self, cmd: Sequence[str], check: bool = True) -> int:
        """Runs `cmd` (exit status; 0 in dry-run mode). With check, a failure stops the launcher."""
        print("+ " + shlex.join(cmd), file=self.out, flush=True)
        if self.dry_run:
            return 0
        status = subprocess.run(list(cmd), check=False).returncode
        if check and status != 0:
            raise SystemExit(f"command failed with status {status}: {shlex.join(cmd)}")
        return status


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher options, the command after `--`)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]
