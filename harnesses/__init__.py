"""Harness programs (`dspy.Module`s) and their registry.

    program = build_harness("draft_verify", task, index=bank)
    prediction = program(example=ex)     # .completion, .answer

`none` is the task's bare student prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dspy

from harnesses.base import Bare, chat_step, task_prefill
from harnesses.draft_verify import DraftVerify
from harnesses.plan_solve import PlanSolve
from harnesses.self_consistency import SelfConsistency

__all__ = ["HARNESSES", "Bare", "DraftVerify", "PlanSolve", "SelfConsistency", "build_harness", "chat_step",
           "needs_index", "register", "task_prefill"]

HARNESSES: dict[str, Callable[..., dspy.Module]] = {
    "none": lambda task, index=None, **kw: Bare(task),
    "draft_verify": lambda task, index=None, **kw: DraftVerify(task, index, **kw),
    "plan_solve": lambda task, index=None, **kw: PlanSolve(task, **kw),
    "self_consistency": lambda task, index=None, **kw: SelfConsistency(task, **kw),
}
NEEDS_INDEX = {"draft_verify"}


def register(name: str, factory: Callable[..., dspy.Module], needs_index: bool = False) -> None:
    """Add a user harness: `factory(task, index=None, **options) -> dspy.Module`."""
    HARNESSES[name] = factory
    if needs_index:
        NEEDS_INDEX.add(name)


def needs_index(name: str) -> bool:
    return name in NEEDS_INDEX


def build_harness(name: str, task: Any, index: Any = None, **options: Any) -> dspy.Module:
    if name not in HARNESSES:
        raise KeyError(f"unknown harness {name!r}; known: {', '.join(sorted(HARNESSES))}")
    if name in NEEDS_INDEX and index is None:
        raise ValueError(f"harness {name!r} needs a precedent index built from the train split")
    return HARNESSES[name](task, index=index, **options)
