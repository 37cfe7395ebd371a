"""`quant` command line. Each sub-command lives in its own function; heavy imports happen inside them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def cmd_inspect(args: argparse.Namespace) -> int:
    """Loads a Hugging Face directory (or names a preset) and prints its shape and parameter count."""
    from models.config import PRESETS, preset

    if args.model in PRESETS:
        cfg = preset(args.model)
    else:
        from models import hf

        model, tok = hf.load(args.model)
        cfg = model.cfg
        print(f"tokenizer: {'none' if tok is None else f'{tok.vocab_size} tokens, eos={tok.eos_ids}'}")
    print(json.dumps({k: v for k, v in cfg.__dict__.items()}, indent=2, default=str))
    print(f"parameters: {cfg.num_params() / 1e6:.2f}M")
    return 0


# The default of a bare `quant train`: the embedded tiny reasoning model, minutes on a laptop CPU.
DEFAULT_CONFIG = "configs/tiny_arith.py"


def _config_from_args(args: argparse.Namespace, overrides: list[str]):
    from pathlib import Path

    from grpo import config as config_lib

    spec = args.config
    if spec is None:  # the embedded default, wherever the package is installed from
        spec = str(Path(__file__).resolve().parents[1] / DEFAULT_CONFIG)
    cfg = config_lib.load(spec)
    return config_lib.apply_overrides(cfg, overrides)


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    """Trains with GRPO; re-running the same command resumes from the newest checkpoint."""
    import logging

    import jax

    from grpo import trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = _config_from_args(args, overrides)
    name = Path((args.config or DEFAULT_CONFIG).split(":")[0]).stem
    workdir = args.workdir or f"runs/{name}"
    trainer.run(cfg, workdir, progress=not args.no_progress)
    if jax.process_index() == 0:
        print(f"done: metrics in {workdir}/metrics.jsonl, plots in {workdir}/plots/")
    return 0


def cmd_pretrain(args: argparse.Namespace, overrides: list[str]) -> int:
    """Pretrains the tiny base model of the embedded default and writes it as a HF directory."""
    import logging

    from grpo import config as config_lib
    from grpo import pretrain

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = config_lib.apply_overrides(config_lib.load(args.config), overrides)
    result = pretrain.run(cfg, args.out)
    print(f"wrote {args.out or cfg.out_dir}")
    for name, res in result.items():
        print(f"{name}: accuracy {res['accuracy']:.3f}, think rate {res['think_rate']:.2f}; per difficulty: " +
              ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in res.items() if isinstance(v, dict)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Writes a training run's checkpoint as a Hugging Face directory (transformers loads it)."""
    from grpo.checkpoint import load_trained
    from models import hf

    model, tok, step = load_trained(args.checkpoint, args.step)
    out = hf.save(model, args.out, tokenizer=tok, dtype=args.dtype)
    print(f"exported step {step} of {args.checkpoint} to {out}")
    return 0


def _start_processes() -> None:
    """Joins a multi-process run when the environment describes one (see grpo/multihost.py); other
    processes than 0 then only log warnings."""
    from grpo import multihost

    if multihost.initialize() and not multihost.is_primary():
        import logging
        logging.basicConfig(level=logging.WARNING)  # the commands' own basicConfig(INFO) is then a no-op
        logging.getLogger("quant").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quant", description="GRPO training and evaluation in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train with GRPO (no arguments: the embedded tiny default)")
    p.add_argument("--config", default=None, help="config file, optionally FILE:arg (default: %s)" % DEFAULT_CONFIG)
    p.add_argument("--workdir", default=None, help="output directory (default: runs/<config name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train, takes_overrides=True)
    p = sub.add_parser("pretrain", help="pretrain the tiny base model of the embedded default")
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/tiny_base.py"))
    p.add_argument("--out", default=None, help="output HF directory (default: the config's out_dir)")
    p.set_defaults(func=cmd_pretrain, takes_overrides=True)
    from grpo.evaluate import add_eval_parser
    add_eval_parser(sub)
    p = sub.add_parser("export", help="write a training checkpoint as a Hugging Face model directory")
    p.add_argument("--checkpoint", required=True, help="a quant train workdir")
    p.add_argument("--out", required=True, help="output HF directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("inspect", help="load a HF model directory or preset and print its config")
    p.add_argument("--model", required=True, help="HF directory or preset name")
    p.set_defaults(func=cmd_inspect)
    args, rest = parser.parse_known_args(argv)
    overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown or (overrides and not getattr(args, "takes_overrides", False)):
        parser.error(f"unrecognized arguments: {' '.join(unknown or rest)}")
    from grpo import multihost
    from models.sharding import use_cpu_cores
    try:
        use_cpu_cores()  # on a CPU host, a JAX device per core (QUANT_CPU_DEVICES overrides)
        if args.command in ("train", "eval"):  # the commands that run on several hosts together
            _start_processes()
        if getattr(args, "takes_overrides", False):
            return args.func(args, overrides)
        return args.func(args)
    except (ValueError, FileNotFoundError, multihost.HostError) as e:  # bad input: one clear line
        if os.environ.get("QUANT_DEBUG"):
            raise
        print(f"quant {args.command}: error: {e}", file=sys.stderr)
        return _failed(2)
    except Exception:
        if not multihost.started():
            raise
        import traceback
        traceback.print_exc()
        return _failed(1)


def _failed(status: int) -> int:
    """The exit status of a failed command. In a multi-process run the process leaves at once: a normal
    exit would wait in jax.distributed's shutdown barrier for peers that may be waiting for it, and the
    launcher (or srun) only stops the others once it sees a process exit."""
    from grpo import multihost

    if multihost.started():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
