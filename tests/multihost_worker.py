"""One process of the 2-process checks in test_multihost.py (run through launch/local.py).

    python launch/local.py --processes 2 --cpu-devices 2 -- python tests/multihost_worker.py SHARED_DIR

Each check asserts inside the process; the process prints `ok <process index>` when all passed. A failed
check leaves at once (os._exit), as `quant` does, so the launcher sees it and stops the other process.
"""

import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo import multihost  # noqa: E402


def _leave(*exc_info):  # a normal exit would wait for the other process in jax.distributed's shutdown
    traceback.print_exception(*exc_info)
    sys.stderr.flush()
    os._exit(1)


sys.excepthook = _leave

assert multihost.initialize(), "the launcher's environment should start jax.distributed"

import jax  # noqa: E402
import numpy as np  # noqa: E402

me, n = jax.process_index(), jax.process_count()
assert n == 2 and jax.device_count() == 4 and jax.local_device_count() == 2

# gathers come back in process order, the same on every process
assert multihost.allgather({"me": me}) == [{"me": 0}, {"me": 1}]
assert multihost.gather_shards(lambda: [f"p{me}a", f"p{me}b"]) == ["p0a", "p0b", "p1a", "p1b"]


# each process scores only its shard; everyone gets the whole batch's scores and merged diagnostics
class Counting:
    names = ["length"]

    def __init__(self):
        self.scored = []

    def __call__(self, texts, samples):
        self.scored.append(list(texts))
        values = np.array([len(t) for t in texts], np.float32)
        return 2 * values, {"reward/length": values}

    def metrics(self):
        return {"reward/length/items": float(len(self.scored[-1]))}

    def merge_metrics(self, shards):
        return {"reward/length/items": sum(m["reward/length/items"] for _, m in shards)}


texts = ["a", "bb", "ccc", "dddd", "eeeee"]
inner = Counting()
total, parts = multihost.ShardedReward(inner)(texts, [{}] * len(texts))
assert inner.scored == [texts[:3]] if me == 0 else inner.scored == [texts[3:]], inner.scored
np.testing.assert_array_equal(total, [2, 4, 6, 8, 10])
np.testing.assert_array_equal(parts["reward/length"], [1, 2, 3, 4, 5])

# a failure on one process is raised on every process, naming it (nobody waits forever)
def fails_on_one():
    if me == 1:
        raise ValueError("bad row 7")
    return "fine"


try:
    multihost.gather_results(fails_on_one)
    raise AssertionError("gather_results should have raised")
except multihost.HostError as e:
    assert str(e) == "process 1: ValueError: bad row 7", str(e)

# a directory every process sees passes; per-process directories fail on every process
shared = Path(sys.argv[1])
multihost.check_shared_directory(shared / "ckpt")
multihost.allgather(None)  # process 0 has removed its marker file
assert not list((shared / "ckpt").iterdir())
try:
    multihost.check_shared_directory(shared / f"own-{me}", what="checkpoint_dir")
    raise AssertionError("per-process directories should be rejected")
except multihost.HostError as e:
    assert "process 1: ValueError: checkpoint_dir=" in str(e) and "is not shared with process 0" in str(e), str(e)

# a batch-sharded global array comes back whole on every process
from models.sharding import make_mesh, shard_batch, to_host  # noqa: E402

mesh = make_mesh((1, -1, 1))
x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
g = shard_batch(mesh, x)
assert not g.is_fully_addressable and len(g.addressable_shards) == 2
np.testing.assert_array_equal(to_host(jax.jit(lambda a: a * 2)(g)), 2 * x)

# evaluation scoring: each process verifies its share of the samples; the report is the one-process one
from grpo import evaluate  # noqa: E402
from rewards import math as math_reward  # noqa: E402

problems = [{"id": "a", "answer": "1/2"}, {"id": "b", "answer": "3"}, {"id": "c", "answer": "x+1"}]
completions = {"a": ["\\boxed{0.5}", "\\boxed{2/4}", "\\boxed{1}"], "b": ["\\boxed{3}", "\\boxed{4}", "\\boxed{3.0}"],
               "c": ["\\boxed{1+x}", "no answer", "\\boxed{x+2}"]}
seen = []
real_verify = math_reward.default_verifier().verify_batch
evaluate.verify_batch = lambda preds, golds, **kw: (seen.append(list(preds)), real_verify(preds, golds, **kw))[1]
report = evaluate.score_completions(problems, completions)
assert len(seen[0]) == (5 if me == 0 else 4), seen  # 9 samples: process 0 verifies 5, process 1 four
multihost._started = False  # the same scoring as one process, for reference
alone = evaluate.score_completions(problems, completions)
multihost._started = True
# the same verdicts and metrics; only how the verifier got there (sympy or its cache) may differ
stats, alone_stats = report.pop("verify_stats"), alone.pop("verify_stats")
assert report == alone, (report, alone)
assert all(stats[k] == alone_stats[k] for k in ("items", "no_answer", "errors")), (stats, alone_stats)
assert [r["num_correct"] for r in report["problems"]] == [2, 2, 1] and stats["items"] == 9

print(f"ok {me}", flush=True)
