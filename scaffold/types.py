"""Core data types shared by every package (tasks build them, harnesses read them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Example:
    """One task item. `answer` is the normalized gold answer the grader compares against."""

    id: str
    question: str
    answer: str
    solution: str | None = None
    meta: dict = field(default_factory=dict, hash=False)  # hashable Examples: meta left out


@dataclass(frozen=True)
class Question:
    """A task item whose answer is withheld: an unlabelled pool question.

    It has no `answer` or `solution` attribute at all, so any code path that would read
    a gold answer (a grader, a reference-reading teacher, an SFT target) fails with an
    AttributeError instead of quietly training on a label it was not given.
    """

    id: str
    question: str
    meta: dict = field(default_factory=dict, hash=False)

    @classmethod
    def withhold(cls, example: Example) -> Question:
        return cls(example.id, example.question, example.meta)


Item = Example | Question  # what a harness may be run on


def is_labelled(item: Item) -> bool:
    return isinstance(item, Example)


@runtime_checkable
class TaskContract(Protocol):
    """What training and the harnesses read of a task (evals.tasks.Task implements it; a
    `--task package.module:factory` of a user's own must too)."""

    name: str
    kind: str  # "classification" | "multilabel" | "math"
    answer_prefix: str  # the assistant prefill both the student and the teacher answer after

    def load(self, split: str, limit: int | None = None,
             on_bad_row: str = "error") -> list[Example]: ...

    def student_messages(self, ex: Item, evidence: str | None = None) -> list[dict]:
        """The bare prompt (chat messages, ending in the answer prefill if any)."""
        ...

    def parse(self, completion: str) -> str | None: ...

    def grade(self, completion: str, ex: Example) -> float: ...

    @property
    def stop(self) -> list[str] | None: ...

    def answer_texts(self) -> list[str] | None: ...

    def reference_text(self, ex: Example) -> str: ...


def normalize_text(text: str) -> str:
    """The form the leakage guard compares: case folded, punctuation dropped, whitespace
    collapsed (only the words and numbers, in order). BANKING77 has 18 train rows that
    differ from a test item with the same label only in punctuation ("card?" vs "card"):
    a whitespace-and-case key let them into the bank as near copies of the answer."""
    return " ".join(_WORD.findall(text.casefold()))
