"""Core data types shared by every package (tasks build them, harnesses read them)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
