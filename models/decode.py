"""One decode step of the sampler: a token per sequence against a KV cache kept in whole per-layer buffers.

`Transformer.__call__` runs the stacked layers with `lax.scan`, which suits prefill and training. Inside
the sampler's while loop, XLA:CPU turns the scan's per-layer `dynamic_slice` of every stacked weight and of
the cache window into copies, once per layer per token. So the decode path is shaped differently:

- `decode_weights` splits the stacked weights per layer and fuses them, once per sampler call (outside the
  loop): one QKV matrix laid out per KV head as (d, k, g + 2, e) (its g query heads, then its key and
  value, so a KV-head sharding keeps each head's q/k/v together) and one gate/up matrix (d, 2, f).
- The layers are unrolled in Python, so every weight and cache buffer is used whole.
- The cache is two buffers per layer (keys (.., e, s), values (.., s, e), as in `KVCache`):
    prompt (b, k, e, P): written by the prefill, shared by the G samples of each prompt;
    decode (n, k, e, S): step t at slot t; S is the end of the current decode segment, and the buffer
      grows between segments (`DecodeCache.grow`), so attention reads the live context, not a window
      sliced (copied) out of a full-length cache each step.
  Attention takes one softmax across the two.

Shapes: n = B * G sequences, b prompts, d hidden, h query heads, k KV heads, g = h / k, e head dim,
f MLP width, v vocab.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.sharding import constrain
from models.transformer import _NEG_INF, Transformer, apply_rope, rms_norm, rope_tables


def decode_weights(model: Transformer, max_position: int, gather: bool = True) -> dict[str, Any]:
    """Per-layer, fused weights in the compute dtype and RoPE tables for positions [0, max_position).

    Call inside the jitted sampler, outside its loop. The RoPE table is looked up per step: XLA fuses the
    sin/cos of `rope_tables` into every consumer, recomputing them per element.

    gather: lay the weights out for data-parallel decoding: gathered over the batch axes ('data', 'fsdp')
      once here and split over 'tensor' only. False keeps their FSDP layout (a device holds 1/fsdp of
      each weight), for models whose weights do not fit a device: then every token all-gathers them.
    """
    cfg = model.cfg
    dtype = cfg.compute_dtype
    lay = lambda x, *names: constrain(x, [None if gather and n == "embed" else n for n in names])
    w = model.layers.weights()
    l, d, h, k, e = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    qkv = jnp.concatenate([w["wq"].reshape(l, d, k, h // k, e), w["wk"][:, :, :, None], w["wv"][:, :, :, None]],
                          axis=3).astype(dtype)
    gate_up = jnp.stack([w["w_gate"], w["w_up"]], axis=2).astype(dtype)
    layers = []
    for i in range(l):
        layer = dict(
            attn_norm=lay(w["attn_norm"][i], "norm"), mlp_norm=lay(w["mlp_norm"][i], "norm"),
            qkv_dkce=lay(qkv[i], "embed", "kv_heads", None, "head_dim"),
            wo_hed=lay(w["wo"][i].astype(dtype), "heads", "head_dim", "embed"),
            gate_up_d2f=lay(gate_up[i], "embed", None, "mlp"),
            w_down_fd=lay(w["w_down"][i].astype(dtype), "mlp", "embed"))
        if cfg.qkv_bias:
            b_qkv = jnp.concatenate([w["bq"][i].reshape(k, h // k, e), w["bk"][i][:, None], w["bv"][i][:, None]],
                                    axis=1)
            layer["b_qkv_kce"] = lay(b_qkv.astype(dtype), "kv_heads", None, "head_dim")
        layers.append(layer)
    embed = lay(model.embed[...], "vocab", "embed")
    head_dv = embed.T if cfg.tie_embeddings else lay(model.lm_head[...], "embed", "vocab")
    cos_pe, sin_pe = rope_tables(cfg, jnp.arange(max_position)[None])
    return dict(layers=layers, embed_vd=embed, head_dv=head_dv.astype(dtype),
                final_norm=lay(model.final_norm[...], "norm"), rope_cos_pe=cos_pe[0], rope_sin_pe=sin_pe[0])


@flax.struct.dataclass
class DecodeCache:
    """Per-layer lists of cache buffers (see the module docstring)."""

    prompt_k: list[jax.Array]  # (b, k, e, P) each
    prompt_v: list[jax.Array]  # (b, k, P, e)
    prompt_mask: jax.Array  # (b, P) bool, True on real prompt tokens
    k: list[jax.Array]  # (n, k, e, S): decode step t at slot t; S = the end of the current segment
    v: list[jax.Array]  # (n, k, S, e)

    @property
    def length(self) -> int:
        return self.k[0].shape[-1]

    def grow(self, length: int) -> "DecodeCache":
        """Room for decode slots up to `length` (a copy of the decode part, once per segment)."""
        pad = length - self.length
        return self.replace(k=[jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad))) for x in self.k],
                            v=[jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in self.v])


def init_cache(prompt_k_lbkep: jax.Array, prompt_v_lbkpe: jax.Array, prompt_mask_bp: jax.Array, n: int,
               length: int, dtype=None) -> DecodeCache:
    """A DecodeCache from the prefill's stacked prompt keys/values, with `length` empty decode slots."""
    l, _, k, e, _ = prompt_k_lbkep.shape
    dtype = dtype or prompt_k_lbkep.dtype
    names = ("batch", "kv_heads", None, None)
    return DecodeCache(prompt_k=[x.astype(dtype) for x in prompt_k_lbkep],
                       prompt_v=[x.astype(dtype) for x in prompt_v_lbkpe], prompt_mask=prompt_mask_bp,
                       k=[constrain(jnp.zeros((n, k, e, length), dtype), names) for _ in range(l)],
                       v=[constrain(jnp.zeros((n, k, length, e), dtype), names) for _ in range(l)])


def decode_step(cfg: ModelConfig, w: dict[str, Any], cache: DecodeCache, tokens_n: jax.Array,
                positions_n: jax.Array, slot: jax.Array) -> tuple[jax.Array, DecodeCache]:
    """Feeds one token per sequence; returns float32 logits (n, v) and the cache with the token at `slot`.

    Args:
      cfg: the model config.
      w: from `decode_weights`.
      cache: DecodeCache; the token's key/value go to decode slot `slot`, and it attends to the prompt
        (where `prompt_mask`) and to decode slots <= `slot`.
      tokens_n: int (n,) token ids.
      positions_n: int (n,) RoPE positions.
      slot: scalar int, the decode step.
    """
    dtype = cfg.compute_dtype
    n = tokens_n.shape[0]
    h, k, e = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    g = h // k
    x_nd = constrain(jnp.take(w["embed_vd"], tokens_n, axis=0).astype(dtype), ("batch", None))
    cos, sin = (jnp.take(w[name], positions_n, axis=0)[:, None] for name in ("rope_cos_pe", "rope_sin_pe"))
    allowed_s = jnp.arange(cache.length) <= slot
    ks, vs = list(cache.k), list(cache.v)
    for i, lw in enumerate(w["layers"]):
        h_nd = rms_norm(x_nd, lw["attn_norm"], cfg.rms_norm_eps)
        qkv_nkce = (h_nd @ lw["qkv_dkce"].reshape(h_nd.shape[-1], -1)).reshape(n, k, g + 2, e)
        if cfg.qkv_bias:
            qkv_nkce += lw["b_qkv_kce"]
        q_nkge = apply_rope(qkv_nkce[:, :, :g].reshape(n, 1, h, e), cos, sin).reshape(n, k, g, e)
        k_nke = apply_rope(qkv_nkce[:, :, g].reshape(n, 1, k, e), cos, sin).reshape(n, k, e)
        v_nke = qkv_nkce[:, :, g + 1]
        ks[i] = jax.lax.dynamic_update_slice(ks[i], k_nke[..., None].astype(ks[i].dtype), (0, 0, 0, slot))
        vs[i] = jax.lax.dynamic_update_slice(vs[i], v_nke[:, :, None].astype(vs[i].dtype), (0, 0, slot, 0))
        o_nkge = _attention(q_nkge, cache.prompt_k[i], cache.prompt_v[i], cache.prompt_mask, ks[i], vs[i],
                            allowed_s)
        x_nd = x_nd + o_nkge.astype(dtype).reshape(n, h * e) @ lw["wo_hed"].reshape(h * e, -1)
        h_nd = rms_norm(x_nd, lw["mlp_norm"], cfg.rms_norm_eps)
        gu_n2f = (h_nd @ lw["gate_up_d2f"].reshape(h_nd.shape[-1], -1)).reshape(n, 2, -1)
        act_nf = constrain(jax.nn.silu(gu_n2f[:, 0]) * gu_n2f[:, 1], ("batch", "mlp"))
        x_nd = constrain(x_nd + act_nf @ lw["w_down_fd"], ("batch", None))
    h_nd = rms_norm(x_nd, w["final_norm"], cfg.rms_norm_eps)
    logits_nv = jnp.matmul(h_nd, w["head_dv"], preferred_element_type=jnp.float32)
    return logits_nv, cache.replace(k=ks, v=vs)


def _attention(q_nkge: jax.Array, pk_bkep: jax.Array, pv_bkpe: jax.Array, pmask_bp: jax.Array,
               k_nkes: jax.Array, v_nkse: jax.Array, allowed_s: jax.Array) -> jax.Array:
    """Softmax attention of one query per sequence over its prompt's keys and its decode keys, in float32.

    The prompt keys are shared by the G = n / b consecutive rows of each prompt: their G * g queries are
    one matrix against them. Both score blocks share one max and one normaliser (a softmax over their
    concatenation, without building it). Products are written as multiply-reduce over a non-minor axis,
    which XLA:CPU runs as one streaming pass over the cache (about 2x faster than batched dots at large n).
    """
    n, k, g, e = q_nkge.shape
    b = pk_bkep.shape[0]
    gg = n // b * g
    f32 = lambda x: x.astype(jnp.float32)
    scale = np.float32(1.0 / np.sqrt(e))
    q_nkge = f32(q_nkge)
    # (b, G, k, g, e) -> (b, k, G * g, e). The scale goes on the prompt scores but on the decode queries:
    # with G = 1 and P = S the two products would otherwise share one broadcast of q, which XLA then
    # materialises (10x slower).
    q_bkme = q_nkge.reshape(b, n // b, k, g, e).transpose(0, 2, 1, 3, 4).reshape(b, k, gg, e)
    s_bkmp = (q_bkme[..., None] * f32(pk_bkep)[:, :, None]).sum(-2) * scale
    s_bkmp = jnp.where(pmask_bp[:, None, None, :], s_bkmp, _NEG_INF)
    s_nkgs = ((q_nkge * scale)[..., None] * f32(k_nkes)[:, :, None]).sum(-2)
    s_nkgs = jnp.where(allowed_s, s_nkgs, _NEG_INF)
    to_rows = lambda x_bkm: x_bkm.reshape(b, k, n // b, g, *x_bkm.shape[3:]).swapaxes(1, 2).reshape(
        n, k, g, *x_bkm.shape[3:])
    m_nkg = jnp.maximum(to_rows(s_bkmp.max(-1)), s_nkgs.max(-1))
    m_bkm = m_nkg.reshape(b, n // b, k, g).transpose(0, 2, 1, 3).reshape(b, k, gg)
    p_bkmp = jnp.exp(s_bkmp - m_bkm[..., None])
    p_nkgs = jnp.exp(s_nkgs - m_nkg[..., None])
    denom = to_rows(p_bkmp.sum(-1)) + p_nkgs.sum(-1)
    o_bkme = (p_bkmp[..., None] * f32(pv_bkpe)[:, :, None]).sum(-2)
    o_nkge = to_rows(o_bkme) + (p_nkgs[..., None] * f32(v_nkse)[:, :, None]).sum(-2)
    return o_nkge / denom[..., None]
