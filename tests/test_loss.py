"""Tests for grpo.loss: hand-computed advantages and losses, KL estimators, clipping, GSPO, gradient
accumulation, padding invariance, parity with TRL's documented formulas, config validation."""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo import loss as L

AGGS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
EPS = 1e-4  # LossConfig.adv_eps default


def cfg_for(loss_agg="seq_mean_token_mean", **kw):
    if loss_agg == "seq_mean_token_sum_norm":
        kw.setdefault("norm_constant", 8.0)
    return L.LossConfig(loss_agg=loss_agg, **kw)


# Every loss case runs inside one fixed (12, 8) batch: the real rows and tokens sit top-left, the rest is
# masked and filled with NaN. One shape means JAX compiles each operation once for the whole file, and every
# test also checks that padding changes nothing (a NaN would leak into the loss or the gradient).
CANVAS = (12, 8)


def embed(x, shape, fill):
    x = np.asarray(x)
    out = np.full(shape, fill, bool if x.dtype == bool else np.float32)
    out[tuple(slice(0, d) for d in x.shape)] = x
    return out


def run(cfg, logp, old, adv, mask, ref=None, ent=None):
    """Loss, metrics and d loss / d logp of the batch, computed inside the padded canvas."""
    n, t = np.shape(logp)
    mask = embed(mask, CANVAS, False)
    pad = lambda x, shape=CANVAS: None if x is None else embed(x, shape, np.nan)  # noqa: E731
    adv = pad(adv, CANVAS[:1] if np.ndim(adv) == 1 else CANVAS)
    denoms = L.loss_denominators(mask, cfg)

    def f(lp):
        return L.policy_loss(lp, pad(old), adv, mask, cfg, denoms, ref_logp_nt=pad(ref), entropy_nt=pad(ent))

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(pad(logp)))
    grad = np.asarray(grad)
    assert np.all(grad[~mask] == 0.0), "a padding token got a gradient"
    return float(loss), {k: float(v) for k, v in metrics.items()}, grad[:n, :t]


def lengths_mask(lengths, t):
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


# Advantages -------------------------------------------------------------------------------------------

R4 = [1.0, 0.0, 0.0, 1.0]  # G=2: prompt 0 -> (1, 0), prompt 1 -> (0, 1)


def advantages(rewards, g, cfg, valid=None):
    """compute_advantages inside 12 rows; the extra rows are invalid, with NaN rewards, and must get 0."""
    n = len(rewards)
    valid = embed(np.ones(n, bool) if valid is None else valid, (12,), False)
    adv = np.asarray(L.compute_advantages(embed(rewards, (12,), np.nan), g, cfg, valid_n=valid))
    assert adv.dtype == np.float32 and np.all(adv[n:] == 0.0)
    return adv[:n]


@pytest.mark.parametrize("cfg, expected", [
    # group std, Bessel (TRL / verl): std{1, 0} = sqrt(0.5)
    (L.LossConfig(), np.array([1, -1, -1, 1]) * 0.5 / (math.sqrt(0.5) + EPS)),
    # group std, population: std{1, 0} = 0.5
    (L.LossConfig(std_ddof=0), np.array([1, -1, -1, 1]) * 0.5 / (0.5 + EPS)),
    # group mean, batch std of all four rewards: sqrt(((4 * 0.25) / 3)) = sqrt(1/3)
    (L.LossConfig(std_scale="batch"), np.array([1, -1, -1, 1]) * 0.5 / (math.sqrt(1 / 3) + EPS)),
    (L.LossConfig(std_scale="none"), [0.5, -0.5, -0.5, 0.5]),
    (L.LossConfig(advantage="dr_grpo"), [0.5, -0.5, -0.5, 0.5]),
    # RLOO: r_i minus the other member of the pair
    (L.LossConfig(advantage="rloo"), [1.0, -1.0, -1.0, 1.0]),
])
def test_advantages_rewards_1001_g2(cfg, expected):
    np.testing.assert_allclose(advantages(R4, 2, cfg), expected, rtol=1e-6)


R8 = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # G=4: one right of four, then all four right


@pytest.mark.parametrize("cfg, expected", [
    # mean 1/4; Bessel std = sqrt((9/16 + 3/16) / 3) = 1/2; the all-equal group gives 0
    (L.LossConfig(), [0.75 / (0.5 + EPS)] + [-0.25 / (0.5 + EPS)] * 3 + [0.0] * 4),
    # batch mean 5/8, Bessel batch variance (5 (3/8)^2 + 3 (5/8)^2) / 7 = 15/56
    (L.LossConfig(std_scale="batch"),
     [0.75 / (math.sqrt(15 / 56) + EPS)] + [-0.25 / (math.sqrt(15 / 56) + EPS)] * 3 + [0.0] * 4),
    (L.LossConfig(advantage="dr_grpo"), [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]),
    # RLOO: 1 - (0+0+0)/3 = 1; 0 - (1+0+0)/3 = -1/3
    (L.LossConfig(advantage="rloo"), [1.0, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0]),
])
def test_advantages_g4(cfg, expected):
    np.testing.assert_allclose(advantages(R8, 4, cfg), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cfg", [L.LossConfig(), L.LossConfig(std_scale="batch"),
                                 L.LossConfig(advantage="dr_grpo"), L.LossConfig(advantage="rloo")],
                         ids=["group", "batch", "dr_grpo", "rloo"])
def test_invalid_rows_get_zero_and_leave_statistics(cfg):
    # A padding group with junk rewards (NaN included) changes nothing for the real rows.
    padded = np.array(R4 + [7.0, np.nan])
    valid = np.array([True] * 4 + [False] * 2)
    adv = L.compute_advantages(padded, 2, cfg, valid_n=valid)
    np.testing.assert_allclose(adv[:4], L.compute_advantages(R4, 2, cfg), rtol=1e-6)
    np.testing.assert_array_equal(adv[4:], [0.0, 0.0])


def test_partly_valid_group():
    # G=4 with the last member invalid: statistics over the three valid rewards (1, 0, 0).
    r, valid = [1.0, 0.0, 0.0, 9.0], [True, True, True, False]
    rloo = advantages(r, 4, L.LossConfig(advantage="rloo"), valid)
    np.testing.assert_allclose(rloo, [1.0, -0.5, -0.5, 0.0], rtol=1e-6)
    # mean 1/3; Bessel std over three = sqrt((4/9 + 2/9) / 2) = sqrt(1/3)
    grpo = advantages(r, 4, L.LossConfig(), valid)
    s = math.sqrt(1 / 3) + EPS
    np.testing.assert_allclose(grpo, [(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, 0.0], rtol=1e-6)


def test_advantages_jit_one_trace():
    cfg = L.LossConfig()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def adv_fn(r, v):
        return L.compute_advantages(r, 2, cfg, valid_n=v)

    ones = jnp.ones(4, bool)
    np.testing.assert_allclose(adv_fn(jnp.array(R4), ones), L.compute_advantages(R4, 2, cfg), rtol=1e-6)
    np.testing.assert_allclose(adv_fn(jnp.array([0.0, 2.0, 3.0, 3.0]), ones), [-1 / (math.sqrt(2) + EPS),
                                                                                1 / (math.sqrt(2) + EPS),
                                                                                0, 0], rtol=1e-5)


# Ratio 1: loss = -(mean of A in the aggregation's sense) --------------------------------------------

LENGTHS = [3, 1, 2, 4]
ADV = np.array([0.5, -1.0, 2.0, -0.25], np.float32)


@pytest.mark.parametrize("loss_agg, expected_loss, expected_grad_per_row", [
    # GRPO: -(1/4) Σ A_i = -(0.5 - 1 + 2 - 0.25) / 4; token t of row i gets -A_i / (4 |o_i|)
    ("seq_mean_token_mean", -1.25 / 4, -ADV / (4 * np.array(LENGTHS))),
    # DAPO: -Σ |o_i| A_i / Σ |o_i| = -(1.5 - 1 + 4 - 1) / 10; each token gets -A_i / 10
    ("token_mean", -3.5 / 10, -ADV / 10),
    # Dr. GRPO, L = 8: -Σ |o_i| A_i / (4 * 8); each token gets -A_i / 32
    ("seq_mean_token_sum_norm", -3.5 / 32, -ADV / 32),
])
def test_ratio_one_gives_minus_mean_advantage(loss_agg, expected_loss, expected_grad_per_row):
    mask = lengths_mask(LENGTHS, 5)
    logp = np.log(np.linspace(0.1, 0.9, 20, dtype=np.float32)).reshape(4, 5)
    loss, metrics, grad = run(cfg_for(loss_agg), logp, logp, ADV, mask)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(grad, np.where(mask, expected_grad_per_row[:, None], 0.0), rtol=1e-6)
    assert metrics["ratio/min"] == metrics["ratio/max"] == 1.0
    assert metrics["ratio/mean"] == pytest.approx(1.0)
    assert metrics["clip_frac"] == metrics["kl"] == metrics["entropy"] == 0.0


# Clipping --------------------------------------------------------------------------------------------

# One row, five tokens, per-token advantages; eps_low 0.2, eps_high 0.28 (DAPO clip-higher).
CLIP_RATIO = np.array([[1.5, 0.5, 1.1, 0.5, 3.0, 1.0]], np.float32)
CLIP_ADV = np.array([[1.0, -1.0, 2.0, 1.0, -1.0, 5.0]], np.float32)
CLIP_MASK = np.array([[1, 1, 1, 1, 1, 0]], bool)  # the last token is padding
#   ρ=1.5, A=+1: above 1.28 with A>0 -> ℓ = -1.28, no gradient, high clip
#   ρ=0.5, A=-1: below 0.8 with A<0  -> ℓ = max(0.5, 0.8) = 0.8, no gradient, low clip
#   ρ=1.1, A=+2: inside              -> ℓ = -2.2, dℓ/dlogp = -A ρ = -2.2
#   ρ=0.5, A=+1: below 0.8 but A>0   -> ℓ = min over objectives = -0.5, gradient -0.5, not clipped
#   ρ=3.0, A=-1: PPO keeps -A ρ = 3 (gradient 3); dual clip c=2 caps it at -c A = 2, no gradient


@pytest.mark.parametrize("dual_clip, token_losses, token_grads", [
    (0.0, [-1.28, 0.8, -2.2, -0.5, 3.0], [0, 0, -2.2, -0.5, 3.0]),
    (2.0, [-1.28, 0.8, -2.2, -0.5, 2.0], [0, 0, -2.2, -0.5, 0]),
])
def test_clip_higher_and_dual_clip(dual_clip, token_losses, token_grads):
    cfg = L.LossConfig(eps_low=0.2, eps_high=0.28, dual_clip=dual_clip, loss_agg="token_mean")
    old = np.full_like(CLIP_RATIO, -1.0)
    loss, m, grad = run(cfg, old + np.log(CLIP_RATIO), old, CLIP_ADV, CLIP_MASK)
    assert loss == pytest.approx(sum(token_losses) / 5, rel=1e-5)
    np.testing.assert_allclose(grad[0], np.array(token_grads + [0.0]) / 5, rtol=1e-5, atol=1e-7)
    assert m["clip_frac/low"] == pytest.approx(1 / 5)
    assert m["clip_frac/high"] == pytest.approx(1 / 5)
    assert m["clip_frac/dual"] == pytest.approx(1 / 5 if dual_clip else 0.0)
    assert m["clip_frac"] == pytest.approx(3 / 5 if dual_clip else 2 / 5)
    assert m["ratio/min"] == pytest.approx(0.5) and m["ratio/max"] == pytest.approx(3.0)
    assert m["ratio/mean"] == pytest.approx((1.5 + 0.5 + 1.1 + 0.5 + 3.0) / 5, rel=1e-6)


def test_gspo_sequence_ratio():
    # Row 0: log ρ = (0.1, 0.3) -> s = e^0.2 = 1.2214 < 1.28, A = +1: ℓ = -s, d/dlogp_t = -A s / 2.
    # Row 1: log ρ = (-0.6, -0.3, 0.0) -> s = e^-0.3 = 0.7408 < 0.8, A = -1: clipped, ℓ = 0.8, no gradient.
    log_ratio = np.array([[0.1, 0.3, 0.0], [-0.6, -0.3, 0.0]], np.float32)
    mask = lengths_mask([2, 3], 3)
    old = np.full((2, 3), -2.0, np.float32)
    cfg = L.LossConfig(ratio_level="sequence", eps_low=0.2, eps_high=0.28)
    loss, m, grad = run(cfg, old + log_ratio, old, np.array([1.0, -1.0]), mask)
    s0 = math.exp(0.2)
    assert loss == pytest.approx((-s0 + 0.8) / 2, rel=1e-6)  # seq-mean: (ℓ_0 + ℓ_1) / 2
    # d loss/d logp_0t = (1/2 rows) * (1/2 tokens in ℓ_0's token mean) * (-s0 / 2 from the length-normalised
    # log s) summed over the two identical token losses -> -s0 / 4.
    np.testing.assert_allclose(grad, [[-s0 / 4, -s0 / 4, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)
    assert m["clip_frac/low"] == pytest.approx(3 / 5)  # all three tokens of the clipped sequence
    assert m["ratio/max"] == pytest.approx(s0, rel=1e-6)
    assert m["ratio/min"] == pytest.approx(math.exp(-0.3), rel=1e-6)
    # Token-level ratios on the same numbers clip other tokens: row 0 has e^0.3 = 1.35 > 1.28 (A > 0), row 1
    # has e^-0.6 and e^-0.3 < 0.8 (A < 0) but its third token (ρ = 1) is not clipped.
    token_loss, _, _ = run(dataclasses.replace(cfg, ratio_level="token"), old + log_ratio, old,
                           np.array([1.0, -1.0]), mask)
    expected_token = (-(math.exp(0.1) + 1.28) / 2 + (0.8 + 0.8 + 1.0) / 3) / 2
    assert token_loss == pytest.approx(expected_token, rel=1e-6)


# KL and entropy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_policy_equal_to_reference_gives_zero_kl(estimator):
    rng = np.random.default_rng(0)
    logp = np.log(rng.uniform(0.05, 1.0, (3, 4))).astype(np.float32)
    mask = lengths_mask([4, 2, 3], 4)
    adv = np.array([1.0, -0.5, 0.25])
    cfg = L.LossConfig(beta=0.5, kl_estimator=estimator)
    loss, m, grad = run(cfg, logp, logp, adv, mask, ref=logp)
    loss0, _, grad0 = run(L.LossConfig(), logp, logp, adv, mask)
    assert m["kl"] == 0.0
    assert loss == pytest.approx(loss0, rel=1e-7)
    # k2 and k3 have zero gradient at π = π_ref; k1's gradient is β per token whatever the policy.
    expected = grad0 + (0.5 * np.where(mask, 1.0, 0.0) / (3 * mask.sum(1, keepdims=True))
                        if estimator == "k1" else 0.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("estimator, per_token, dper_token", [
    # x = log π_ref - log π_θ = (-0.5, 1.5)
    ("k3", [math.exp(-0.5) + 0.5 - 1, math.exp(1.5) - 1.5 - 1], [1 - math.exp(-0.5), 1 - math.exp(1.5)]),
    ("k2", [0.125, 1.125], [0.5, -1.5]),
    ("k1", [0.5, -1.5], [1.0, 1.0]),
])
def test_kl_estimators_on_known_numbers(estimator, per_token, dper_token):
    logp = np.array([[-1.0, -2.0]], np.float32)
    ref = np.array([[-1.5, -0.5]], np.float32)
    mask = np.ones((1, 2), bool)
    cfg = L.LossConfig(beta=0.1, kl_estimator=estimator, loss_agg="token_mean")
    loss, m, grad = run(cfg, logp, logp, np.zeros(1), mask, ref=ref)  # A = 0: only the KL term
    assert m["kl"] == pytest.approx(np.mean(per_token), rel=1e-6)
    assert loss == pytest.approx(0.1 * np.mean(per_token), rel=1e-6)
    np.testing.assert_allclose(grad[0], 0.1 * np.array(dper_token) / 2, rtol=1e-6)


def test_kl_reported_but_not_added_when_beta_zero():
    logp = np.array([[-1.0, -2.0]], np.float32)
    ref = np.array([[-1.5, -0.5]], np.float32)
    loss, m, _ = run(L.LossConfig(), logp, logp, np.array([1.0]), np.ones((1, 2), bool), ref=ref)
    assert loss == pytest.approx(-1.0)
    assert m["kl"] == pytest.approx((math.exp(-0.5) - 0.5 + math.exp(1.5) - 2.5) / 2, rel=1e-6)


def test_entropy_bonus():
    mask = lengths_mask([2, 1], 2)
    ent = np.array([[1.0, 3.0], [0.5, 99.0]], np.float32)
    logp = np.full((2, 2), -1.0, np.float32)
    cfg = L.LossConfig(entropy_coef=0.1)
    loss, m, _ = run(cfg, logp, logp, np.zeros(2), mask, ent=ent)
    assert loss == pytest.approx(-0.1 * ((1.0 + 3.0) / 2 + 0.5) / 2)  # seq-mean of token means
    assert m["entropy"] == pytest.approx(4.5 / 3)  # token mean


# Gradient accumulation and padding ---------------------------------------------------------------------


def random_batch(seed, n=12, t=8):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, n)
    lengths[5] = 0  # a row with no valid token (padding) in the middle of the batch
    old = np.log(rng.uniform(0.05, 1.0, (n, t))).astype(np.float32)
    logp = (old + rng.normal(0, 0.3, (n, t))).astype(np.float32)
    ref = (old + rng.normal(0, 0.3, (n, t))).astype(np.float32)
    ent = rng.uniform(0, 2, (n, t)).astype(np.float32)
    adv = rng.normal(size=n).astype(np.float32)
    return logp, old, adv, lengths_mask(lengths, t), ref, ent


VARIANTS = [dict(loss_agg=a, ratio_level=r) for a in AGGS for r in ("token", "sequence")]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['loss_agg']}-{v['ratio_level']}")
def test_gradient_accumulation_equals_full_batch(variant):
    cfg = cfg_for(beta=0.1, entropy_coef=0.01, eps_high=0.28, dual_clip=3.0, **variant)
    logp, old, adv, mask, ref, ent = random_batch(1)
    full_loss, full_m, full_grad = run(cfg, logp, old, adv, mask, ref, ent)
    denoms = L.loss_denominators(mask, cfg)  # of the WHOLE batch, shared by the micro-batches

    def micro(lp_full, rows):
        return L.policy_loss(lp_full[rows], old[rows], adv[rows], mask[rows], cfg, denoms, ref[rows],
                             ent[rows])

    # Two micro-batches of six rows; gradients w.r.t. the full logp_nt add up, metrics merge.
    total_loss, total_grad, merged = 0.0, 0.0, None
    for rows in (slice(0, 6), slice(6, 12)):
        (loss, m), grad = jax.value_and_grad(micro, has_aux=True)(jnp.asarray(logp), rows)
        total_loss, total_grad = total_loss + loss, total_grad + grad
        merged = m if merged is None else L.merge_metrics(merged, m)
    assert float(total_loss) == pytest.approx(full_loss, rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(total_grad, full_grad, rtol=1e-5, atol=1e-7)
    for key, value in full_m.items():
        assert float(merged[key]) == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert 0 < full_m["clip_frac"] < 1  # the random batch really exercises clipping


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['loss_agg']}-{v['ratio_level']}")
def test_padding_changes_nothing(variant):
    # An (8, 5) batch on its own, against the same batch with three more masked positions per row and two
    # more masked rows holding junk (+50, -inf, NaN, 1e9), itself padded into the canvas by `run`.
    cfg = cfg_for(beta=0.1, entropy_coef=0.01, **variant)
    logp, old, adv, mask, ref, ent = random_batch(2, n=8, t=5)
    denoms = L.loss_denominators(mask, cfg)
    f = lambda lp: L.policy_loss(lp, old, adv, mask, cfg, denoms, ref, ent)  # noqa: E731
    (base_loss, base_m), base_grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp))

    def pad(x, junk):
        x = np.concatenate([x, np.full((x.shape[0], 3), junk, x.dtype)], axis=1)
        return np.concatenate([x, np.full((2, x.shape[1]), junk, x.dtype)], axis=0)

    p_adv = np.concatenate([adv, [np.nan, 1e9]]).astype(np.float32)
    loss, m, grad = run(cfg, pad(logp, 50.0), pad(old, -np.inf), p_adv, pad(mask, False), pad(ref, np.nan),
                        pad(ent, np.nan))
    # Equal up to float32 summation order (the reductions run over a different shape).
    assert loss == pytest.approx(float(base_loss), rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(grad[:8, :5], base_grad, rtol=1e-5, atol=1e-8)
    for key, value in base_m.items():
        assert m[key] == pytest.approx(float(value), rel=1e-5, abs=1e-7), key


def test_per_token_advantages_equal_broadcast_sequence_advantages():
    logp, old, adv, mask, _, _ = random_batch(3)
    for agg in AGGS:
        cfg = cfg_for(agg)
        seq = run(cfg, logp, old, adv, mask)
        tok = run(cfg, logp, old, np.repeat(adv[:, None], logp.shape[1], 1), mask)
        assert tok[0] == pytest.approx(seq[0], rel=1e-6)
        np.testing.assert_allclose(tok[2], seq[2], rtol=1e-6)


def test_policy_loss_jit_one_trace():
    cfg = L.LossConfig(beta=0.04, eps_high=0.28, loss_agg="token_mean")
    logp, old, adv, mask, ref, _ = random_batch(4)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(lp, o, a, m, r):
        denoms = L.loss_denominators(m, cfg)
        return jax.value_and_grad(lambda x: L.policy_loss(x, o, a, m, cfg, denoms, r)[0])(lp)

    eager_loss, _, eager_grad = run(cfg, logp, old, adv, mask, ref)
    loss, grad = step(logp, old, adv, mask, ref)
    assert float(loss) == pytest.approx(eager_loss, rel=1e-5)
    np.testing.assert_allclose(grad, eager_grad, rtol=1e-5, atol=1e-7)
    step(logp + 0.1, old, -adv, mask, ref)  # new values, same shapes: no retrace


# TRL parity --------------------------------------------------------------------------------------------
# TRL's GRPOTrainer as documented (docs/source/grpo_trainer.md, "Computing the advantage", "Estimating the KL
# divergence", "Loss Types"), written out in float64 numpy:
#   Â_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4), std Bessel-corrected (torch.std); scale_rewards=
#         "none" leaves r_i - mean(r_group)
#   l_{i,t} = -min(ρ Â_i, clip(ρ, 1-ε_low, 1+ε_high) Â_i) + β D_KL,  D_KL = π_ref/π_θ - log(π_ref/π_θ) - 1
#   importance_sampling_level="sequence": log ρ_i = Σ_t m log ρ_{i,t} / |o_i| for every token of row i
#   "grpo":    (1/G) Σ_i (1/|o_i|) Σ_t l_{i,t}
#   "dapo":    Σ_i Σ_t l_{i,t} / Σ_i |o_i|
#   "dr_grpo": Σ_i Σ_t l_{i,t} / (G · max_completion_length)


def trl_advantages(r, g, scale):
    r_bg = r.reshape(-1, g)
    centred = r_bg - r_bg.mean(1, keepdims=True)
    if scale == "none":
        return centred.reshape(-1)
    return (centred / (r_bg.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)


def trl_loss(logp, old, ref, adv, mask, loss_type, eps_low, eps_high, beta, max_len, level="token"):
    m = mask.astype(np.float64)
    log_ratio = logp - old
    if level == "sequence":
        log_ratio = np.broadcast_to(((log_ratio * m).sum(-1) / np.maximum(m.sum(-1), 1))[:, None], logp.shape)
    coef_1 = np.exp(log_ratio)
    coef_2 = np.clip(coef_1, 1 - eps_low, 1 + eps_high)
    per_token = -np.minimum(coef_1 * adv[:, None], coef_2 * adv[:, None])
    x = ref - logp
    per_token = per_token + beta * (np.exp(x) - x - 1)
    if loss_type == "grpo":
        return ((per_token * m).sum(-1) / np.maximum(m.sum(-1), 1)).mean()
    if loss_type == "dapo":
        return (per_token * m).sum() / m.sum()
    if loss_type == "dr_grpo":
        return (per_token * m).sum() / (per_token.shape[0] * max_len)
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type, level, cfg", [
    ("grpo", "token", L.LossConfig(beta=0.04, eps_low=0.2, eps_high=0.28)),
    ("dapo", "token", L.LossConfig(beta=0.04, eps_low=0.2, eps_high=0.28, loss_agg="token_mean")),
    ("dr_grpo", "token", L.LossConfig(advantage="dr_grpo", beta=0.04, eps_low=0.2, eps_high=0.28,
                                      loss_agg="seq_mean_token_sum_norm", norm_constant=7.0)),
    ("grpo", "sequence", L.LossConfig(beta=0.04, eps_low=0.02, eps_high=0.03, ratio_level="sequence")),
])
def test_matches_trl_documented_formulas(loss_type, level, cfg):
    rng = np.random.default_rng(42)
    g, n, t = 4, 12, 7
    rewards = rng.choice([0.0, 0.5, 1.0], size=n)
    lengths = rng.integers(1, t + 1, n)
    mask = lengths_mask(lengths, t)
    old = np.log(rng.uniform(0.05, 1.0, (n, t)))
    logp = old + rng.normal(0, 0.3, (n, t))
    ref = old + rng.normal(0, 0.3, (n, t))

    adv = L.compute_advantages(rewards, g, cfg)
    trl_adv = trl_advantages(rewards, g, "none" if loss_type == "dr_grpo" else "group")
    np.testing.assert_allclose(adv, trl_adv, rtol=1e-5, atol=1e-6)

    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    loss, m, _ = run(cfg, f32(logp), f32(old), adv, mask, ref=f32(ref))
    expected = trl_loss(logp, old, ref, trl_adv, mask, loss_type, cfg.eps_low, cfg.eps_high, cfg.beta,
                        max_len=t, level=level)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert m["clip_frac"] > 0  # the comparison covers clipped tokens too


# Config validation and registries ----------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("advantage", "ppo"), ("std_scale", "global"), ("std_ddof", 2), ("adv_eps", -1.0), ("eps_low", 1.0),
    ("eps_low", -0.1), ("eps_high", -0.2), ("dual_clip", 0.5), ("dual_clip", 1.0), ("ratio_level", "seq"),
    ("beta", -0.1), ("beta", float("nan")), ("kl_estimator", "k4"), ("loss_agg", "sum"),
    ("entropy_coef", float("inf")), ("eps_high", "0.28"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"LossConfig\.{field}="):
        L.LossConfig(**{field: value})


def test_config_accepts_numpy_numbers_and_says_when_it_needs_the_reference():
    cfg = L.LossConfig(beta=np.float32(0.04), eps_high=np.float64(0.28))
    assert cfg.uses_reference and not L.LossConfig().uses_reference
    assert hash(cfg) == hash(L.LossConfig(beta=np.float32(0.04), eps_high=0.28))  # a static jit argument


def test_dr_grpo_aggregation_needs_norm_constant():
    with pytest.raises(ValueError, match=r"LossConfig\.norm_constant=0.0.*seq_mean_token_sum_norm"):
        L.LossConfig(loss_agg="seq_mean_token_sum_norm")


def test_missing_inputs_and_bad_shapes_raise():
    logp = np.zeros((2, 3), np.float32)
    mask = np.ones((2, 3), bool)
    cfg = L.LossConfig(beta=0.1)
    denoms = L.loss_denominators(mask, cfg)
    with pytest.raises(ValueError, match="beta=0.1 > 0 needs ref_logp_nt"):
        L.policy_loss(logp, logp, np.zeros(2), mask, cfg, denoms)
    with pytest.raises(ValueError, match="entropy_coef=0.1 != 0 needs entropy_nt"):
        L.policy_loss(logp, logp, np.zeros(2), mask, L.LossConfig(entropy_coef=0.1), denoms)
    with pytest.raises(ValueError, match=r"adv must be \(N,\) or \(N, T\)"):
        L.policy_loss(logp, logp, np.zeros(3), mask, L.LossConfig(), denoms)
    with pytest.raises(ValueError, match="mask_nt has shape"):
        L.policy_loss(logp, logp, np.zeros(2), mask[:, :2], L.LossConfig(), denoms)
    with pytest.raises(ValueError, match="group_size=3 must be >= 1 and divide the 4 rewards"):
        L.compute_advantages(R4, 3, L.LossConfig())


def test_registered_aggregation_is_a_config_change():
    @L.register_aggregation("test_token_sum")
    def token_sum(x_nt, mask_nt, denoms, cfg):
        del mask_nt, denoms, cfg
        return x_nt.sum()

    try:
        with pytest.raises(ValueError, match="already registered"):
            L.register_aggregation("test_token_sum")(token_sum)
        mask = lengths_mask(LENGTHS, 5)
        logp = np.zeros((4, 5), np.float32)
        loss, _, _ = run(L.LossConfig(loss_agg="test_token_sum"), logp, logp, ADV, mask)
        assert loss == pytest.approx(-3.5)  # -Σ |o_i| A_i
    finally:
        del L.AGGREGATIONS["test_token_sum"]
