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
