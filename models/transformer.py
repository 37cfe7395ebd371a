"""Flax NNX decoder for the Qwen2 / Qwen2.5 / R1-Distill-Qwen / Llama family.

Token embedding -> L x [RMSNorm -> GQA attention with RoPE -> RMSNorm -> SwiGLU MLP] -> RMSNorm -> LM head.
Layer weights are stacked along a leading `layers` axis and run with `lax.scan`, so compile time does not
grow with depth. The KV cache is one pair of stacked arrays (keys (L, B, K, Dh, S), values (L, B, K, S, Dh)),
read inside the scan and written once per call at `cache_index`.

Shapes: b batch, t query tokens, s key slots, d hidden, h query heads, k KV heads, g = h / k, e head dim,
f MLP width, v vocab, l layers.

Masking: query i sits at slot `cache_index + i` (0 without a cache); it attends to key slot j iff
j <= its slot and `kv_mask[b, j]`. Left padding is expressed by `kv_mask` being False on pad slots, and
RoPE positions come separately (the sampler counts them from the first real token).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.config import ModelConfig
from models.sharding import constrain

_NEG_INF = float(np.finfo(np.float32).min)  # finite: fully masked rows (pads) give no NaNs


@flax.struct.dataclass
class KVCache:
    # Keys (l, b, k, e, s) and values (l, b, k, s, e): decode attention then reduces over a non-minor axis
    # in both products (over e for q.k, over s for p.v), which XLA:CPU vectorises ~4x better.
    k: jax.Array
    v: jax.Array

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, length: int, dtype=None) -> "KVCache":
        l, k, e = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
        dtype = dtype or cfg.compute_dtype
        return cls(k=jnp.zeros((l, batch, k, e, length), dtype), v=jnp.zeros((l, batch, k, length, e), dtype))

    @property
    def length(self) -> int:
        return self.v.shape[3]


def _param(rngs: nnx.Rngs | None, shape, names, cfg: ModelConfig, init: str = "normal") -> nnx.Param:
    dtype = cfg.weight_dtype
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:  # HF's initializer_range
        value = (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=tuple(names))


class Layers(nnx.Module):
    """All decoder layers, each weight stacked along a leading `layers` axis."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        l, d, h, k, e, f = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                            cfg.intermediate_size)
        p = lambda shape, names, init="normal": _param(rngs, shape, names, cfg, init)
        self.attn_norm = p((l, d), ("layers", "norm"), "ones")
        self.wq = p((l, d, h, e), ("layers", "embed", "heads", "head_dim"))
        self.wk = p((l, d, k, e), ("layers", "embed", "kv_heads", "head_dim"))
        self.wv = p((l, d, k, e), ("layers", "embed", "kv_heads", "head_dim"))
        self.wo = p((l, h, e, d), ("layers", "heads", "head_dim", "embed"))
        if cfg.qkv_bias:
            self.bq = p((l, h, e), ("layers", "heads", "head_dim"), "zeros")
            self.bk = p((l, k, e), ("layers", "kv_heads", "head_dim"), "zeros")
            self.bv = p((l, k, e), ("layers", "kv_heads", "head_dim"), "zeros")
        self.mlp_norm = p((l, d), ("layers", "norm"), "ones")
        self.w_gate = p((l, d, f), ("layers", "embed", "mlp"))
        self.w_up = p((l, d, f), ("layers", "embed", "mlp"))
        self.w_down = p((l, f, d), ("layers", "mlp", "embed"))

    def weights(self) -> dict[str, jax.Array]:
        return {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}


class Transformer(nnx.Module):
    """Decoder-only LM. `__call__(tokens, positions, kv_mask, cache, cache_index)` -> (logits, cache)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)
        self.layers = Layers(cfg, rngs)
        self.final_norm = _param(rngs, (cfg.hidden_size,), ("norm",), cfg, "ones")
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg)

    def __call__(self, tokens_bt: jax.Array, positions_bt: jax.Array, kv_mask_bs: jax.Array,
                 cache: KVCache | None = None, cache_index: jax.Array | int = 0,
                 return_hidden: bool = False):
        """Runs the decoder.

        Args:
          tokens_bt: int token ids (b, t).
          positions_bt: int RoPE positions (b, t).
          kv_mask_bs: bool (b, s), True on key slots that hold real tokens; s = t without a cache, else the
            cache length (then the new tokens' own slots must be set in it too).
          cache: optional KVCache; the new keys/values are written at slots [cache_index, cache_index + t).
          cache_index: first slot of this chunk (scalar; traced values are fine).
          return_hidden: return the final normed hidden states (b, t, d) instead of logits (the sampler
            and the loss then project only the positions they need).

        Returns:
          (logits_btv float32 or hidden_btd, updated cache or None).
        """
        cfg = self.cfg
        dtype = cfg.compute_dtype
        x_btd = jnp.take(self.embed[...], tokens_bt, axis=0).astype(dtype)
        x_btd = constrain(x_btd, ("batch", "length", None))
        cos, sin = rope_tables(cfg, positions_bt)
        t = tokens_bt.shape[1]
        causal_tt = jnp.tril(jnp.ones((t, t), bool))
        if cache is None:
            chunk_allowed_btt = causal_tt[None] & kv_mask_bs[:, None, :]
        else:
            # Keys come in two parts: cache slots written before this chunk, and the chunk itself. The
            # cache is only read inside the layer scan; the chunk is written once after it, so XLA
            # updates the cache in place instead of copying it per layer.
            chunk_valid_bt = jax.lax.dynamic_slice_in_dim(kv_mask_bs, cache_index, t, axis=1)
            chunk_allowed_btt = causal_tt[None] & chunk_valid_bt[:, None, :]
            slots_s = jnp.arange(cache.length)
            cache_allowed_bts = (slots_s < cache_index)[None, None, :] & kv_mask_bs[:, None, :]

        def layer(x_btd, w_and_cache):
            w, ck_bkes, cv_bkse = w_and_cache
            h_btd = rms_norm(x_btd, w["attn_norm"], cfg.rms_norm_eps)
            q_bthe = _dense(h_btd, w["wq"], dtype)
            k_btke = _dense(h_btd, w["wk"], dtype)
            v_btke = _dense(h_btd, w["wv"], dtype)
            if cfg.qkv_bias:
                q_bthe += w["bq"].astype(dtype)
                k_btke += w["bk"].astype(dtype)
                v_btke += w["bv"].astype(dtype)
            q_bthe = apply_rope(q_bthe, cos, sin)
            k_bkte = apply_rope(k_btke, cos, sin).transpose(0, 2, 1, 3)
            v_bkte = v_btke.transpose(0, 2, 1, 3)
            parts = [(k_bkte.transpose(0, 1, 3, 2), v_bkte, chunk_allowed_btt)]
            if ck_bkes is not None:
                parts.insert(0, (ck_bkes.astype(dtype), cv_bkse.astype(dtype), cache_allowed_bts))
            o_bthe = attention(q_bthe, parts)
            x_btd = x_btd + _dense(o_bthe, w["wo"], dtype, in_dims=2)
            h_btd = rms_norm(x_btd, w["mlp_norm"], cfg.rms_norm_eps)
            gate_btf = _dense(h_btd, w["w_gate"], dtype)
            up_btf = _dense(h_btd, w["w_up"], dtype)
            act_btf = constrain(jax.nn.silu(gate_btf) * up_btf, ("batch", "length", "mlp"))
            x_btd = x_btd + _dense(act_btf, w["w_down"], dtype)
            x_btd = constrain(x_btd, ("batch", "length", None))
            return x_btd, (k_bkte, v_bkte)

        ck, cv = (cache.k, cache.v) if cache is not None else (None, None)
        x_btd, (k_lbkte, v_lbkte) = jax.lax.scan(layer, x_btd, (self.layers.weights(), ck, cv))
        new_cache = None
        if cache is not None:
            new_cache = KVCache(
                k=jax.lax.dynamic_update_slice(ck, k_lbkte.transpose(0, 1, 2, 4, 3).astype(ck.dtype),
                                               (0, 0, 0, 0, cache_index)),
                v=jax.lax.dynamic_update_slice(cv, v_lbkte.astype(cv.dtype), (0, 0, 0, cache_index, 0)))
        h_btd = rms_norm(x_btd, self.final_norm[...], cfg.rms_norm_eps)
        if return_hidden:
            return h_btd, new_cache
        return self.logits(h_btd), new_cache

    def logits(self, h_btd: jax.Array) -> jax.Array:
        """Projects hidden states to float32 logits (tied or untied head)."""
        dtype = self.cfg.compute_dtype
        if self.cfg.tie_embeddings:
            w_dv = self.embed[...].astype(dtype).T
        else:
            w_dv = self.lm_head[...].astype(dtype)
        lead = h_btd.shape[:-1]
        logits = jnp.matmul(h_btd.astype(dtype).reshape(-1, h_btd.shape[-1]), w_dv,
                            preferred_element_type=jnp.float32).reshape(*lead, -1)
        return constrain(logits, ("batch", "length", "vocab")) if logits.ndim == 3 else logits


def _dense(x: jax.Array, w: jax.Array, dtype, in_dims: int = 1) -> jax.Array:
    """x (b, t, *in) @ w (*in, *out) -> (b, t, *out), as one 2-D matmul.

    Folding (b, t) and the feature dims into a plain matrix product matters on CPU: XLA:CPU runs the
    3-D einsum form (and above all its backward, which contracts over b and t) about 4x slower.
    """
    b, t = x.shape[:2]
    k = int(np.prod(w.shape[:in_dims]))
    out = w.shape[in_dims:]
    y = x.reshape(b * t, k) @ w.astype(dtype).reshape(k, -1)
    return y.reshape(b, t, *out)


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32, as HF does, then cast back to the input dtype before the scale."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w.astype(x.dtype) * y.astype(x.dtype)


def inv_frequencies(cfg: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies (e/2,), with linear or Llama-3 scaling from `cfg.rope_scaling`."""
    e = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, e, 2, dtype=np.float64) / e))
    sc = cfg.rope_scaling_dict
    kind = sc.get("rope_type", sc.get("type"))
    if kind == "linear":
        inv = inv / sc["factor"]
    elif kind == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between.
        factor, lo, hi = sc["factor"], sc.get("low_freq_factor", 1.0), sc.get("high_freq_factor", 4.0)
        old = sc["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = np.where(mid, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv.astype(np.float32)


def rope_tables(cfg: ModelConfig, positions_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    angles = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_frequencies(cfg))
    return jnp.cos(angles), jnp.sin(angles)  # (b, t, e/2) each


def apply_rope(x_btne: jax.Array, cos_bte: jax.Array, sin_bte: jax.Array) -> jax.Array:
    """Rotates the two halves of each head (HF's rotate_half convention), in float32."""
    x = x_btne.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    c, s = cos_bte[:, :, None, :], sin_bte[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_btne.dtype)


def attention(q_bthe: jax.Array, parts: list[tuple[jax.Array, jax.Array, jax.Array]]) -> jax.Array:
    """Grouped-query attention over one or more key sets, with one softmax across all of them.

    Args:
      q_bthe: queries.
      parts: (k_bkes, v_bkse, allowed_bts) per key set, e.g. [cached slots, this chunk]; keys are stored
        transposed (head dim before slots), as in the cache.

    Returns:
      (b, t, h, e) attention output; scores and softmax in float32.
    """
    b, t, h, e = q_bthe.shape
    kh = parts[0][0].shape[1]
    scale = np.float32(1.0 / np.sqrt(e))
    if t == 1:
        # Decode: per (b, k) a mat-vec against the cache. XLA:CPU runs such tiny batched dots slowly; a fused
        # multiply-reduce over a non-minor axis streams the cache near memory bandwidth instead.
        q_bkge = q_bthe.reshape(b, kh, h // kh, e).astype(jnp.float32)
        scores = [(q_bkge[..., None] * k[:, :, None].astype(jnp.float32)).sum(-2) * scale for k, _, _ in parts]
        scores = [jnp.where(a[:, 0, None, None, :], sc, _NEG_INF) for sc, (_, _, a) in zip(scores, parts)]
        probs = _split_softmax(scores)
        o_bkge = sum((p[..., None] * v[:, :, None].astype(jnp.float32)).sum(-2) for p, (_, v, _) in zip(probs, parts))
        return o_bkge.reshape(b, 1, h, e).astype(q_bthe.dtype)
    # Prefill / training: per (b, k) one plain matrix product over the g*t queries of the group (a single
    # batch dimension; XLA:CPU runs the two-batch-dim einsum form about 2x slower).
    g = h // kh
    q_nqe = q_bthe.reshape(b, t, kh, g, e).transpose(0, 2, 3, 1, 4).reshape(b * kh, g * t, e)
    scores = [jnp.matmul(q_nqe, k.reshape(b * kh, e, -1), preferred_element_type=jnp.float32
                         ).reshape(b, kh, g, t, -1) * scale for k, _, _ in parts]
    scores = [jnp.where(a[:, None, None], sc, _NEG_INF) for sc, (_, _, a) in zip(scores, parts)]
    probs = _split_softmax(scores)
    o_nqe = sum(jnp.matmul(p.astype(v.dtype).reshape(b * kh, g * t, -1), v.reshape(b * kh, v.shape[2], e))
                for p, (_, v, _) in zip(probs, parts))
    return o_nqe.reshape(b, kh, g, t, e).transpose(0, 3, 1, 2, 4).reshape(b, t, h, e)


def _split_softmax(scores: list[jax.Array]) -> list[jax.Array]:
    """Softmax over the concatenation of several score blocks (last axis), returned as blocks."""
    if len(scores) == 1:
        return [jax.nn.softmax(scores[0], axis=-1)]
    probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
    return jnp.split(probs, np.cumsum([sc.shape[-1] for sc in scores])[:-1].tolist(), axis=-1)


def positions_from_mask(mask_bt: jax.Array) -> jax.Array:
    """RoPE positions for left-padded rows: 0 at the first real token (pads get 0)."""
    return jnp.maximum(jnp.cumsum(mask_bt.astype(jnp.int32), axis=-1) - 1, 0)


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    return Transformer(cfg, rngs=nnx.Rngs(params=seed))
