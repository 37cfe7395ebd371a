"""GRPO loss pieces: group advantages, the clipped policy-gradient loss and its variants, KL estimators.

Every variant is a small pure function in a registry, so an ablation is a config change:

    ADVANTAGES      fn(r_bg, valid_bg, cfg) -> adv_bg                  "grpo", "dr_grpo", "rloo"
    KL_ESTIMATORS   fn(log π_ref − log π_θ per token) -> KL_nt          "k1", "k2", "k3"
    AGGREGATIONS    fn(loss_nt, mask_nt, denoms, cfg) -> scalar share   "seq_mean_token_mean", "token_mean",
                                                                        "seq_mean_token_sum_norm"

New variants join with `@register_advantage("name")`, `@register_kl_estimator("name")` or
`@register_aggregation("name")` and are then selected by `LossConfig`.

How the trainer uses it (rows are prompt-major: row b*G+g is completion g of prompt b):

    adv_n = compute_advantages(rewards_n, G, cfg, valid_n)        # once per rollout, on the whole batch
    denoms = loss_denominators(mask_nt, cfg)                      # once per optimiser step, whole batch
    for each micro-batch (a set of whole rows):
        loss, metrics = policy_loss(logp_nt, old_logp_nt, adv_n, mask_nt, cfg, denoms, ref_logp_nt)
    # sum the losses (and grads); combine the metrics with `merge_metrics`

Because the normalisers come from the whole batch, each micro-batch loss is its exact share of the
full-batch loss: gradient accumulation by summation equals one big batch. Rows must not be split across
micro-batches (the GRPO mean over a row's tokens and the GSPO sequence ratio need the whole row). Rows that
must not train (padding, dropped groups) are all-zero in mask_nt: only rows with a valid token count as
sequences, so padding to a fixed batch shape changes nothing.

Symbols follow the papers: r_i reward of completion o_i, Â_{i,t} advantage, π_θ / π_θold / π_ref the
policy, the policy that sampled, and the frozen reference; |o_i| number of valid tokens of row i.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp

ADVANTAGES: dict[str, Callable] = {}
KL_ESTIMATORS: dict[str, Callable] = {}
AGGREGATIONS: dict[str, Callable] = {}

STD_SCALES = ("group", "batch", "none")
RATIO_LEVELS = ("token", "sequence")


def _registrar(registry: dict[str, Callable], kind: str):
    def register(name: str):
        def decorate(fn):
            if name in registry:
                raise ValueError(f"{kind} {name!r} is already registered")
            registry[name] = fn
            return fn

        return decorate

    register.__doc__ = f"Decorator adding a {kind} function to the registry under `name`."
    return register


register_advantage = _registrar(ADVANTAGES, "advantage")
register_kl_estimator = _registrar(KL_ESTIMATORS, "KL estimator")
register_aggregation = _registrar(AGGREGATIONS, "aggregation")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Which advantage, ratio, clip, KL and aggregation the GRPO loss uses. Hashable: a static jit argument.

    Presets: GRPO (Shao et al. 2024) is the default plus `beta=0.04`; DAPO (Yu et al. 2025) is
    `eps_high=0.28, loss_agg="token_mean"`; Dr. GRPO (Liu et al. 2025) is `advantage="dr_grpo",
    loss_agg="seq_mean_token_sum_norm", norm_constant=<max completion length>`; GSPO (Zheng et al. 2025) is
    `ratio_level="sequence"` with its small clip range (`eps_low=3e-4, eps_high=4e-4`).
    """

    advantage: str = "grpo"  # ADVANTAGES key
    std_scale: str = "group"  # "grpo" only: divide by the std of the group, of the batch, or not at all
    std_ddof: int = 1  # 1: Bessel-corrected std, as TRL and verl (torch.std); 0: population std
    adv_eps: float = 1e-4  # added to the std so all-equal groups give 0, not 0/0
    eps_low: float = 0.2  # ratio clipped below at 1 - eps_low
    eps_high: float = 0.2  # ... and above at 1 + eps_high (DAPO clip-higher: 0.28)
    dual_clip: float = 0.0  # 0 = off; else c > 1 caps the loss of A < 0 tokens at -c·A (Ye et al. 2020)
    ratio_level: str = "token"  # "token" | "sequence" (GSPO)
    beta: float = 0.0  # KL coefficient; 0 means no reference model is needed
    kl_estimator: str = "k3"  # KL_ESTIMATORS key
    loss_agg: str = "seq_mean_token_mean"  # AGGREGATIONS key
    norm_constant: float = 0.0  # Dr. GRPO divisor (max completion length); > 0 for that aggregation
    entropy_coef: float = 0.0  # weight of the entropy bonus (subtracted from the loss)

    def __post_init__(self):
        self.validate()

    @property
    def uses_reference(self) -> bool:
        """Whether the loss needs the reference model's log-probs (only then load and run it)."""
        return self.beta > 0

    def validate(self) -> None:
        """Raises ValueError naming the first bad field and what it allows."""

        def choice(field, allowed):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"LossConfig.{field}={value!r}; allowed: {sorted(allowed)}")

        def number(field, ok, allowed):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or not ok(value):
                raise ValueError(f"LossConfig.{field}={value!r}; allowed: {allowed}")

        choice("advantage", ADVANTAGES)
        choice("std_scale", STD_SCALES)
        choice("std_ddof", (0, 1))
        number("adv_eps", lambda v: v >= 0, "a number >= 0")
        number("eps_low", lambda v: 0 <= v < 1, "0 <= eps_low < 1")
        number("eps_high", lambda v: v >= 0, "a number >= 0")
        number("dual_clip", lambda v: v == 0 or v > 1, "0 (off) or a number > 1")
        choice("ratio_level", RATIO_LEVELS)
        number("beta", lambda v: v >= 0, "a number >= 0")
        choice("kl_estimator", KL_ESTIMATORS)
        choice("loss_agg", AGGREGATIONS)
        if self.loss_agg == "seq_mean_token_sum_norm":
            number("norm_constant", lambda v: v > 0,
                   "a number > 0 (e.g. the max completion length) with loss_agg='seq_mean_token_sum_norm'")
        else:
            number("norm_constant", lambda v: v >= 0, "a number >= 0")
        number("entropy_coef", lambda v: True, "a finite number")


# Advantages. Each takes rewards r_bg (B, G) and validity v_bg (B, G) (invalid rewards already zeroed)
# and returns Â_bg; invalid rows are zeroed afterwards.


def _masked_mean(x, v, axis=None, keepdims=False):
    count = v.sum(axis=axis, keepdims=keepdims)
    return jnp.where(v, x, 0.0).sum(axis=axis, keepdims=keepdims) / jnp.maximum(count, 1)


def _masked_std(x, v, ddof, axis=None, keepdims=False):
    mean = _masked_mean(x, v, axis=axis, keepdims=True)
    sq = jnp.where(v, (x - mean) ** 2, 0.0).sum(axis=axis, keepdims=keepdims)
    # max(., 1): a lone valid reward has centred value 0, so any positive divisor gives Â = 0.
    return jnp.sqrt(sq / jnp.maximum(v.sum(axis=axis, keepdims=keepdims) - ddof, 1))


@register_advantage("grpo")
def grpo_advantages(r_bg, v_bg, cfg: LossConfig):
    """Group-relative advantage, Shao et al. 2024 (DeepSeekMath) §4.1.2: Â_i = (r_i − mean(r)) / std(r).

    The mean is always over the group. `cfg.std_scale` picks the std: "group" (the paper), "batch" (the std
    of all rewards in the batch, "Tricks or Traps", Liu et al. 2025 / TRL `scale_rewards="batch"`) or "none"
    (no scaling, the same as "dr_grpo"). `cfg.adv_eps` is added to the std.

    Args:
      r_bg: (B, G) float32 rewards.
      v_bg: (B, G) bool, rows that count.
      cfg: the loss config.

    Returns:
      (B, G) float32 advantages.
    """
    centred_bg = r_bg - _masked_mean(r_bg, v_bg, axis=-1, keepdims=True)
    if cfg.std_scale == "none":
        return centred_bg
    if cfg.std_scale == "group":
        std = _masked_std(r_bg, v_bg, cfg.std_ddof, axis=-1, keepdims=True)
    else:
        std = _masked_std(r_bg, v_bg, cfg.std_ddof)
    return centred_bg / (std + cfg.adv_eps)


@register_advantage("dr_grpo")
def dr_grpo_advantages(r_bg, v_bg, cfg: LossConfig):
    """Mean-centred, unscaled: Â_i = r_i − mean(r). Liu et al. 2025 ("Understanding R1-Zero-Like
    Training", Dr. GRPO) drop the std because it up-weights groups that are nearly all right or all wrong.

    Args/Returns as `grpo_advantages`; `cfg.std_scale` is ignored.
    """
    del cfg
    return r_bg - _masked_mean(r_bg, v_bg, axis=-1, keepdims=True)


@register_advantage("rloo")
def rloo_advantages(r_bg, v_bg, cfg: LossConfig):
    """Leave-one-out baseline, Ahmadian et al. 2024 ("Back to Basics", RLOO):
    Â_i = r_i − 1/(k−1) Σ_{j≠i} r_j over the k valid members of the group; 0 when k < 2.

    Args/Returns as `grpo_advantages`; `cfg.std_scale` is ignored.
    """
    del cfg
    k_b1 = v_bg.sum(-1, keepdims=True)
    others_bg = r_bg.sum(-1, keepdims=True) - r_bg
    return jnp.where(k_b1 > 1, r_bg - others_bg / jnp.maximum(k_b1 - 1, 1), 0.0)


def compute_advantages(rewards_n, group_size: int, cfg: LossConfig, valid_n=None):
    """Sequence advantages Â_i from rewards, with the variant `cfg.advantage`.

    Args:
      rewards_n: (N,) rewards, N = B*G, prompt-major (row b*G+g is completion g of prompt b). numpy or jax.
      group_size: G, completions per prompt (static).
      cfg: the loss config (static).
      valid_n: optional (N,) bool; False rows (padding, dropped groups) get Â = 0 and are left out of every
        statistic, so their rewards may be anything, NaN included.

    Returns:
      (N,) float32 advantages. Per-token advantages (process rewards) are not made here; `policy_loss`
      accepts them directly as (N, T).
    """
    cfg.validate()
    rewards_n = jnp.asarray(rewards_n, jnp.float32)
    if rewards_n.ndim != 1:
        raise ValueError(f"rewards_n must be 1-D (N,), got shape {rewards_n.shape}")
    n = rewards_n.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the {n} rewards")
    valid_n = jnp.ones((n,), bool) if valid_n is None else jnp.asarray(valid_n).astype(bool)
    if valid_n.shape != (n,):
        raise ValueError(f"valid_n has shape {valid_n.shape}, expected ({n},)")
    v_bg = valid_n.reshape(-1, group_size)
    r_bg = jnp.where(v_bg, rewards_n.reshape(-1, group_size), 0.0)
    adv_bg = ADVANTAGES[cfg.advantage](r_bg, v_bg, cfg)
    return jnp.where(v_bg, adv_bg, 0.0).reshape(n)


# KL estimators (Schulman 2020, "Approximating KL Divergence"). With samples o ~ π_θ and
# log ρ = log π_ref(o) − log π_θ(o), each estimates D_KL[π_θ ‖ π_ref] per token.


@register_kl_estimator("k1")
def kl_k1(log_ratio_ref_nt):
    """k1 = −log ρ: unbiased, high variance, negative on some tokens.

    Args:
      log_ratio_ref_nt: (N, T) log π_ref − log π_θ, 0 on masked tokens.

    Returns:
      (N, T) per-token estimate, 0 where the input is 0.
    """
    return -log_ratio_ref_nt


@register_kl_estimator("k2")
def kl_k2(log_ratio_ref_nt):
    """k2 = (log ρ)² / 2: biased, low variance, always >= 0. Args/Returns as `kl_k1`."""
    return 0.5 * jnp.square(log_ratio_ref_nt)


@register_kl_estimator("k3")
def kl_k3(log_ratio_ref_nt):
    """k3 = ρ − log ρ − 1: unbiased and >= 0; the estimator of the GRPO paper (Shao et al. 2024, eq. 4).
    Args/Returns as `kl_k1`."""
    return jnp.expm1(log_ratio_ref_nt) - log_ratio_ref_nt


# Aggregations: per-token loss x_nt -> this micro-batch's share of the full-batch scalar. `denoms` come
# from `loss_denominators` on the whole batch; a row's own length is always complete in its micro-batch.


@register_aggregation("seq_mean_token_mean")
def seq_mean_token_mean(x_nt, mask_nt, denoms, cfg: LossConfig):
    """GRPO, Shao et al. 2024 eq. 3: (1/G) Σ_i (1/|o_i|) Σ_t x_{i,t}, the mean over rows that have tokens.

    Args:
      x_nt: (N, T) float32 per-token loss, 0 on masked tokens.
      mask_nt: (N, T) bool.
      denoms: `loss_denominators` of the whole batch.
      cfg: the loss config.

    Returns:
      Scalar share of the full-batch loss.
    """
    del cfg
    len_n = mask_nt.sum(-1)
    per_row_n = x_nt.sum(-1) / jnp.maximum(len_n, 1)
    return per_row_n.sum() / jnp.maximum(denoms["num_seqs"], 1.0)


@register_aggregation("token_mean")
def token_mean(x_nt, mask_nt, denoms, cfg: LossConfig):
    """DAPO token-level policy-gradient loss (Yu et al. 2025, §3.3): Σ_i Σ_t x_{i,t} / Σ_i |o_i| over the
    whole batch, so a long completion weighs by its length. Args/Returns as `seq_mean_token_mean`."""
    del mask_nt, cfg
    return x_nt.sum() / jnp.maximum(denoms["num_tokens"], 1.0)


@register_aggregation("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(x_nt, mask_nt, denoms, cfg: LossConfig):
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): (1/G) Σ_i Σ_t x_{i,t} / L with a
    constant L (`cfg.norm_constant`, the generation budget) in place of |o_i|, which removes the
    response-level length bias. Args/Returns as `seq_mean_token_mean`."""
    del mask_nt
    return x_nt.sum() / (jnp.maximum(denoms["num_seqs"], 1.0) * cfg.norm_constant)


def loss_denominators(mask_nt, cfg: LossConfig) -> dict:
    """Normalisers of the whole batch, so that micro-batch losses add up to the full-batch loss.

    Args:
      mask_nt: (N, T) mask of the whole batch (bool or 0/1); True on completion tokens that count.
      cfg: the loss config (unused by the built-in aggregations; kept so a variant may need it).

    Returns:
      {"num_tokens": valid tokens, "num_seqs": rows with at least one valid token}, float32 scalars.
    """
    del cfg
    m_nt = jnp.asarray(mask_nt).astype(bool)
    return {"num_tokens": m_nt.sum().astype(jnp.float32),
            "num_seqs": (m_nt.sum(-1) > 0).sum().astype(jnp.float32)}


def policy_loss(logp_nt, old_logp_nt, adv, mask_nt, cfg: LossConfig, denoms: dict, ref_logp_nt=None,
                entropy_nt=None):
    """Clipped policy-gradient loss with optional KL and entropy terms, aggregated by `cfg.loss_agg`.

    Per token (Shao et al. 2024 eq. 3, written as a loss to minimise):
      ρ_{i,t} = π_θ(o_{i,t}) / π_θold(o_{i,t})                     (ratio_level="token"), or
      ρ_{i,t} = s_i = exp((1/|o_i|) Σ_t log ρ_{i,t})               (ratio_level="sequence", GSPO's s_i(θ))
      ℓ_{i,t} = max(−Â ρ, −Â clip(ρ, 1−ε_low, 1+ε_high))           (PPO clip; DAPO's decoupled ε)
      ℓ_{i,t} = min(ℓ_{i,t}, −c Â)  where Â < 0                    (dual clip, Ye et al. 2020, if c > 0)
      ℓ_{i,t} += β KL_{i,t} − entropy_coef · H_{i,t}
    then loss = AGGREGATIONS[cfg.loss_agg](ℓ). `old_logp_nt` and `ref_logp_nt` are held constant (stop
    gradient), so on-policy training (μ = 1) may pass `old_logp_nt=logp_nt`.

    Args:
      logp_nt: (N, T) log π_θ of the sampled tokens (differentiated).
      old_logp_nt: (N, T) log π_θold of the same tokens (the sampler's).
      adv: (N,) sequence advantages or (N, T) per-token advantages (process rewards).
      mask_nt: (N, T) bool or 0/1; masked tokens contribute nothing, whatever values they hold.
      cfg: the loss config (static).
      denoms: `loss_denominators` of the whole batch this micro-batch belongs to.
      ref_logp_nt: (N, T) log π_ref; required when cfg.beta > 0. When given with beta = 0 the KL is only
        reported.
      entropy_nt: (N, T) policy entropy per position; required when cfg.entropy_coef != 0, else reported
        if given.

    Returns:
      (loss, metrics). loss: float32 scalar, this micro-batch's share of the full-batch loss. metrics: float32
      scalars over valid tokens of the whole batch, also as shares: "clip_frac/low" (ρ < 1−ε_low, Â < 0),
      "clip_frac/high" (ρ > 1+ε_high, Â > 0), "clip_frac/dual" (ρ > c, Â < 0), "clip_frac" (any of them),
      "kl", "entropy", "ratio/mean" are token means that add up across micro-batches; "ratio/min" and
      "ratio/max" combine by min / max (+inf / −inf for a micro-batch without tokens). `merge_metrics` does
      this. With ratio_level="sequence" a clipped sequence counts all its tokens.
    """
    cfg.validate()
    if cfg.beta > 0 and ref_logp_nt is None:
        raise ValueError(f"LossConfig.beta={cfg.beta} > 0 needs ref_logp_nt, the reference model's log-probs")
    if cfg.entropy_coef != 0 and entropy_nt is None:
        raise ValueError(f"LossConfig.entropy_coef={cfg.entropy_coef} != 0 needs entropy_nt")
    logp_nt = jnp.asarray(logp_nt).astype(jnp.float32)
    shape = logp_nt.shape
    if len(shape) != 2:
        raise ValueError(f"logp_nt must be (N, T), got shape {shape}")
    m_nt = jnp.asarray(mask_nt).astype(bool)
    adv = jnp.asarray(adv, jnp.float32)
    for name, x in (("old_logp_nt", old_logp_nt), ("mask_nt", m_nt), ("ref_logp_nt", ref_logp_nt),
                    ("entropy_nt", entropy_nt)):
        if x is not None and jnp.shape(x) != shape:
            raise ValueError(f"{name} has shape {jnp.shape(x)}, expected {shape} like logp_nt")
    if adv.shape not in (shape[:1], shape):
        raise ValueError(f"adv must be (N,) or (N, T) = {shape[:1]} or {shape}, got {adv.shape}")

    def const(x):  # float32, no gradient, 0 on masked tokens
        return jnp.where(m_nt, jax.lax.stop_gradient(jnp.asarray(x).astype(jnp.float32)), 0.0)

    # Masking before any exp keeps padding values (even inf / NaN) out of the forward and backward pass.
    logp_nt = jnp.where(m_nt, logp_nt, 0.0)
    adv_nt = const(adv[:, None] if adv.ndim == 1 else adv)
    log_ratio_nt = logp_nt - const(old_logp_nt)
    if cfg.ratio_level == "sequence":
        log_ratio_n = log_ratio_nt.sum(-1) / jnp.maximum(m_nt.sum(-1), 1)
        log_ratio_nt = jnp.where(m_nt, log_ratio_n[:, None], 0.0)
    ratio_nt = jnp.exp(log_ratio_nt)

    clipped_nt = jnp.clip(ratio_nt, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    loss_nt = jnp.maximum(-adv_nt * ratio_nt, -adv_nt * clipped_nt)
    if cfg.dual_clip > 0:
        loss_nt = jnp.where(adv_nt < 0, jnp.minimum(loss_nt, -adv_nt * cfg.dual_clip), loss_nt)

    if ref_logp_nt is not None:
        kl_nt = jnp.where(m_nt, KL_ESTIMATORS[cfg.kl_estimator](const(ref_logp_nt) - logp_nt), 0.0)
        if cfg.beta > 0:
            loss_nt = loss_nt + cfg.beta * kl_nt
    else:
        kl_nt = jnp.zeros(shape, jnp.float32)
    if entropy_nt is not None:
        entropy_nt = jnp.where(m_nt, jnp.asarray(entropy_nt).astype(jnp.float32), 0.0)
        if cfg.entropy_coef != 0:
            loss_nt = loss_nt - cfg.entropy_coef * entropy_nt
    else:
        entropy_nt = jnp.zeros(shape, jnp.float32)
    loss_nt = jnp.where(m_nt, loss_nt, 0.0)
    loss = AGGREGATIONS[cfg.loss_agg](loss_nt, m_nt, denoms, cfg)

    low_nt = m_nt & (ratio_nt < 1.0 - cfg.eps_low) & (adv_nt < 0)
    high_nt = m_nt & (ratio_nt > 1.0 + cfg.eps_high) & (adv_nt > 0)
    dual_nt = m_nt & (ratio_nt > cfg.dual_clip) & (adv_nt < 0) if cfg.dual_clip > 0 else jnp.zeros_like(m_nt)
    num_tokens = jnp.maximum(denoms["num_tokens"], 1.0)

    def share(x_nt):  # this micro-batch's part of the whole-batch token mean
        return jax.lax.stop_gradient(jnp.where(m_nt, x_nt, 0.0).astype(jnp.float32).sum() / num_tokens)

    ratio_sg_nt = jax.lax.stop_gradient(ratio_nt)
    metrics = {
        "clip_frac/low": share(low_nt),
        "clip_frac/high": share(high_nt),
        "clip_frac/dual": share(dual_nt),
        "clip_frac": share(low_nt | high_nt | dual_nt),
        "kl": share(kl_nt),
        "entropy": share(entropy_nt),
        "ratio/mean": share(ratio_sg_nt),
        "ratio/min": jnp.where(m_nt, ratio_sg_nt, jnp.inf).min(),
        "ratio/max": jnp.where(m_nt, ratio_sg_nt, -jnp.inf).max(),
    }
    return loss, metrics


_MERGE_MIN = ("ratio/min",)
_MERGE_MAX = ("ratio/max",)


def merge_metrics(a: dict, b: dict) -> dict:
    """Combines the metrics of two micro-batches of one batch (jit-compatible, e.g. in a `lax.scan` carry).

    Args:
      a, b: metrics from `policy_loss` called with the same `denoms`.

    Returns:
      The metrics of both together: "ratio/min" / "ratio/max" by min / max, every other one by sum (they are
      shares of whole-batch means). Merging all micro-batches gives the full-batch metrics.
    """
    out = {}
    for key in a:
        if key in _MERGE_MIN:
            out[key] = jnp.minimum(a[key], b[key])
        elif key in _MERGE_MAX:
            out[key] = jnp.maximum(a[key], b[key])
        else:
            out[key] = a[key] + b[key]
    return out
