"""Runs a `quant` command on every worker of a Cloud TPU VM slice (a pod slice is one JAX process per host).

    # create a v5e-16 slice (4 hosts), copy this checkout, install, start training, follow worker 0
    python launch/tpu.py run --name quant-v5e --zone us-west4-a --type v5litepod-16 --create -- \\
        quant train --config configs/gsm8k_qwen_math.py --workdir runs/gsm8k \\
        --config.mesh.shape='(1,16,1)' --config.checkpoint_dir=gs://my-bucket/quant/gsm8k
    python launch/tpu.py logs   --name quant-v5e --zone us-west4-a   # follow worker 0 again
    python launch/tpu.py stop   --name quant-v5e --zone us-west4-a   # stop the job on all workers
    python launch/tpu.py delete --name quant-v5e --zone us-west4-a   # delete the slice
    python launch/tpu.py ... --dry-run                               # print the gcloud commands only

Every step is a plain `gcloud compute tpus tpu-vm` command (printed as it runs). The job starts under
`setsid nohup` on each worker with QUANT_DISTRIBUTED=auto (JAX finds its peers from the TPU metadata),
its output in ~/quant/train.log; `run` then follows worker 0's log until the job ends and returns its
exit status. Ctrl-C while following stops the job on all workers (`--detach` leaves it running).
Checkpoints must go where every host can write: pass --config.checkpoint_dir=gs://BUCKET/PATH.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shell import Shell, split_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REMOTE = "quant"  # the checkout's directory under each worker's home
LOG, PID, STATUS = f"{REMOTE}/train.log", f"{REMOTE}/train.pid", f"{REMOTE}/train.status"


def start_command(command: list[str]) -> str:
    """The shell line that starts `command` on a worker and returns at once.

    Only `setsid` goes to the background (with every stream redirected, so ssh does not wait for the
    job); its pid, recorded in ~/quant/train.pid, leads the job's new process group, which `stop` signals.
    The job runs in the setup's virtual environment and records its exit status for `follow`.
    """
    job = (f"PATH=$HOME/{REMOTE}/.venv/bin:$PATH QUANT_DISTRIBUTED=auto {shlex.join(command)}; "
           f"echo $? > ~/{STATUS}")
    return (f"cd ~/{REMOTE} || exit 1; rm -f ~/{STATUS}; "
            f"setsid nohup bash -c {shlex.quote(job)} > ~/{LOG} 2>&1 < /dev/null & echo $! > ~/{PID}")


def stop_command() -> str:
    """Signals the job's process group (see `start_command`); says so when there is nothing to stop."""
    return (f"if test -f ~/{PID} && kill -TERM -- -$(cat ~/{PID}) 2>/dev/null; then echo stopped; "
            f"else echo 'no running job'; fi")


class TPU:
    """The gcloud commands for one TPU VM slice."""

    def __init__(self, args: argparse.Namespace, shell: Shell):
        self.args, self.sh = args, shell

    def _where(self) -> list[str]:
        a = self.args
        return [f"--zone={a.zone}"] + ([f"--project={a.project}"] if a.project else [])

    def ssh(self, command: str, worker: str = "all", check: bool = True) -> int:
        return self.sh(["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.args.name, *self._where(),
                 f"--worker={worker}", f"--command={command}"], check=check)

    def create(self) -> None:
        a = self.args
        self.sh(["gcloud", "compute", "tpus", "tpu-vm", "create", a.name, *self._where(),
                 f"--accelerator-type={a.type}", f"--version={a.version}"] + (["--spot"] if a.spot else []))

    def copy_code(self) -> None:
        archive = f"/tmp/quant-{self.args.name}.tar.gz"
        self.sh(["tar", "-czf", archive, "--exclude=.git", "--exclude=runs", "--exclude=__pycache__",
                 "--exclude=*.egg-info", "-C", str(ROOT), "."])
        self.sh(["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{self.args.name}:quant.tar.gz",
                 *self._where(), "--worker=all"])
        # unpacked over the previous copy: WORKDIRs under ~/quant/runs survive, so re-running resumes
        self.ssh(f"mkdir -p ~/{REMOTE} && tar -xzf ~/quant.tar.gz -C ~/{REMOTE} && "
                 f"cd ~/{REMOTE} && bash scripts/setup.sh --tpu")

    def start(self, command: list[str]) -> None:
        if command[:1] == ["quant"]:  # no reliance on the entry point being on a non-login PATH
            command = ["python3", "-m", "grpo.cli"] + command[1:]
        self.ssh(start_command(command))

    def follow(self) -> int:
        """Streams worker 0's log until the job ends; returns the job's exit status there."""
        return self.ssh(f"tail --pid=$(cat ~/{PID}) -n +1 -F ~/{LOG}; exit $(cat ~/{STATUS} 2>/dev/null || echo 1)",
                        worker="0", check=False)

    def stop(self) -> None:
        # the job leads its own process group (setsid): signal the group by the recorded pid
        self.ssh(stop_command())

    def delete(self) -> None:
        self.sh(["gcloud", "compute", "tpus", "tpu-vm", "delete", self.args.name, *self._where(), "--quiet"])


def main(argv: list[str] | None = None) -> int:
    opts, command = split_command(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["run", "logs", "stop", "delete"])
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default=None, help="default: gcloud's configured project")
    parser.add_argument("--type", default="v5litepod-16", help="accelerator type for --create (e.g. v4-32)")
    parser.add_argument("--version", default="v2-alpha-tpuv5-lite",
                        help="TPU VM software version for --create (v4: tpu-ubuntu2204-base)")
    parser.add_argument("--create", action="store_true", help="create the slice first")
    parser.add_argument("--spot", action="store_true", help="create it as a Spot VM")
    parser.add_argument("--skip-setup", action="store_true", help="reuse the code already on the workers")
    parser.add_argument("--detach", action="store_true", help="start the job and return without following")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args(opts)
    tpu = TPU(args, Shell(args.dry_run))
    if args.action == "run":
        if not command:
            parser.error("run needs the command after --, e.g. -- quant train --config ...")
        if args.create:
            tpu.create()
        if not args.skip_setup:
            tpu.copy_code()
        try:
            tpu.start(command)
            if args.detach:
                return 0
            return tpu.follow()
        except KeyboardInterrupt:
            print("\nstopping the job on all workers", file=sys.stderr)
            tpu.stop()
            return 130
    if args.action == "logs":
        return tpu.follow()
    if args.action == "stop":
        tpu.stop()
        return 0
    tpu.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
