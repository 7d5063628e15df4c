"""The task contract: examples, the bare student prompt, answer parsing and grading.

A `Task` owns everything a task means: how its files are read, the bare prompt
the student answers, the ANSWER CONTRACT (`format_instruction` +
`answer_prefix`) that harness final steps must reuse, the parser and the
grader. Concrete tasks live in `classification.py`, `lawbench.py` and
`math_tasks.py`; `evals.tasks.get_task` builds them from a spec string.

Data leakage guard: example ids are prefixed with their split, and a task with
both splits drops from TRAIN (never from test) any item whose normalized
question also appears in its test split, recording how many in
`task.dropped_overlap["train"]`. `assert_disjoint` checks any two lists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evals.tasks.errors import (  # noqa: F401  (re-exported)
    DataUnavailableError,
    LeakageError,
    SplitUnavailableError,
    TaskDataError,
)
from evals.tasks.readers import BadRows, Row, RowProblem
from scaffold.types import (
    Example,  # noqa: F401  (re-exported)
    normalize_text,
)

SPLITS = ("train", "test")


# Example is a core type (harnesses read it too); re-exported here for task code.
def data_root(explicit: str | Path | None = None) -> Path | None:
    """Where the datasets live: `explicit`, else $SCAFFOLD_DATA, else ../shared/datasets
    next to the repository if it exists, else None (loaders then try the hub)."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("SCAFFOLD_DATA")
    if env:
        return Path(env).expanduser()
    default = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
    return default if default.is_dir() else None


def normalize_question(text: str) -> str:
    """The key for train/test overlap checks: the leakage guard's own normalization
    (case, whitespace and punctuation dropped; `scaffold.types.normalize_text`)."""
    return normalize_text(text)


def count_overlap(train: Iterable[Example], test: Iterable[Example]) -> int:
    """How many train examples have a normalized question that also appears in test."""
    test_keys = {normalize_question(ex.question) for ex in test}
    return sum(normalize_question(ex.question) in test_keys for ex in train)


def assert_disjoint(train: Iterable[Example], test: Iterable[Example]) -> None:
    """Raise LeakageError (with the count and a few ids) if any question is in both lists."""
    test_keys = {normalize_question(ex.question) for ex in test}
    shared = [ex.id for ex in train if normalize_question(ex.question) in test_keys]
    if shared:
        raise LeakageError(
            f"{len(shared)} train question(s) also appear in test (normalized text), e.g. {shared[:5]}"
        )


def set_f1(pred: set[str], gold: set[str]) -> float:
    """Set F1 exactly as LawBench's `compute_f1_two_sets`: 0 when either set is empty."""
    hits = len(pred & gold)
    precision = hits / len(pred) if pred else 0.0
    recall = hits / len(gold) if gold else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def strip_text(value: Any, key: str) -> str:
    """A required non-empty string field of a row (ints are accepted and stringified)."""
    if value is None:
        raise RowProblem(f"missing field {key!r}")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowProblem(f"field {key!r} must be a string, got {type(value).__name__}")
    text = str(value).replace("\r\n", "\n").strip()
    if not text:
        raise RowProblem(f"empty field {key!r}")
    return text


class Task:
    """Base class. Subclasses set the class attributes and implement `_rows`,
    `_to_example`, `student_messages`, `parse` and `grade`."""

    name: str = ""
    kind: str = ""  # "classification" | "multilabel" | "math"
    answer_prefix: str = ""
    splits: tuple[str, ...] = SPLITS

    def __init__(self) -> None:
        # split -> malformed rows skipped (on_bad_row="skip")
        self.skipped_rows: dict[str, int] = {}
        self.bad_rows: dict[str, list[str]] = {}  # split -> the messages of those rows
        self.dropped_overlap: dict[str, int] = {}  # "train" -> rows dropped because in test
        self._test_keys: set[str] | None = None

    @property
    def labels(self) -> list[str] | None:
        return None

    @property
    def id_prefix(self) -> str:
        return self.name

    # ---- loading -------------------------------------------------------------------------
    def load(
        self, split: str, limit: int | None = None, on_bad_row: str = "error"
    ) -> list[Example]:
        """Examples of `split` in file order. Malformed rows raise TaskDataError
        (on_bad_row="error") or are skipped and counted in `skipped_rows[split]`."""
        self._check_split(split)
        bad = BadRows(on_bad_row)
        examples = self._read(split, bad)
        self.skipped_rows[split] = bad.count
        self.bad_rows[split] = list(bad.messages)
        if not examples:
            raise TaskDataError(f"{self.name}: the {split} split has no examples (an empty or "
                                f"header-only file{', every row malformed' if bad.count else ''})")
        if split == "train" and "test" in self.splits:
            test_keys = self._test_question_keys()
            kept = [ex for ex in examples if normalize_question(ex.question) not in test_keys]
            self.dropped_overlap["train"] = len(examples) - len(kept)
            if not kept:
                raise TaskDataError(f"{self.name}: every train question also appears in the test "
                                    "split (is the train file the test file?)")
            examples = kept
        return examples if limit is None else examples[: max(limit, 0)]

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self.splits:
            raise SplitUnavailableError(
                f"task {self.name!r} has no {split!r} split (available: {', '.join(self.splits)})"
            )

    def _read(self, split: str, bad: BadRows) -> list[Example]:
        examples = []
        for row in self._rows(split, bad):
            try:
                examples.append(self._to_example(row, split))
            except RowProblem as problem:
                bad.report(row, str(problem))
        return examples

    def _test_question_keys(self) -> set[str]:
        if self._test_keys is None:  # malformed test rows are the test loader's business
            test = self._read("test", BadRows("skip"))
            self._test_keys = {normalize_question(ex.question) for ex in test}
        return self._test_keys

    def _make_id(self, split: str, index: int) -> str:
        return f"{self.id_prefix}/{split}/{index}"

    def _rows(self, split: str, bad: BadRows) -> Iterable[Row]:
        raise NotImplementedError

    def _to_example(self, row: Row, split: str) -> Example:
        raise NotImplementedError

    # ---- prompt, parsing, grading ---------------------------------------------------------
    def format_instruction(self) -> str:
        raise NotImplementedError

    def student_messages(self, ex: Example, evidence: str | None = None) -> list[dict]:
        """The bare prompt. `evidence`: a block a harness shows before the question (e.g.
        retrieved precedents); None gives the student's prompt exactly."""
        raise NotImplementedError

    def parse(self, completion: str) -> str | None:
        raise NotImplementedError

    def grade(self, completion: str, ex: Example) -> float:
        raise NotImplementedError

    @property
    def stop(self) -> list[str] | None:
        """Where an answer ends, for the engine to stop sampling ("\n" for one-line label
        answers, which are read from their first line); None: let it run to max_tokens."""
        return None

    def answer_texts(self) -> list[str] | None:
        """Every complete answer, as the text that follows the prefill, for tasks whose
        answers form a closed set (one label); None for open answers (math, label sets).
        Distillation can restrict the teacher to these (see distill.answer_space)."""
        return None

    def label_of(self, ex: Example) -> str | None:
        return ex.answer if self.kind in ("classification", "multilabel") else None

    def reference_text(self, ex: Example) -> str:
        return f"{self.answer_prefix} {ex.answer}".strip()

    def _with_prefill(self, user: str) -> list[dict]:
        messages = [{"role": "user", "content": user}]
        if self.answer_prefix:
            messages.append({"role": "assistant", "content": self.answer_prefix})
        return messages

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def first_line(text: str) -> str:
    """The first non-empty line of a completion (answers are read from it)."""
    for line in re.split(r"\r?\n", text):
        if line.strip():
            return line.strip()
    return ""
