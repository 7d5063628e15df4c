"""self_consistency: sample several plan_solve runs and keep the majority answer.

Written as the README's example of composing a harness from existing parts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import dspy

from harnesses.plan_solve import PlanSolve
from scaffold.trace import LMCall, Trace
from scaffold.types import TaskContract


class SelfConsistency(dspy.Module):
    name = "self_consistency"

    def __init__(self, task: TaskContract, n: int = 5, temperature: float = 0.7, **plan_solve: Any):
        super().__init__()
        self.task, self.n, self.temperature = task, n, temperature
        self.solver = PlanSolve(task, **plan_solve)

    def forward(self, example: Any) -> dspy.Prediction:
        lm = dspy.settings.lm
        runs = []
        for i in range(self.n):  # distinct rollout ids: distinct samples, never a cache hit
            with dspy.context(lm=lm.copy(temperature=self.temperature, rollout_id=i)):
                runs.append(self.solver(example=example))
        votes = Counter(r.answer for r in runs if r.answer is not None)
        best = votes.most_common(1)[0][0] if votes else None
        winner = next((r for r in runs if r.answer == best), runs[-1])
        return dspy.Prediction(completion=winner.completion, answer=best, votes=dict(votes))

    def teacher_call(self, trace: Trace) -> LMCall | None:
        """The teacher sees the winning sample's solve request (its plan), not the last
        sample's: the first solve call whose completion is the returned one is the winner's
        (the winner is the first run with the majority answer)."""
        chosen = trace.outputs.get("completion")
        solves = [c for c in trace.calls if not c.step.endswith("plan")]  # solve, or bare
        return next((c for c in solves if c.completion == chosen), trace.final_call())
