"""Problem sets for training and evaluation.

`load("aime24")` (a registered name) prepares the TFDS builder once under the data dir and reads
its array_record files without TensorFlow; `load("my.jsonl")` reads any JSON Lines file of
`{"id", "problem", "answer", ...}` rows directly. Either way you get `Problems`, a random-access
sequence of dicts whose "id", "problem" and "answer" are str.

The data dir is the `data_dir` argument, else $QUANT_DATA_DIR, else ~/tensorflow_datasets. The TFDS
names are prefixed (`quant_aime24`), so after `import grpo.data`,
`tfds.data_source("quant_aime24", data_dir=...)` reads the same data.
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from grpo.data import builders
from grpo.data.prompts import TEMPLATES, default_template, render_prompt
from grpo.data.rows import DataError, check_row, check_rows, read_jsonl

__all__ = ["DATASETS", "DataError", "Problems", "TEMPLATES", "check_row", "check_rows",
           "default_template", "load", "read_jsonl", "render_prompt", "resolve_data_dir"]

# name -> builder class. The synthetic tasks register here too.
DATASETS: dict[str, type[builders.RowsBuilder]] = {
    "gsm8k": builders.Gsm8k,
    "math500": builders.Math500,
    "aime24": builders.Aime24,
    "aime25": builders.Aime25,
}


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """Where prepared data sets live: `path`, else $QUANT_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(path or os.environ.get("QUANT_DATA_DIR") or "~/tensorflow_datasets").expanduser()


class Problems(collections.abc.Sequence):
    """Rows of one split: `len`, indexing and iteration give dicts with str "id", "problem", "answer".

    Backed by a list (JSONL files) or by a TFDS array_record data source (decoded on access).
    """

    def __init__(self, rows: Sequence[Any], name: str, split: str | None, decode=None):
        self._rows, self.name, self.split, self._decode = rows, name, split, decode

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        row = self._rows[index]
        return self._decode(row) if self._decode else dict(row)

    def __repr__(self) -> str:
        return f"Problems({self.name!r}, split={self.split!r}, {len(self)} rows)"


def load(name_or_path: str | os.PathLike, split: str | None = None, *, data_dir: str | os.PathLike | None = None,
         manual_dir: str | os.PathLike | None = None, rebuild: bool = False) -> Problems:
    """A registered data set (prepared on first use) or a JSON Lines file of problems.

    Args:
      name_or_path: a name in DATASETS, or a path to a .jsonl file.
      split: for registered sets (default: the builder's first split, "test"); a file is one split (None).
      data_dir: see `resolve_data_dir`.
      manual_dir: where the builders look for the user's own files (TFDS default:
        <data dir>/downloads/manual).
      rebuild: prepare again even if prepared data exist (e.g. after adding files to the manual dir).

    Returns:
      Problems.
    """
    import tensorflow_datasets as tfds

    name = str(name_or_path)
    if name not in DATASETS:
        path = Path(name).expanduser()
        if path.suffix == ".jsonl" or path.exists():
            if split is not None:
                raise DataError(f"{path}: a file is one split; got split={split!r}")
            return Problems(read_jsonl(path), path.stem, None)
        raise DataError(f"unknown data set {name!r}; known: {sorted(DATASETS)}, or a path to a .jsonl file")
    cls = DATASETS[name]
    split = split or cls.SPLITS[0]
    if split not in cls.SPLITS:
        raise DataError(f"{name} has no split {split!r}; splits: {list(cls.SPLITS)}")
    for attempt in range(2):
        builder = cls(data_dir=str(resolve_data_dir(data_dir)), file_format="array_record")
        builder.fetch_splits = (split,)
        mode = tfds.download.GenerateMode
        with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress; stdout is for results
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, try_download_gcs=False,
                download_mode=mode.REUSE_CACHE_IF_EXISTS if rebuild or attempt else mode.REUSE_DATASET_IF_EXISTS))
        if split in builder.info.splits:
            source = builder.as_data_source(split=split)
            return Problems(source, name, split, decode=builders.decode_example)
        why = getattr(builder, "unavailable", {}).get(split)
        if why:  # prepared just now and the split could not be had
            raise DataError(f"{name}: split {split!r} is not available: {why}")
        # Otherwise it was prepared earlier without this split (unavailable then): prepare again.
    raise DataError(f"{name}: split {split!r} is missing from the prepared data under {resolve_data_dir(data_dir)}")
