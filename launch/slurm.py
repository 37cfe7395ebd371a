"""Submits a `quant` command as a SLURM job on GPU nodes: one JAX process per node, all GPUs of a node.

    python launch/slurm.py --nodes 2 --gpus-per-node 8 --partition gpu --time 24:00:00 -- \\
        quant train --config configs/gsm8k_qwen_math.py --workdir runs/gsm8k --config.mesh.shape='(1,16,1)'
    python launch/slurm.py ... --dry-run      # print the batch script and the sbatch command only

The checkout must be on a file system every node sees (the workdir and checkpoints are written there),
with `bash scripts/setup.sh --cuda` run once in the Python environment the job uses. The batch script
(saved as runs/slurm/<job name>.sbatch) points every process at the first node of the allocation as the
coordinator: QUANT_COORDINATOR=<first node>:PORT, QUANT_NUM_PROCESSES=<nodes>, QUANT_PROCESS_ID=$SLURM_PROCID
(read by grpo/multihost.py). `srun --kill-on-bad-exit` ends the job when any process fails.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shell import Shell, split_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def batch_script(args: argparse.Namespace, command: list[str]) -> str:
    """The sbatch script for `command` (a leading `quant` runs as `python3 -m grpo.cli`)."""
    if command[:1] == ["quant"]:
        command = [args.python, "-m", "grpo.cli"] + command[1:]
    header = {
        "job-name": args.job_name, "nodes": args.nodes, "ntasks-per-node": 1,
        "gpus-per-node": args.gpus_per_node, "cpus-per-task": args.cpus_per_task, "time": args.time,
        "output": f"{ROOT}/runs/slurm/%x-%j.out", "partition": args.partition, "account": args.account,
    }
    lines = ["#!/bin/bash"] + [f"#SBATCH --{k}={v}" for k, v in header.items() if v]
    # each task reads its own SLURM_PROCID, so the whole command runs through bash -c in srun
    task = f"export QUANT_PROCESS_ID=$SLURM_PROCID; exec {shlex.join(command)}"
    lines += [
        "set -euo pipefail",
        f"cd {shlex.quote(str(ROOT))}",
        'export QUANT_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):'
        f'{args.port}"',
        'export QUANT_NUM_PROCESSES="$SLURM_NNODES"',
        # srun does not inherit --cpus-per-task from the allocation (Slurm >= 22.05): pass it on, so the
        # reward worker pools get the node's cores
        f'srun --cpus-per-task="$SLURM_CPUS_PER_TASK" --kill-on-bad-exit=1 bash -c {shlex.quote(task)}',
    ]
    if args.python == "python3":  # the virtual environment scripts/setup.sh makes on Python < 3.11, if any
        lines.insert(-1, f'export PATH="{ROOT}/.venv/bin:$PATH"')
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    opts, command = split_command(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="launch/slurm.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cpus-per-task", type=int, default=32, help="CPU cores per node (reward workers)")
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--job-name", default="quant")
    parser.add_argument("--port", type=int, default=8476, help="coordinator port on the first node")
    parser.add_argument("--python", default="python3", help="the interpreter of the environment to use")
    parser.add_argument("--dry-run", action="store_true", help="print the script and sbatch command only")
    args = parser.parse_args(opts)
    if not command:
        parser.error("give the command after --, e.g. -- quant train --config ...")
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser.error("--nodes and --gpus-per-node must be at least 1")
    script = batch_script(args, command)
    path = ROOT / "runs" / "slurm" / f"{args.job_name}.sbatch"
    shell = Shell(args.dry_run)
    if args.dry_run:
        print(f"# {path}\n{script}", end="")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
    shell(["sbatch", str(path)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
