"""Data sets: TFDS builders round-trip files through array_record, bad rows are named, downloads convert."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

import grpo.data as data
from grpo.data import builders
from grpo.data.rows import DataError, check_row, read_jsonl

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A fresh TFDS data dir, also as $QUANT_DATA_DIR so nothing touches ~/tensorflow_datasets."""
    d = tmp_path / "tfds"
    monkeypatch.setenv("QUANT_DATA_DIR", str(d))
    return d


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test."""
    def refuse(self, url):
        raise AssertionError(f"unexpected download of {url}")
    monkeypatch.setattr(tfds.download.DownloadManager, "download", refuse)


def manual_dir(tmp_path, **files) -> Path:
    """A manual dir holding fixture files under the names the builders look for."""
    d = tmp_path / "manual"
    d.mkdir(exist_ok=True)
    for target, fixture in files.items():
        shutil.copy(FIXTURES / fixture, d / f"{target}.jsonl")
    return d


@pytest.mark.parametrize("name", ["aime24", "math500"])
def test_builder_round_trips_manual_file(name, data_dir, tmp_path, no_network):
    want = read_jsonl(FIXTURES / f"{name}.jsonl")
    problems = data.load(name, manual_dir=manual_dir(tmp_path, **{name: f"{name}.jsonl"}))
    assert problems.name == name and problems.split == "test" and len(problems) == len(want)
    assert list(problems) == want  # same order, same str fields, extras (ints, unicode, TABs) intact
    assert problems[-1] == want[-1] and problems[0:2] == want[0:2]
    # The same files through TFDS's own entry point, no TensorFlow: text comes back as bytes.
    source = tfds.data_source(f"quant_{name}", split="test", data_dir=str(data_dir))
    assert source[0]["id"] == want[0]["id"].encode() and source[0]["problem"] == want[0]["problem"].encode()
    assert [builders.decode_example(source[i]) for i in range(len(source))] == want
    assert list(data_dir.glob(f"quant_{name}/1.0.0/*.array_record-*"))


def test_jsonl_path_is_a_dataset(no_network):
    problems = data.load(FIXTURES / "math500.jsonl")
    assert problems.name == "math500" and list(problems) == read_jsonl(FIXTURES / "math500.jsonl")
    assert problems[1]["level"] == 2 and "\t" in problems[1]["problem"]


BAD = [
    ("bad_missing_answer.jsonl", 2, "missing field 'answer'"),
    ("bad_utf8.jsonl", 3, "invalid UTF-8 at byte 28 of the line"),
    ("bad_duplicate_id.jsonl", 3, "duplicate id 'a' (first used in row 1)"),
]


@pytest.mark.parametrize("fixture,row,message", BAD)
def test_bad_row_named_in_jsonl(fixture, row, message):
    with pytest.raises(DataError) as e:
        data.load(FIXTURES / fixture)
    assert str(e.value) == f"{FIXTURES / fixture}, row {row}: {message}"


@pytest.mark.parametrize("fixture,row,message", BAD)
def test_bad_row_named_by_builder(fixture, row, message, data_dir, tmp_path, no_network):
    manual = manual_dir(tmp_path, aime24=fixture)
    with pytest.raises(DataError, match=re.escape(f"{manual / 'aime24.jsonl'}, row {row}: {message}")):
        data.load("aime24", manual_dir=manual)
    assert not list(data_dir.glob("quant_aime24/1.0.0/*.array_record-*"))  # nothing half-written is kept


def test_check_row_types():
    assert check_row({"id": 7, "problem": "p", "answer": 18}, "x")["answer"] == "18"
    for row, message in [({"id": "a", "problem": "p", "answer": True}, "must be a string"),
                         ({"id": "a", "problem": "p", "answer": " "}, "is empty"),
                         ({"id": "a", "problem": "\ud800", "answer": "1"}, "lone surrogate"),
                         (["a"], "expected a JSON object")]:
        with pytest.raises(DataError, match=f"^f.jsonl, row 4: .*{re.escape(message)}"):
            check_row(row, "f.jsonl, row 4")


def test_shipped_files_match_their_readme_and_load_offline(data_dir, no_network):
    readme = (builders.SHIPPED_DIR / "README.md").read_text()
    digests = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
    assert sorted(digests) == sorted(p.name for p in builders.SHIPPED_DIR.glob("*.jsonl"))
    for name, digest in digests.items():
        assert hashlib.sha256((builders.SHIPPED_DIR / name).read_bytes()).hexdigest() == digest, name
    aime = data.load("aime24")
    assert len(aime) == 30 and aime[0]["id"] == "aime2024-I-1" and aime[0]["answer"] == "204"
    assert aime[29]["id"] == "aime2024-II-15" and aime[0]["source_id"] == 60
    assert [len(data.load(n)) for n in ("aime25", "math500", "gsm8k")] == [30, 500, 1319]


def test_download_converts_upstream_rows(data_dir, monkeypatch):
    fetched = []

    def download(self, url):
        fetched.append(url)
        return FIXTURES / "upstream" / url.split("/")[-1].replace("train", "gsm8k_train").replace("test", "aime24")

    monkeypatch.setattr(builders, "online", lambda url: True)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    train = data.load("gsm8k", split="train")  # not shipped: downloaded
    assert fetched == ["https://raw.githubusercontent.com/openai/grade-school-math/"
                       "3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/train.jsonl"]
    assert [r["id"] for r in train] == ["gsm8k-train-0", "gsm8k-train-1"]
    assert [r["answer"] for r in train] == ["5", "2125"]  # after ####, thousands comma dropped
    assert train[1]["solution"] == "2,000+125=<<2000+125=2125>>2,125\n#### 2,125"
    assert train[0]["problem"].startswith("Tom has 3 apples")

    monkeypatch.setattr(builders, "SHIPPED_DIR", Path("/nonexistent"))  # as if aime24 were not shipped
    aime = data.load("aime24")
    assert fetched[-1].endswith("/QwenLM/Qwen2.5-Math/a45202bd16f1ec06f433442dc1152d0074773465/"
                                "evaluation/data/aime24/test.jsonl")
    # Sorted by contest and number (upstream sorts by URL string), AIME's leading zeros dropped.
    assert [(r["id"], r["answer"], r["source_id"]) for r in aime] == [
        ("aime2024-I-1", "204", 60), ("aime2024-I-2", "0", 61), ("aime2024-I-10", "25", 69),
        ("aime2024-II-1", "73", 75)]


def test_aime25_conversion_repairs_decoded_escapes():
    row = builders._aime25({"id": "20", "problem": "In \triangle ABC, \x0crac{1}{2} and\ttab", "answer": 7}, 20)
    assert row == {"id": "aime2025-II-6", "problem": "In \\triangle ABC, \\frac{1}{2} and\\ttab", "answer": "7",
                   "source": "inclusionAI/AReaL:evaluation/data/aime25/test.jsonl", "source_id": "20"}


def test_offline_split_is_left_out_until_asked_for(data_dir, tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(builders, "online", lambda url: False)
    assert len(data.load("gsm8k")) == 1319  # the train split is not tried
    with pytest.raises(DataError, match=r"split 'train' is not available: no local file 'gsm8k_train.jsonl'.*"
                                        r"cannot reach raw.githubusercontent.com"):
        data.load("gsm8k", split="train")
    # Once the user supplies the file, the prepared data set is built again with the split.
    manual = tmp_path / "manual"
    manual.mkdir()
    rows = [{"id": f"t{i}", "problem": f"{i}+1?", "answer": str(i + 1)} for i in range(3)]
    (manual / "gsm8k_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert list(data.load("gsm8k", split="train", manual_dir=manual)) == rows
    assert len(data.load("gsm8k", split="test", manual_dir=manual)) == 1319


def test_unknown_names_and_splits():
    with pytest.raises(DataError, match=r"unknown data set 'aime23'; known: \['aime24', 'aime25', 'gsm8k'"):
        data.load("aime23")
    with pytest.raises(DataError, match="aime24 has no split 'train'"):
        data.load("aime24", split="train")
    with pytest.raises(DataError, match="a file is one split; got split='test'"):
        data.load(FIXTURES / "math500.jsonl", split="test")
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        data.load("missing.jsonl")


def test_prompt_templates():
    assert data.render_prompt("What is 1+1?", "plain") == "What is 1+1?"
    r1 = data.render_prompt("What is 1+1?", "r1")
    assert r1.endswith("User: What is 1+1?\nAssistant: <think>") and "\\boxed{}" in r1
    boxed = "Q\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert data.render_prompt("Q", "boxed") == boxed
    assert data.default_template(None) == "r1"
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        data.render_prompt("Q", "chat")


def test_chat_template_holds_the_boxed_instruction():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel

    from models.tokenizer import Tokenizer
    from tests.hf_fixtures import CHAT_TEMPLATE

    tok = Tokenizer(HFTokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")), chat_template=CHAT_TEMPLATE)
    assert data.default_template(tok) == "chat"
    assert data.render_prompt("Q", "chat", tok) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nQ\nPlease reason step by step, and put "
        "your final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
