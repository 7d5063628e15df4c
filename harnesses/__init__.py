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
from harnesses.precedent_solve import PrecedentSolve
from harnesses.program_solve import ProgramSolve
from harnesses.self_consistency import SelfConsistency
from scaffold.errors import ScaffoldError
from scaffold.types import TaskContract
from scaffold.user_code import UserCodeError, import_object

__all__ = ["HARNESSES", "Bare", "DraftVerify", "PlanSolve", "PrecedentSolve", "ProgramSolve", "ProgramSpecError", "SelfConsistency", "build_harness", "chat_step",
           "load_program", "needs_index", "register", "task_prefill"]

HARNESSES: dict[str, Callable[..., dspy.Module]] = {
    "none": lambda task, index=None, **kw: Bare(task),
    "draft_verify": lambda task, index=None, **kw: DraftVerify(task, index, **kw),
    "plan_solve": lambda task, index=None, **kw: PlanSolve(task, **kw),
    "self_consistency": lambda task, index=None, **kw: SelfConsistency(task, **kw),
    "program_solve": lambda task, index=None, **kw: ProgramSolve(task, **kw),
    # program_solve with the nearest training problems' solutions as worked programs
    "program_precedents": lambda task, index=None, **kw: ProgramSolve(
        task, index=index, **{"precedents": 4, **kw}),
    "precedent_solve": lambda task, index=None, **kw: PrecedentSolve(task, index, **kw),
}
NEEDS_INDEX = {"draft_verify", "program_precedents", "precedent_solve"}


def register(name: str, factory: Callable[..., dspy.Module], needs_index: bool = False) -> None:
    """Add a user harness: `factory(task, index=None, **options) -> dspy.Module`."""
    HARNESSES[name] = factory
    if needs_index:
        NEEDS_INDEX.add(name)


def needs_index(name: str) -> bool:
    return load_program(name) in NEEDS_INDEX


def build_harness(name: str, task: TaskContract, index: Any = None, **options: Any) -> dspy.Module:
    name = load_program(name)  # a built-in, or the user's package.module:Name
    if name in NEEDS_INDEX and index is None:
        raise ValueError(f"harness {name!r} needs a precedent index built from the train split")
    return HARNESSES[name](task, index=index, **options)


class ProgramSpecError(ScaffoldError, ValueError):
    """A --program that names no harness; the message says which part failed."""


def load_program(spec: str) -> str:
    """The registry name of `spec`: a built-in name, or `package.module:Name` naming a
    harness in the user's own code, imported and registered under `spec` itself.

    `Name` is a `dspy.Module` subclass or a factory; either is called as
    `Name(task, index=None, **options)` and must return a `dspy.Module` whose forward takes
    `example=` and returns a prediction with `.completion` (and `.answer`). A `needs_index
    = True` attribute on it asks for the precedent bank (the labelled examples)."""
    if spec in HARNESSES:
        return spec
    if ":" not in spec:
        raise ProgramSpecError(f"{spec!r} is not a harness; built-ins: {', '.join(HARNESSES)}, "
                               "or your own as package.module:Name")
    try:
        obj = import_object(spec, what="")
    except UserCodeError as e:
        raise ProgramSpecError(str(e).strip()) from e.__cause__

    def factory(task: TaskContract, index: Any = None, **options: Any) -> dspy.Module:
        program = obj(task, index=index, **options)
        if not isinstance(program, dspy.Module):
            raise ProgramSpecError(f"{spec} returned a {type(program).__name__}, not a "
                                   "dspy.Module")
        return program

    register(spec, factory, needs_index=bool(getattr(obj, "needs_index", False)))
    return spec
