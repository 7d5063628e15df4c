"""Teacher contexts an earlier run recorded, trained on again (`--teacher-contexts RUN,...`).

A harness can cost most of a step: GSM8K's filtered vote (9 chains a problem, 40 screened
a step) spent 71 of a run's 82 minutes in the harness to keep 92 problems. Its teacher
contexts are in the run's trained.jsonl, so a later run can train more epochs on them,
with fresh on-policy rollouts of the student every time, and run no harness at all.

What a recorded context is not: the harness's view of the *current* policy. The contexts
were found by the policy of the run that recorded them; with `--teacher frozen` (the base
scores every context) nothing else about the teacher changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from distill.checkpoint import NotARunFolder, read_run, read_trained
from distill.export import privileged_context
from scaffold.chat import Messages
from scaffold.errors import ScaffoldError
from scaffold.types import Item, TaskContract, is_labelled

FLAG = "--teacher-contexts"


@dataclass(frozen=True)
class RecordedContext:
    """One example's teacher context as a run trained on it."""

    example_id: str
    student_messages: Messages
    teacher_messages: Messages
    harness_text: str | None  # the harness's final answer (None: not recorded, not derivable)
    harness_answer: str | None  # the task's parse of it (None: none)
    harness_right: bool  # it grades right against the example's gold (False: no gold)
    origin: str  # "RUN/trained.jsonl step N" (for messages)


@dataclass
class RecordedContexts:
    """The contexts to train on, one per example, and what was left out (every row counted)."""

    by_id: dict[str, RecordedContext] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {
        "rows": 0, "duplicates": 0, "no_signal": 0, "dropped_wrong": 0, "unknown_example": 0})

    def to_record(self) -> dict:
        """What the run folder keeps (RunDir.record_contexts), so that a resume trains on
        these same contexts."""
        return {"counts": self.counts, "contexts": [asdict(c) for c in self.by_id.values()]}

    @classmethod
    def from_record(cls, record: dict) -> RecordedContexts:
        return cls({c["example_id"]: RecordedContext(**c) for c in record["contexts"]},
                   dict(record["counts"]))


def harness_text_of(row: dict, config: dict) -> str | None:
    """The harness's final answer behind a trained row (`harness_completion`, recorded since
    2026-12-05). In an older row of self_consistency showing the whole solution, the text its
    teacher saw beyond the student's: the note and the shown solution, whose last stated
    answer is the vote's. Otherwise None (another harness's extra text is precedents or a
    plan, and `teacher_sees: working` cut the answer out)."""
    if row.get("harness_completion") is not None:
        return row["harness_completion"]
    harness = config.get("harness") or {}
    if config.get("program") == "self_consistency" and \
            harness.get("teacher_sees", "solution") == "solution":
        return privileged_context(row["student_messages"], row["teacher_messages"])
    return None


def read_contexts(runs: Sequence[str], task: TaskContract, train: Sequence[Item],
                  drop_wrong: bool = False) -> RecordedContexts:
    """The first recorded teacher context of each training example in `runs` (the --out
    folders of ophsd runs, read in order), from the rows that scored the student's rollouts
    under a harness's context (kind "rollout") with full weight (a no-signal fallback
    trained under --fallback-weight is left out, counted). `drop_wrong`
    (`--harness-filter drop`) leaves out an example whose harness answer grades wrong
    against its gold answer in `train`, row by row: the first right one is kept (the config
    allows the filter only where every example is labelled).

    Raises ScaffoldError naming the flag and the folder: not an ophsd run, no trained pairs,
    another task, no harness context at all, a harness answer that cannot be graded."""
    out = RecordedContexts()
    train_by_id = {ex.id: ex for ex in train}
    for run in runs:
        try:
            record = read_run(run)
        except NotARunFolder as e:
            raise ScaffoldError(f"{FLAG}: {e}") from None
        if record.config.get("method") != "ophsd":
            raise ScaffoldError(f"{FLAG}: {run} is a {record.config.get('method')} run; its "
                                "teacher contexts are not a harness's: pass the --out folder "
                                "of an ophsd run")
        try:
            rows = read_trained(record)
        except ValueError as e:
            raise ScaffoldError(f"{FLAG}: {e}") from None
        if not rows:
            raise ScaffoldError(f"{FLAG}: {run} recorded no trained pairs (no trained.jsonl): "
                                "pass the --out folder of an ophsd run")
        tasks = {r.get("task") for r in rows}
        if tasks != {task.name}:
            raise ScaffoldError(f"{FLAG}: {run} trained on {', '.join(sorted(map(str, tasks)))}, "
                                f"not {task.name}: pass a run of the same --task")
        found = 0
        for row in rows:
            if row.get("kind") != "rollout" or not row.get("teacher_messages"):
                continue
            found += 1
            out.counts["rows"] += 1
            ex_id = row["example_id"]
            if ex_id in out.by_id:
                out.counts["duplicates"] += 1  # more rollouts of it, or a later run's
                continue
            if ex_id not in train_by_id:
                out.counts["unknown_example"] += 1
                continue
            if row.get("weight", 1.0) < 1.0:
                out.counts["no_signal"] += 1  # a fallback trained at --fallback-weight
                continue
            text = harness_text_of(row, record.config)
            if drop_wrong and text is None:
                raise ScaffoldError(f"{FLAG} with --harness-filter drop: {run} did not record "
                                    "its harness's answers (a run from before 2026-12-05 of "
                                    f"{record.config.get('program')}): drop the filter, or "
                                    "record the contexts again")
            # a pool question (label-scarce) has no answer to grade against: never read one
            right = text is not None and is_labelled(train_by_id[ex_id]) and \
                task.grade(text, train_by_id[ex_id]) >= 1.0
            if drop_wrong and not right:
                # a row, not the example: a later row (run) may have recorded it right
                out.counts["dropped_wrong"] += 1
                continue
            out.by_id[ex_id] = RecordedContext(
                ex_id, row["student_messages"], row["teacher_messages"], text,
                task.parse(text) if text is not None else None, right,
                f"{run}/trained.jsonl step {row.get('step')}")
        if not found:
            raise ScaffoldError(f"{FLAG}: {run} trained no rollout under a harness's teacher "
                                "context (kind 'rollout'): pass the --out folder of an ophsd "
                                "run")
    if not out.by_id:
        raise ScaffoldError(f"{FLAG}: no context is left to train on (rows dropped as "
                            f"wrong: {out.counts['dropped_wrong']}; rows of examples not "
                            f"among this run's training examples: "
                            f"{out.counts['unknown_example']})")
    return out


def check_prompt(rec: RecordedContext, student_messages: Messages) -> None:
    """Refuse a recorded context whose student prompt is not `student_messages`, the one the
    task renders now (the teacher would have read another question form)."""
    if rec.student_messages != student_messages:
        raise ScaffoldError(f"{FLAG}: {rec.origin} recorded {rec.example_id} with another "
                            "student prompt than this task renders now: record the contexts "
                            "again with this version")


def check_prompts(contexts: RecordedContexts, task: TaskContract, train: Sequence[Item]) -> None:
    """`check_prompt` for every example, before any server starts."""
    for ex in train:
        if ex.id in contexts.by_id:
            check_prompt(contexts.by_id[ex.id], task.student_messages(ex))
