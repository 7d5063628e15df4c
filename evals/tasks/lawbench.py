"""LawBench 3-3: charge prediction (multi-label) from the facts of a Chinese criminal case.

Data: lawbench/3-3.json, a JSON list of {instruction, question, answer} with
answers like "罪名:盗窃;诈骗" (charges separated by ";"). Gold `Example.answer`
is the charges sorted and joined by ";". Labels are the union of charges in
the file (sorted).

Split: the file has no train/test split, so one is made deterministically:
an item is TEST when the first 8 hex digits of sha256(normalized question)
modulo 100 are below 20 (about 80/20). Hashing the question rather than the
row index keeps the split stable if rows are reordered and puts duplicates on
the same side.

Grading is LawBench's set F1 (`compute_f1_two_sets`) between predicted and gold
charge sets. Predicted charges are read as LawBench does, by finding known
charge names in the answer line, but longest-first and non-overlapping:
LawBench's plain substring test would also count "盗窃" inside
"盗窃、抢夺枪支、弹药、爆炸物", and splitting on "、" would break the many charge
names that contain it (e.g. "掩饰、隐瞒犯罪所得、犯罪所得收益"). Names outside the
label set are ignored, as LawBench ignores names outside its option list.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from evals.tasks.base import Example, Task, normalize_question, set_f1, strip_text
from evals.tasks.errors import DataUnavailableError
from evals.tasks.readers import BadRows, Row, RowProblem, read_rows

TEST_PERCENT = 20
_ANSWER_HEAD = re.compile(r"^\s*(?:\[罪名\]|罪名)\s*[:：]?\s*")
_INSTRUCTION = "请你模拟法官依据下面事实给出罪名，只需要给出罪名的名称。"


def split_of(question: str) -> str:
    """'test' for about TEST_PERCENT% of questions, by a stable hash of the normalized text."""
    digest = hashlib.sha256(normalize_question(question).encode("utf-8")).hexdigest()
    return "test" if int(digest[:8], 16) % 100 < TEST_PERCENT else "train"


def gold_charges(answer: str) -> list[str]:
    """The charges of a raw LawBench answer "罪名:A;B" (also tolerates "；" and <eoa>)."""
    body = _ANSWER_HEAD.sub("", answer.replace("<eoa>", ""))
    return [c.strip() for c in re.split(r"[;；]", body) if c.strip()]


def find_charges(text: str, labels: Iterable[str]) -> list[str]:
    """Known charge names in `text`, scanning left to right and taking the longest name
    that starts at each position (so names never overlap)."""
    by_first: dict[str, list[str]] = {}
    for label in sorted(set(labels), key=len, reverse=True):
        by_first.setdefault(label[0], []).append(label)
    found, pos = [], 0
    while pos < len(text):
        match = next((c for c in by_first.get(text[pos], ()) if text.startswith(c, pos)), None)
        if match:
            found.append(match)
            pos += len(match)
        else:
            pos += 1
    return found


class LawBench33Task(Task):
    name = "lawbench-3-3"
    kind = "multilabel"
    answer_prefix = "罪名:"

    def __init__(self, root: Path | None) -> None:
        super().__init__()
        if root is None:
            raise DataUnavailableError(
                "lawbench-3-3 has no hub copy: pass data_root= or set $SCAFFOLD_DATA to a folder "
                "holding lawbench/3-3.json"
            )
        self.path = root / "lawbench" / "3-3.json"

    @cached_property
    def _labels(self) -> list[str]:
        charges: set[str] = set()
        for row in self._all_rows(BadRows("skip")):
            answer = row.data.get("answer")
            if isinstance(answer, str):
                charges.update(gold_charges(answer))
        return sorted(charges)

    @property
    def labels(self) -> list[str]:
        return self._labels

    def _all_rows(self, bad: BadRows) -> Iterable[Row]:
        return read_rows(self.path, "lawbench-3-3 3-3.json", bad)

    def _rows(self, split: str, bad: BadRows) -> Iterable[Row]:
        for row in self._all_rows(bad):
            question = row.data.get("question")
            # a row without a usable question belongs to no split: both loads report it
            if not isinstance(question, str) or not question.strip() or split_of(question) == split:
                yield row

    def _to_example(self, row: Row, split: str) -> Example:
        question = strip_text(row.data.get("question"), "question")
        raw = strip_text(row.data.get("answer"), "answer")
        if not raw.startswith("罪名"):
            raise RowProblem(f"answer {raw[:30]!r} does not start with '罪名:'")
        charges = gold_charges(raw)
        if not charges:
            raise RowProblem("answer names no charge")
        meta = {"source": row.source, "line": row.line, "raw_answer": raw}
        return Example(
            self._make_id(split, row.index), question, ";".join(sorted(set(charges))), None, meta
        )

    def format_instruction(self) -> str:
        return "答案写成“罪名:”后接罪名名称的形式，多个罪名用分号;分隔，例如 罪名:盗窃;诈骗"

    def student_messages(self, ex: Example, evidence: str | None = None) -> list[dict]:
        block = f"{evidence}\n\n" if evidence else ""
        return self._with_prefill(
            f"{_INSTRUCTION}\n\n{block}{ex.question}\n\n{self.format_instruction()}")

    def parse(self, completion: str) -> str | None:
        """The predicted charges, sorted and joined by ";", or None when none is named."""
        text = completion.split("<eoa>")[0]
        line = next((ln for ln in text.splitlines() if ln.strip()), "")
        charges = find_charges(_ANSWER_HEAD.sub("", line), self.labels)
        return ";".join(sorted(set(charges))) if charges else None

    def grade(self, completion: str, ex: Example) -> float:
        parsed = self.parse(completion)
        pred = set(parsed.split(";")) if parsed else set()
        return set_f1(pred, set(ex.answer.split(";")))

    def reference_text(self, ex: Example) -> str:
        return f"{self.answer_prefix}{ex.answer}"
