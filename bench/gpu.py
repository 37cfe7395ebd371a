"""One short GPU benchmark: matmul peaks, forward, sampler and one GRPO train step, in one process.

    bash bench/device.sh                  # on the GPU machine: installs carried wheels, logs to $OUT
    python bench/gpu.py --quick           # tiny preset and shapes on CPU (< 2 min): checks every code path

Full settings (random weights, Qwen2.5-0.5B shapes; about 4 min on one H200, most of it compiling):
  peaks    bf16 8192^3 and f32 4096^3 jitted matmuls (f32 at XLA's default precision), and a 4 GiB copy
  forward  qwen2.5-0.5b, bf16 params and compute, 16 x 1024 tokens; bench_100m (bf16) likewise
  sampler  qwen2.5-0.5b bf16, 128-token prompts, 256 new tokens forced (no EOS), temperature 1, at
           batch 1 / 64 / 256 (G = 1) and 32 prompts x G = 8; one row with f32 params (what training holds)
  train    one GRPO step (beta = 0, on-policy, AdamW) on qwen2.5-0.5b, f32 params, bf16 compute,
           64 sequences of 128 prompt + 256 completion tokens, gradients accumulated over 2 micro-batches
           (XLA:CPU's buffer assignment puts one pass over all 64 at ~104 GiB of temporaries, 2 at ~55)
  hf       `transformers.generate` on the same bf16 weights at batch 64 (a child process, if torch is there)

FLOPs count useful work: 2 x matmul params per token plus causal attention over the average context
(`ModelConfig.flops_per_token`); a train step is 3 x the forward. Fractions are of the bf16 matmul peak
measured here. Decode rows also give the bandwidth of reading the weights once per step, as a fraction
of the copy bandwidth measured here (small-batch decode is bound by it).

They run in order of importance (peaks, forward, sampler at batch 64, train step, the other sampler rows,
hf, bench_100m forward, the f32-params sampler row). Each runs on its own: an error skips only that one,
no new one starts once the time budget (290 s) is spent, and the JSON file is rewritten after each.
If the train step runs out of memory it is retried with twice as many micro-batches.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import forward_setup, matmul_peak_flops, print_table, timeit  # noqa: E402
from grpo import loss as loss_lib  # noqa: E402
from grpo.rollout import Batch  # noqa: E402
from grpo.trainer import TrainState, make_optimizer, make_train_step  # noqa: E402
from models import hf  # noqa: E402
from models.config import ModelConfig, preset  # noqa: E402
from models.sampler import Sampler, SamplingConfig  # noqa: E402
from models.transformer import init_model  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Setting:
    model: str  # preset of the sampler / train / main forward benchmarks
    peak_bf16: int  # square matmul sizes
    peak_f32: int
    copy_elems: int  # f32 elements of the copy (bandwidth) test
    forward: tuple[tuple[str, int, int], ...]  # (preset, batch, tokens)
    prompt: int
    new: int
    sampler: tuple[tuple[int, int], ...]  # (prompts, G), in order of priority
    train: tuple[int, int, int]  # (sequences, prompt tokens, completion tokens)
    microbatches: int  # gradient accumulation in the train step (the GRPO configs use it too)
    min_time: float  # seconds per timing window
    budget_s: float  # start no new benchmark after this many seconds


FULL = Setting(model="qwen2.5-0.5b", peak_bf16=8192, peak_f32=4096, copy_elems=1 << 30,
               forward=(("qwen2.5-0.5b", 16, 1024), ("bench_100m", 16, 1024)), prompt=128, new=256,
               sampler=((64, 1), (1, 1), (256, 1), (32, 8)), train=(64, 128, 256), microbatches=2,
               min_time=1.0, budget_s=290)
QUICK = Setting(model="tiny", peak_bf16=256, peak_f32=256, copy_elems=1 << 20,
                forward=(("tiny", 2, 64), ("tiny", 4, 32)), prompt=16, new=16,
                sampler=((4, 1), (1, 1), (2, 4)), train=(8, 16, 16), microbatches=2,
                min_time=0.2, budget_s=600)


def bf16(name: str) -> ModelConfig:
    return preset(name, dtype="bfloat16", param_dtype="bfloat16")


class Runner:
    """Runs benchmarks one by one under a time budget; keeps their results and writes them as JSON."""

    def __init__(self, setting: Setting, json_path: str | None):
        self.s, self.json_path = setting, json_path
        self.start = time.perf_counter()
        self.results: list[dict] = []
        versions = {m: importlib.metadata.version(m) for m in ("jaxlib", "flax", "optax", "numpy")}
        self.meta = dict(device=jax.devices()[0].device_kind, platform=jax.default_backend(),
                         jax=jax.__version__, **versions, xla_flags=os.environ.get("XLA_FLAGS", ""),
                         setting=dataclasses.asdict(setting))
        self._models: dict[ModelConfig, nnx.Module] = {}
        self._samplers: dict[ModelConfig, Sampler] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run(self, name: str, fn: Callable[..., dict], *args) -> dict | None:
        """Runs `fn(*args) -> metrics`, recording its result, error or skip; never raises."""
        rec = dict(name=name)
        if self.elapsed() > self.s.budget_s:
            rec["skipped"] = f"time budget {self.s.budget_s:.0f} s spent"
            print(f"[{self.elapsed():6.1f}s] {name}: SKIPPED ({rec['skipped']})", flush=True)
        else:
            print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                rec.update(fn(*args))
            except Exception as e:  # one broken benchmark must not cost the others
                traceback.print_exc()
                rec["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
            rec["wall_s"] = round(time.perf_counter() - t0, 2)
            shown = {k: v for k, v in rec.items() if k != "name"}
            print(f"[{self.elapsed():6.1f}s] {name}: {json.dumps(shown, default=str)}", flush=True)
        self.results.append(rec)
        self.write()
        return rec if "error" not in rec and "skipped" not in rec else None

    def write(self) -> None:
        if self.json_path:
            with open(self.json_path, "w") as f:
                json.dump(dict(meta=dict(self.meta, elapsed_s=round(self.elapsed(), 1)), results=self.results),
                          f, indent=1, default=str)

    def get(self, name: str, key: str, default=None):
        for r in self.results:
            if r["name"] == name:
                return r.get(key, default)
        return default

    @property
    def peak(self) -> float:
        """bf16 matmul FLOP/s measured here (the datasheet's dense 990e12 if that benchmark failed)."""
        return self.get("peak_bf16", "flops", 990e12 if self.meta["platform"] == "gpu" else 1e11)

    def model(self, cfg: ModelConfig) -> nnx.Module:
        if cfg not in self._models:
            self._models[cfg] = init_model(cfg, seed=0)
        return self._models[cfg]

    def sampler(self, cfg: ModelConfig) -> Sampler:
        if cfg not in self._samplers:
            self._samplers[cfg] = Sampler(self.model(cfg))
        return self._samplers[cfg]


# ---- benchmarks: each returns a dict of numbers -----------------------------------------------------------

def bench_peak(n: int, dtype, min_time: float) -> dict:
    flops = matmul_peak_flops(n, dtype, min_time=min_time)
    return dict(flops=flops, tflops=round(flops / 1e12, 2))


def bench_copy(elems: int, min_time: float) -> dict:
    """Bytes read + written per second by a jitted elementwise op on a large array (the HBM ceiling)."""
    x = jnp.ones((elems,), jnp.float32)
    f = jax.jit(lambda a: a + 1.0)
    sec = timeit(lambda: f(x).block_until_ready(), warmup=2, min_time=min_time)
    bw = 2 * x.nbytes / sec
    return dict(bytes_per_s=bw, tb_per_s=round(bw / 1e12, 3))


def bench_forward(r: Runner, name: str, b: int, t: int) -> dict:
    cfg = bf16(name)
    graphdef, params = nnx.split(r.model(cfg))

    forward, (tokens, positions, mask) = forward_setup(graphdef, cfg, b, t)
    t0 = time.perf_counter()
    forward(params, tokens, positions, mask).block_until_ready()
    first = time.perf_counter() - t0
    sec = timeit(lambda: forward(params, tokens, positions, mask).block_until_ready(), warmup=0,
                 min_time=r.s.min_time)
    tok_s = b * t / sec
    flops = cfg.flops_per_token(context=t // 2) * tok_s
    return dict(model=name, dtype="bf16", params_m=round(cfg.num_params() / 1e6, 1), batch=b, tokens=t,
                compile_and_first_s=round(first, 2), ms=round(sec * 1e3, 3), tokens_per_s=round(tok_s),
                tflops=round(flops / 1e12, 2), of_peak=round(flops / r.peak, 3))


def bench_sampler(r: Runner, name: str, param_dtype: str, b: int, g: int) -> dict:
    cfg = preset(name, dtype="bfloat16", param_dtype=param_dtype)
    sampler = r.sampler(cfg)
    p, new = r.s.prompt, r.s.new
    scfg = SamplingConfig(max_new_tokens=new, temperature=1.0, eos_ids=(), pad_id=0)
    prompts = np.random.RandomState(b * 10 + g).randint(1, cfg.vocab_size, (b, p)).tolist()
    run = lambda: sampler.sample(prompts, scfg, group_size=g, seed=1, decode=False)
    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    if int(out.lengths.min()) != new:  # no EOS ids: every row must run the full length
        raise AssertionError(f"completions shorter than {new}: min length {int(out.lengths.min())}")
    sec = timeit(run, warmup=0, min_time=r.s.min_time, min_iters=2)
    tok_s = b * g * new / sec
    flops = cfg.flops_per_token(context=p + new // 2) * tok_s
    # every decode step reads all weights once (prefill is included in `sec`, so this is a lower bound)
    weight_bw = new / sec * cfg.num_params() * jnp.dtype(cfg.weight_dtype).itemsize
    copy_bw = r.get("hbm_copy", "bytes_per_s")
    return dict(model=name, params=param_dtype, prompts=b, group=g, prompt=p, new=new,
                compile_and_first_s=round(first, 2), s_per_call=round(sec, 3), new_tokens_per_s=round(tok_s),
                tflops=round(flops / 1e12, 3), of_peak=round(flops / r.peak, 4),
                weight_read_tb_s=round(weight_bw / 1e12, 3),
                of_copy_bw=round(weight_bw / copy_bw, 3) if copy_bw else None)


def bench_train(r: Runner, microbatches: int, logits_chunk: int = 0) -> dict:
    n, p, t = r.s.train
    cfg = preset(r.s.model, dtype="bfloat16")  # f32 params, bf16 compute: the GRPO configs' precision
    graphdef, state = nnx.split(init_model(cfg, seed=0))
    params = nnx.to_pure_dict(state)
    del state
    lcfg = loss_lib.LossConfig(beta=0.0)
    ocfg = ml_collections.ConfigDict(dict(lr=1e-6, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                          grad_clip=1.0, b1=0.9, b2=0.99))
    optimizer, _ = make_optimizer(ocfg, 100)
    step_fn = jax.jit(make_train_step(graphdef, lcfg, optimizer, microbatches, on_policy=True,
                                      logits_chunk=logits_chunk), donate_argnums=0)
    holder = [TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                         rng=jax.random.key_data(jax.random.key(0)), data_pos=jnp.zeros((), jnp.int32))]
    rng = np.random.RandomState(0)
    length = p + t
    batch = jax.device_put(Batch(
        tokens=rng.randint(1, cfg.vocab_size, (n, length)).astype(np.int32),
        positions=np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)).copy(),
        kv_mask=np.ones((n, length), bool), completion_mask=np.ones((n, t), bool),
        sampler_logp=np.zeros((n, t), np.float32), ref_logp=np.zeros((n, t), np.float32),
        advantages=rng.randn(n).astype(np.float32), valid=np.ones((n,), bool)))
    metrics = {}

    def step():
        holder[0], m = step_fn(holder[0], batch, batch.sampler_logp)
        metrics.update(jax.device_get(m))  # blocks until the step is done

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    sec = timeit(step, warmup=0, min_time=r.s.min_time, min_iters=2)
    tokens = n * length
    flops_6n = 6 * cfg.num_params() * tokens / sec
    flops_attn = 3 * cfg.flops_per_token(context=length // 2) * tokens / sec
    return dict(model=r.s.model, params="f32", compute="bf16", sequences=n, prompt=p, completion=t,
                microbatches=microbatches, logits_chunk=logits_chunk,
                compile_and_first_s=round(first, 2), s_per_step=round(sec, 3), tokens_per_s=round(tokens / sec),
                mfu_6n=round(flops_6n / r.peak, 3), mfu_with_attn=round(flops_attn / r.peak, 3),
                tflops_6n=round(flops_6n / 1e12, 1), loss=float(metrics["loss"]),
                grad_norm=float(metrics["grad_norm"]), skipped_updates=int(metrics["skipped"]))


def bench_hf(r: Runner, cfg: ModelConfig, b: int) -> dict:
    """`transformers.generate` on our weights, in a child process (torch and JAX each keep their memory)."""
    path = os.path.join(tempfile.mkdtemp(prefix="quant_bench_"), "hf")
    hf.save(r.model(cfg), path)
    timeout = max(30.0, r.s.budget_s + 60 - r.elapsed())
    cmd = [sys.executable, os.path.abspath(__file__), "--hf-child", path, "--batch", str(b),
           "--prompt", str(r.s.prompt), "--new", str(r.s.new), "--min-time", str(r.s.min_time)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(proc.stderr[-3000:])
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child exited {proc.returncode}: {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    res = json.loads(lines[-1])
    ours = r.get(f"sampler_b{b}_g1", "new_tokens_per_s")
    if ours:
        res["ours_over_hf"] = round(ours / res["new_tokens_per_s"], 2)
    return res


def hf_child(path: str, b: int, p: int, new: int, min_time: float) -> None:
    """Times `generate` with sampling, `new` tokens forced; prints one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM
    import transformers

    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dev).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(1, vocab, (b, p), device=dev)

    def run():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                                 eos_token_id=None, pad_token_id=0)
        if cuda:
            torch.cuda.synchronize()
        assert out.shape[1] == p + new, out.shape

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    sec = timeit(run, warmup=0, min_time=min_time, min_iters=2)
    print(json.dumps(dict(torch=torch.__version__, transformers=transformers.__version__, device=dev,
                          dtype=str(dtype), attn=model.config._attn_implementation, prompts=b, new=new,
                          first_s=round(first, 2), s_per_call=round(sec, 3),
                          new_tokens_per_s=round(b * new / sec))), flush=True)


# ---- main -------------------------------------------------------------------------------------------------

def summary_row(rec: dict) -> list[object]:
    name = rec["name"]
    if "skipped" in rec or "error" in rec:
        return [name, "SKIPPED" if "skipped" in rec else "ERROR", "", "", rec.get("wall_s", "")]
    if name.startswith("peak"):
        return [name, f"{rec['tflops']} TFLOP/s", "", "", rec["wall_s"]]
    if name == "hbm_copy":
        return [name, f"{rec['tb_per_s']} TB/s", "", "read + written", rec["wall_s"]]
    if name.startswith("forward"):
        return [name, f"{rec['tokens_per_s']:,} tok/s", f"{rec['of_peak']:.0%} of peak", f"{rec['ms']} ms/fwd",
                rec["wall_s"]]
    if name.startswith("sampler"):
        bw = f"weights {rec['of_copy_bw']:.0%} of copy bw" if rec.get("of_copy_bw") else ""
        return [name, f"{rec['new_tokens_per_s']:,} new tok/s", f"{rec['of_peak']:.1%} of peak",
                f"{rec['s_per_call']} s/call; {bw}", rec["wall_s"]]
    if name.startswith("train_step"):
        return [name, f"{rec['s_per_step']} s/step", f"MFU {rec['mfu_6n']:.0%} (6N)",
                f"{rec['mfu_with_attn']:.0%} with attn; {rec['tokens_per_s']:,} tok/s", rec["wall_s"]]
    if name.startswith("hf_generate"):
        return [name, f"{rec['new_tokens_per_s']:,} new tok/s", f"ours/hf {rec.get('ours_over_hf')}",
                f"{rec['s_per_call']} s/call ({rec['attn']})", rec["wall_s"]]
    return [name, "", "", "", rec.get("wall_s", "")]


def summary_rows(r: Runner) -> list[list[object]]:
    rows = []
    for rec in r.results:
        try:
            rows.append(summary_row(rec))
        except (KeyError, TypeError, ValueError):  # a malformed record must not hide the others
            rows.append([rec.get("name"), "see JSON", "", "", rec.get("wall_s", "")])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset and shapes (CPU smoke run)")
    ap.add_argument("--json", default=None, help="write results here (rewritten after each benchmark)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no benchmark after this many seconds")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers.generate comparison")
    ap.add_argument("--only", default="forward,sampler,train,hf",
                    help="comma-separated groups to run after the peaks (forward, sampler, train, hf)")
    ap.add_argument("--hf-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--prompt", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--new", type=int, default=256, help=argparse.SUPPRESS)
    ap.add_argument("--min-time", type=float, default=1.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_child:
        return hf_child(args.hf_child, args.batch, args.prompt, args.new, args.min_time)

    setting = QUICK if args.quick else FULL
    if args.budget_s is not None:
        setting = dataclasses.replace(setting, budget_s=args.budget_s)
    r = Runner(setting, args.json)
    print(f"devices: {jax.devices()}  jax {jax.__version__}  backend {jax.default_backend()}", flush=True)
    s = setting
    b0, g0 = s.sampler[0]
    # In order of priority: what matters most runs first, so the time budget only ever cuts the tail.
    r.run("peak_bf16", bench_peak, s.peak_bf16, jnp.bfloat16, s.min_time)
    r.run("peak_f32", bench_peak, s.peak_f32, jnp.float32, s.min_time)
    r.run("hbm_copy", bench_copy, s.copy_elems, s.min_time)
    only = set(args.only.split(","))
    fwd_main, *fwd_rest = s.forward if "forward" in only else [None]
    if fwd_main:
        r.run(f"forward_{fwd_main[0]}_b{fwd_main[1]}x{fwd_main[2]}", bench_forward, r, *fwd_main)
    if "sampler" in only:
        r.run(f"sampler_b{b0}_g{g0}", bench_sampler, r, s.model, "bfloat16", b0, g0)
    mb = s.microbatches
    if "train" in only:
        if r.run(f"train_step_mb{mb}", bench_train, r, mb) is None and any(
                k in (r.get(f"train_step_mb{mb}", "error") or "") for k in ("RESOURCE_EXHAUSTED", "Out of memory")):
            r.run(f"train_step_mb{2 * mb}", bench_train, r, 2 * mb)  # out of memory: smaller micro-batches
        r.run(f"train_step_mb{mb}_chunk128", bench_train, r, mb, 128)  # the configs' default logits_chunk
    for b, g in s.sampler[1:] if "sampler" in only else []:
        r.run(f"sampler_b{b}_g{g}", bench_sampler, r, s.model, "bfloat16", b, g)
    if args.no_hf or "hf" not in only:
        pass
    elif all(importlib.util.find_spec(m) for m in ("torch", "transformers", "safetensors")):
        r.run(f"hf_generate_b{b0}", bench_hf, r, bf16(s.model), b0)
    else:
        print("hf_generate skipped: torch, transformers or safetensors is not installed", flush=True)
    for name, b, t in fwd_rest:
        r.run(f"forward_{name}_b{b}x{t}", bench_forward, r, name, b, t)
    if "sampler" in only:
        r.run(f"sampler_b{b0}_g{g0}_f32params", bench_sampler, r, s.model, "float32", b0, g0)

    print(f"\n{r.meta['device']} ({r.meta['platform']}), jax {jax.__version__}, setting "
          f"{'QUICK' if args.quick else 'FULL'}, total {r.elapsed():.0f} s\n")
    print_table(["benchmark", "result", "utilisation", "detail", "wall s"], summary_rows(r))
    r.write()


if __name__ == "__main__":
    main()
