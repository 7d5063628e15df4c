"""Row readers for CSV, TSV, JSONL and JSON-list files that remember each row's 1-based line.

Every row carries its `source` (a display name such as "gsm8k train.jsonl") and
the line it starts on, so a malformed row is reported as
"gsm8k train.jsonl line 17: invalid JSON: ..." and either raises
`TaskDataError` or is skipped and counted, as the caller's `BadRows` says.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.tasks.errors import TaskDataError

READABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


class RowProblem(Exception):
    """Raised while converting a row to an Example; the text says what is wrong."""


@dataclass(frozen=True)
class Row:
    source: str  # display name of the file, used in error messages
    line: int  # 1-based line where the row starts
    index: int  # 0-based position among the file's data rows (stable example ids)
    data: dict[str, Any]


class BadRows:
    """Policy for malformed rows: "error" raises TaskDataError, "skip" counts and remembers."""

    def __init__(self, mode: str = "error") -> None:
        if mode not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {mode!r}")
        self.mode = mode
        self.count = 0
        self.messages: list[str] = []

    def report_at(self, source: str, line: int, problem: str) -> None:
        message = f"{source} line {line}: {problem}"
        if self.mode == "error":
            raise TaskDataError(message)
        self.count += 1
        self.messages.append(message)

    def report(self, row: Row, problem: str) -> None:
        self.report_at(row.source, row.line, problem)


def read_rows(path: Path, source: str, bad: BadRows) -> Iterator[Row]:
    """Rows of a .csv (header row), .jsonl (one object a line) or .json (a list of objects)."""
    suffix = path.suffix.lower()
    if suffix not in READABLE_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported file type {suffix!r}; use one of {READABLE_SUFFIXES}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file: {path}")
    _check_utf8(path, source)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, source, bad, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _jsonl_rows(path, source, bad)
    return _json_list_rows(path, source, bad)


def _check_utf8(path: Path, source: str) -> None:
    """Refuse a file that is not UTF-8 with the line of its first bad byte (Python's own
    error names neither the file nor the line)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TaskDataError(f"{source} line {line}: byte 0x{data[e.start]:02x} is not UTF-8 text; "
                            "re-save the file as UTF-8") from None


def records_to_rows(records: Iterable[dict[str, Any]], source: str) -> list[Row]:
    """In-memory records (e.g. from the hub) as Rows; 'line' is the 1-based record number."""
    return [Row(source, i + 1, i, dict(r)) for i, r in enumerate(records)]


def _csv_rows(path: Path, source: str, bad: BadRows, delimiter: str = ",") -> Iterator[Row]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        # TSV files (HWU64, CLINC150 as benchmark suites ship them) quote nothing
        reader = csv.reader(f, delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        previous_end = reader.line_num
        index = 0
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as e:  # e.g. a field over csv.field_size_limit(), an open quote
                raise TaskDataError(f"{source} line {previous_end + 1}: {e}") from None
            line, previous_end = previous_end + 1, reader.line_num  # quoted fields span lines
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                bad.report_at(source, line, f"{len(values)} fields, header has {len(header)}")
            else:
                yield Row(source, line, index, dict(zip(header, values, strict=True)))
            index += 1


def _jsonl_rows(path: Path, source: str, bad: BadRows) -> Iterator[Row]:
    with path.open(encoding="utf-8-sig") as f:
        index = 0
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                bad.report_at(source, line_no, f"invalid JSON: {e.msg} (column {e.colno})")
            else:
                if isinstance(data, dict):
                    yield Row(source, line_no, index, data)
                else:
                    bad.report_at(
                        source, line_no, f"expected a JSON object, got {type(data).__name__}"
                    )
            index += 1


def _json_list_rows(path: Path, source: str, bad: BadRows) -> Iterator[Row]:
    """A JSON array of objects, decoded item by item so each keeps the line it starts on."""
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()

    def skip_space(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def line_at(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    pos = skip_space(0)
    if pos >= len(text) or text[pos] != "[":
        raise TaskDataError(f"{source} line {line_at(pos)}: expected a JSON list of objects")
    pos, index = skip_space(pos + 1), 0
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            data, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:  # the rest of the file cannot be framed: always fatal
            raise TaskDataError(f"{source} line {e.lineno}: invalid JSON: {e.msg}") from e
        if isinstance(data, dict):
            yield Row(source, line_at(pos), index, data)
        else:
            bad.report_at(
                source, line_at(pos), f"expected a JSON object, got {type(data).__name__}"
            )
        index += 1
        pos = skip_space(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip_space(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise TaskDataError(f"{source} line {line_at(pos)}: invalid JSON: expected ',' or ']'")
