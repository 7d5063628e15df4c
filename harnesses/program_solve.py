"""program_solve: the model writes a short Python program, a sandbox runs it, and the final
step solves the problem in the task's own answer format with the program and what it
printed in view (program-of-thought with execution, for math tasks).

Steps:

1. `Program` (n times, at `temperature` when n > 1): a few worked examples, then the
   problem; the answer is prefilled with a code fence and stops at the closing one.
2. Each program runs in `scaffold.sandbox.run_python` (no network, no writes outside its
   temporary folder, CPU, memory and wall-clock limits). The last number it printed is its
   result; results are voted on, and the first program with the winning result is kept.
3. `Solve`: the task's bare prompt with that program and its result as evidence, so the
   teacher context is the student's prompt plus what the harness found, and the completion
   is a worked solution in the student's answer format (what the evaluation grades and
   what distillation trains on). No program ran to a number: the bare prompt (a counted
   fallback, `program_failed`).

Why a fixed few-shot form: a first probe on 150 GSM8K test items (Qwen2.5-Coder-0.5B,
greedy) scored 0.20 with a zero-shot "write a program that prints the answer" prompt,
below the plain step-by-step answer's 0.28; the prompt form decides. In this form, on 200
test items (bf16): 0.265 [0.205, 0.325] at n = 1 and 0.230 at n = 8, against 0.230 bare; the
n = 8 vote alone is right on 0.265, and some program is right on 0.41 (docs/notes/gsm8k.md).
A lift inside the interval: no harness tried lifts this model on GSM8K.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import dspy

from harnesses.base import answer_config, chat_step, question_only
from scaffold.sandbox import run_python
from scaffold.trace import note_fallback
from scaffold.types import TaskContract

# Two worked examples in the GSM8K style, written for this prompt (not taken from a test set).
SHOTS = (
    ("A baker makes 24 muffins in the morning and 3 times as many in the afternoon. He sells "
     "50 muffins. How many muffins are left?",
     "morning = 24\nafternoon = 3 * morning\nsold = 50\nleft = morning + afternoon - sold\n"
     "print(left)"),
    ("Mia earns $12 an hour and works 5 hours a day for 4 days. She spends half of what she "
     "earns on rent. How many dollars does she keep?",
     "earned = 12 * 5 * 4\nkept = earned - earned / 2\nprint(kept)"),
)
PROGRAM_INSTRUCTION = ("Write a short Python program that computes the answer to the problem "
                       "and prints only the final number.")
FENCE = "```python\n"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def program_text(completion: str) -> str:
    """The program of a `Program` completion (the prefill opened the fence; a closing fence
    and anything after it are dropped)."""
    return completion.split("```", 1)[0].strip("\n")


def printed_number(stdout: str) -> str | None:
    """The last number a program printed, normalized ("12.0" -> "12", "1,200" -> "1200")."""
    found = _NUMBER.findall(stdout)
    if not found:
        return None
    text = found[-1].replace(",", "")
    if "." in text:
        text = text.rstrip("0").rstrip(".") or "0"
    return text


class ProgramSolve(dspy.Module):
    name = "program_solve"

    def __init__(self, task: TaskContract, n: int = 1, temperature: float = 0.7,
                 shots: int = len(SHOTS), timeout_s: float = 10.0):
        super().__init__()
        if task.kind != "math":
            raise ValueError(f"program_solve writes programs for math tasks; {task.name} is "
                             f"a {task.kind} task")
        if n < 1 or not 0 <= shots <= len(SHOTS):
            raise ValueError(f"n must be >= 1 and shots in 0..{len(SHOTS)}")
        self.task, self.n, self.temperature, self.timeout_s = task, n, temperature, timeout_s
        examples = "".join(f"Problem: {q}\n{FENCE}{code}\n```\n\n" for q, code in SHOTS[:shots])

        def render_program(inp: dict) -> list[dict]:
            user = f"{PROGRAM_INSTRUCTION}\n\n{examples}Problem: {inp['question']}"
            return [{"role": "user", "content": user}, {"role": "assistant", "content": FENCE}]

        def render_solve(inp: dict) -> list[dict]:
            evidence = (f"A Python program written for this problem:\n{FENCE}{inp['program']}"
                        f"\n```\nIt printed: {inp['result']}")
            return task.student_messages(question_only(inp["question"]), evidence=evidence)

        self.write = dspy.Predict(chat_step("Program", "Write a program.", ["question"],
                                            render_program), stop=["```"])
        answer = answer_config(task)
        self.solve = dspy.Predict(chat_step("Solve", "Solve with the program's result.",
                                            ["question", "program", "result"], render_solve),
                                  **answer)
        self.bare = dspy.Predict(chat_step(
            "BareAnswer", "Solve with no program.", ["question"],
            lambda inp: task.student_messages(question_only(inp["question"]))), **answer)

    def forward(self, example: Any) -> dspy.Prediction:
        lm = dspy.settings.lm
        runs: list[tuple[str, str | None]] = []  # (program, its printed number)
        for i in range(self.n):  # distinct rollout ids: distinct samples, never a cache hit
            sampled = dspy.context(lm=lm.copy(temperature=self.temperature, rollout_id=i)) \
                if self.n > 1 else dspy.context()
            with sampled:
                code = program_text(self.write(question=example.question).completion)
            result = run_python(code, timeout_s=self.timeout_s) if code.strip() else None
            runs.append((code, printed_number(result.stdout) if result and result.ok else None))
        votes = Counter(value for _, value in runs if value is not None)
        if not votes:
            note_fallback("program_failed", f"none of {self.n} program(s) printed a number: "
                          "solving with the bare prompt")
            out = self.bare(question=example.question)
            return dspy.Prediction(completion=out.completion,
                                   answer=self.task.parse(out.completion), program=None,
                                   result=None, votes={})
        result = votes.most_common(1)[0][0]
        program = next(code for code, value in runs if value == result)
        out = self.solve(question=example.question, program=program, result=result)
        return dspy.Prediction(completion=out.completion, answer=self.task.parse(out.completion),
                               program=program, result=result, votes=dict(votes))
