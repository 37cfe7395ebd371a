"""`quant` command line. Each sub-command lives in its own function; heavy imports happen inside them."""

from __future__ import annotations

import argparse
import json
import sys


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quant", description="GRPO training and evaluation in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="load a HF model directory or preset and print its config")
    p.add_argument("--model", required=True, help="HF directory or preset name")
    p.set_defaults(func=cmd_inspect)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"quant {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
