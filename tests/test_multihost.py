"""Multi-process JAX: settings from the environment, host shards, gathered rewards, FSDP memory per device,
the local launcher (2 processes on loopback = 1 process), cross-process-count checkpoints, launcher dry runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from grpo import multihost
from models.sharding import cpu_device_count
from rewards import compose

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import local as local_launch  # noqa: E402
import slurm as slurm_launch  # noqa: E402
import tpu as tpu_launch  # noqa: E402


# ---- settings ------------------------------------------------------------------------------------------

def test_no_settings_means_one_process():
    assert multihost.initialize({}) is False
    assert multihost.initialize({"QUANT_DISTRIBUTED": "off", "QUANT_COORDINATOR": "127.0.0.1:1"}) is False


@pytest.mark.parametrize("env, message", [
    ({"QUANT_COORDINATOR": "127.0.0.1:1234"}, "QUANT_NUM_PROCESSES, QUANT_PROCESS_ID missing"),
    ({"QUANT_COORDINATOR": "127.0.0.1", "QUANT_NUM_PROCESSES": "2", "QUANT_PROCESS_ID": "0"}, "not HOST:PORT"),
    ({"QUANT_COORDINATOR": "127.0.0.1:1", "QUANT_NUM_PROCESSES": "two", "QUANT_PROCESS_ID": "0"},
     "must be integers"),
    ({"QUANT_COORDINATOR": "127.0.0.1:1", "QUANT_NUM_PROCESSES": "2", "QUANT_PROCESS_ID": "2"},
     r"QUANT_PROCESS_ID=2 is not in \[0, QUANT_NUM_PROCESSES=2\)"),
    ({"QUANT_DISTRIBUTED": "yes"}, "is not one of 'auto', 'off'"),
])
def test_bad_settings_are_named_before_anything_starts(env, message):
    with pytest.raises(ValueError, match=message):
        multihost.initialize(env)


def test_cli_reports_bad_settings_in_one_line():
    env = dict(os.environ, QUANT_COORDINATOR="127.0.0.1:1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "grpo.cli", "train", "--config", "configs/tiny_arith.py:smoke"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "quant train: error: multi-process settings are incomplete: QUANT_COORDINATOR set but "
        "QUANT_NUM_PROCESSES, QUANT_PROCESS_ID missing"]


@pytest.mark.parametrize("n, count", [(0, 2), (1, 2), (7, 2), (8, 4), (10, 3), (64, 5)])
def test_shard_ranges_tile_the_items_in_order(n, count):
    ranges = [multihost.shard_range(n, i, count) for i in range(count)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_one_process_gathers_are_identities():
    assert multihost.allgather({"a": 1}) == [{"a": 1}]
    assert multihost.gather_shards(lambda: (3, 4)) == [3, 4]
    assert multihost.gather_results(lambda: "x") == ["x"]
    with pytest.raises(ZeroDivisionError):  # on one process the error itself propagates
        multihost.gather_results(lambda: 1 / 0)


def test_shard_metrics_merge_like_one_batch():
    from rewards.code import CodeReward

    reward = compose.build({"math": 1.0})

    class Shares:  # a component whose metrics are shares of the items it scored
        def metrics(self):
            return {}

    class Code:  # the code reward's own merge: statuses are shares of tests, not of items
        merge_metrics = staticmethod(CodeReward.merge_metrics)

    reward.components += [compose.Component(name="fmt", fn=Shares(), weight=0.0, batched=False),
                          compose.Component(name="code", fn=Code(), weight=0.0, batched=True)]
    none = {f"reward/code/{s}": 0.0 for s in ("fail", "timeout", "runtime_error", "memory", "output_limit")}
    merged = reward.merge_metrics([  # host 0: 3 items, 20 tests all passed; host 1: 1 item, no program
        (3, {"reward/math/timeouts": 1, "reward/fmt/x": 1 / 3, "reward/code/no_program": 0.0,
             "reward/code/tests": 20, "reward/code/pass": 1.0, **none}),
        (1, {"reward/math/timeouts": 2, "reward/fmt/x": 1.0, "reward/code/no_program": 1.0,
             "reward/code/tests": 0, "reward/code/pass": 0.0, **none}),
    ])
    assert merged["reward/math/timeouts"] == 3  # counts add up
    assert merged["reward/fmt/x"] == pytest.approx(0.5)  # (1 + 1) of 4 items
    assert merged["reward/code/no_program"] == pytest.approx(0.25)  # 1 of 4 items
    assert merged["reward/code/pass"] == 1.0 and merged["reward/code/tests"] == 20  # 20 of 20 tests
    assert merged["reward/code/fail"] == 0.0


def test_sharded_reward_on_one_process_is_the_reward():
    reward = compose.build({"math": 1.0})
    texts = ["<think>1+1</think> 2", "3", "<think>x</think> \\boxed{2}"]
    samples = [{"answer": "2"}] * 3
    total, parts = multihost.ShardedReward(reward)(texts, samples)
    want_total, want_parts = reward(texts, samples)
    np.testing.assert_array_equal(total, want_total)
    np.testing.assert_array_equal(parts["reward/math"], want_parts["reward/math"])


# ---- FSDP memory -----------------------------------------------------------------------------------------

def _bytes_per_device(tree) -> dict:
    per = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            per[shard.device] = per.get(shard.device, 0) + shard.data.nbytes
    return per


def test_fsdp_keeps_about_an_eighth_of_params_and_optimizer_state_per_device():
    import ml_collections

    from grpo.trainer import init_state, make_optimizer
    from models.config import preset
    from models.sampler import Sampler
    from models.sharding import make_mesh
    from models.transformer import init_model

    model = init_model(preset("tiny"), seed=0)
    ocfg = ml_collections.ConfigDict(dict(lr=1e-5, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                          grad_clip=1.0, b1=0.9, b2=0.99))
    optimizer, _ = make_optimizer(ocfg, 10)
    total = sum(x.nbytes for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model)))) * 3  # params, mu, nu
    per_device = {}
    for shape in [(1, 8, 1), (8, 1, 1)]:  # FSDP over 8 devices; pure data parallel as the control
        sampler = Sampler(model, mesh=make_mesh(shape))
        state, _ = init_state(sampler, optimizer, seed=0)
        per_device[shape] = _bytes_per_device((state.params, state.opt_state))
    fsdp, replicated = per_device[(1, 8, 1)], per_device[(8, 1, 1)]
    assert len(fsdp) == 8
    assert min(replicated.values()) >= total  # every device holds everything
    # only the small norm vectors (and optimizer counters) stay replicated under FSDP
    assert max(fsdp.values()) <= total / 8 * 1.02, (max(fsdp.values()), total / 8)
    assert sum(fsdp.values()) >= total  # nothing lost: the shards cover the state


# ---- local launcher ----------------------------------------------------------------------------------------

def test_local_launcher_dry_run_prints_each_process():
    out = subprocess.run([sys.executable, str(ROOT / "launch/local.py"), "--processes", "3", "--cpu-devices", "2",
                          "--port", "4567", "--dry-run", "--", "quant", "train", "--config", "c.py"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert len(out) == 3
    for i, line in enumerate(out):
        assert line.startswith(f"QUANT_COORDINATOR=127.0.0.1:4567 QUANT_NUM_PROCESSES=3 QUANT_PROCESS_ID={i} "
                               "XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu ")
        assert line.endswith(" -m grpo.cli train --config c.py")


def test_local_launcher_replaces_the_device_count_flag():
    flags = "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8"
    assert local_launch.with_device_count(flags, 4) == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=4"
    # --cpu-devices wins over an exported QUANT_CPU_DEVICES (which would override XLA's flag)
    envs = local_launch.process_envs(2, 4567, 4, {"XLA_FLAGS": flags, "QUANT_CPU_DEVICES": "1"})
    assert all("QUANT_CPU_DEVICES" not in e and cpu_device_count(e) is None for e in envs)
    # without it, the processes split this machine's cores
    envs = local_launch.process_envs(2, 4567, None, {})
    assert [cpu_device_count(e, cores=8) for e in envs] == [4, 4]


def test_local_launcher_stops_the_others_and_returns_the_failure(tmp_path):
    # process 1 fails at once; process 0 would sleep for a minute unless the launcher stops it
    script = ("import os, sys, time\n"
              "if os.environ['QUANT_PROCESS_ID'] == '1':\n    print('boom'); sys.exit(3)\n"
              "time.sleep(60)\n")
    proc = subprocess.run([sys.executable, str(ROOT / "launch/local.py"), "--processes", "2",
                           "--log-dir", str(tmp_path), "--", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 3
    assert "process 1 exited with status 3" in proc.stderr and "boom" in proc.stderr


def test_two_real_processes_gather_shard_rewards_and_fail_together(tmp_path):
    """2 processes x 2 CPU devices on loopback: gathers in process order, each host scores only its shard,
    an error on one host is raised on both, a non-shared checkpoint directory is refused on both, and a
    batch-sharded array comes back whole (the checks are in tests/multihost_worker.py)."""
    proc = subprocess.run([sys.executable, str(ROOT / "launch/local.py"), "--processes", "2", "--cpu-devices", "2",
                           "--log-dir", str(tmp_path / "logs"), "--", sys.executable,
                           str(ROOT / "tests/multihost_worker.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok 0" in proc.stdout.splitlines()
    assert "ok 1" in (tmp_path / "logs/process_1.log").read_text().splitlines()


# ---- 2 processes = 1 process ----------------------------------------------------------------------------

TRAIN = ["quant", "train", f"--config={ROOT}/configs/tiny_arith.py:smoke", "--no-progress",
         "--config.eval.datasets=()", "--config.checkpoint_every=1", "--config.rollout.max_new_tokens=24"]
# (the smoke config samples with dynamic sampling, up to 2 rounds a step: gathers in a data-dependent loop)


def _train(workdir: Path, processes: int, *overrides: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    if processes == 1:
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        cmd = [sys.executable, "-m", "grpo.cli"] + TRAIN[1:]
    else:
        cmd = [sys.executable, str(ROOT / "launch/local.py"), "--processes", str(processes), "--cpu-devices",
               str(8 // processes), "--log-dir", str(workdir.parent / f"{workdir.name}-logs"), "--"] + TRAIN
    proc = subprocess.run(cmd + [f"--workdir={workdir}", *overrides], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _metrics(workdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s/"))} for r in rows]


def _params(workdir: Path) -> list[np.ndarray]:
    from grpo.checkpoint import load_trained

    model, _, _ = load_trained(workdir)  # restored into this single process, whatever wrote it
    return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model)))]


@pytest.mark.slow
def test_two_processes_train_like_one_and_checkpoints_cross_process_counts(tmp_path):
    # (2, 4, 1): data parallel across the two processes, FSDP over each one's 4 devices
    mesh = "--config.mesh.shape=(2,4,1)"
    one, two = tmp_path / "one", tmp_path / "two"
    _train(one, 1, mesh, "--config.total_steps=2")
    _train(two, 2, mesh, "--config.total_steps=2")
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2]
    for a, b in zip(m1, m2):
        assert a.keys() == b.keys()
        for k in a:  # same samples and rewards; losses equal up to the order of float sums
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k, a[k], b[k])
    assert m1[-1]["reward/mean"] == m2[-1]["reward/mean"] and m1[-1]["accuracy"] == m2[-1]["accuracy"]
    for a, b in zip(_params(one), _params(two)):  # the 2-process checkpoint restores in this 1 process
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)
    assert (two / "config.json").exists() and (two / "summary.md").exists() is False  # no eval: no summary
    assert list((two / "plots").glob("*.png"))  # process 0 plotted

    # Resume each run with the other process count (and another mesh): 1 process restores the
    # 2-process checkpoint, 2 processes restore the 1-process one; the third step matches.
    dp = "--config.mesh.shape=(8,1,1)"
    _train(two, 1, dp, "--config.total_steps=3")
    _train(one, 2, dp, "--config.total_steps=3")
    a3, b3 = _metrics(one)[-1], _metrics(two)[-1]
    assert a3["step"] == b3["step"] == 3
    assert a3["reward/mean"] == pytest.approx(b3["reward/mean"], abs=1e-6)
    assert a3["loss"] == pytest.approx(b3["loss"], rel=1e-4, abs=1e-6)
    for a, b in zip(_params(one), _params(two)):
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-6)


# ---- cluster launchers (dry runs) ---------------------------------------------------------------------------

def test_tpu_launcher_dry_run_prints_the_gcloud_commands(capsys):
    status = tpu_launch.main(["run", "--name", "qpod", "--zone", "us-west4-a", "--project", "proj",
                              "--type", "v5litepod-16", "--create", "--dry-run", "--",
                              "quant", "train", "--config", "configs/gsm8k_qwen_math.py",
                              "--config.checkpoint_dir=gs://bucket/run"])
    assert status == 0
    lines = [line[2:] for line in capsys.readouterr().out.splitlines()]
    where = "--zone=us-west4-a --project=proj"
    assert lines[0] == (f"gcloud compute tpus tpu-vm create qpod {where} --accelerator-type=v5litepod-16 "
                        "--version=v2-alpha-tpuv5-lite")
    assert lines[1].startswith("tar -czf /tmp/quant-qpod.tar.gz --exclude=.git")
    assert lines[2] == f"gcloud compute tpus tpu-vm scp /tmp/quant-qpod.tar.gz qpod:quant.tar.gz {where} --worker=all"
    assert lines[3].startswith(f"gcloud compute tpus tpu-vm ssh qpod {where} --worker=all ")
    assert "bash scripts/setup.sh --tpu" in lines[3]
    assert lines[4].startswith(f"gcloud compute tpus tpu-vm ssh qpod {where} --worker=all ")
    assert "setsid nohup bash -c" in lines[4] and "QUANT_DISTRIBUTED=auto python3 -m grpo.cli train --config " \
        "configs/gsm8k_qwen_math.py --config.checkpoint_dir=gs://bucket/run" in lines[4]
    assert lines[5].startswith(f"gcloud compute tpus tpu-vm ssh qpod {where} --worker=0 ")
    assert "tail --pid=" in lines[5] and len(lines) == 6
    tpu_launch.main(["stop", "--name", "qpod", "--zone", "z", "--dry-run"])
    assert "kill -TERM -- -$(cat ~/quant/train.pid)" in capsys.readouterr().out


def test_tpu_worker_start_returns_at_once_and_stop_ends_the_job(tmp_path):
    """The start/stop lines the TPU launcher sends to each worker, run here by bash in a fake home:
    start returns while the job runs (ssh would otherwise wait for the whole job), the recorded pid leads
    the job's process group, stop ends it; a job that finishes leaves its exit status and log."""
    import time

    home = tmp_path / "home"
    (home / "quant").mkdir(parents=True)
    env = dict(os.environ, HOME=str(home))
    t0 = time.monotonic()
    subprocess.run(["bash", "-c", tpu_launch.start_command([sys.executable, "-c", "import time; time.sleep(60)"])],
                   env=env, check=True, timeout=20, stdin=subprocess.DEVNULL, capture_output=True)
    assert time.monotonic() - t0 < 10
    pid = int((home / "quant/train.pid").read_text())
    try:
        time.sleep(0.5)
        assert os.getpgid(pid) == pid  # a group leader: stop can signal the whole job
        out = subprocess.run(["bash", "-c", tpu_launch.stop_command()], env=env, capture_output=True, text=True,
                             timeout=20).stdout
        assert out.strip() == "stopped"
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the job survived stop")
    finally:
        try:
            os.killpg(pid, 9)  # our own job's group, if stop failed
        except (ProcessLookupError, PermissionError):
            pass
    if not Path(f"/proc/{pid}").exists():  # (a zombie nobody reaps in a container still takes signals)
        assert "no running job" in subprocess.run(["bash", "-c", tpu_launch.stop_command()], env=env,
                                                  capture_output=True, text=True, timeout=20).stdout
    subprocess.run(["bash", "-c", tpu_launch.start_command(["bash", "-c", "echo hello; exit 3"])], env=env,
                   check=True, timeout=20, stdin=subprocess.DEVNULL, capture_output=True)
    for _ in range(100):
        if (home / "quant/train.status").exists():
            break
        time.sleep(0.1)
    assert (home / "quant/train.status").read_text().strip() == "3"
    assert (home / "quant/train.log").read_text().strip() == "hello"


def test_slurm_launcher_dry_run_prints_the_batch_script(capsys):
    status = slurm_launch.main(["--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu", "--dry-run", "--",
                                "quant", "train", "--config", "configs/gsm8k_qwen_math.py",
                                "--config.mesh.shape=(1,16,1)"])
    assert status == 0
    out = capsys.readouterr().out
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu",
                 'export QUANT_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):8476"',
                 'export QUANT_NUM_PROCESSES="$SLURM_NNODES"']:
        assert line in out.splitlines()
    srun = next(line for line in out.splitlines() if line.startswith("srun "))
    assert srun.startswith('srun --cpus-per-task="$SLURM_CPUS_PER_TASK" --kill-on-bad-exit=1 bash -c ')
    assert "QUANT_PROCESS_ID=$SLURM_PROCID" in srun and "python3 -m grpo.cli train" in srun
    assert out.splitlines()[-1] == f"+ sbatch {ROOT}/runs/slurm/quant.sbatch"
