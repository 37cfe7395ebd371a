"""ModelConfig: the shape of a Qwen2 / Qwen2.5 / Llama / R1-Distill decoder, presets, HF config.json I/O."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp

SUPPORTED_ARCHITECTURES = ("qwen2", "llama")
SUPPORTED_ROPE_SCALING = ("linear", "llama3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer (RMSNorm, RoPE, GQA, SwiGLU)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10_000.0
    # None, or {"rope_type": "linear"|"llama3", "factor": f, ...} as in HF config.json
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    architecture: str = "qwen2"  # what export writes: "qwen2" or "llama"
    dtype: str = "float32"  # compute dtype of matmuls; softmax and logits are always f32
    param_dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if isinstance(self.rope_scaling, dict):  # frozen + hashable: store as sorted tuple of items
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        self.validate()

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"ModelConfig.architecture {self.architecture!r} is not one of "
                             f"{SUPPORTED_ARCHITECTURES}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"ModelConfig.{name} {getattr(self, name)!r} is not one of {list(DTYPES)}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling_dict.get("rope_type", self.rope_scaling_dict.get("type"))
            if kind not in SUPPORTED_ROPE_SCALING:
                raise ValueError(f"rope_scaling type {kind!r} is not supported; supported: "
                                 f"{SUPPORTED_ROPE_SCALING} (or none)")

    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        d, f, h, k, hd = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * hd * (h + 2 * k) + h * hd * d + (hd * (h + 2 * k) if self.qkv_bias else 0)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return self.num_layers * per_layer + self.vocab_size * d + d + head

    def flops_per_token(self, context: int = 0) -> float:
        """Forward FLOPs per token: 2 x matmul parameters + attention over `context` keys."""
        d, f, h, k, hd = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        matmul = self.num_layers * (d * hd * (h + 2 * k) + h * hd * d + 3 * d * f) + d * self.vocab_size
        attn = self.num_layers * 2 * h * hd * context  # q.k and p.v
        return 2.0 * (matmul + attn)

    # ---- Hugging Face config.json --------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> "ModelConfig":
        """Reads a HF `config.json` dict (Qwen2ForCausalLM or LlamaForCausalLM)."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            archs = hf.get("architectures")
            raise ValueError(f"unsupported architecture: model_type={model_type!r} architectures={archs}; "
                             f"Quant supports {SUPPORTED_ARCHITECTURES} (Qwen2/Qwen2.5/R1-Distill-Qwen, Llama)")
        if model_type == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
            raise ValueError("unsupported Llama variant: attention_bias/mlp_bias=True")
        if model_type == "qwen2" and hf.get("use_sliding_window"):
            raise ValueError("unsupported Qwen2 variant: use_sliding_window=True")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf.get('hidden_act')!r}; only 'silu' (SwiGLU)")
        # transformers<5 writes rope_theta + rope_scaling; transformers>=5 writes rope_parameters.
        params = dict(hf.get("rope_parameters") or {})
        rope_theta = hf.get("rope_theta", params.pop("rope_theta", 10_000.0))
        params.pop("rope_theta", None)
        scaling = {k: v for k, v in (hf.get("rope_scaling") or params).items() if v is not None}
        if scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            rope_theta=float(rope_theta),
            rope_scaling=scaling or None,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            qkv_bias=(model_type == "qwen2") or bool(hf.get("attention_bias", False)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            architecture=model_type,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_hf_file(cls, path: str | Path, **overrides) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"missing file: {path} (a Hugging Face model directory needs config.json)")
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_hf_dict(hf, **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        arch = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[self.architecture]
        hf = {
            "architectures": [arch],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict or None,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": self.param_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if self.architecture == "llama":
            hf.update(attention_bias=self.qkv_bias, mlp_bias=False)
            if self.qkv_bias:
                raise ValueError("cannot export a llama config with qkv_bias=True (HF Llama also biases o_proj)")
        else:
            hf.update(use_sliding_window=False)
            if not self.qkv_bias:
                raise ValueError("cannot export a qwen2 config with qkv_bias=False (HF Qwen2 always has it)")
        return hf


_LLAMA32_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}

_QWEN_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                 num_kv_heads=2, qkv_bias=True, rms_norm_eps=1e-6, architecture="qwen2")
_QWEN_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                num_kv_heads=4, qkv_bias=True, rms_norm_eps=1e-6, architecture="qwen2")

# Shapes as published in each model's config.json. Weights still come from a local HF directory.
PRESETS: dict[str, dict[str, Any]] = {
    # The reference tiny model (Qwen2 layout, ~3.2M parameters) used by tests and benchmarks.
    "tiny": dict(vocab_size=64, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                 num_kv_heads=2, qkv_bias=True, tie_embeddings=True, max_position_embeddings=2048,
                 rope_theta=10_000.0),
    # ~100M parameters, for benchmarks on CPU.
    "bench_100m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12,
                       num_kv_heads=4, qkv_bias=True, tie_embeddings=True, max_position_embeddings=4096),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                         num_heads=14, num_kv_heads=2, qkv_bias=True, tie_embeddings=True, rope_theta=1e6,
                         max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(_QWEN_15B, tie_embeddings=True, rope_theta=1e6, max_position_embeddings=32768),
    "qwen2.5-7b": dict(_QWEN_7B, tie_embeddings=False, rope_theta=1e6, max_position_embeddings=32768),
    "qwen2.5-math-1.5b": dict(_QWEN_15B, tie_embeddings=True, rope_theta=10_000.0, max_position_embeddings=4096),
    "qwen2.5-math-7b": dict(_QWEN_7B, tie_embeddings=False, rope_theta=10_000.0, max_position_embeddings=4096),
    "deepseek-r1-distill-qwen-1.5b": dict(_QWEN_15B, tie_embeddings=False, rope_theta=10_000.0,
                                          max_position_embeddings=131072),
    "deepseek-r1-distill-qwen-7b": dict(_QWEN_7B, tie_embeddings=False, rope_theta=10_000.0,
                                        max_position_embeddings=131072),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                         num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500_000.0,
                         rope_scaling=_LLAMA32_ROPE, rms_norm_eps=1e-5, tie_embeddings=True,
                         max_position_embeddings=131072, architecture="llama"),
    "llama-3.2-3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_layers=28,
                         num_heads=24, num_kv_heads=8, head_dim=128, rope_theta=500_000.0,
                         rope_scaling=_LLAMA32_ROPE, rms_norm_eps=1e-5, tie_embeddings=True,
                         max_position_embeddings=131072, architecture="llama"),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A named preset (see `PRESETS`), with optional field overrides (e.g. dtype='bfloat16')."""
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[key], **overrides})
