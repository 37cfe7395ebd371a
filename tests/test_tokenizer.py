"""Tokenizer round trips and chat templates rendered exactly as `transformers` renders them."""

import json

import pytest

from models.tokenizer import PROMPT_TEMPLATES, Tokenizer, TokenizerError
from tests.hf_fixtures import make_tokenizer_files

# A second, more involved template (namespace, loop.last, tojson, raise_exception), written for this test.
TEMPLATE_2 = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.sys = m['content'] %}{% endif %}{% endfor %}"
    "{% if ns.sys %}[SYS]{{ ns.sys | trim }}[/SYS]\n{% endif %}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}"
    "<{{ m['role'] }}>{{ m['content'] }}{% if not loop.last %}{{ eos_token }}{% endif %}\n"
    "{% endfor %}{% if meta is defined %}{{ meta | tojson }}{% endif %}"
    "{% if add_generation_prompt %}<assistant><think>\n{% endif %}"
)

MESSAGES = [
    {"role": "system", "content": "  Reason carefully.  "},
    {"role": "user", "content": "What is 12 + 35?"},
    {"role": "assistant", "content": "<think>2+5=7, 1+3=4</think> 47"},
    {"role": "user", "content": "And 99 + 1?"},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    make_tokenizer_files(d)
    return d


def test_round_trip_and_special_tokens(tok_dir):
    tok = Tokenizer.from_dir(tok_dir)
    texts = ["12 + 35 = 47", "<think>carry the 1</think> the answer is 99", "ünïcode ✓ and spaces  "]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode_batch(tok.encode_batch(texts)) == texts
    assert tok.eos_token == "<|im_end|>" and tok.eos_ids == [tok.token_to_id("<|im_end|>")]
    assert tok.pad_id == tok.token_to_id("<|endoftext|>")
    assert tok.think_open_id is not None and tok.encode("<think>") == [tok.think_open_id]
    assert tok.encode("</think>") == [tok.think_close_id]


def test_chat_template_matches_transformers(tok_dir):
    from transformers import AutoTokenizer

    ours, theirs = Tokenizer.from_dir(tok_dir), AutoTokenizer.from_pretrained(str(tok_dir))
    for gen in (True, False):
        want = theirs.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
        assert ours.apply_chat_template(MESSAGES, add_generation_prompt=gen) == want
    assert "<|im_start|>assistant\n" in ours.apply_chat_template(MESSAGES)


def test_second_template_matches_transformers(tok_dir, tmp_path):
    from transformers import AutoTokenizer

    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    cfg.update(chat_template=TEMPLATE_2, bos_token="<|endoftext|>")
    d = tmp_path / "t2"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    ours, theirs = Tokenizer.from_dir(d), AutoTokenizer.from_pretrained(str(d))
    for kwargs in ({}, {"meta": {"k": [1, "ü"]}}):
        want = theirs.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True, **kwargs)
        assert ours.apply_chat_template(MESSAGES, **kwargs) == want
    with pytest.raises(Exception, match="bad role tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_save_and_reload(tok_dir, tmp_path):
    tok = Tokenizer.from_dir(tok_dir)
    tok.save(tmp_path / "copy")
    again = Tokenizer.from_dir(tmp_path / "copy")
    assert again.encode("the answer is 42") == tok.encode("the answer is 42")
    assert again.apply_chat_template(MESSAGES) == tok.apply_chat_template(MESSAGES)
    assert again.eos_ids == tok.eos_ids and again.pad_id == tok.pad_id


def test_prompt_templates(tok_dir):
    tok = Tokenizer.from_dir(tok_dir)
    r1 = tok.render_prompt("What is 2+2?", "r1")
    assert r1.endswith("User: What is 2+2?\nAssistant: <think>")
    assert tok.render_prompt("x", "plain") == "x"
    assert "\\boxed{}" in PROMPT_TEMPLATES["boxed"].format(problem="p")
    assert tok.render_prompt("Hi", "chat").endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(TokenizerError, match="unknown prompt template 'nope'"):
        tok.render_prompt("x", "nope")


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(TokenizerError, match="missing file: .*tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_trained_char_tokenizer_keeps_its_ids_after_save_and_reload(tmp_path):
    from models.tokenizer import train_char_tokenizer

    corpus = ["00057+00068=<think>780=15561=12</think>125", "00003+00004=<think></think>7"] * 10
    tok = train_char_tokenizer(corpus)
    tok.save(tmp_path / "t")
    again = Tokenizer.from_dir(tmp_path / "t")
    assert again.tok.get_vocab() == tok.tok.get_vocab()
    assert [tok.think_open_id, tok.think_close_id, tok.pad_id, tok.eos_ids] == [3, 4, 0, [1]]
    assert again.encode(corpus[0]) == tok.encode(corpus[0])
    assert again.encode("<think></think>") == [3, 4]  # the tags are single tokens, never characters
    assert "<" not in again.tok.get_vocab()  # the tags' spelling did not leak into the character set
    assert again.decode(again.encode(corpus[0])) == corpus[0]
