"""HF import/export: round trips through `transformers`, sharded indexes, and clear errors."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from models import hf
from models.transformer import positions_from_mask
from tests.hf_fixtures import make_checkpoint, torch_logits
from tests.test_transformer import batch


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("qwen"), arch="qwen2", tie=False, tokenizer=True)


def test_export_loads_in_transformers_with_same_logits(qwen_dir, tmp_path):
    model, tok = hf.load(qwen_dir)
    out = hf.save(model, tmp_path / "export", tokenizer=tok)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    ids, mask = batch(seed=3)
    want = torch_logits(qwen_dir, ids, mask)
    got = torch_logits(out, ids, mask)
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)
    ours, _ = model(jnp.asarray(ids), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(ours)[mask], got[mask], atol=1e-4)


def test_sharded_index_round_trip(qwen_dir, tmp_path):
    model, _ = hf.load(qwen_dir, with_tokenizer=False)
    out = hf.save(model, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (out / "model.safetensors").exists()
    # every tensor of the original checkpoint is present, bit-exact
    original = load_file(str(qwen_dir / "model.safetensors"))
    exported = {}
    for f in files:
        exported.update(load_file(str(out / f)))
    assert set(exported) == set(original)
    for name, arr in original.items():
        np.testing.assert_array_equal(exported[name], arr)
    again, _ = hf.load(out, with_tokenizer=False)
    ids, mask = batch()
    pos = positions_from_mask(jnp.asarray(mask))
    a, _ = model(jnp.asarray(ids), pos, jnp.asarray(mask))
    b, _ = again(jnp.asarray(ids), pos, jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    got = torch_logits(out, ids, mask)  # transformers reads the sharded index too
    np.testing.assert_allclose(got[mask], np.asarray(a)[mask], atol=1e-4)


def test_bf16_export(qwen_dir, tmp_path):
    model, _ = hf.load(qwen_dir, with_tokenizer=False)
    out = hf.save(model, tmp_path / "bf16", dtype="bfloat16")
    w = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    assert w.dtype.name == "bfloat16"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_missing_files_are_named(qwen_dir, tmp_path):
    with pytest.raises(hf.CheckpointError, match="is not a directory"):
        hf.load(tmp_path / "nope")
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(qwen_dir / "config.json", d / "config.json")
    with pytest.raises(hf.CheckpointError, match="missing file: .*model.safetensors"):
        hf.load(d)
    e = tmp_path / "noconfig"
    e.mkdir()
    with pytest.raises(FileNotFoundError, match="missing file: .*config.json"):
        hf.load(e)


def test_unsupported_architecture(qwen_dir, tmp_path):
    d = tmp_path / "gpt2"
    shutil.copytree(qwen_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported architecture: model_type='gpt2'"):
        hf.load(d)


def test_tensor_shape_mismatch_is_named(qwen_dir, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(qwen_dir, d)
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:100]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(hf.CheckpointError,
                       match=r"model\.layers\.1\.mlp\.up_proj\.weight has shape \(100, 64\) but config.json implies \(128, 64\)"):
        hf.load(d)


def test_missing_tensor_is_named(qwen_dir, tmp_path):
    d = tmp_path / "missing"
    shutil.copytree(qwen_dir, d)
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["model.layers.0.self_attn.k_proj.bias"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(hf.CheckpointError, match=r"model\.layers\.0\.self_attn\.k_proj\.bias is missing"):
        hf.load(d)


def test_corrupt_safetensors_is_named(qwen_dir, tmp_path):
    d = tmp_path / "corrupt"
    shutil.copytree(qwen_dir, d)
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(hf.CheckpointError, match="not a safetensors file"):
        hf.load(d)
