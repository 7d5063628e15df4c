"""Evaluate a harness (or the bare prompt) on held-out items of a task.

    result = evaluate(task, "draft_verify", items, lm=client.dspy_lm("trained"), index=bank)
    result.row()   # the table row; result.traces for the JSONL sink
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from evals.metrics import mean_ci
from harnesses import build_harness
from scaffold.executor import run_program
from scaffold.trace import Trace
from scaffold.types import TaskContract

MAX_TOKENS = {"classification": 24, "multilabel": 64, "math": 512}


@dataclass
class EvalResult:
    task: str
    program: str
    model: str
    n: int
    score: float
    ci_low: float
    ci_high: float
    parse_failures: int
    failed: int
    fallbacks: int
    calls_per_example: float
    tokens_per_example: float  # prompt + completion tokens over all calls
    answer_tokens_per_example: float  # completion tokens of the final call
    wall_s: float
    scores: list[float] = field(default_factory=list, repr=False)
    answers: list[Any] = field(default_factory=list, repr=False)
    traces: list[Trace] = field(default_factory=list, repr=False)

    def row(self) -> dict:
        d = asdict(self)
        for k in ("scores", "answers", "traces"):
            d.pop(k)
        return d


def evaluate(task: TaskContract, program_name: str, items: list[Any], *, lm: Any, model_label: str,
             index: Any = None, concurrency: int = 16, harness_options: dict | None = None,
             progress: bool = True) -> EvalResult:
    program = build_harness(program_name, task, index=index, **(harness_options or {}))
    t0 = time.perf_counter()
    results = run_program(program, items, lm=lm, concurrency=concurrency, progress=progress,
                          desc=f"{program_name} on {model_label}")
    wall = time.perf_counter() - t0
    scores, answers = [], []
    parse_failures = failed = fallbacks = calls = tokens = answer_tokens = 0
    for r in results:
        calls += len(r.trace.calls)
        tokens += sum((c.prompt_tokens or 0) + (c.completion_tokens or 0) for c in r.trace.calls)
        final = r.trace.final_call()
        answer_tokens += (final.completion_tokens or 0) if final else 0
        fallbacks += r.trace.answer_fell_back()  # a training screen is not one
        if r.failed:
            failed += 1
            scores.append(0.0)
            answers.append(None)
            continue
        completion = r.prediction.completion or ""
        answer = task.parse(completion)
        parse_failures += answer is None
        answers.append(answer)
        scores.append(float(task.grade(completion, r.example)))
    n = len(results)
    mean, lo, hi = mean_ci(scores)
    return EvalResult(
        task=task.name, program=program_name, model=model_label, n=n, score=mean, ci_low=lo,
        ci_high=hi, parse_failures=parse_failures, failed=failed, fallbacks=fallbacks,
        calls_per_example=calls / max(n, 1), tokens_per_example=tokens / max(n, 1),
        answer_tokens_per_example=answer_tokens / max(n, 1), wall_s=wall, scores=scores,
        answers=answers, traces=[r.trace for r in results])
