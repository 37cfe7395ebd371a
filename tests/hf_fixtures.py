"""Tiny random `transformers` checkpoints written to a directory, shared by the model tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB = 96

# A Qwen2.5-style chat template, written for these tests.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer_files(path: Path) -> None:
    """Trains a small BPE tokenizer with `tokenizers` and saves it the way HF does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["12 + 35 = 47", "the answer is 42", "Let x = 3. Then 2x = 6.", "<think>carry the 1</think> 99"] * 20
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(str(path))


def make_checkpoint(path: Path, arch: str = "qwen2", tie: bool = False, rope_scaling: dict | None = None,
                    seed: int = 0, tokenizer: bool = False, vocab_size: int = VOCAB, **extra) -> Path:
    """Writes a random tiny HF checkpoint (GQA 4 heads / 2 KV heads) with non-trivial norms and biases."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
                  max_position_embeddings=256, **extra)
    if rope_scaling is not None:
        common["rope_scaling"] = rope_scaling
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(rope_theta=500_000.0, **common))
    else:
        raise ValueError(arch)
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0; make every weight matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(str(path))
    if tokenizer:
        make_tokenizer_files(path)
    return path


def torch_logits(path: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reference logits from `transformers`, with left padding expressed by the attention mask."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32)
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                    position_ids=torch.tensor(positions))
    return out.logits.float().numpy()


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())
