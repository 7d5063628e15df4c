"""plan_solve: write a plan without solving, then solve following the plan.

The solve step ends with the task's own answer format (the answer contract),
so the teacher context (problem + plan) scores the student's answer under the
same expectations as the bare prompt. An empty plan is a fallback: the solve
prompt then equals the bare prompt (no signal), recorded with `note_fallback`.

`reference_in_plan=True` gives the plan step the reference solution (the
published OPHSD code does this during training only: the teacher is then
strong where the inference-time harness is not). Never use it for evaluation.
A plan written after reading the reference carries the results, not just the
steps (Qwen writes "Micah ran 3.5 * 8 = 28 miles"), and a solve step that reads
them answers "The answer is 16." at once: as a teacher it then rewards skipping
the work (GSM8K collapse, docs/notes/gsm8k.md). `hide_plan_results=True` masks
every number of the plan that the question does not contain, so the teacher
knows which operations to carry out but must still carry them out. Measured on
Qwen2.5-Coder-0.5B it breaks the teacher instead (0.60 -> 0.06: the solve step
guesses the masked result), so it is an option, not the default.
"""

from __future__ import annotations

import re
from typing import Any

import dspy

from harnesses.base import answer_config, chat_step, question_only
from scaffold.trace import note_fallback
from scaffold.types import TaskContract

PLAN_INSTRUCTION = (
    "Write a short numbered plan (at most 5 steps) for solving this problem. "
    "Do not carry out the calculations and do not give the final answer."
)
# A number ("1,200", "3.5", "-4"), not a list marker ("2." at the start of a line).
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")
_LIST_MARKER = re.compile(r"^[ \t]*(\d+)\.(?=\s)", re.MULTILINE)


def _number_key(text: str) -> str:
    """"1,200" and "1200", "52.0" and "52" are the same number; so are 4 and -4."""
    text = text.replace(",", "").lstrip("-")
    return text.rstrip("0").rstrip(".") if "." in text else text


def hide_results(plan: str, question: str) -> str:
    """`plan` with every number the question does not contain replaced by "?" (list
    markers kept), e.g. "3.5 * 8 = 28" -> "3.5 * 8 = ?" when 28 is not in the question."""
    given = {_number_key(m.group()) for m in _NUMBER.finditer(question)}
    markers = {m.start(1) for m in _LIST_MARKER.finditer(plan)}

    def mask(m: re.Match) -> str:
        keep = m.start() in markers or _number_key(m.group()) in given
        return m.group() if keep else "?"

    return _NUMBER.sub(mask, plan)


class PlanSolve(dspy.Module):
    name = "plan_solve"

    def __init__(self, task: TaskContract, max_plan_chars: int = 1200, reference_in_plan: bool = False,
                 hide_plan_results: bool = False):
        super().__init__()
        self.task, self.max_plan_chars = task, max_plan_chars
        self.reference_in_plan, self.hide_plan_results = reference_in_plan, hide_plan_results

        def render_plan(inp: dict) -> list[dict]:
            ref = f"\n\nA verified solution, for your eyes only:\n{inp['reference']}" \
                if inp.get("reference") else ""
            return [{"role": "user", "content": f"{inp['question']}{ref}\n\n{PLAN_INSTRUCTION}"},
                    {"role": "assistant", "content": "Plan:\n1."}]

        def render_solve(inp: dict) -> list[dict]:
            bare = task.student_messages(question_only(inp["question"]))
            user = bare[0]["content"] if bare[0]["role"] == "user" else inp["question"]
            user = f"{user}\n\nFollow this plan:\n{inp['plan']}"
            return [{"role": "user", "content": user}, *bare[1:]]

        self.plan = dspy.Predict(chat_step("Plan", "Plan without solving.",
                                           ["question", "reference"], render_plan))
        answer = answer_config(task)  # the solve step writes the task's answer
        self.solve = dspy.Predict(chat_step("Solve", "Solve following the plan.",
                                            ["question", "plan"], render_solve), **answer)
        self.bare = dspy.Predict(chat_step(
            "BareAnswer", "Solve with no plan.", ["question"],
            lambda inp: task.student_messages(question_only(inp["question"]))), **answer)

    def forward(self, example: Any) -> dspy.Prediction:
        ref = example.solution if self.reference_in_plan else None
        planned = self.plan(question=example.question, reference=ref or "")
        plan = "1. " + planned.completion.strip()
        if len(plan) > self.max_plan_chars:  # counted: a cut plan may have lost its last steps
            note_fallback("plan_truncated", f"plan of {len(plan)} characters cut to "
                          f"{self.max_plan_chars}", chars=len(plan))
        plan = plan[: self.max_plan_chars].strip()
        if self.hide_plan_results:
            plan = hide_results(plan, example.question)
        if len(plan) <= 3:
            note_fallback("empty_plan", "the plan step wrote nothing: solving with the bare prompt")
            out = self.bare(question=example.question)
        else:
            out = self.solve(question=example.question, plan=plan)
        return dspy.Prediction(completion=out.completion, answer=self.task.parse(out.completion),
                               plan=plan)
