"""A user's own harness, defined outside `harnesses/` and never registered: the integration
test loads it as `--program tests.user_harness:HintedAnswer`, the way a user names theirs."""

from __future__ import annotations

from typing import Any

import dspy

from harnesses.base import answer_config, chat_step, question_only

MARKER = "USER-HARNESS-HINT: the answer is one of the labels listed below."


class HintedAnswer(dspy.Module):
    """The task's bare prompt with a hint before it: one call, whose exact request becomes
    the teacher's context (the default `final_request` policy)."""

    def __init__(self, task: Any, index: Any = None) -> None:
        super().__init__()
        self.task = task

        def render(inputs: dict[str, Any]) -> list[dict[str, str]]:
            messages = [dict(m) for m in task.student_messages(question_only(inputs["question"]))]
            first_user = next(m for m in messages if m["role"] == "user")
            first_user["content"] = f"{MARKER}\n\n{first_user['content']}"
            return messages

        self.answer = dspy.Predict(chat_step("HintedAnswer", "Answer after a hint.",
                                             ["question"], render), **answer_config(task))

    def forward(self, example: Any) -> dspy.Prediction:
        out = self.answer(question=example.question)
        return dspy.Prediction(completion=out.completion, answer=self.task.parse(out.completion))
