"""Sampler throughput: new tokens/s against `transformers.generate` on the same weights, same process.

    python bench/sampler.py [--quick] [--group 8]

Setting (issue 3): prompts of 32 tokens, 128 new tokens forced (no early stop), temperature 1, f32;
the reference tiny model (Qwen2 layout, vocab 64, hidden 256, 4 layers, ~3.2M parameters) at batch
1 / 16 / 64 / 256 and a ~100M-parameter config at batch 1 / 16. torch runs with 2 threads.
Ours runs as `quant` does: one JAX CPU device per core (`use_cpu_cores`), the batch split over them
(a batch they do not divide, such as 1, runs on one device); "1 device" is always on one device.
Achieved FLOP/s counts 2 x matmul params per token plus attention over the live context.
With --group G, a second table has the GRPO setting: batch / G distinct prompts with G samples each
(ours shares each prompt's keys/values among its G samples; generate gets num_return_sequences=G).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from models.sharding import make_mesh, use_cpu_cores  # noqa: E402

use_cpu_cores()

from bench.common import matmul_peak_flops, print_table, timeit  # noqa: E402
from models import hf  # noqa: E402
from models.config import preset  # noqa: E402
from models.sampler import Sampler, SamplingConfig  # noqa: E402
from models.transformer import init_model  # noqa: E402

PROMPT, NEW = 32, 128


def hf_generate_tokens_per_s(path: str, batch: int, vocab: int, group: int = 1) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    ids = torch.randint(0, vocab, (batch // group, PROMPT))

    def run():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW, min_new_tokens=NEW,
                                 eos_token_id=None, pad_token_id=0, num_return_sequences=group)
        assert out.shape == (batch, PROMPT + NEW)

    return batch * NEW / timeit(run, warmup=1, min_time=3.0, min_iters=2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny model only, fewer batch sizes")
    parser.add_argument("--group", type=int, default=0, help="also the GRPO setting: G samples per prompt")
    args = parser.parse_args()
    peak = matmul_peak_flops()
    mesh = make_mesh((1, -1, 1))
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s (f32); {jax.device_count()} CPU devices\n")
    settings = [("tiny", [1, 16, 64, 256])] + ([] if args.quick else [("bench_100m", [1, 16])])
    groups = [1] + ([args.group] if args.group > 1 else [])
    rows = {g: [] for g in groups}
    for name, batches in settings:
        cfg = preset(name)
        model = init_model(cfg, seed=0)
        path = tempfile.mkdtemp()
        hf.save(model, path)
        samplers = {"mesh": Sampler(model, mesh=mesh), "1 device": Sampler(model)}
        scfg = SamplingConfig(max_new_tokens=NEW, temperature=1.0, eos_ids=(), pad_id=0)
        flops_tok = cfg.flops_per_token(context=PROMPT + NEW // 2)
        for g in groups:
            for b in [b for b in batches if b % g == 0]:
                prompts = np.random.RandomState(b).randint(0, cfg.vocab_size, (b // g, PROMPT)).tolist()
                speed = {k: b * NEW / timeit(lambda s=s: jax.block_until_ready(
                    s.sample(prompts, scfg, group_size=g, seed=1, decode=False).tokens), min_time=3.0, min_iters=2)
                    for k, s in samplers.items() if k != "mesh" or b % jax.device_count() == 0}
                ours, one = speed.get("mesh", speed["1 device"]), speed["1 device"]
                theirs = hf_generate_tokens_per_s(path, b, cfg.vocab_size, g)
                rows[g].append([name, b, f"{ours:,.0f}", f"{one:,.0f}", f"{theirs:,.0f}", f"{ours / theirs:.2f}x",
                                f"{ours * flops_tok / peak:.0%}"])
                print(f"G={g}", *rows[g][-1], flush=True)
    for g in groups:
        print(f"\nG = {g} sample{'s' if g > 1 else ''} per prompt (batch = prompts x G)")
        print_table(["model", "batch", "ours tok/s", "1 device", "generate tok/s", "ratio", "of matmul peak"],
                    rows[g])


if __name__ == "__main__":
    main()
