"""Hugging Face checkpoint import/export: config.json + safetensors (single or sharded) + tokenizer.

Loading places every tensor straight into its sharding: each parameter is built with
`jax.make_array_from_callback`, whose callback reads only that device's slice from a memory-mapped
safetensors file (a zero-copy view reshaped/transposed into our layout), so no device and no host ever
holds the whole model at once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from models.config import ModelConfig
from models.sharding import named_sharding, to_host
from models.transformer import Transformer

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")


class CheckpointError(ValueError):
    """A Hugging Face directory that cannot be loaded; the message names the file/tensor and the problem."""


# ---- our parameter <-> HF tensors --------------------------------------------------------------------
# Each entry: our name -> (HF name template, function HF array -> our per-layer array, inverse).

def _mapping(cfg: ModelConfig) -> dict[str, tuple[str, Callable, Callable]]:
    d, h, k, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    L = "model.layers.{i}."
    proj_in = lambda n: (lambda w: w.T.reshape(d, n, e), lambda x: x.reshape(d, n * e).T)  # (n*e, d) <-> (d, n, e)
    bias = lambda n: (lambda b: b.reshape(n, e), lambda x: x.reshape(n * e))
    same = (lambda w: w, lambda x: x)
    tr = (lambda w: w.T, lambda x: x.T)
    m = {
        "embed": ("model.embed_tokens.weight", *same),
        "final_norm": ("model.norm.weight", *same),
        "layers.attn_norm": (L + "input_layernorm.weight", *same),
        "layers.wq": (L + "self_attn.q_proj.weight", *proj_in(h)),
        "layers.wk": (L + "self_attn.k_proj.weight", *proj_in(k)),
        "layers.wv": (L + "self_attn.v_proj.weight", *proj_in(k)),
        # o_proj (d, h*e) <-> (h, e, d)
        "layers.wo": (L + "self_attn.o_proj.weight", lambda w: w.T.reshape(h, e, d), lambda x: x.reshape(h * e, d).T),
        "layers.mlp_norm": (L + "post_attention_layernorm.weight", *same),
        "layers.w_gate": (L + "mlp.gate_proj.weight", *tr),
        "layers.w_up": (L + "mlp.up_proj.weight", *tr),
        "layers.w_down": (L + "mlp.down_proj.weight", *tr),
    }
    if cfg.qkv_bias:
        m["layers.bq"] = (L + "self_attn.q_proj.bias", *bias(h))
        m["layers.bk"] = (L + "self_attn.k_proj.bias", *bias(k))
        m["layers.bv"] = (L + "self_attn.v_proj.bias", *bias(k))
    if not cfg.tie_embeddings:
        m["lm_head"] = ("lm_head.weight", *tr)
    return m


def _hf_shape(cfg: ModelConfig, ours: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Expected HF shape of one (per-layer) tensor, derived by running the inverse on a dummy."""
    _, _, to_hf = _mapping(cfg)[ours]
    per_layer = shape[1:] if ours.startswith("layers.") else shape
    return to_hf(np.empty(per_layer, np.float32)).shape


# ---- reading safetensors ------------------------------------------------------------------------------

class _SafetensorsDir:
    """Zero-copy read-only views of every tensor in a (possibly sharded) safetensors checkpoint."""

    def __init__(self, path: Path):
        index = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
            files = sorted(set(weight_map.values()))
        elif single.exists():
            files = ["model.safetensors"]
        else:
            raise CheckpointError(f"missing file: {single} (or a sharded model.safetensors.index.json) in {path}")
        self.tensors: dict[str, np.ndarray] = {}
        for name in files:
            f = path / name
            if not f.exists():
                raise CheckpointError(f"missing file: {f}, listed in model.safetensors.index.json")
            self.tensors.update(self._read(f))

    @staticmethod
    def _read(f: Path) -> dict[str, np.ndarray]:
        raw = np.memmap(f, dtype=np.uint8, mode="r")
        try:
            n = int(raw[:8].view("<u8")[0])
            header = json.loads(bytes(raw[8:8 + n]))
        except Exception as e:  # noqa: BLE001 - any corruption is reported the same way
            raise CheckpointError(f"{f}: not a safetensors file ({type(e).__name__}: {e})") from None
        out = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if meta["dtype"] not in _ST_DTYPES:
                raise CheckpointError(f"{f}: tensor {name} has unsupported dtype {meta['dtype']}")
            start, end = meta["data_offsets"]
            buf = raw[8 + n + start: 8 + n + end]
            out[name] = buf.view(_ST_DTYPES[meta["dtype"]]).reshape(meta["shape"])
        return out


def load_config(path: str | os.PathLike, **overrides) -> ModelConfig:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model path {path} is not a directory (expected a Hugging Face model directory)")
    try:
        return ModelConfig.from_hf_file(path, **overrides)
    except KeyError as e:
        raise CheckpointError(f"{path / 'config.json'} is missing key {e}") from None


def load(path: str | os.PathLike, mesh: Mesh | None = None, *, with_tokenizer: bool = True, **overrides):
    """Loads a Hugging Face Qwen2/Llama directory into a sharded NNX `Transformer`.

    Args:
      path: directory with config.json, model.safetensors (or an index + shards) and tokenizer files.
      mesh: where to place parameters (by the logical rules); None puts them on the default device.
      with_tokenizer: also load the tokenizer (None if the directory has no tokenizer.json).
      **overrides: ModelConfig fields, e.g. dtype="bfloat16".

    Returns:
      (model, tokenizer).
    """
    path = Path(path)
    cfg = load_config(path, **overrides)
    st = _SafetensorsDir(path)
    mapping = _mapping(cfg)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))

    def build(key_path, var):
        ours = ".".join(str(getattr(p, "key", p)) for p in key_path)
        shape, dtype = var.get_value().shape, cfg.weight_dtype
        template, from_hf, _ = mapping[ours]
        layers = range(shape[0]) if ours.startswith("layers.") else [None]
        want = _hf_shape(cfg, ours, shape)
        views = []
        for i in layers:
            name = template.format(i=i)
            if name not in st.tensors:
                raise CheckpointError(f"{path}: tensor {name} is missing from the checkpoint")
            t = st.tensors[name]
            if tuple(t.shape) != want:
                raise CheckpointError(f"{path}: tensor {name} has shape {tuple(t.shape)} but config.json "
                                      f"implies {want}")
            views.append(from_hf(t))
        sharding = (named_sharding(mesh, var.get_metadata()["logical_axes"], shape) if mesh is not None
                    else jax.sharding.SingleDeviceSharding(jax.devices()[0]))

        def read(index):  # this device's slice only
            if layers[0] is None:
                return np.asarray(views[0][index], dtype=dtype)
            rest = index[1:]
            return np.stack([np.asarray(v[rest], dtype=dtype) for v in views[index[0]]])

        return var.replace(jax.make_array_from_callback(shape, sharding, read))

    state = jax.tree_util.tree_map_with_path(build, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
    model = nnx.merge(graphdef, state)
    tokenizer = None
    if with_tokenizer and (path / "tokenizer.json").exists():
        from models.tokenizer import Tokenizer
        tokenizer = Tokenizer.from_dir(path)
    return model, tokenizer


# ---- export ---------------------------------------------------------------------------------------------

def hf_state_dict(model: Transformer, dtype: Any = None) -> dict[str, np.ndarray]:
    """The model's parameters as HF-named numpy arrays (gathered to the host)."""
    cfg = model.cfg
    mapping = _mapping(cfg)
    out = {}
    for key_path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        ours = ".".join(str(k) for k in key_path)
        template, _, to_hf = mapping[ours]
        arr = to_host(var[...])
        if dtype is not None:
            arr = arr.astype(dtype)
        if ours.startswith("layers."):
            for i in range(arr.shape[0]):
                out[template.format(i=i)] = np.ascontiguousarray(to_hf(arr[i]))
        else:
            out[template] = np.ascontiguousarray(to_hf(arr))
    return out


def save(model: Transformer, path: str | os.PathLike, tokenizer=None, *, max_shard_bytes: int = 4 << 30,
         dtype: str | None = None, tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Writes `model` as a HF directory that `transformers` loads (atomically: temp dir, then rename).

    Args:
      model: the Transformer.
      path: output directory (replaced if it exists).
      tokenizer: optional `models.tokenizer.Tokenizer` to save beside the weights.
      max_shard_bytes: above this, weights are split into shards with a model.safetensors.index.json.
      dtype: 'float32' / 'bfloat16' / 'float16' for the saved weights (default: the parameter dtype).
      tokenizer_dir: alternatively, a directory whose tokenizer files are copied.
    """
    from safetensors.numpy import save_file

    cfg = model.cfg
    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[
        dtype or cfg.param_dtype]
    tensors = hf_state_dict(model, np_dtype)
    if jax.process_index() != 0:
        return Path(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary shared directory
    hf_cfg = cfg.to_hf_dict()
    hf_cfg["torch_dtype"] = dtype or cfg.param_dtype
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    shards, current, size = [], {}, 0
    for name, arr in tensors.items():
        if current and size + arr.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = arr
        size += arr.nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for j, shard in enumerate(shards):
            fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in shard})
        total = sum(a.nbytes for a in tensors.values())
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    if tokenizer is not None:
        tokenizer.save(tmp)
    elif tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).exists():
                shutil.copy(Path(tokenizer_dir) / name, tmp / name)
    for f in tmp.iterdir():
        os.chmod(f, 0o644)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)
    return path
