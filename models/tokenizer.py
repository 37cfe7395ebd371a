"""Tokenizer: HF `tokenizers` plus the chat template and special tokens from tokenizer_config.json.

No `transformers` at run time: the chat template (Jinja, as stored in tokenizer_config.json or
chat_template.jinja) is rendered in a sandboxed Jinja environment set up the way HF renders it.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Sequence

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer as _HFTokenizer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Plain prompt templates ({problem} is filled in). "r1" is the DeepSeek-R1-Zero template (paper, Table 1),
# ending with an open <think> so the completion starts inside the reasoning.
PROMPT_TEMPLATES: dict[str, str] = {
    "plain": "{problem}",
    "r1": ("A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
           "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
           "the answer. The reasoning process is enclosed within <think> </think> and the final answer is put "
           "in \\boxed{{}}.\nUser: {problem}\nAssistant: <think>"),
    "boxed": "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
}


class TokenizerError(ValueError):
    pass


def _token_text(tok: Any) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


class Tokenizer:
    """A thin wrapper: encode/decode, special token ids, chat template."""

    def __init__(self, tok: _HFTokenizer, config: dict[str, Any] | None = None,
                 chat_template: str | None = None, eos_ids: Sequence[int] | None = None):
        self.tok = tok
        self.config = dict(config or {})
        self.chat_template = chat_template if chat_template is not None else self.config.get("chat_template")
        self.bos_token = _token_text(self.config.get("bos_token"))
        self.eos_token = _token_text(self.config.get("eos_token"))
        self.pad_token = _token_text(self.config.get("pad_token"))
        eos = [self.token_to_id(self.eos_token)] if self.eos_token else []
        self.eos_ids = sorted({i for i in [*(eos_ids or []), *eos] if i is not None})
        pad = self.token_to_id(self.pad_token) if self.pad_token else None
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self.bos_id = self.token_to_id(self.bos_token) if self.bos_token else None
        self.think_open_id = self.token_to_id(THINK_OPEN)
        self.think_close_id = self.token_to_id(THINK_CLOSE)

    # ---- construction / persistence ---------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        tj = path / "tokenizer.json"
        if not tj.exists():
            raise TokenizerError(f"missing file: {tj}")
        try:
            tok = _HFTokenizer.from_file(str(tj))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
            raise TokenizerError(f"{tj}: cannot be read by `tokenizers` ({e})") from None
        config = {}
        if (path / "tokenizer_config.json").exists():
            config = json.loads((path / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if (path / "chat_template.jinja").exists():  # transformers>=4.50 may store it separately
            template = (path / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates: use "default"
            template = {t["name"]: t["template"] for t in template}.get("default")
        eos_ids = []
        if (path / "generation_config.json").exists():
            gen_eos = json.loads((path / "generation_config.json").read_text()).get("eos_token_id")
            eos_ids = gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
        return cls(tok, config, template, eos_ids)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(path / "tokenizer.json"))
        config = dict(self.config)
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        if self.eos_ids:
            (path / "generation_config.json").write_text(json.dumps(
                {"eos_token_id": self.eos_ids if len(self.eos_ids) > 1 else self.eos_ids[0],
                 "pad_token_id": self.pad_id}, indent=2))

    # ---- encode / decode ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return self.tok.decode_batch([list(b) for b in batch], skip_special_tokens=skip_special_tokens)

    # ---- templates ----------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                            **kwargs) -> str:
        """Renders messages with the model's Jinja chat template (as HF's `apply_chat_template`, tokenize=False)."""
        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat_template; use a plain prompt template instead")
        return _compile(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "", pad_token=self.pad_token or "",
            **kwargs)

    def render_prompt(self, problem: str, template: str = "r1", system: str | None = None) -> str:
        """A prompt for one problem: a named plain template, or 'chat' for the model's chat template."""
        if template == "chat":
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": problem}]
            return self.apply_chat_template(messages, add_generation_prompt=True)
        if template not in PROMPT_TEMPLATES:
            raise TokenizerError(f"unknown prompt template {template!r}; known: {sorted(PROMPT_TEMPLATES)} or 'chat'")
        return PROMPT_TEMPLATES[template].format(problem=problem)


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


_TEMPLATES: dict[str, jinja2.Template] = {}


def _compile(source: str) -> jinja2.Template:
    if source not in _TEMPLATES:
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, separators=None, sort_keys=False: (
            json.dumps(x, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys))
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        _TEMPLATES[source] = env.from_string(source)
    return _TEMPLATES[source]


def char_tokenizer(alphabet: str, specials: Sequence[str] = ("<pad>", "<eos>", THINK_OPEN, THINK_CLOSE),
                   unk: str = "<unk>", chat_template: str | None = None) -> Tokenizer:
    """A character-level HF `tokenizers` tokenizer (for tiny models on synthetic tasks).

    Ids: specials first (pad=0, eos=1, ...), then `unk`, then one id per character of `alphabet`.
    Characters outside the alphabet map to `unk`.
    """
    from tokenizers import Regex, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate([*specials, unk, *dict.fromkeys(alphabet)])}
    tok = _HFTokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(specials))
    config = {"pad_token": specials[0], "eos_token": specials[1], "unk_token": unk,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return Tokenizer(tok, config, chat_template)


def train_char_tokenizer(corpus: Sequence[str], specials: Sequence[str] = ("<pad>", "<eos>", "<unk>", THINK_OPEN,
                                                                          THINK_CLOSE)) -> Tokenizer:
    """Trains a character-level tokenizer with HF `tokenizers` on `corpus` (one token per character seen).

    The first two specials are the pad and EOS tokens, the third the unknown token.
    """
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

    tok = _HFTokenizer(models.WordLevel(unk_token=specials[2]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    # The trainer gives the specials the first ids; their spelling is taken out of the corpus so that it
    # does not count as characters, and they are added afterwards so that encoding keeps them whole.
    # (Adding them before training would give them other ids once the tokenizer is saved and reloaded.)
    def plain(text: str) -> str:
        for sp in specials:
            text = text.replace(sp, "")
        return text

    tok.train_from_iterator((plain(t) for t in corpus),
                            trainers.WordLevelTrainer(special_tokens=list(specials), show_progress=False))
    tok.add_special_tokens(list(specials))
    config = {"pad_token": specials[0], "eos_token": specials[1], "unk_token": specials[2],
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return Tokenizer(tok, config)
