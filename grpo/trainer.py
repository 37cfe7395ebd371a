"""The GRPO train step (one jit, sharded, donated state) and the training loop.

    state, metrics = train_step(state, batch)       # pure; built by make_train_step(...)

The loop (`train`) is plain Python: sample -> score -> update -> log / eval / checkpoint.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from grpo import loss as loss_lib
from grpo.rollout import Batch

log = logging.getLogger("quant")


@flax.struct.dataclass
class TrainState:
    """Everything a restart needs, as one pytree."""

    step: jax.Array  # int32 scalar: GRPO steps done (each has rl.mu x rl.minibatches optimizer updates)
    params: Any  # nested dict of arrays (nnx.to_pure_dict of the model)
    opt_state: Any
    rng: jax.Array  # uint32 key data (raw, so it checkpoints as a plain array)
    data_pos: jax.Array  # int32 scalar: dataset rows consumed


def make_optimizer(ocfg: ml_collections.ConfigDict, total_updates: int):
    """AdamW after global-norm clipping, with linear warm-up then cosine decay (or constant).

    Returns:
      (optimizer, lr_schedule). The first update already uses lr / warmup_steps (never 0).
    """
    if ocfg.schedule not in ("cosine", "constant"):
        raise ValueError(f"optim.schedule {ocfg.schedule!r} is not one of ['cosine', 'constant']")
    peak, warmup = float(ocfg.lr), int(ocfg.warmup_steps)
    final = float(ocfg.get("final_lr_frac", 0.0))

    def lr(count):
        count = jnp.asarray(count, jnp.float32)
        scale = jnp.minimum((count + 1) / warmup, 1.0) if warmup > 0 else 1.0
        if ocfg.schedule == "cosine":
            progress = jnp.clip((count - warmup) / max(total_updates - warmup, 1), 0.0, 1.0)
            scale = scale * (final + (1 - final) * 0.5 * (1 + jnp.cos(jnp.pi * progress)))
        return peak * scale

    parts = [optax.clip_by_global_norm(ocfg.grad_clip)] if ocfg.grad_clip > 0 else []
    parts.append(optax.adamw(lr, b1=ocfg.b1, b2=ocfg.b2, eps=1e-8, weight_decay=ocfg.weight_decay))
    return optax.chain(*parts), lr


def token_logps(graphdef: nnx.GraphDef, params: Any, batch: Batch, with_entropy: bool = True,
                chunk: int = 0):
    """Log-probabilities (and entropies) of the completion tokens under `params`.

    Args:
      chunk: if > 0 and the completion is longer, the vocabulary projection and log-softmax run over
        `chunk` positions at a time and are recomputed in the backward pass, so only (N, chunk, V) logits
        are ever live instead of (N, T, V) (with a 150k vocabulary that is what fills the memory).

    Returns:
      (logp_nt, entropy_nt or None), float32, for the T completion positions.
    """
    model = nnx.merge(graphdef, params)
    p = batch.prompt_len
    hidden_nld, _ = model(batch.tokens, batch.positions, batch.kv_mask, return_hidden=True)
    h_ntd = hidden_nld[:, p - 1:-1]  # position i predicts token i + 1
    targets_nt = batch.tokens[:, p:]

    def score(h_ntd, targets_nt):
        logp_ntv = jax.nn.log_softmax(model.logits(h_ntd), axis=-1)
        logp_nt = jnp.take_along_axis(logp_ntv, targets_nt[..., None], axis=-1)[..., 0]
        entropy_nt = -(jnp.exp(logp_ntv) * logp_ntv).sum(-1) if with_entropy else jnp.zeros_like(logp_nt)
        return logp_nt, entropy_nt

    n, t = targets_nt.shape
    if chunk <= 0 or t <= chunk:
        logp_nt, entropy_nt = score(h_ntd, targets_nt)
    else:
        k = -(-t // chunk)
        pad = k * chunk - t
        h_kncd = jnp.pad(h_ntd, ((0, 0), (0, pad), (0, 0))).reshape(n, k, chunk, -1).swapaxes(0, 1)
        tg_knc = jnp.pad(targets_nt, ((0, 0), (0, pad))).reshape(n, k, chunk).swapaxes(0, 1)
        logp_knc, entropy_knc = jax.lax.map(lambda xs: jax.checkpoint(score)(*xs), (h_kncd, tg_knc))
        logp_nt = logp_knc.swapaxes(0, 1).reshape(n, k * chunk)[:, :t]
        entropy_nt = entropy_knc.swapaxes(0, 1).reshape(n, k * chunk)[:, :t]
    return logp_nt, entropy_nt if with_entropy else None


def _split(tree: Any, n: int) -> Any:
    """(N, ...) leaves -> (n, N / n, ...) for a scan over micro-batches."""
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), tree)


def make_train_step(graphdef: nnx.GraphDef, lcfg: loss_lib.LossConfig, optimizer: optax.GradientTransformation,
                    microbatches: int = 1, on_policy: bool = True, logits_chunk: int = 0) -> Callable:
    """Builds `train_step(state, batch, old_logp) -> (state, metrics)` (not yet jitted).

    Args:
      graphdef: the model's static structure.
      lcfg: loss settings.
      optimizer: optax transformation (its state is in TrainState).
      microbatches: gradients are accumulated over this many slices of the batch; the result equals one
        pass over the whole batch (the loss normalisers are computed on the whole batch).
      on_policy: the batch was sampled from exactly these parameters and this is the only update on it:
        old log-probs are the current ones (ratio 1, as TRL does with one iteration); otherwise `old_logp`
        is used.
      logits_chunk: completion positions per vocabulary-projection chunk (see `token_logps`; 0 = all).
    """

    def loss_fn(params, mb: Batch, old_logp_nt, denoms):
        logp_nt, entropy_nt = token_logps(graphdef, params, mb, chunk=logits_chunk)
        old = jax.lax.stop_gradient(logp_nt) if on_policy else old_logp_nt
        ref = mb.ref_logp if lcfg.beta > 0 else None
        loss, metrics = loss_lib.policy_loss(logp_nt, old, mb.advantages, mb.completion_mask, lcfg, denoms,
                                             ref_logp_nt=ref, entropy_nt=entropy_nt)
        mask = mb.completion_mask
        metrics = dict(metrics, logp_diff_sum=(jnp.abs(logp_nt - mb.sampler_logp) * mask).sum(),
                       tokens=mask.sum())
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch, old_logp_nt: jax.Array):
        denoms = loss_lib.loss_denominators(batch.completion_mask, lcfg)
        if microbatches == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, old_logp_nt, denoms)
            metrics = [metrics]
        else:
            def acc(carry, xs):
                mb, old = xs
                (l, m), g = grad_fn(state.params, mb, old, denoms)
                return jax.tree.map(jnp.add, carry, (l, g)), m

            zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
            (loss, grads), stacked = jax.lax.scan(acc, zeros, (_split(batch, microbatches),
                                                               _split(old_logp_nt, microbatches)))
            metrics = [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(microbatches)]
        metrics = functools.reduce(loss_lib.merge_metrics, metrics)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        # A non-finite loss or gradient skips the update: parameters and optimizer state stay as they were.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        state = state.replace(params=keep(new_params, state.params), opt_state=keep(new_opt, state.opt_state))
        tokens = jnp.maximum(metrics.pop("tokens"), 1)
        metrics.update(loss=loss, grad_norm=grad_norm, skipped=(~ok).astype(jnp.int32),
                       logp_diff=metrics.pop("logp_diff_sum") / tokens)
        return state, metrics

    return train_step


def make_logp_fn(graphdef: nnx.GraphDef, logits_chunk: int = 0) -> Callable:
    """params, batch -> completion log-probs (for old-policy or reference log-probs)."""
    return lambda params, batch: token_logps(graphdef, params, batch, with_entropy=False, chunk=logits_chunk)[0]



# ---- setup ------------------------------------------------------------------------------------------------

def load_policy(cfg: ml_collections.ConfigDict, mesh):
    """The policy model and tokenizer named by cfg.model (an HF directory, or a preset initialised from seed)."""
    from models import hf
    from models.config import preset
    from models.sharding import shard_params
    from models.tokenizer import Tokenizer, char_tokenizer
    from models.transformer import init_model

    m = cfg.model
    if m.hf_path:
        model, tok = hf.load(m.hf_path, mesh=mesh, dtype=m.dtype, param_dtype=m.param_dtype)
    else:
        model, tok = init_model(preset(m.preset, dtype=m.dtype, param_dtype=m.param_dtype), seed=cfg.seed), None
        nnx.update(model, shard_params(nnx.state(model), mesh))
    if m.tokenizer == "char":
        tok = char_tokenizer(m.alphabet)
    elif m.tokenizer:
        tok = Tokenizer.from_dir(m.tokenizer)
    if tok is None:
        raise ValueError("the model has no tokenizer: set model.tokenizer")
    if tok.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens but the model's vocabulary is {model.cfg.vocab_size}")
    return model, tok


class PromptStream:
    """Dataset rows in a seeded order, reshuffled every epoch; position = rows consumed (checkpointed)."""

    def __init__(self, rows, seed: int, shuffle: bool = True, pos: int = 0):
        if len(rows) == 0:
            raise ValueError("the training dataset is empty")
        self.rows, self.seed, self.shuffle, self.pos = rows, seed, shuffle, pos
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            n = len(self.rows)
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                           else np.arange(n)}
        return self._perms[epoch]

    def take(self, k: int) -> list[dict]:
        n = len(self.rows)
        out = [self.rows[int(self._perm(i // n)[i % n])] for i in range(self.pos, self.pos + k)]
        self.pos += k
        return out


def training_rows(cfg: ml_collections.ConfigDict):
    """The training problems named by cfg.data ("arith" is generated; anything else via grpo.data.load)."""
    if cfg.data.dataset == "arith":
        from grpo.data import arith
        return arith.train_rows(cfg.data.num_rows, seed=cfg.seed)
    return load_problems(cfg.data.dataset, cfg.data.split)


def load_problems(name: str, split: str):
    """A registered data set's split, or a JSONL file (which is a single split: `split` is ignored)."""
    from grpo import data as data_lib
    return data_lib.load(name, split if name in data_lib.DATASETS else None)


class Evaluator:
    """Held-out evaluation at eval steps: `eval/<dataset>/<metric>` metrics from the current sampler params."""

    def __init__(self, cfg: ml_collections.ConfigDict, sampler, tok):
        self.cfg, self.sampler, self.tok = cfg.eval, sampler, tok
        self.template = cfg.data.prompt_template
        self.sets = {}
        for name in self.cfg.datasets:
            if name == "arith":
                from grpo.data import arith
                self.sets[name] = arith.held_out(self.cfg.per_difficulty, seed=cfg.seed)
            else:
                rows = load_problems(name, self.cfg.split)
                n = self.cfg.num_problems or len(rows)
                self.sets[name] = [rows[i] for i in range(min(n, len(rows)))]

    def __call__(self, step: int, extra_temperatures=()) -> tuple[dict, dict]:
        """Evaluates every data set at eval.temperature (metrics `eval/<dataset>/...`) and at each extra
        temperature (`eval/<dataset>/t<temp>/...`). Returns (flat metrics, results by tag)."""
        metrics, results = {}, {}
        temps = [self.cfg.temperature] + [t for t in extra_temperatures if t != self.cfg.temperature]
        for name, rows in self.sets.items():
            for i, temp in enumerate(temps):
                scfg = self.sampler.config(max_new_tokens=self.cfg.max_new_tokens, temperature=temp,
                                           top_p=self.cfg.top_p if temp > 0 else 1.0)
                tag = name if i == 0 else f"{name}/t{temp:g}"
                if name == "arith":
                    from grpo.data import arith
                    res = arith.evaluate(self.sampler, scfg, rows, seed=step, batch_size=self.cfg.batch_size)
                    metrics.update(arith.flat(res, f"eval/{tag}"))
                else:
                    from grpo import evaluate as eval_lib
                    _, reports = eval_lib.evaluate_datasets(
                        self.sampler, self.tok, {name: rows}, samples=self.cfg.samples, temperature=temp,
                        top_p=self.cfg.top_p if temp > 0 else 1.0, max_new_tokens=self.cfg.max_new_tokens,
                        template=self.template, batch_size=self.cfg.batch_size)
                    res = reports[name]
                    metrics.update(eval_lib.flat_metrics(res, tag))
                results[f"{name} (temperature {temp:g})"] = res
        return metrics, results


def loss_config(cfg: ml_collections.ConfigDict) -> loss_lib.LossConfig:
    r = cfg.rl
    return loss_lib.LossConfig(advantage=r.advantage, std_scale=r.std_scale, eps_low=r.eps_low, eps_high=r.eps_high,
                               dual_clip=r.dual_clip, ratio_level=r.ratio_level, beta=r.beta,
                               kl_estimator=r.kl_estimator, loss_agg=r.loss_agg, norm_constant=r.norm_constant,
                               entropy_coef=r.entropy_coef)


def _opt_shardings(abstract_opt: Any, param_shardings: Any, replicated) -> Any:
    """Optimizer-state shardings: a leaf whose path ends with a parameter's path is laid out like it."""
    by_path = {tuple(str(k) for k in path): sh for path, sh in jax.tree_util.tree_flatten_with_path(
        param_shardings)[0]}

    def one(path, leaf):
        keys = tuple(str(k) for k in path)
        for i in range(len(keys)):
            if keys[i:] in by_path:
                return by_path[keys[i:]]
        return replicated

    return jax.tree_util.tree_map_with_path(one, abstract_opt)


def init_state(sampler, optimizer: optax.GradientTransformation, seed: int) -> tuple[TrainState, TrainState]:
    """A fresh TrainState on the sampler's mesh: optimizer state laid out like the parameters (FSDP).

    Returns:
      (state, state_shardings).
    """
    mesh = sampler.mesh
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = TrainState(
        step=replicated, params=sampler.shardings,
        opt_state=_opt_shardings(jax.eval_shape(optimizer.init, sampler.params), sampler.shardings, replicated),
        rng=replicated, data_pos=replicated)
    with jax.set_mesh(mesh):
        init = jax.jit(lambda p: TrainState(step=jnp.int32(0), params=p, opt_state=optimizer.init(p),
                                            rng=jax.random.key_data(jax.random.key(seed)),
                                            data_pos=jnp.int32(0)), out_shardings=shardings)
        return init(sampler.params), shardings


def _slice_rows(tree: Any, start: int, stop: int) -> Any:
    return jax.tree.map(lambda x: x[start:stop], tree)


def step_metrics(rollout, per_update: list[dict], lr: float, t0: float, t1: float, updates: int) -> dict:
    """One step's metrics: rollout statistics, the updates' mean loss metrics, rates and timings."""
    m = jax.tree.map(lambda *xs: float(np.mean([float(x) for x in xs])), *per_update)
    m["skipped"] = sum(int(u["skipped"]) for u in per_update)
    train_s = time.perf_counter() - t1
    metrics = {**rollout.stats, **m, "lr": float(lr), "time/train_s": train_s,
               "time/step_s": time.perf_counter() - t0,
               "tokens_per_s/train": float(np.asarray(rollout.batch.kv_mask).sum()) * updates / train_s}
    return metrics


def run(cfg: ml_collections.ConfigDict, workdir: str, *, data_rows=None, progress: bool = True) -> dict:
    """Trains (or resumes training) with GRPO as configured; returns the last logged metrics.

    Re-running with the same workdir resumes from the newest complete checkpoint.
    """
    import json
    from pathlib import Path

    from grpo import checkpoint as ckpt_lib
    from grpo import config as config_lib
    from grpo import metrics as metrics_lib
    from grpo import multihost
    from grpo.rollout import collect
    from models.sampler import Sampler
    from models.sharding import make_mesh, put, shard_batch
    from rewards import compose

    config_lib.validate(cfg, jax.device_count())
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    lcfg = loss_config(cfg)
    lcfg.validate()
    workdir = Path(workdir)
    primary = multihost.is_primary()  # writes logs, plots, metadata; every process writes checkpoints
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=list))
    multihost.check_shared_directory(ckpt_lib.directory(cfg, workdir))  # before anything is loaded
    mesh = make_mesh(cfg.mesh.shape)
    model, tok = load_policy(cfg, mesh)
    graphdef = nnx.graphdef(model)
    if data_rows is None:
        data_rows = training_rows(cfg)
    reward_fn = multihost.ShardedReward(compose.build(cfg.rewards))  # each host scores its shard
    sampler = Sampler(model, tok, mesh, gather_weights=cfg.rollout.gather_weights)
    ro = cfg.rollout
    scfg = sampler.config(max_new_tokens=ro.max_new_tokens, temperature=ro.temperature, top_k=ro.top_k,
                          top_p=ro.top_p, stop=tuple(ro.stop), think_budget=ro.think_budget)
    from grpo.data.prompts import render_prompt
    def take_prompts(k: int) -> list[dict]:
        """The next k rows (the same order on every host); each host encodes its shard, then all gather."""
        rows = stream.take(k)
        lo, hi = multihost.shard_range(k)
        ids = multihost.gather_shards(
            lambda: [tok.encode(render_prompt(r["problem"], cfg.data.prompt_template, tok)) for r in rows[lo:hi]])
        return [dict(r, prompt_ids=i) for r, i in zip(rows, ids)]

    updates = cfg.rl.mu * cfg.rl.minibatches
    optimizer, lr_fn = make_optimizer(cfg.optim, cfg.total_steps * updates)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state, state_shardings = init_state(sampler, optimizer, cfg.seed)
    ref_params = sampler.params if cfg.rl.beta > 0 else None  # the initial policy, placed on the mesh
    ckpt = ckpt_lib.Checkpointer(ckpt_lib.directory(cfg, workdir), keep=cfg.keep_checkpoints)
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
        log.info("resumed from step %d (%s)", int(state.step), ckpt.directory)
    start = int(state.step)

    on_policy = cfg.rl.old_logp == "auto" and updates == 1
    chunk = cfg.optim.get("logits_chunk", 0)
    step_fn = jax.jit(make_train_step(graphdef, lcfg, optimizer, cfg.optim.microbatches, on_policy, chunk),
                      donate_argnums=0, out_shardings=(state_shardings, None))
    logp_fn = jax.jit(make_logp_fn(graphdef, chunk))
    stream = PromptStream(data_rows, cfg.seed, cfg.data.shuffle, pos=int(state.data_pos))
    writer = metrics_lib.MetricsWriter(workdir, enabled=primary, start_step=start)
    bar = None
    if progress and primary:
        from tqdm import tqdm
        bar = tqdm(total=cfg.total_steps, initial=start, desc="grpo", dynamic_ncols=True)

    def update(state, rollout_batch):
        """mu passes x minibatches optimizer updates on one rollout batch (device)."""
        n = rollout_batch.tokens.shape[0]
        with jax.set_mesh(mesh):
            batch = shard_batch(mesh, rollout_batch)
            if ref_params is not None:
                batch = batch.replace(ref_logp=logp_fn(ref_params, batch))
            old = batch.sampler_logp if cfg.rl.old_logp == "sampler" or on_policy else logp_fn(state.params, batch)
            per_update = []
            for _ in range(cfg.rl.mu):
                for j in range(cfg.rl.minibatches):
                    if cfg.rl.minibatches == 1:  # the whole batch: no slicing copies on the hot path
                        state, m = step_fn(state, batch, old)
                    else:
                        lo, hi = j * n // cfg.rl.minibatches, (j + 1) * n // cfg.rl.minibatches
                        state, m = step_fn(state, _slice_rows(batch, lo, hi), old[lo:hi])
                    per_update.append(m)
        return state, per_update

    evaluator = Evaluator(cfg, sampler, tok) if cfg.eval.datasets else None
    before = after = None
    if evaluator is not None and start == 0:  # the base policy, for the before -> after summary
        eval_metrics, before = evaluator(0, cfg.eval.summary_temperatures)
        writer.write(0, eval_metrics)
    last = {}
    for step in range(start, cfg.total_steps):
        t0 = time.perf_counter()
        sampler.set_params(state.params)
        rollout = collect(sampler, take_prompts, lambda row: row["prompt_ids"], reward_fn, scfg, lcfg,
                          num_prompts=cfg.data.prompts_per_step,
                          group_size=ro.group_size, rng=jax.random.fold_in(jax.random.wrap_key_data(state.rng), step),
                          dynamic_sampling=ro.dynamic_sampling, max_rounds=ro.max_sampling_rounds,
                          mask_truncated=ro.mask_truncated)                       # device + host rewards
        t1 = time.perf_counter()
        state, per_update = update(state, rollout.batch)                         # device
        # host scalars -> global replicated arrays (checkpoints need every leaf global on every host)
        state = state.replace(step=put(np.int32(step + 1), replicated), data_pos=put(np.int32(stream.pos), replicated))
        done, metrics = step + 1, {}
        if done % cfg.log_every == 0 or done == cfg.total_steps:
            per_update = jax.device_get(per_update)  # the only device -> host sync of the step
            metrics = step_metrics(rollout, per_update, lr_fn(done * updates - 1), t0, t1, updates)
            if bar is not None:
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}",
                                acc=f"{metrics.get('accuracy', float('nan')):.3f}", refresh=False)
        if evaluator is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.total_steps):
            sampler.set_params(state.params)
            eval_metrics, results = evaluator(done, cfg.eval.summary_temperatures if done == cfg.total_steps else ())
            metrics.update(eval_metrics)
            after = results if done == cfg.total_steps else after
        if metrics:
            writer.write(done, metrics)
            last = metrics
        if bar is not None:
            bar.update(1)
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.total_steps:
            ckpt.save(done, state, force=done == cfg.total_steps)
    ckpt.close()
    writer.close()
    if bar is not None:
        bar.close()
    if primary and start < cfg.total_steps:
        metrics_lib.plot(workdir)
        if before is not None and after is not None:
            text = metrics_lib.summary_table(before, after)
            (workdir / "summary.md").write_text(text)
            print("\n" + text)
    return {"state": state, "metrics": last, "graphdef": graphdef, "tokenizer": tok, "before": before,
            "after": after}
