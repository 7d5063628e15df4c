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

`precedents` (the `program_precedents` harness) replaces the two fixed examples by the 4
nearest training problems, their GSM8K calculator annotations turned into programs
(`annotated_program`: 7,001 of 7,473 convert). On the same 200 items it did worse:
0.150 [0.100, 0.200], its programs right on 24 (44 with the fixed examples). GSM8K's
annotations hold the arithmetic, not the reasoning, which is in the prose ("3J = 36" gives
`step1 = 36`), and the model copies that style: literals where a program should compute.
Kept to reproduce that row. Four more written examples (`shots=6`, GSM8K training
problems) did not help either: 0.230, programs right on 46; the default stays 2.
"""

from __future__ import annotations

import ast
import math
import operator
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
    # GSM8K training problems, programs written for this prompt (`shots` 3-6)
    ("Betty is saving money for a new wallet which costs $100. Betty has only half of the "
     "money she needs. Her parents decided to give her $15 for that purpose, and her "
     "grandparents twice as much as her parents. How much more money does Betty need to buy "
     "the wallet?",
     "price = 100\nsaved = price / 2\nparents = 15\ngrandparents = 2 * parents\n"
     "# what is still missing after everything she has\n"
     "needed = price - (saved + parents + grandparents)\nprint(needed)"),
    ("Julie is reading a 120-page book. Yesterday, she was able to read 12 pages and today, "
     "she read twice as many pages as yesterday. If she wants to read half of the remaining "
     "pages tomorrow, how many pages should she read?",
     "total_pages = 120\nyesterday = 12\ntoday = 2 * yesterday\n"
     "remaining = total_pages - yesterday - today\ntomorrow = remaining / 2\nprint(tomorrow)"),
    ("Mark has a garden with flowers. He planted plants of three different colors in it. Ten "
     "of them are yellow, and there are 80% more of those in purple. There are only 25% as "
     "many green flowers as there are yellow and purple flowers. How many flowers does Mark "
     "have in his garden?",
     "yellow = 10\n# 80% more than yellow\npurple = yellow + 0.80 * yellow\n"
     "# 25% of yellow and purple together\ngreen = 0.25 * (yellow + purple)\n"
     "total = yellow + purple + green\nprint(total)"),
    ("Ken created a care package to send to his brother. Ken placed a box on a scale, and "
     "then he poured into the box enough jelly beans to bring the weight to 2 pounds. Then, "
     "he added enough brownies to cause the weight to triple. Next, he added another 2 "
     "pounds of jelly beans. And finally, he added enough gummy worms to double the weight "
     "once again. What was the final weight of the box of goodies, in pounds?",
     "weight = 2\nweight = weight * 3  # brownies triple it\n"
     "weight = weight + 2  # more jelly beans\nweight = weight * 2  # gummy worms double it\n"
     "print(weight)"),
)
PROGRAM_INSTRUCTION = ("Write a short Python program that computes the answer to the problem "
                       "and prints only the final number.")
FENCE = "```python\n"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


_CALCULATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
              ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
_LITERAL = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


def annotated_program(annotated: str, final: str) -> str | None:
    """A GSM8K solution as a program: each line with calculator annotations
    ("48/2 = <<48/2=24>>24") becomes a comment (the line without them) and one assignment a
    calculation (``step1 = 48 / 2``), a number that an earlier step computed becomes that
    step's name, and the last step is printed. None when a calculation is not plain
    arithmetic or the program would not print `final` (it is evaluated here, not run)."""
    lines: list[str] = []
    names: dict[str, str] = {}  # a computed value, as written -> the step that computed it
    values: dict[str, float] = {}
    last = None
    for raw in annotated.splitlines():
        calculations = _CALCULATION.findall(raw)
        if not calculations:
            continue
        lines.append(f"# {_CALCULATION.sub('', raw).strip()}")
        for expr, result in calculations:
            expr = _LITERAL.sub(lambda m: names.get(m.group(0), m.group(0)), expr.strip())
            value = _arithmetic(expr, values)
            if value is None:
                return None
            last = f"step{len(values) + 1}"
            values[last] = value
            names.setdefault(result.strip().replace(",", ""), last)
            lines.append(f"{last} = {expr}")
    try:
        if last is None or not math.isclose(values[last], float(final), abs_tol=1e-6):
            return None
    except ValueError:
        return None
    return "\n".join([*lines, f"print({last})"])


def _arithmetic(expr: str, names: dict[str, float]) -> float | None:
    """The value of `expr` if it is numbers, earlier steps and + - * / // % ** only."""
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(ast.dump(node))

    try:
        return float(value(ast.parse(expr, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None


def _shot_block(shots: Any) -> str:
    return "".join(f"Problem: {q}\n{FENCE}{code}\n```\n\n" for q, code in shots)


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
                 shots: int = 2, timeout_s: float = 10.0, index: Any = None,
                 precedents: int = 0):
        super().__init__()
        if task.kind != "math":
            raise ValueError(f"program_solve writes programs for math tasks; {task.name} is "
                             f"a {task.kind} task")
        if n < 1 or not 0 <= shots <= len(SHOTS) or precedents < 0:
            raise ValueError(f"n must be >= 1, shots in 0..{len(SHOTS)}, precedents >= 0")
        if precedents and index is None:
            raise ValueError("precedents need the train split's precedent index")
        self.task, self.n, self.temperature, self.timeout_s = task, n, temperature, timeout_s
        self.index, self.precedents = index, precedents
        self.fixed_shots = _shot_block(SHOTS[:shots])
        self._programs: dict[str, str | None] | None = None  # bank id -> its program

        def render_program(inp: dict) -> list[dict]:
            user = f"{PROGRAM_INSTRUCTION}\n\n{inp['shots']}Problem: {inp['question']}"
            return [{"role": "user", "content": user}, {"role": "assistant", "content": FENCE}]

        def render_solve(inp: dict) -> list[dict]:
            evidence = (f"A Python program written for this problem:\n{FENCE}{inp['program']}"
                        f"\n```\nIt printed: {inp['result']}")
            return task.student_messages(question_only(inp["question"]), evidence=evidence)

        self.write = dspy.Predict(chat_step("Program", "Write a program.", ["shots", "question"],
                                            render_program), stop=["```"])
        answer = answer_config(task)
        self.solve = dspy.Predict(chat_step("Solve", "Solve with the program's result.",
                                            ["question", "program", "result"], render_solve),
                                  **answer)
        self.bare = dspy.Predict(chat_step(
            "BareAnswer", "Solve with no program.", ["question"],
            lambda inp: task.student_messages(question_only(inp["question"]))), **answer)

    def prepare(self, examples: list[Any]) -> None:
        """Embed all questions in one batch before the LM calls (the executor calls this)."""
        if self.precedents:
            self.index.warm([ex.question for ex in examples])

    def shots_for(self, example: Any) -> str:
        """The worked programs shown before the problem: the `precedents` nearest training
        problems whose solutions convert (`annotated_program`), most similar last; else the
        fixed SHOTS."""
        if not self.precedents:
            return self.fixed_shots
        if self._programs is None:
            self._programs = {ex.id: annotated_program(ex.meta.get("annotated", ""), ex.answer)
                              for ex in self.task.load("train")}
        found = self.index.search(example.question, 3 * self.precedents,
                                  exclude_ids=[example.id])
        chosen = [(p.text, self._programs.get(p.id)) for p in found
                  if self._programs.get(p.id)][:self.precedents]
        if not chosen:
            note_fallback("no_precedent_program", "no retrieved precedent has a program: the "
                          "fixed worked examples are shown")
            return self.fixed_shots
        return _shot_block(chosen[::-1])

    def forward(self, example: Any) -> dspy.Prediction:
        lm = dspy.settings.lm
        shots = self.shots_for(example)
        runs: list[tuple[str, str | None]] = []  # (program, its printed number)
        for i in range(self.n):  # distinct rollout ids: distinct samples, never a cache hit
            sampled = dspy.context(lm=lm.copy(temperature=self.temperature, rollout_id=i)) \
                if self.n > 1 else dspy.context()
            with sampled:
                code = program_text(self.write(shots=shots, question=example.question).completion)
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
