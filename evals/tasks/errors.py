"""Errors raised by the task layer (one module so that readers and tasks share them)."""

from __future__ import annotations

from scaffold.errors import ScaffoldError


class TaskDataError(ScaffoldError, ValueError):
    """A data row is malformed; the message names the file, the 1-based line and the problem."""


class TaskSpecError(ScaffoldError, ValueError):
    """A --task that names no task; the message says which part failed."""


class SplitUnavailableError(ScaffoldError, ValueError):
    """The task has no such split (e.g. MATH-500 ships only a test split)."""


class DataUnavailableError(ScaffoldError, RuntimeError):
    """Neither a local data root nor the Hugging Face hub can provide the task's data."""


class LeakageError(ScaffoldError, ValueError):
    """The same question appears in a train and a test list."""
