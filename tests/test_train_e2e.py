"""End-to-end `quant train` runs on the tiny preset: outputs, exact resume after kill -9, config errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = [f"--config={ROOT}/configs/gsm8k_qwen_math.py:smoke", "--no-progress"]
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
           PYTHONPATH=str(ROOT))


def quant(*args, check=True, **kw):
    proc = subprocess.run([sys.executable, "-m", "grpo.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"quant {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def final_params(workdir: Path, step: int) -> list[np.ndarray]:
    """Parameters of checkpoint `step`, read back with orbax (no trainer involved)."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(workdir / "checkpoints") as mngr:
        restored = mngr.restore(step, args=ocp.args.StandardRestore())
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(restored["params"])]


@pytest.mark.slow
def test_train_writes_outputs_and_resumes_exactly_after_kill(tmp_path):
    overrides = ["--config.total_steps=4", "--config.checkpoint_every=1"]
    ref = tmp_path / "ref"
    quant("train", *SMOKE, f"--workdir={ref}", *overrides)
    rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("reward/mean", "reward/math", "reward/format", "accuracy", "kl", "clip_frac", "grad_norm", "lr",
                "completion_len/mean", "think_len/mean", "frac_zero_std_groups", "time/sample_s", "entropy"):
        assert key in rows[-1], key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step's policy is the reference
    assert rows[-1]["kl"] > 0
    assert {p.name for p in (ref / "plots").glob("*.png")} >= {"reward.png", "accuracy.png", "lengths.png", "kl.png"}
    assert json.loads((ref / "config.json").read_text())["total_steps"] == 4
    want = final_params(ref, 4)

    # Same run, killed with SIGKILL as soon as a save is in flight (or at the latest after step 2's
    # checkpoint), then re-run with the same command: it must end bit-identical to the uninterrupted run.
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "grpo.cli", "train", *SMOKE, f"--workdir={run}", *overrides],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        names = [p.name for p in ckpts.iterdir()] if ckpts.exists() else []
        if any("tmp" in n for n in names if not n.startswith("1")) or "2" in names:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    complete = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert complete and complete[-1] < 4
    quant("train", *SMOKE, f"--workdir={run}", *overrides)
    got = final_params(run, 4)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    resumed = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert resumed == [1, 2, 3, 4]


BAD = {
    "--config.rl.bogus=1": "unknown config key 'rl.bogus'",
    "--config.total_steps=abc": "cannot parse a int from 'abc'",
    "--config.rl.beta=yes": "cannot parse a float",
    "--config.rollout.group_size=1": "rollout.group_size=1 with rl.advantage='grpo'",
    "--config.mesh.shape=(3,1,1)": "mesh.shape=(3, 1, 1) does not fit 8 devices",
    # fsdp=8: a micro-batch of 3 * 4 / 2 = 6 rows cannot be split 8 ways
    "--config.mesh.shape=(1,8,1) --config.data.prompts_per_step=3": "is not divisible by the 8 data x fsdp shards",
    "--config.model.hf_path=/no/such/model": "model.hf_path='/no/such/model': no such directory",
    "--config.rl.loss_agg=mean": "rl.loss_agg='mean' is not one of",
    "--config.rewards.nope=1.0": "unknown reward 'nope'",
}


@pytest.mark.parametrize("override", list(BAD))
def test_bad_config_fails_before_compute_with_a_clear_message(tmp_path, override, capsys):
    from grpo import cli

    code = cli.main(["train", *SMOKE, f"--workdir={tmp_path / 'w'}", *override.split()])
    err = capsys.readouterr().err
    assert code == 2
    assert BAD[override] in err and err.startswith("quant train: error:")
    assert not (tmp_path / "w").exists()  # nothing was written: it failed before any work


def test_cli_error_has_no_traceback(tmp_path):
    proc = quant("train", *SMOKE, f"--workdir={tmp_path / 'w'}", "--config.rl.bogus=1", check=False)
    assert proc.returncode == 2 and "unknown config key 'rl.bogus'" in proc.stderr
    assert "Traceback" not in proc.stderr
