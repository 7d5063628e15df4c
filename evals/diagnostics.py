"""Internalization diagnostics: does an answer do the harness's work itself?

Accuracy says whether the trained model is right; these say whether its answer
*looks like* the harness's reasoning, measured on the bare answers of base vs trained:

- label tasks (draft_verify's work): `alt_label_rate`, the share of answers that name
  more than one label before settling (the verify step's weighing of alternatives), and
  `cites_case_rate`, the share that refer to a similar case or example (the precedents).
- math (plan_solve's work): `plans_first_rate`, the share of answers that lay out a plan
  or numbered steps before the computation.

All are plain text checks; they count behaviour, not correctness.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from evals.tasks.classification import label_key
from scaffold.types import TaskContract

_CASE = re.compile(r"\b(similar|example|e\.g\.|like the (message|case)|precedent|as in)\b",
                   re.IGNORECASE)
_PLAN = re.compile(r"^\s*(plan\b|steps?\b|first\b|1[.)]|- |\* )", re.IGNORECASE | re.MULTILINE)


def labels_named(text: str, labels: Sequence[str]) -> list[str]:
    """The distinct labels that occur in `text` as whole words (normalized), in order."""
    key = f"_{label_key(text)}_"
    found = [(key.find(f"_{label_key(lab)}_"), lab) for lab in labels]
    return [lab for pos, lab in sorted(found) if pos >= 0]


def answer_diagnostics(task: TaskContract, completions: Sequence[str]) -> dict[str, float]:
    """Rates over a list of bare-model completions (empty dict for no completions)."""
    n = len(completions)
    if n == 0:
        return {}
    if task.kind == "math":
        return {"plans_first_rate": sum(plans_first(c) for c in completions) / n}
    labels = getattr(task, "labels", [])
    return {
        "alt_label_rate": sum(len(labels_named(c, labels)) > 1 for c in completions) / n,
        "cites_case_rate": sum(bool(_CASE.search(c)) for c in completions) / n,
    }


def plans_first(text: str) -> bool:
    """A plan (a "Plan"/"Step" line, "First", or a list item) starts a line before the first
    number is computed (an "=" sign)."""
    match = _PLAN.search(text)
    if match is None:
        return False
    eq = text.find("=")
    return eq < 0 or match.start() < eq
