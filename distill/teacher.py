"""Teacher contexts: what the teacher sees before scoring the student's tokens.

- `ophsd` (from a harness trace): `final_request` (default) is the final step's
  (or the step the harness names with a `teacher_call(trace)` method) exact request (the verify prompt with draft, confirmers and challengers; the
  solve prompt with the plan); `transcript` replays every step's request and
  answer as earlier turns, then the final request.
- `opsd`: the bare student prompt plus the task's verified reference (solution,
  or the gold label for classification), before the same answer prefill.

The answer contract: a teacher context must end the way the student prompt
ends (same assistant prefill), or the teacher scores the student's answer in a
place that expects something else; `build_*` check it.

No signal, no step: a fallback trace (empty bank, empty plan, a failed run) or
a context equal to the student's carries no signal; it is marked `fallback`
and the loop skips or down-weights it, and counts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scaffold.chat import Messages
from scaffold.trace import LMCall, Trace
from scaffold.types import TaskContract

POLICIES = ("final_request", "transcript")
# weak_vote: self_consistency's majority below its min_votes (wrong more often than right)
# greedy_agrees: self_consistency's vote equals the policy's greedy answer (nothing to teach)
NO_SIGNAL_FALLBACKS = {"empty_bank", "empty_plan", "weak_vote", "greedy_agrees"}


def no_signal_kinds(trace: Trace) -> set[str]:
    """The fallbacks noted in `trace` after which it teaches nothing (NO_SIGNAL_FALLBACKS)."""
    return {f.get("kind") for f in trace.fallbacks} & NO_SIGNAL_FALLBACKS


@dataclass
class TeacherContext:
    messages: Messages | None  # None: no usable context (failed harness run)
    fallback: bool  # True: no privileged signal (equal to the student's, or a harness fallback)
    reason: str = ""


def _same_ending(student: Messages, teacher: Messages) -> bool:
    s_prefill = student[-1]["content"] if student[-1]["role"] == "assistant" else None
    t_prefill = teacher[-1]["content"] if teacher[-1]["role"] == "assistant" else None
    return s_prefill == t_prefill


def from_trace(trace: Trace, student: Messages, policy: str = "final_request",
               teacher_call: Callable[[Trace], LMCall | None] | None = None) -> TeacherContext:
    """The teacher context of a harness run (`ophsd`). `teacher_call`: the harness's own
    choice of the call whose request the teacher sees (a `teacher_call(trace)` method on the
    harness; self_consistency picks the winning sample's); default the trace's last call."""
    if policy not in POLICIES:
        raise ValueError(f"teacher policy must be one of {POLICIES}, got {policy!r}")
    final = None if trace.error else (teacher_call or Trace.final_call)(trace)
    if trace.error or final is None:
        return TeacherContext(None, True, f"harness failed: {trace.error or 'no LM call'}")
    if policy == "final_request":
        messages = [dict(m) for m in final.messages]
    else:
        messages = []
        # a call the harness built (self_consistency's bare winner with a note) is not in
        # the trace: its request stands alone
        earlier = trace.calls[:trace.calls.index(final)] if final in trace.calls else []
        for call in earlier:
            request = [m for m in call.messages if m["role"] != "system"]
            prefill = request[-1]["content"] if request[-1]["role"] == "assistant" else ""
            turns = request[:-1] if prefill else request
            messages += [*turns, {"role": "assistant", "content": prefill + call.completion}]
        messages += [dict(m) for m in final.messages]
    if not _same_ending(student, messages):
        raise ValueError(
            "answer contract broken: the harness's final request ends with "
            f"{messages[-1]!r} but the student prompt ends with {student[-1]!r}")
    if kinds := no_signal_kinds(trace):
        return TeacherContext(messages, True, ",".join(sorted(kinds)))
    if messages == student:
        return TeacherContext(messages, True, "teacher context equals the student's")
    return TeacherContext(messages, False)


def recorded(teacher: Messages, student: Messages) -> TeacherContext:
    """A teacher context an earlier run trained on (`--teacher-contexts`), checked against
    the answer contract like a fresh one."""
    if not _same_ending(student, teacher):
        raise ValueError(
            "answer contract broken: the recorded teacher context ends with "
            f"{teacher[-1]!r} but the student prompt ends with {student[-1]!r}")
    if teacher == student:
        return TeacherContext(teacher, True, "teacher context equals the student's")
    return TeacherContext([dict(m) for m in teacher], False)


def with_reference(task: TaskContract, example: Any) -> TeacherContext:
    """`opsd`: the student's prompt with the verified reference inserted before the answer."""
    return _with_note(task.student_messages(example), "A verified reference answer (use it, do "
                      "not mention it):", task.reference_text(example))


def with_worked_answer(student: list[dict], answer: str) -> TeacherContext:
    """`ssopd`: the student's prompt with one of its own correct answers shown."""
    return _with_note(student, "A correct answer to this (use it, do not mention it):", answer)


def _with_note(student: list[dict], heading: str, text: str) -> TeacherContext:
    """The student's messages with `heading` and `text` appended to the last user turn (the
    assistant prefill, if any, stays last)."""
    body = student[:-1] if student[-1]["role"] == "assistant" else student
    tail = student[len(body):]
    last = dict(body[-1])
    last["content"] = f"{last['content']}\n\n{heading}\n{text}"
    return TeacherContext([*body[:-1], last, *tail], False)
