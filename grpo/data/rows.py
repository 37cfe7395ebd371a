"""Problem rows: `{"id", "problem", "answer", ...}` read from JSON Lines and checked one by one.

Every error names where the bad row came from (a file, a URL or a generator) and its 1-based row
number, so a user can open the file at that line. Extra fields ride along untouched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

REQUIRED = ("id", "problem", "answer")


class DataError(ValueError):
    """A data set, file or row that cannot be used; the message says which and why."""


def check_row(row: Any, where: str) -> dict[str, Any]:
    """One row with its required fields as non-empty str (integer ids and answers are accepted).

    Args:
      row: a parsed JSON value.
      where: "<source>, row <n>", the start of any error message.

    Returns:
      A copy of the row with "id", "problem" and "answer" as str.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    out = dict(row)
    for key in REQUIRED:
        value = row.get(key)
        if value is None:
            raise DataError(f"{where}: missing field {key!r}")
        # GSM8K-style files often hold integer answers and ids; a problem must be text.
        if isinstance(value, int) and not isinstance(value, bool) and key != "problem":
            value = str(value)
        if not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(f"{where}: field {key!r} is empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # "\ud800" is valid JSON but not text
            raise DataError(f"{where}: field {key!r} is not valid Unicode (lone surrogate)") from None
        out[key] = value
    return out


def check_rows(numbered: Iterable[tuple[int, Any]], source: str) -> Iterator[dict[str, Any]]:
    """Checks (row number, row) pairs in order and that ids are unique; yields the checked rows."""
    first_row: dict[str, int] = {}
    for n, row in numbered:
        where = f"{source}, row {n}"
        row = check_row(row, where)
        if row["id"] in first_row:
            raise DataError(f"{where}: duplicate id {row['id']!r} (first used in row {first_row[row['id']]})")
        first_row[row["id"]] = n
        yield row


def parse_jsonl(path: str | os.PathLike, source: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of a UTF-8 JSON Lines file."""
    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise DataError(f"{source}: no such file")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{source}, row {n}: invalid UTF-8 at byte {e.start + 1} of the line") from None
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{source}, row {n}: invalid JSON ({e.msg}, column {e.colno})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a problems file, checked (required fields, UTF-8, unique ids)."""
    return list(check_rows(parse_jsonl(path), str(path)))
