"""The label-scarce regime: a small labelled bank and a large unlabelled pool.

A harness earns its keep where labels are few: a handful of labelled precedents
and many questions nobody has answered. `split_train` divides a task's train
split, seeded, into

- the **bank**: labelled examples; the harness's precedents, the SFT baselines'
  data and the kNN baseline's data, all the same set;
- the **pool**: the other questions, as `Question`s that carry no answer at all
  (see `scaffold.types.Question`), which is what OPHSD trains on.

    split = split_train(task, task.load("train"), per_class=10, seed=0)
    len(split.bank), len(split.pool)      # 770, 8233 on BANKING77

The split depends only on the train split, the sizes and the seed, so
`distill.run` and `evals.compare` given the same flags use the same bank.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from evals.tasks.base import Task
from scaffold.types import Example, Question


@dataclass(frozen=True)
class LabelSplit:
    bank: list[Example]
    pool: list[Question]
    per_class: int | None = None
    total: int | None = None
    seed: int = 0

    @property
    def regime(self) -> str:
        """A short name for reports and result files: "labeled10pc", "labeled50"."""
        return f"labeled{self.per_class}pc" if self.per_class else f"labeled{self.total}"


def split_train(task: Task, train: Sequence[Example], *, per_class: int | None = None,
                total: int | None = None, seed: int = 0) -> LabelSplit:
    """Take `per_class` labelled examples of every label (all of a label's examples when it
    has fewer), or `total` examples for tasks without classes, as the bank; withhold the
    answers of the rest. Bank and pool keep the train split's order."""
    if (per_class is None) == (total is None):
        raise ValueError("give exactly one of per_class and total")
    size = per_class if per_class is not None else total
    if size is None or size < 1:
        raise ValueError(f"the labelled bank needs at least one example, got {size}")
    if not train:
        raise ValueError(f"{task.name}: the train split is empty, nothing to split")
    if per_class is not None:
        if task.kind != "classification":
            raise ValueError(f"{task.name} has no single label per example ({task.kind}); "
                             "use --labeled N (a number of examples) instead of "
                             "--labeled-per-class")
        by_label: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(train):
            by_label[ex.answer].append(i)
        chosen: set[int] = set()
        for label in sorted(by_label):
            rows = by_label[label]
            random.Random(f"{seed}:{label}").shuffle(rows)
            chosen.update(rows[:per_class])
    else:
        rows = list(range(len(train)))
        random.Random(seed).shuffle(rows)
        chosen = set(rows[:total])
    bank = [ex for i, ex in enumerate(train) if i in chosen]
    pool = [Question.withhold(ex) for i, ex in enumerate(train) if i not in chosen]
    return LabelSplit(bank, pool, per_class, total, seed)
