"""Building blocks shared by the harnesses.

A harness is a `dspy.Module` whose `forward(example)` returns a
`dspy.Prediction` with `completion` (what the model wrote after the final
step's prefill) and `answer` (the task's parse of it). Each LM call is a named
`dspy.Predict` sub-step whose signature renders *exact* chat messages (through
`PlainChatAdapter`'s `render_messages` hook): small models only answer in
format with a precise prompt form, and the final step must honour the task's
answer contract (same `answer_prefix` and format as the bare student prompt),
or the teacher scores the student's answer under a context that expects
something else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dspy

from scaffold.chat import Messages
from scaffold.types import Example, TaskContract

Render = Callable[[dict[str, Any]], Messages]


def chat_step(name: str, doc: str, inputs: list[str], render: Render) -> type[dspy.Signature]:
    """A one-output signature (`completion`) that renders its messages with `render(inputs)`.

    The completion is kept verbatim (the task parses it), so the step's parse
    is the identity; an empty completion is still reported by the adapter.
    """
    fields: dict[str, Any] = {k: (str, dspy.InputField()) for k in inputs}
    fields["completion"] = (str, dspy.OutputField(desc="the raw completion"))
    sig = dspy.Signature(fields, doc)
    sig.__name__ = name
    sig.render_messages = staticmethod(render)
    sig.parse_completion = staticmethod(lambda text: {"completion": text})
    return sig


def answer_config(task: TaskContract) -> dict[str, Any]:
    """Request settings of a step whose completion is the task's answer: stop where the
    answer ends (one-line label answers stop at the line end) instead of at max_tokens."""
    stop = getattr(task, "stop", None)
    return {"stop": list(stop)} if stop else {}


def question_only(question: str) -> Any:
    """An Example carrying only the question (what prompts may depend on)."""
    return Example(id="", question=question, answer="")


def task_prefill(task: TaskContract) -> list[dict[str, str]]:
    """The assistant prefill of the task's answer contract ([] when the task has none)."""
    return [{"role": "assistant", "content": task.answer_prefix}] if task.answer_prefix else []


class Bare(dspy.Module):
    """The `none` harness: the task's bare student prompt, one call."""

    name = "none"

    def __init__(self, task: TaskContract):
        super().__init__()
        self.task = task
        self.answer = dspy.Predict(chat_step(
            "BareAnswer", "Answer the task.", ["question"],
            lambda inp: task.student_messages(question_only(inp["question"]))),
            **answer_config(task))

    def forward(self, example: Any) -> dspy.Prediction:
        out = self.answer(question=example.question)
        return dspy.Prediction(completion=out.completion, answer=self.task.parse(out.completion))
