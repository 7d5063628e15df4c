"""Single-label text classification: BANKING77 and user CSV/JSONL files.

Bare student prompt (small enough for SmolLM2-135M to follow): one user message
listing the label names one per line, then the text, then the answer contract;
the assistant prefill "Label:" starts the answer. The parser is lenient: first
non-empty line, punctuation/quotes/spaces normalized to underscores, then exact
label, else the label found earliest (whole words), else the closest label by
difflib (cutoff 0.8), else None.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from evals.tasks.base import Example, Task, first_line, strip_text
from evals.tasks.errors import DataUnavailableError, TaskDataError
from evals.tasks.hub import hub_label_names, load_hub_rows
from evals.tasks.readers import BadRows, Row, RowProblem, read_rows, records_to_rows

_PREFIX_ECHO = re.compile(r"^\s*label\s*[:：]\s*", re.IGNORECASE)


def label_key(text: str) -> str:
    """Lowercase; every run of spaces, hyphens, quotes or punctuation becomes one underscore."""
    return re.sub(r"[\W_]+", "_", text.casefold()).strip("_")


def match_label(text: str, labels_by_key: dict[str, str], cutoff: float = 0.8) -> str | None:
    """The label named by `text`: exact, else earliest whole-word occurrence (longest on
    ties), else the difflib closest label with ratio >= cutoff, else None."""
    key = label_key(text)
    if not key:
        return None
    if key in labels_by_key:
        return labels_by_key[key]
    padded = f"_{key}_"
    best: tuple[int, int, str] | None = None
    for k, label in labels_by_key.items():
        pos = padded.find(f"_{k}_")
        if pos >= 0 and (best is None or (pos, -len(k)) < best[:2]):
            best = (pos, -len(k), label)
    if best is not None:
        return best[2]
    close = difflib.get_close_matches(key, list(labels_by_key), n=1, cutoff=cutoff)
    return labels_by_key[close[0]] if close else None


class ClassificationTask(Task):
    """Common prompt, parser and grader; subclasses say where rows and labels come from."""

    kind = "classification"
    answer_prefix = "Label:"
    subject = "text"  # what the question is called in the prompt

    @property
    def labels(self) -> list[str]:
        return self._labels

    @cached_property
    def _labels(self) -> list[str]:
        raise NotImplementedError

    @cached_property
    def labels_by_key(self) -> dict[str, str]:
        by_key: dict[str, str] = {}
        for label in self.labels:
            key = label_key(label)
            if key in by_key:
                raise ValueError(
                    f"{self.name}: labels {by_key[key]!r} and {label!r} are indistinguishable "
                    f"after normalization ({key!r})"
                )
            by_key[key] = label
        return by_key

    def format_instruction(self) -> str:
        return "Answer with exactly one label from the list, written as: Label: <label>"

    def student_messages(self, ex: Example, evidence: str | None = None) -> list[dict]:
        listing = "\n".join(self.labels)
        user = (
            f"Classify the {self.subject} into one of these {len(self.labels)} labels:\n"
            f"{listing}\n\n"
            + (f"{evidence}\n\n" if evidence else "")
            + f"{self.subject.capitalize()}: {ex.question}\n\n"
            f"{self.format_instruction()}"
        )
        return self._with_prefill(user)

    @property
    def stop(self) -> list[str]:
        return ["\n"]  # the answer is the first line; what follows is never read

    def answer_texts(self) -> list[str]:
        """" card_arrival" after the "Label:" prefill: the form the precedents show and the
        gold targets use."""
        return [f" {label}" for label in self.labels]

    def parse(self, completion: str) -> str | None:
        line = _PREFIX_ECHO.sub("", first_line(completion))
        return match_label(line, self.labels_by_key)

    def grade(self, completion: str, ex: Example) -> float:
        return float(self.parse(completion) == ex.answer)

    def _example(self, row: Row, split: str, text_field: str, label_field: str) -> Example:
        text = strip_text(row.data.get(text_field), text_field)
        label = strip_text(row.data.get(label_field), label_field)
        if label not in self.labels:
            raise RowProblem(f"unknown label {label!r} (not in the task's label set)")
        meta = {"source": row.source, "line": row.line}
        return Example(self._make_id(split, row.index), text, label, None, meta)


class Banking77Task(ClassificationTask):
    """BANKING77 (PolyAI): 77 intents, train.csv/test.csv with columns text,category;
    labels in categories.json order. Hub fallback: PolyAI/banking77."""

    name = "banking77"
    subject = "customer message"
    hub_id = "PolyAI/banking77"

    def __init__(self, root: Path | None) -> None:
        super().__init__()
        self.root = root

    @cached_property
    def _labels(self) -> list[str]:
        if self.root is None:
            return hub_label_names(self.hub_id, None, "label")
        path = self.root / "banking77" / "categories.json"
        labels = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise ValueError(f"{path}: expected a JSON list of label names")
        return labels

    def _rows(self, split: str, bad: BadRows) -> Iterable[Row]:
        if self.root is None:
            return records_to_rows(
                load_hub_rows(self.hub_id, None, split), f"hub {self.hub_id} {split}"
            )
        return read_rows(self.root / "banking77" / f"{split}.csv", f"banking77 {split}.csv", bad)

    def _to_example(self, row: Row, split: str) -> Example:
        label_field = "category" if "category" in row.data or "label" not in row.data else "label"
        return self._example(row, split, "text", label_field)


class UserClassificationTask(ClassificationTask):
    """Classification on the user's own files (paths relative to the CWD).

    Spec: "classification:TRAIN,TEST[?text=FIELD&label=FIELD]". Files are CSV (header
    row), JSONL or a JSON list, by extension. The label field defaults to "label",
    falling back to "category" when a row has no "label". Labels are the sorted
    unique labels of train and test together.
    """

    id_prefix = "classification"

    def __init__(
        self,
        train: str,
        test: str,
        text_field: str = "text",
        label_field: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.paths = {"train": train, "test": test}
        self.resolved = {split: Path(p).expanduser().resolve() for split, p in self.paths.items()}
        self.text_field = text_field
        self.label_field = label_field  # None: "label", else "category"
        self.name = name or f"classification:{train},{test}"

    def _label_field(self, row: Row) -> str:
        if self.label_field is not None:
            return self.label_field
        return "label" if "label" in row.data or "category" not in row.data else "category"

    @cached_property
    def _labels(self) -> list[str]:
        found: dict[str, dict[str, int]] = {}  # split -> label -> first line
        for split in self.splits:
            for row in self._rows(split, BadRows("skip")):
                try:
                    field = self._label_field(row)
                    found.setdefault(split, {}).setdefault(
                        strip_text(row.data.get(field), field), row.line)
                except RowProblem:
                    continue  # reported when that split is loaded
        labels = {label for per_split in found.values() for label in per_split}
        if not labels:
            raise DataUnavailableError(
                f"{self.name}: no labels found in {list(self.paths.values())}"
            )
        test_only = sorted(set(found.get("test", {})) - set(found.get("train", {})),
                           key=lambda label: found["test"][label])
        if test_only:
            first = test_only[0]
            raise TaskDataError(
                f"{self.paths['test']} line {found['test'][first]}: label {first!r} "
                f"({len(test_only)} such label(s): {', '.join(map(repr, test_only[:5]))}) appears "
                f"only in the test split, so nothing in {self.paths['train']} teaches it: drop "
                "those test rows or add train examples")
        return sorted(labels)

    def _rows(self, split: str, bad: BadRows) -> Iterable[Row]:
        return read_rows(self.resolved[split], self.paths[split], bad)

    def _to_example(self, row: Row, split: str) -> Example:
        return self._example(row, split, self.text_field, self._label_field(row))
