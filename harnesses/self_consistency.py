"""self_consistency: sample several solver runs and keep the majority answer.

Written as the README's example of composing a harness from existing parts. The solver
is plan_solve by default; `solver="none"` samples the bare prompt itself (the classic
self-consistency over chains of thought), the one harness that lifts Qwen2.5-Coder-0.5B
on GSM8K: 200 test items, 8 samples at T = 0.7, 0.345 [0.280, 0.410] against 0.235 bare
greedy on the same items, paired difference +0.110 [+0.060, +0.165] (26 items won, 4
lost). One sample at T = 0.7 scores 0.199 on average and at least one of the 8 is right
on 0.52; the vote of the first k samples climbs 0.215, 0.250 (k = 3), 0.290 (5), 0.345
(8) (docs/notes/gsm8k.md).

The samples run in parallel threads (one example's n requests in flight together): a
training step has only its batch of examples to keep the server busy.

For training, `min_votes` marks a vote too weak to teach (a "weak_vote" fallback, which
the loop skips and counts); the answer is the majority either way. On the 200 test items
the vote was right on 0.345 of all items, 0.543 where at least 3 of 8 samples agreed
(94 items), and 0.796 where at least 4 did (49 items). With solver "none" the samples
are the served policy's own on the student's prompt: `student_samples` hands them to
the loop as the student's rollouts (`--harness-rollouts`); give it a `seed` there, so that
a resumed step draws the same samples (sample i asks the server for seed + i).

`teacher_sees="working"` shows the teacher the winning solution without its final answer
sentence (issue 15, item 2, tenth attempt): every teacher shown a stated answer pulled
the student towards stating it at once ("The answer is N.", docs/notes/gsm8k.md), so this
teacher has the working to follow and no sentence to copy. Measured once
(configs/gsm8k_vote_working.yaml): no collapse and no lift, 0.220 against the base's 0.235
on 200 items, paired -0.015 [-0.060, +0.030]; the whole solution shown, same levers, gave
+0.015 [-0.025, +0.055]. That run cut with a first version of `without_final_answer`,
which on 4 of its 48 winning solutions left part of the statement (a display's opener, a
"The answer is:" line, once the boxed answer); such solutions are now cut clean, and one
with no final statement (a truncated one) is skipped.

`skip_when_greedy_agrees` also asks the policy for its greedy answer and marks a vote
that equals it as a "greedy_agrees" fallback (issue 15, item 2, eleventh attempt): a
teacher that confirms what the student already answers has nothing to teach. On the 200
test items (the base's vote against its greedy run) the vote differed from greedy on 150,
right on 26 of them, and greedy was right on 11, the rest both wrong: noise. With
`min_votes=3` as well, 38 items remain, the vote right on 17 and greedy on 5; so a step
that keeps about one problem in five trains on three times as many problems where the
vote fixes greedy as a run over every problem trains on in a fifth of the screened
problems (about 41 against 12 for 480 screened against 96 trained), and on fewer where
both are wrong (about 38 against 54). No gold answer is read: both answers are the
policy's own. A greedy answer that does not parse, or a greedy call that fails (a
"greedy_failed" fallback, which still teaches), never agrees. The extra call costs one
greedy chain beside the n samples. Measured (`configs/gsm8k_vote_disagree.yaml`, 12 steps
of 40 screened): 92 of 480 kept, the vote right on 42 of them; the trained model 0.260
against 0.230 on the 200 test items, paired +0.030 [-0.025, +0.085], the best of eleven
attempts and inside the interval.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import dspy

from harnesses.base import Bare
from harnesses.plan_solve import PlanSolve
from scaffold.trace import LMCall, Trace, note_fallback, submit
from scaffold.types import TaskContract

SOLVERS = ("plan_solve", "none")
TEACHER_SEES = ("solution", "working")
_ANSWER_STATEMENT = re.compile(r"\bthe (final )?answer is\b|\\boxed", re.IGNORECASE)
_CLOSING_ONLY = re.compile(r"[\s\\\]\)\$\.]*")  # what may follow the statement's line
_DISPLAY_OPENERS = ("\\[", "$$", "")  # a blank line between them too


class SelfConsistency(dspy.Module):
    name = "self_consistency"

    def __init__(self, task: TaskContract, n: int = 5, temperature: float = 0.7,
                 solver: str = "plan_solve", min_votes: int = 1, seed: int | None = None,
                 teacher_sees: str = "solution", skip_when_greedy_agrees: bool = False,
                 **plan_solve: Any):
        super().__init__()
        if not 1 <= min_votes <= n:
            raise ValueError(f"self_consistency min_votes must be between 1 and n = {n}, "
                             f"got {min_votes}")
        if solver not in SOLVERS:
            raise ValueError(f"self_consistency solver must be 'plan_solve' or 'none', got {solver!r}")
        if teacher_sees not in TEACHER_SEES:
            raise ValueError(f"self_consistency teacher_sees must be 'solution' or 'working', "
                             f"got {teacher_sees!r}")
        if teacher_sees == "working" and solver != "none":
            raise ValueError("self_consistency teacher_sees='working' needs solver='none' (the "
                             "teacher of plan_solve's samples sees the winning plan)")
        if solver == "none" and plan_solve:
            raise ValueError(f"self_consistency with solver='none' takes no plan_solve options: "
                             f"{', '.join(plan_solve)}")
        self.task, self.n, self.temperature, self.solver_name = task, n, temperature, solver
        self.min_votes, self.seed, self.teacher_sees = min_votes, seed, teacher_sees
        self.solver = PlanSolve(task, **plan_solve) if solver == "plan_solve" else Bare(task)
        # its own module: its calls are the "greedy." steps, apart from the samples
        self.greedy = Bare(task) if skip_when_greedy_agrees else None

    def forward(self, example: Any) -> dspy.Prediction:
        lm = dspy.settings.lm

        def sample(i: int) -> dspy.Prediction:  # distinct rollout ids: distinct samples
            seeded = {} if self.seed is None else {"seed": self.seed + i}  # a resumed step draws the same
            with dspy.context(lm=lm.copy(temperature=self.temperature, rollout_id=i, **seeded)):
                return self.solver(example=example)

        def greedy_run() -> dspy.Prediction:
            with dspy.context(lm=lm.copy(temperature=0.0)):
                return self.greedy(example=example)

        with ThreadPoolExecutor(max_workers=self.n + 1) as pool:
            greedy = None if self.greedy is None else submit(pool, greedy_run)
            futures = [submit(pool, sample, i) for i in range(self.n)]
            runs = [f.result() for f in futures]  # in sample order, whatever finished first
            greedy_answer = None if greedy is None else _answer_or_none(greedy)
        votes = Counter(r.answer for r in runs if r.answer is not None)
        best, agreeing = votes.most_common(1)[0] if votes else (None, 0)
        if agreeing < self.min_votes:
            note_fallback("weak_vote", f"{agreeing} of {self.n} samples agree", screening=True,
                          agreeing=agreeing, min_votes=self.min_votes)
        if greedy is not None and best is not None and best == greedy_answer:
            note_fallback("greedy_agrees", "the vote's answer is the greedy answer",
                          screening=True, answer=best)
        winner = next((r for r in runs if r.answer == best), runs[-1])
        return dspy.Prediction(completion=winner.completion, answer=best, votes=dict(votes))

    def teacher_call(self, trace: Trace) -> LMCall | None:
        """The teacher sees the request of the sample that won the vote, not the last
        sample's: the first solve call whose completion is the returned one.

        With plan_solve that request holds the winning plan. A bare sample's request is the
        student's own prompt, which teaches nothing, so with `solver="none"` the teacher
        sees that prompt with the winning solution and its vote count appended to the
        question (the answer prefill, if any, stays last): what the harness found, in the
        student's own answer format. With `teacher_sees="working"` the solution loses its
        final answer sentence; a solution that is nothing but that sentence, or has none
        at its end, leaves the student's own request, which the loop skips as a fallback
        (no signal)."""
        chosen = trace.outputs.get("completion")
        solves = vote_samples(trace)
        call = next((c for c in solves if c.completion == chosen), trace.final_call())
        if self.solver_name == "plan_solve" or call is None or not chosen:
            return call
        answers = [self.task.parse(c.completion) for c in solves]
        agreeing = answers.count(self.task.parse(chosen))
        shown, what = (chosen, "One of them") if self.teacher_sees == "solution" else \
            (without_final_answer(chosen), "The working of one of them, without its final "
             "answer sentence")
        if not shown:
            return call
        note = (f"{agreeing} of {len(solves)} sampled solutions reached the same final "
                f"answer. {what} (use it, do not mention it):\n{shown}")
        return dataclasses.replace(call, messages=_append_to_question(call.messages, note))

    def student_samples(self, trace: Trace) -> list[LMCall]:
        """The calls that sampled the student's own prompt: every sample, with solver "none".
        plan_solve's samples answer a plan's prompt: a ValueError says so."""
        if self.solver_name != "none":
            raise ValueError("self_consistency samples the student's prompt only with solver "
                             "'none' (plan_solve's samples answer a plan's prompt)")
        return vote_samples(trace)


def _answer_or_none(greedy: Future) -> str | None:
    """The greedy run's answer; a failed call is noted, and the vote is taught (the greedy
    check only ever removes signal, so without it nothing is removed)."""
    try:
        return greedy.result().answer
    except Exception as err:  # the samples' errors still fail the example
        note_fallback("greedy_failed", f"the greedy call failed: {err}", screening=True)
        return None


def vote_samples(trace: Trace) -> list[LMCall]:
    """The solve (or bare) calls of the n samples, what the vote counts (evals.paired's vote
    curve too): not plan_solve's plans, not the greedy call of `skip_when_greedy_agrees`."""
    return [c for c in trace.calls
            if not c.step.endswith("plan") and not c.step.startswith("greedy.")]


def without_final_answer(solution: str) -> str:
    """`solution` cut before the sentence that states its final answer, or "" where it has
    no such sentence at its end (the caller then teaches nothing from it).

    The statement is the first "the answer is" or "\\boxed" on the last line that has one,
    and only text that closes it (display brackets, "$", ")", ".") may follow that line:
    an answer stated first and explained after, or working after a mid-text "\\boxed",
    is not a final answer sentence. The cut goes back over lines that open a display
    ("\\[", "$$") and a line ending in ":" that introduces it ("So the answer is:"); where
    the statement shares its line with working, only its sentence goes ("2+3=5. The
    answer is 5." keeps "2+3=5."). Sentences end at ". " and nowhere else."""
    text = solution.rstrip()
    found = list(_ANSWER_STATEMENT.finditer(text))
    if not found:
        return ""
    line_start = text.rfind("\n", 0, found[-1].start()) + 1
    line_end = text.find("\n", found[-1].end())
    if line_end >= 0 and not _CLOSING_ONLY.fullmatch(text[line_end:]):
        return ""
    statement = next(m for m in found if m.start() >= line_start).start()  # "the answer is \\boxed{5}"
    while line_start > 0:  # the display's opener, then the line that introduces it
        previous = text.rfind("\n", 0, line_start - 1) + 1
        line = text[previous:line_start].strip()
        if line in _DISPLAY_OPENERS:
            line_start = statement = previous
        elif line.endswith(":"):
            line_start, statement = previous, line_start - 1
            break
        else:
            break
    sentence_end = text.rfind(". ", line_start, statement)
    cut = sentence_end + 1 if sentence_end >= 0 else line_start
    return text[:cut].rstrip()


def _append_to_question(messages: list[dict], note: str) -> list[dict]:
    """`messages` with `note` after the last user turn's text; an assistant prefill stays last."""
    body = messages[:-1] if messages[-1]["role"] == "assistant" else messages
    last = dict(body[-1])
    last["content"] = f"{last['content']}\n\n{note}"
    return [*(dict(m) for m in body[:-1]), last, *(dict(m) for m in messages[len(body):])]
