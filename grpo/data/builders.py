"""TFDS builders that store problem sets as array_record, read back without TensorFlow.

`RowsBuilder` turns any iterator of rows `{"id", "problem", "answer", ...}` into a TFDS dataset; a
new task (the synthetic ones) subclasses it and implements `_rows`. `FileBuilder` adds where rows
come from, per split, first found wins:

  1. the user's own file in the manual dir (`<data_dir>/downloads/manual/<file>` by default),
  2. the copy shipped in this package (`grpo/data/files/`, see its README for provenance),
  3. the upstream file at a pinned commit, downloaded and converted to our rows.

Downloads are tried only for the splits in `fetch_splits` (set by `grpo.data.load` to the split asked
for). A split that cannot be supplied is left out rather than failing the whole data set, so
`gsm8k`'s shipped test split prepares offline in a second while its train split needs a download;
`grpo.data.load` prepares again, and reports the reason, when a missing split is asked for.

Stored features are text: id, problem, answer, and `extra`, the remaining fields as a JSON object
(so any schema fits one fixed feature set). Examples keep file order (shuffling is disabled).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.resources
import json
import logging
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Collection, Iterable

import tensorflow_datasets as tfds

from grpo.data.rows import REQUIRED, DataError, check_rows, parse_jsonl

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(str(importlib.resources.files("grpo.data") / "files"))


class RowsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base builder: `_rows(split, dl_manager)` supplies rows, this class checks and stores them.

    Subclasses set `name`, `SPLITS` (the first is the default) and `VERSION`, and implement `_rows`;
    a generated task is a few lines, then an entry in `grpo.data.DATASETS`:

        class Arith(RowsBuilder):
            name = "quant_arith"
            SPLITS = ("train", "test")

            def _rows(self, split, dl_manager):
                return enumerate(generate_problems(split), 1), f"arith generator, split {split}"
    """

    VERSION = tfds.core.Version("1.0.0")
    SPLITS: tuple[str, ...] = ("test",)
    DESCRIPTION = ""
    HOMEPAGE = ""
    fetch_splits: Collection[str] | None = None  # splits that may be downloaded now; None: all

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION, homepage=self.HOMEPAGE, disable_shuffling=True,
            features=tfds.features.FeaturesDict({"id": text, "problem": text, "answer": text, "extra": text}))

    def _split_generators(self, dl_manager):
        self.unavailable: dict[str, str] = {}  # split -> why it could not be prepared
        generators = {}
        for split in self.SPLITS:
            try:
                numbered, source = self._rows(split, dl_manager)
            except SplitUnavailable as e:
                log.info("%s: split %r left out: %s", self.name, split, e)
                self.unavailable[split] = str(e)
                continue
            generators[split] = self._generate_examples(numbered, source)
        if not generators:
            raise DataError(f"{self.name}: no split could be prepared: {self.unavailable}")
        return generators

    def _generate_examples(self, numbered, source):
        for i, row in enumerate(check_rows(numbered, source)):
            extra = {k: v for k, v in row.items() if k not in REQUIRED}
            yield i, {"id": row["id"], "problem": row["problem"], "answer": row["answer"],
                      "extra": json.dumps(extra, ensure_ascii=False)}

    @abc.abstractmethod
    def _rows(self, split: str, dl_manager) -> tuple[Iterable[tuple[int, Any]], str]:
        """Rows of one split as (1-based row number, row) pairs, and a name for their source.

        Raise `SplitUnavailable` if this split cannot be had right now.
        """


class SplitUnavailable(Exception):
    """A split whose data cannot be had right now (no local file, download failed)."""


def decode_example(example: dict[str, bytes]) -> dict[str, Any]:
    """A stored example (text fields come back as bytes) as a row with str fields plus extras."""
    row = {key: example[key].decode("utf-8") for key in REQUIRED}
    row.update(json.loads(example["extra"].decode("utf-8")))
    return row


# ---- files: manual dir, shipped copy, or the upstream download -----------------------------------------

@dataclasses.dataclass(frozen=True)
class Source:
    """Where one split's rows come from.

    file: name looked up in the manual dir, and in `grpo/data/files/` if `shipped`.
    url: the upstream raw file at a pinned commit (JSON Lines).
    convert: (upstream row, 0-based index) -> our row.
    """

    file: str
    url: str
    convert: Callable[[dict, int], dict]
    shipped: bool = True
    sort_key: Callable[[dict], Any] | None = None


class FileBuilder(RowsBuilder, skip_registration=True):
    """Rows from JSON Lines files: `SOURCES` maps each split to its `Source`."""

    SOURCES: dict[str, Source] = {}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional. To use your own copy of a split, put a JSON Lines file with rows "
        '{"id", "problem", "answer"} here under the split\'s file name (see grpo/data/builders.py).')

    def _rows(self, split, dl_manager):
        src = self.SOURCES[split]
        manual = _manual_dir(dl_manager)
        for path in ([manual / src.file] if manual else []) + ([SHIPPED_DIR / src.file] if src.shipped else []):
            if path.is_file():
                return parse_jsonl(path), str(path)
        if self.fetch_splits is not None and split not in self.fetch_splits:
            raise SplitUnavailable(f"no local file {src.file!r} (manual dir: {manual}); not downloaded now")
        try:
            path = fetch(dl_manager, src.url)
        except Exception as e:  # noqa: BLE001 - offline, DNS, HTTP errors: all mean "not now"
            raise SplitUnavailable(f"no local file {src.file!r} (manual dir: {manual}) and the download of "
                                   f"{src.url} failed: {type(e).__name__}: {e}") from None
        upstream = list(parse_jsonl(path, src.url))
        rows = []
        for i, (n, raw) in enumerate(upstream):
            try:
                rows.append((n, src.convert(raw, i)))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise DataError(f"{src.url}, row {n}: cannot convert the upstream row ({type(e).__name__}: {e})")
        if src.sort_key is not None:
            rows.sort(key=lambda pair: src.sort_key(pair[1]))
        return rows, src.url


def online(url: str, timeout_s: float = 5.0) -> bool:
    """Whether the URL's host accepts a connection (TFDS retries an unreachable host for minutes)."""
    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def fetch(dl_manager, url: str) -> Path:
    """Downloads `url` with the TFDS download manager (cached under <data dir>/downloads)."""
    if not online(url):
        raise ConnectionError(f"cannot reach {urllib.parse.urlsplit(url).hostname} (offline?)")
    return Path(dl_manager.download(url))


def _manual_dir(dl_manager) -> Path | None:
    try:
        return Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS raises this when the manual dir does not exist or is empty
        return None


# ---- upstream formats -> our rows ------------------------------------------------------------------------

def _github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _gsm8k(split: str) -> Callable[[dict, int], dict]:
    def convert(row: dict, i: int) -> dict:
        # The final answer follows "####"; thousands separators ("2,125") are dropped.
        answer = row["answer"].split("####")[-1].strip().replace(",", "")
        return {"id": f"gsm8k-{split}-{i}", "problem": row["question"], "answer": answer,
                "solution": row["answer"], "source": f"openai/grade-school-math:grade_school_math/data/{split}.jsonl"}
    return convert


def _math500(row: dict, i: int) -> dict:
    return {"id": row["unique_id"], "problem": row["problem"], "answer": row["answer"], "solution": row["solution"],
            "subject": row["subject"], "level": row["level"],
            "source": "hkust-nlp/simpleRL-reason:examples/simplelr_math_eval/data/math500/test.jsonl"}


_AIME_URL_RE = re.compile(r"(\d{4})_AIME_(I{1,2})_Problems/Problem_(\d+)")


def _aime24(row: dict, i: int) -> dict:
    year, contest, number = _AIME_URL_RE.search(row["url"]).groups()
    # Upstream answers carry AIME's three-digit form ("025"); the answer is the integer.
    answer = str(int(row["answer"]))
    return {"id": f"aime{year}-{contest}-{number}", "problem": row["problem"], "answer": answer,
            "solution": row["solution"], "source": "QwenLM/Qwen2.5-Math:evaluation/data/aime24/test.jsonl",
            "source_id": row["id"], "url": row["url"]}


def _aime_order(row: dict) -> tuple[int, int]:
    _, contest, number = row["id"].split("-")
    return len(contest), int(number)


def _aime25(row: dict, i: int) -> dict:
    # Upstream rows 0-14 are AIME I, 15-29 AIME II. Some LaTeX escapes were decoded into control
    # characters upstream (the \f of \frac into a form feed, the \t of \triangle into a TAB); undo that.
    problem = row["problem"].replace("\f", "\\f").replace("\t", "\\t")
    return {"id": f"aime2025-{'I' if i < 15 else 'II'}-{i % 15 + 1}", "problem": problem,
            "answer": str(row["answer"]).strip(), "source": "inclusionAI/AReaL:evaluation/data/aime25/test.jsonl",
            "source_id": str(row.get("id", i))}


class Gsm8k(FileBuilder):
    name = "quant_gsm8k"
    SPLITS = ("test", "train")
    DESCRIPTION = "GSM8K grade-school math word problems (Cobbe et al. 2021); answers are integers."
    HOMEPAGE = "https://github.com/openai/grade-school-math"
    SOURCES = {
        split: Source(f"gsm8k_{split}.jsonl", _github("openai/grade-school-math",
                                                       "3101c7d5072418e28b9008a6636bde82a006892c",
                                                       f"grade_school_math/data/{split}.jsonl"),
                      _gsm8k(split), shipped=split == "test")
        for split in ("test", "train")}


class Math500(FileBuilder):
    name = "quant_math500"
    DESCRIPTION = "MATH-500: the 500-problem MATH test subset of 'Let's Verify Step by Step' (Lightman et al. 2023)."
    HOMEPAGE = "https://github.com/openai/prm800k"
    SOURCES = {"test": Source("math500.jsonl", _github(
        "hkust-nlp/simpleRL-reason", "cf1c7858bfc145a27aa733e75d930d34f0d318a6",
        "examples/simplelr_math_eval/data/math500/test.jsonl"), _math500)}


class Aime24(FileBuilder):
    name = "quant_aime24"
    DESCRIPTION = "AIME 2024 I and II, 30 problems with integer answers 0-999."
    HOMEPAGE = "https://artofproblemsolving.com/wiki/index.php/AIME_Problems_and_Solutions"
    SOURCES = {"test": Source("aime24.jsonl", _github(
        "QwenLM/Qwen2.5-Math", "a45202bd16f1ec06f433442dc1152d0074773465", "evaluation/data/aime24/test.jsonl"),
        _aime24, sort_key=_aime_order)}


class Aime25(FileBuilder):
    name = "quant_aime25"
    DESCRIPTION = "AIME 2025 I and II, 30 problems with integer answers 0-999."
    HOMEPAGE = "https://artofproblemsolving.com/wiki/index.php/AIME_Problems_and_Solutions"
    SOURCES = {"test": Source("aime25.jsonl", _github(
        "inclusionAI/AReaL", "f55fe685c661b0117d888fcae47d6f46e9a85087", "evaluation/data/aime25/test.jsonl"),
        _aime25)}
