"""Runs one command as N cooperating JAX processes on this machine (coordinator on loopback).

    python launch/local.py --processes 2 -- quant train --config configs/tiny_arith.py:smoke --workdir runs/mp
    python launch/local.py --processes 2 --cpu-devices 4 -- quant train ...   # 2 x 4 fake CPU devices
    python launch/local.py --processes 2 --dry-run -- quant train ...         # print, don't run

Each process gets QUANT_COORDINATOR=127.0.0.1:PORT, QUANT_NUM_PROCESSES and QUANT_PROCESS_ID (read by
`grpo.multihost.initialize`). Process 0 prints to this terminal; the others write
LOG_DIR/process_<i>.log, whose tail is printed if they fail. If any process fails, the others are
stopped and its exit status is returned. A leading `quant` runs as `python -m grpo.cli` with this
interpreter, so no installed entry point is needed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_device_count(xla_flags: str, count: int) -> str:
    """XLA_FLAGS with --xla_force_host_platform_device_count set to `count` (replacing any other value)."""
    kept = [f for f in xla_flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join(kept + [f"--xla_force_host_platform_device_count={count}"])


def process_envs(processes: int, port: int, cpu_devices: int | None, base: dict[str, str],
                 gpus: int | None = None) -> list[dict[str, str]]:
    """The environment of each process."""
    envs = []
    for i in range(processes):
        env = dict(base, QUANT_COORDINATOR=f"127.0.0.1:{port}", QUANT_NUM_PROCESSES=str(processes),
                   QUANT_PROCESS_ID=str(i))
        env.pop("QUANT_DISTRIBUTED", None)
        if cpu_devices:
            env["XLA_FLAGS"] = with_device_count(env.get("XLA_FLAGS", ""), cpu_devices)
            env.pop("QUANT_CPU_DEVICES", None)  # would override the flag (models/sharding.py)
            env["JAX_PLATFORMS"] = "cpu"
        if gpus:  # process i gets GPUs [i * gpus, (i + 1) * gpus)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(i * gpus, (i + 1) * gpus))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        envs.append(env)
    return envs


def resolve(command: list[str]) -> list[str]:
    if command and command[0] == "quant":
        return [sys.executable, "-m", "grpo.cli"] + command[1:]
    return command


def _stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM to each still-running child (by pid), then SIGKILL after `grace` seconds."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: launch/local.py [options] -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="launch/local.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="number of processes (default 2)")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="fake CPU devices per process (sets XLA_FLAGS and JAX_PLATFORMS=cpu)")
    parser.add_argument("--gpus-per-process", type=int, default=None,
                        help="split this machine's GPUs between the processes (CUDA_VISIBLE_DEVICES); "
                             "without it every process sees every accelerator")
    parser.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--log-dir", default=None, help="where processes 1..N-1 log (default: a temp dir)")
    parser.add_argument("--dry-run", action="store_true", help="print each process's command and exit")
    args = parser.parse_args(argv[:cut])
    command = resolve(argv[cut + 1:])
    if not command:
        parser.error("no command after --")
    if args.processes < 1:
        parser.error("--processes must be >= 1")
    port = args.port or free_port()
    envs = process_envs(args.processes, port, args.cpu_devices, dict(os.environ), args.gpus_per_process)
    keys = ("QUANT_COORDINATOR", "QUANT_NUM_PROCESSES", "QUANT_PROCESS_ID", "XLA_FLAGS", "JAX_PLATFORMS",
            "CUDA_VISIBLE_DEVICES")
    if args.dry_run:
        for env in envs:
            shown = " ".join(f"{k}={shlex.quote(env[k])}" for k in keys
                             if k in env and (k != "CUDA_VISIBLE_DEVICES" or args.gpus_per_process))
            print(f"{shown} {shlex.join(command)}")
        return 0
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="quant-local-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    procs, logs = [], []
    previous = signal.signal(signal.SIGTERM, lambda *_: (_stop(procs), sys.exit(143)))
    for i, env in enumerate(envs):
        if i == 0:
            procs.append(subprocess.Popen(command, env=env, cwd=os.getcwd()))
        else:
            log = open(log_dir / f"process_{i}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(command, env=env, cwd=os.getcwd(), stdout=log, stderr=subprocess.STDOUT))
    status = 0
    try:
        while True:
            codes = [p.poll() for p in procs]  # poll every process (any() would stop at the first running one)
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.2)
        failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
        if failed:
            i, code = failed[0]
            status = code if code > 0 else 128 - code  # killed by signal s: 128 + s, as a shell reports it
            print(f"launch/local.py: process {i} exited with status {code}; stopping the others",
                  file=sys.stderr)
            _stop(procs)
            for j, _ in failed:
                if j > 0:
                    print(f"--- process {j} log ({log_dir / f'process_{j}.log'}) ---\n"
                          f"{_tail(log_dir / f'process_{j}.log')}", file=sys.stderr)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the children
        _stop(procs)
        status = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        for log in logs:
            log.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
