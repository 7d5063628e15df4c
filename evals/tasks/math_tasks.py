"""Math word problems graded by math-verify: GSM8K, MATH-500 and user JSONL files.

Answer contract: reason freely, then end with "The answer is \\boxed{X}." (no
prefill). `parse` takes the last \\boxed{...}; when there is none it falls back
to the last number in the completion and counts that in
`task.parse_counts["number"]` (also "boxed" and "none"; `parse` calls only), so a run can report
how often the format was actually followed. Set `allow_number_fallback =
False` for strict format grading.

MATH-500 has only a test split: `load("train")` raises SplitUnavailableError
(check `task.splits` first); an empty list would let a trainer silently train
on nothing.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from evals.tasks.base import Example, Task, strip_text
from evals.tasks.hub import load_hub_rows
from evals.tasks.readers import BadRows, Row, RowProblem, read_rows, records_to_rows

_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's "<<48/2=24>>" annotations
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}, or "\\boxed 5"); None if absent,
    empty or unbalanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    j = i
    while j < len(text) and text[j] == " ":
        j += 1
    if j < len(text) and text[j] == "{":
        depth = 0
        for k in range(j, len(text)):
            depth += {"{": 1, "}": -1}.get(text[k], 0)
            if depth == 0:
                return text[j + 1 : k].strip() or None
        return None
    if j > i:  # "\boxed 5"
        token = re.match(r"[^\s$]+", text[j:])
        return token.group(0) if token else None
    return None


def last_number(text: str) -> str | None:
    """The last number in `text`, thousands separators removed ("1,080." -> "1080")."""
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    return numbers[-1].rstrip(",").replace(",", "")


def answers_match(gold: str, pred: str) -> bool:
    """math-verify equivalence of two final-answer strings (gold first: verify is asymmetric).
    Its signal-based timeouts work only in the main thread, so other threads run without."""
    from math_verify import parse, verify  # lazy: pulls in sympy

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return " ".join(gold.split()) == " ".join(pred.split())
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


class MathTask(Task):
    """Prompt, parser and grader shared by the math tasks."""

    kind = "math"
    answer_prefix = ""
    allow_number_fallback = True

    def __init__(self) -> None:
        super().__init__()
        self.parse_counts: Counter[str] = Counter()  # "boxed" | "number" | "none"

    def format_instruction(self) -> str:
        return 'End your response with "The answer is \\boxed{X}." where X is the final answer.'

    def student_messages(self, ex: Example, evidence: str | None = None) -> list[dict]:
        block = f"{evidence}\n\n" if evidence else ""
        user = f"{block}{ex.question}\n\nSolve the problem step by step. {self.format_instruction()}"
        return self._with_prefill(user)

    def extract(self, completion: str) -> tuple[str | None, str]:
        """(answer, how): how is "boxed", "number" (fallback) or "none"."""
        boxed = last_boxed(completion)
        if boxed is not None:
            return boxed, "boxed"
        number = last_number(completion) if self.allow_number_fallback else None
        return (number, "number") if number is not None else (None, "none")

    def parse(self, completion: str) -> str | None:
        answer, how = self.extract(completion)
        self.parse_counts[how] += 1
        return answer

    def grade(self, completion: str, ex: Example) -> float:
        """1.0 when the extracted answer is math-verify equal to the gold (not counted in
        `parse_counts`: callers that parse then grade would count twice)."""
        pred, _ = self.extract(completion)
        return float(pred is not None and answers_match(ex.answer, pred))

    def reference_text(self, ex: Example) -> str:
        final = f"The answer is \\boxed{{{ex.answer}}}."
        return f"{ex.solution}\n\n{final}" if ex.solution else final

    def _example(
        self, row: Row, split: str, question: str, answer: str, solution: str | None, **meta
    ) -> Example:
        meta = {"source": row.source, "line": row.line, **meta}
        return Example(self._make_id(split, row.index), question, answer, solution, meta)


def split_gsm8k_answer(raw: str) -> tuple[str, str]:
    """GSM8K "steps ... #### 1,080" -> (steps without <<...>> annotations, "1080")."""
    if "####" not in raw:
        raise RowProblem("answer has no '#### <final answer>' line")
    steps, final = raw.rsplit("####", 1)
    final = final.strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", final):
        final = final.replace(",", "")
    if not final:
        raise RowProblem("empty final answer after '####'")
    return _CALCULATOR.sub("", steps).strip(), final


class GSM8KTask(MathTask):
    """GSM8K: {question, answer} JSONL; gold = the text after "####" (thousands commas
    dropped), solution = the text before it without calculator annotations."""

    name = "gsm8k"
    hub = ("openai/gsm8k", "main")

    def __init__(self, root: Path | None) -> None:
        super().__init__()
        self.root = root

    def _rows(self, split: str, bad: BadRows) -> Iterable[Row]:
        if self.root is None:
            return records_to_rows(load_hub_rows(*self.hub, split), f"hub {self.hub[0]} {split}")
        return read_rows(self.root / "gsm8k" / f"{split}.jsonl", f"gsm8k {split}.jsonl", bad)

    def _to_example(self, row: Row, split: str) -> Example:
        question = strip_text(row.data.get("question"), "question")
        raw = strip_text(row.data.get("answer"), "answer")
        solution, answer = split_gsm8k_answer(raw)
        # the steps with their calculator annotations (<<48/2=24>>): program_solve's
        # precedents are built from them (harnesses/program_solve.py)
        return self._example(row, split, question, answer, solution or None,
                             annotated=raw.rsplit("####", 1)[0].strip())


class Math500Task(MathTask):
    """MATH-500: test.jsonl {problem, solution, answer, subject, level, unique_id}; test only."""

    name = "math500"
    splits = ("test",)
    hub = ("HuggingFaceH4/MATH-500", None)

    def __init__(self, root: Path | None) -> None:
        super().__init__()
        self.root = root

    def _rows(self, split: str, bad: BadRows) -> Iterable[Row]:
        if self.root is None:
            return records_to_rows(load_hub_rows(*self.hub, split), f"hub {self.hub[0]} {split}")
        return read_rows(self.root / "math500" / "test.jsonl", "math500 test.jsonl", bad)

    def _to_example(self, row: Row, split: str) -> Example:
        data = row.data
        question = strip_text(data.get("problem"), "problem")
        answer = strip_text(data.get("answer"), "answer")
        solution = strip_text(data.get("solution"), "solution")
        extra = {k: data[k] for k in ("subject", "level", "unique_id") if k in data}
        return self._example(row, split, question, answer, solution, **extra)


class UserMathTask(MathTask):
    """Math on the user's files (paths relative to the CWD).

    Spec: "math:TRAIN,TEST[?question=F&answer=F&solution=F]". JSONL (or CSV / JSON list)
    rows with a question ("problem" is accepted too), a final answer and an optional
    solution. A GSM8K-style answer ("steps #### 72") is split into solution and answer.
    """

    id_prefix = "math"

    def __init__(
        self,
        train: str,
        test: str,
        question_field: str | None = None,
        answer_field: str = "answer",
        solution_field: str = "solution",
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.paths = {"train": train, "test": test}
        self.resolved = {split: Path(p).expanduser().resolve() for split, p in self.paths.items()}
        self.question_field = question_field
        self.answer_field = answer_field
        self.solution_field = solution_field
        self.name = name or f"math:{train},{test}"

    def _rows(self, split: str, bad: BadRows) -> Iterable[Row]:
        return read_rows(self.resolved[split], self.paths[split], bad)

    def _to_example(self, row: Row, split: str) -> Example:
        data = row.data
        q_field = self.question_field or (
            "problem" if "question" not in data and "problem" in data else "question"
        )
        question = strip_text(data.get(q_field), q_field)
        answer = strip_text(data.get(self.answer_field), self.answer_field)
        solution = None
        if data.get(self.solution_field) not in (None, ""):
            solution = strip_text(data.get(self.solution_field), self.solution_field)
        if "####" in answer:
            steps, answer = split_gsm8k_answer(answer)
            solution = solution or steps or None
        return self._example(row, split, question, answer, solution)
