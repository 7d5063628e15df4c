"""Transcripts: a few training examples of every step, as a reader needs them.

A run that collapses (both GSM8K runs did) must be readable after the fact: what the
student was asked, what the teacher saw, what the harness did to get there, and, token
by token, how far the student was from the teacher. `rows` turns one step's pairs and the
trainer's token reports (distill.token_report) into JSON rows; `RunDir.log_transcripts`
appends them to ``transcripts.jsonl`` (cut back with the metrics on resume);
`python -m distill.view RUN` renders them.

Bounded: `pick` keeps at most `per_step` pairs a step (one of each kind first), and every
text is cut at `TEXT_LIMIT` characters, with the count of what was cut.
"""

from __future__ import annotations

from typing import Any

from distill.pairs import StepInputs
from distill.token_report import TokenReport

TEXT_LIMIT = 6000  # characters: a 77-label BANKING77 prompt is about 2,600


def pick(inputs: StepInputs, per_step: int) -> list[int]:
    """Up to `per_step` pair indices: the first pair of each kind (rollout, harness_path,
    gold, ...) in the order they appear, then the next pairs in order."""
    if per_step <= 0:
        return []
    chosen: list[int] = []
    seen: set[str] = set()
    for i, source in enumerate(inputs.sources):
        if source.kind not in seen:
            seen.add(source.kind)
            chosen.append(i)
    rest = [i for i in range(len(inputs.pairs)) if i not in chosen]
    return sorted((chosen + rest)[:per_step])


def clip_text(text: str, limit: int = TEXT_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def _messages(messages: list[dict] | None) -> list[dict] | None:
    if messages is None:
        return None
    return [{"role": str(m.get("role", "")), "content": clip_text(str(m.get("content", "")))}
            for m in messages]


def _top(tokenizer: Any, top: list[list[tuple[int, float]]] | None, t: int) -> list | None:
    if top is None:
        return None
    return [[tokenizer.decode([i]), round(p, 4)] for i, p in top[t]]


def rows(step: int, inputs: StepInputs, reports: dict[int, TokenReport],
         tokenizer: Any) -> list[dict]:
    """One JSON row per reported pair of loop step `step` (1-based)."""
    out = []
    for i in sorted(reports):
        pair, source, report = inputs.pairs[i], inputs.sources[i], reports[i]
        trace = source.trace
        tokens = [{
            "id": token_id,
            "text": tokenizer.decode([token_id]),
            "loss": round(report.loss[t], 5),
            "kl": None if report.kl is None else round(report.kl[t], 5),
            "student_top": _top(tokenizer, report.student_top, t),
            "teacher_top": _top(tokenizer, report.teacher_top, t),
        } for t, token_id in enumerate(report.ids)]
        out.append({
            "step": step,
            "pair": i,
            "kind": source.kind,
            "example_id": source.example_id,
            "weight": inputs.weights[i],
            "student_prompt": clip_text(tokenizer.decode(
                pair.student_ids[:pair.student_prompt_len])),
            "teacher_messages": _messages(source.teacher_messages),
            "trace": None if trace is None else {
                "program": trace.program,
                "error": trace.error,
                "calls": [{"step": c.step, "messages": _messages(c.messages),
                           "completion": clip_text(c.completion)} for c in trace.calls],
            },
            "response": tokenizer.decode(report.ids),
            "tokens": tokens,
        })
    return out
