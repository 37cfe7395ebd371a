"""Experiment configs: Python files with `get_config(arg=None) -> ConfigDict`, dotted overrides, validation.

Every experiment file starts from `base_config()`, so every key exists with a typed default and an
override or typo is checked against it. `validate` runs before any compute and raises `ConfigError`
naming the key and the allowed values.
"""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path
from typing import Any, Sequence

import ml_collections

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
STD_SCALES = ("group", "batch", "none")
LOSS_AGGS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
RATIO_LEVELS = ("token", "sequence")
OLD_LOGP = ("auto", "sampler", "recompute")
SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A bad config: the message names the key and what is allowed."""


def base_config() -> ml_collections.ConfigDict:
    """All keys with their defaults (the GRPO paper's choices where it makes one)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100
    c.log_every = 1
    c.eval_every = 0  # 0 = never (besides before and after training when eval.datasets is set)
    c.checkpoint_every = 50
    c.keep_checkpoints = 3
    # "" = WORKDIR/checkpoints. Multi-host runs need a directory every host sees (a shared file system
    # or a bucket such as gs://bucket/run: orbax writes each host's shards there).
    c.checkpoint_dir = ""

    c.model = ml_collections.ConfigDict(dict(
        preset="", hf_path="", dtype="float32", param_dtype="float32",
        tokenizer="",  # "" = the HF directory's; "char" = character tokenizer over model.alphabet
        alphabet="0123456789+-*/=().,:?' abcdefghijklmnopqrstuvwxyz"))
    c.data = ml_collections.ConfigDict(dict(dataset="gsm8k", split="train", prompt_template="r1",
                                            prompts_per_step=8, shuffle=True,
                                            num_rows=50_000))  # rows drawn from generated sets (arith)
    c.rollout = ml_collections.ConfigDict(dict(
        group_size=8, max_new_tokens=512, temperature=1.0, top_p=1.0, top_k=0, think_budget=0,
        stop=(), dynamic_sampling=False, max_sampling_rounds=3, mask_truncated=False,
        # decode with the weights gathered over ('data', 'fsdp') once per sampler call (split over 'tensor'
        # only); False keeps them FSDP-sharded, for models that do not fit one device (slower: every
        # token all-gathers them)
        gather_weights=True))
    c.rl = ml_collections.ConfigDict(dict(
        advantage="grpo", std_scale="group", loss_agg="seq_mean_token_mean", eps_low=0.2, eps_high=0.2,
        dual_clip=0.0, ratio_level="token", beta=0.04, kl_estimator="k3", norm_constant=0.0,
        entropy_coef=0.0, mu=1, minibatches=1, old_logp="auto"))
    c.rewards = ml_collections.ConfigDict({"math": 1.0})
    c.optim = ml_collections.ConfigDict(dict(lr=1e-6, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                             grad_clip=1.0, microbatches=1, b1=0.9, b2=0.99,
                                             final_lr_frac=0.0,
                                             # vocabulary projection over this many completion positions
                                             # at a time, recomputed in backward (0 = all at once)
                                             logits_chunk=128))
    c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1)))
    c.eval = ml_collections.ConfigDict(dict(
        datasets=(), split="test", num_problems=0, samples=1, temperature=0.0, top_p=1.0, max_new_tokens=512,
        batch_size=32, per_difficulty=100,  # held-out problems per level (arith)
        summary_temperatures=()))  # also evaluated before and after training, for the summary table
    return c


def load(spec: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """Imports a config file and calls its `get_config(arg)`; `FILE:arg` passes arg (big_vision style)."""
    spec = str(spec)
    if arg is None and ":" in Path(spec).name:
        spec, arg = spec.rsplit(":", 1)
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"quant_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config()")
    cfg = module.get_config(arg) if arg is not None else module.get_config()
    return cfg


def _parse_value(key: str, text: str, current: Any) -> Any:
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, bool) and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ConfigError(f"--config.{key}={text}: cannot parse a {type(current).__name__} from {text!r}") from None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"--config.{key}: expected true/false, got {text!r}")
    elif isinstance(current, int) and not isinstance(current, bool):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"--config.{key}: expected an integer, got {text!r}")
    elif isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"--config.{key}: expected a number, got {text!r}")
        value = float(value)
    elif isinstance(current, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            value = (value,)
        value = tuple(value)
    return value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `a.b=value` strings (from `--config.a.b=value`); unknown keys and bad types are errors."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--config.{item}: expected --config.KEY=VALUE")
        key, text = item.split("=", 1)
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r}; known: {sorted(node.keys())}")
            node = node[part]
        last = parts[-1]
        if last not in node:
            if ".".join(parts[:-1]) == "rewards":  # rewards is an open mapping: name=weight adds a reward
                node[last] = float(ast.literal_eval(text))
                continue
            where = ".".join(parts[:-1]) or "the top level"
            raise ConfigError(f"unknown config key {key!r}; known keys at {where}: {sorted(node.keys())}")
        node[last] = _parse_value(key, text, node[last])
    return cfg


def _choice(cfg, key: str, allowed: Sequence[str]) -> None:
    node = cfg
    for part in key.split("."):
        node = node[part]
    if node not in allowed:
        raise ConfigError(f"{key}={node!r} is not one of {list(allowed)}")


def _positive(cfg, key: str, allow_zero: bool = False) -> None:
    node = cfg
    for part in key.split("."):
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node) or (
            node < 0 if allow_zero else node <= 0):
        raise ConfigError(f"{key}={node!r} must be {'>= 0' if allow_zero else '> 0'}")


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Checks the whole config before any compute. Raises ConfigError naming the key."""
    base = base_config()
    for section in base.keys():
        if section not in cfg:
            raise ConfigError(f"missing config key {section!r}")
        if isinstance(base[section], ml_collections.ConfigDict) and section != "rewards":
            for key in cfg[section].keys():
                if key not in base[section]:
                    raise ConfigError(f"unknown config key '{section}.{key}'; known: {sorted(base[section].keys())}")
    for key in cfg.keys():
        if key not in base:
            raise ConfigError(f"unknown config key {key!r}; known: {sorted(base.keys())}")
    for key in ("total_steps", "data.prompts_per_step", "rollout.group_size", "rollout.max_new_tokens",
                "rl.mu", "rl.minibatches", "optim.microbatches", "optim.lr", "keep_checkpoints", "log_every"):
        _positive(cfg, key)
    for key in ("rl.beta", "rl.eps_low", "rl.eps_high", "rl.entropy_coef", "rollout.temperature",
                "rollout.think_budget", "optim.warmup_steps", "optim.weight_decay", "optim.grad_clip",
                "eval_every", "checkpoint_every", "optim.logits_chunk"):
        _positive(cfg, key, allow_zero=True)
    _choice(cfg, "rl.advantage", ADVANTAGES)
    _choice(cfg, "rl.std_scale", STD_SCALES)
    _choice(cfg, "rl.loss_agg", LOSS_AGGS)
    _choice(cfg, "rl.kl_estimator", KL_ESTIMATORS)
    _choice(cfg, "rl.ratio_level", RATIO_LEVELS)
    _choice(cfg, "rl.old_logp", OLD_LOGP)
    _choice(cfg, "optim.schedule", SCHEDULES)
    _choice(cfg, "model.dtype", DTYPES)
    _choice(cfg, "model.param_dtype", DTYPES)
    from grpo.data.prompts import TEMPLATES
    _choice(cfg, "data.prompt_template", TEMPLATES)
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p={cfg.rollout.top_p} must be in (0, 1]")
    if cfg.rl.dual_clip and cfg.rl.dual_clip <= 1:
        raise ConfigError(f"rl.dual_clip={cfg.rl.dual_clip} must be 0 (off) or > 1")
    g = cfg.rollout.group_size
    if g == 1 and cfg.rl.advantage in ("grpo", "rloo") and (cfg.rl.std_scale == "group" or cfg.rl.advantage == "rloo"):
        raise ConfigError(f"rollout.group_size=1 with rl.advantage={cfg.rl.advantage!r}, "
                          f"rl.std_scale={cfg.rl.std_scale!r}: a group of one has no spread "
                          "(every advantage would be 0); use group_size >= 2")
    if cfg.rl.loss_agg == "seq_mean_token_sum_norm" and cfg.rl.norm_constant <= 0:
        raise ConfigError("rl.loss_agg='seq_mean_token_sum_norm' (Dr. GRPO) needs rl.norm_constant > 0 "
                          "(e.g. rollout.max_new_tokens)")
    if not cfg.model.preset and not cfg.model.hf_path:
        raise ConfigError("set model.preset or model.hf_path")
    if cfg.model.hf_path and not Path(cfg.model.hf_path).is_dir():
        raise ConfigError(f"model.hf_path={cfg.model.hf_path!r}: no such directory")
    if cfg.model.preset:
        from models.config import PRESETS
        if cfg.model.preset not in PRESETS:
            raise ConfigError(f"model.preset={cfg.model.preset!r} is not one of {sorted(PRESETS)}")
        if not cfg.model.hf_path and cfg.model.tokenizer != "char" and not Path(cfg.model.tokenizer or "-").is_dir():
            raise ConfigError("a model.preset without model.hf_path needs model.tokenizer='char' or a tokenizer "
                              "directory")
    n = cfg.data.prompts_per_step * g
    if n % (cfg.rl.minibatches * cfg.optim.microbatches):
        raise ConfigError(f"data.prompts_per_step * rollout.group_size = {n} is not divisible by "
                          f"rl.minibatches * optim.microbatches = {cfg.rl.minibatches * cfg.optim.microbatches}")
    shape = tuple(cfg.mesh.shape)
    if len(shape) != 3 or shape.count(-1) > 1 or any((not isinstance(s, int)) or s == 0 or s < -1 for s in shape):
        raise ConfigError(f"mesh.shape={shape} must be 3 positive sizes for (data, fsdp, tensor), at most one -1")
    if num_devices is not None:
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known or (-1 not in shape and known != num_devices):
            raise ConfigError(f"mesh.shape={shape} does not fit {num_devices} devices")
        full = [num_devices // known if s == -1 else s for s in shape]
        batch_shards = full[0] * full[1]
        per_update = n // cfg.rl.minibatches // cfg.optim.microbatches
        if per_update % batch_shards:
            raise ConfigError(f"a micro-batch of {per_update} rows (data.prompts_per_step * rollout.group_size "
                              f"/ rl.minibatches / optim.microbatches) is not divisible by the "
                              f"{batch_shards} data x fsdp shards of mesh.shape={shape}")
        if cfg.data.prompts_per_step % batch_shards and cfg.data.prompts_per_step * g % batch_shards:
            raise ConfigError(f"data.prompts_per_step * rollout.group_size = {n} is not divisible by the "
                              f"{batch_shards} data x fsdp shards of mesh.shape={shape}")
    from rewards import compose
    try:
        compose.build(cfg.rewards)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"rewards: {e}") from None
