"""Tasks: loaders, the bare student prompt, the answer contract, parsers and graders.

    from evals.tasks import get_task
    task = get_task("banking77")                 # data under data_root()
    train, test = task.load("train"), task.load("test")
    task.student_messages(test[0])               # bare prompt, ends with the "Label:" prefill
    task.grade(" card_arrival", test[0])         # 1.0 / 0.0

Specs: "banking77", "lawbench-3-3", "gsm8k", "math500",
"classification:TRAIN,TEST[?text=FIELD&label=FIELD]" and
"math:TRAIN,TEST[?question=FIELD&answer=FIELD&solution=FIELD]" (user files, paths
relative to the current directory; CSV, JSONL or JSON list by extension), and
"package.module:factory" (a Task from the user's own code).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from evals.tasks.base import (
    Example,
    Task,
    assert_disjoint,
    count_overlap,
    data_root,
    normalize_question,
    set_f1,
)
from evals.tasks.classification import Banking77Task, ClassificationTask, UserClassificationTask
from evals.tasks.errors import (
    DataUnavailableError,
    LeakageError,
    SplitUnavailableError,
    TaskDataError,
    TaskSpecError,
)
from evals.tasks.lawbench import LawBench33Task
from evals.tasks.math_tasks import GSM8KTask, Math500Task, MathTask, UserMathTask
from scaffold.user_code import UserCodeError, import_object

BUILTIN_TASKS = {
    "banking77": Banking77Task,
    "lawbench-3-3": LawBench33Task,
    "gsm8k": GSM8KTask,
    "math500": Math500Task,
}
_USER_OPTIONS = {"classification": ("text", "label"), "math": ("question", "answer", "solution")}


def get_task(spec: str, data_root: str | Path | None = None) -> Task:
    """Build the task named by `spec` (see the module docstring). Built-in tasks read
    from `data_root(data_root)`; user specs read paths relative to the CWD."""
    from evals.tasks.base import data_root as resolve_root

    spec = spec.strip()
    kind, colon, rest = spec.partition(":")
    if colon and kind in _USER_OPTIONS:
        return _user_task(kind, rest, spec)
    if colon and rest:
        return _code_task(spec)
    if spec not in BUILTIN_TASKS:
        known = ", ".join([*BUILTIN_TASKS, "classification:TRAIN,TEST", "math:TRAIN,TEST",
                           "package.module:factory"])
        raise TaskSpecError(f"unknown task {spec!r}; known: {known}")
    return BUILTIN_TASKS[spec](resolve_root(data_root))


def _code_task(spec: str) -> Task:
    """`package.module:factory`: a Task subclass or a function of no arguments returning a
    `Task` (evals.tasks.base.Task: load, student_messages, parse, grade), from the user's
    code on PYTHONPATH or in the current folder."""
    try:
        factory = import_object(spec, what="task")
    except UserCodeError as e:
        raise TaskSpecError(str(e)) from e.__cause__
    task = factory()
    if not isinstance(task, Task):
        raise TaskSpecError(f"task {spec!r} returned a {type(task).__name__}, not an "
                            "evals.tasks.Task")
    return task


def _user_task(kind: str, rest: str, spec: str) -> Task:
    paths_part, _, query = rest.partition("?")
    paths = [p.strip() for p in paths_part.split(",")]
    if len(paths) != 2 or not all(paths):
        raise TaskSpecError(f"task spec {spec!r}: expected '{kind}:TRAIN,TEST' with two file paths")
    try:
        options = dict(parse_qsl(query, strict_parsing=True)) if query else {}
    except ValueError as e:
        raise TaskSpecError(
            f"task spec {spec!r}: bad options {query!r} (use key=value&key=value)"
        ) from e
    unknown = set(options) - set(_USER_OPTIONS[kind])
    if unknown:
        raise TaskSpecError(
            f"task spec {spec!r}: unknown option(s) {sorted(unknown)}; allowed: {_USER_OPTIONS[kind]}"
        )
    train, test = paths
    if kind == "classification":
        return UserClassificationTask(
            train, test, options.get("text", "text"), options.get("label"), name=spec
        )
    return UserMathTask(
        train,
        test,
        options.get("question"),
        options.get("answer", "answer"),
        options.get("solution", "solution"),
        name=spec,
    )


__all__ = [
    "BUILTIN_TASKS",
    "Banking77Task",
    "ClassificationTask",
    "DataUnavailableError",
    "Example",
    "GSM8KTask",
    "LawBench33Task",
    "LeakageError",
    "Math500Task",
    "MathTask",
    "SplitUnavailableError",
    "Task",
    "TaskDataError",
    "TaskSpecError",
    "UserClassificationTask",
    "UserMathTask",
    "assert_disjoint",
    "count_overlap",
    "data_root",
    "get_task",
    "normalize_question",
    "set_f1",
]
