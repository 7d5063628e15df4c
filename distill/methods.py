"""One object per training method: what it runs, what it samples, what it trains on.

`distill.loop.collect` runs the harness where `runs_harness`, samples the student where
`samples` (and `on_policy` says so for the example), then hands each example to the
method's `add_pairs`. The config checks and the run read the same flags, so a new method
is one new class here and one entry in `METHODS`.

- ophsd: the harness's final request is the teacher's context; the student's rollouts
  (a seeded `on_policy_fraction` of the examples) or the harness's own answer path train.
- opsd: the teacher sees the reference answer; every example is sampled.
- ssopd: per prompt, the shortest correct of a group of rollouts is shown to the teacher
  and distilled into the longest wrong one (no reference, no harness).
- sft: the harness's correct final answers are cross-entropy targets.
- gold_sft: the dataset's gold answers are (the sceptic's baseline).
- vote_rl: a policy gradient on the harness's own samples, rewarded for agreeing with the
  harness's answer (test-time RL: no gold answer, no teacher distribution).
- gold_rl: the same policy gradient on the student's own rollouts, rewarded by the gold
  answer (the control: no harness).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from distill import teacher as teacher_ctx
from distill.answer_space import AnswerSpace
from distill.pairs import PairSource, StepInputs, answer_ids, first_line, gold_target_ids
from distill.replay import RecordedContext
from scaffold.chat import render_ids
from scaffold.client import Completion
from scaffold.trace import Trace
from scaffold.types import Example, Item, TaskContract, is_labelled


@dataclass
class Collected:
    """One example of a step after the harness and the student's rollouts ran."""

    example: Item
    student_messages: list[dict]
    student_ids: list[int]
    on_policy: bool  # trains on the student's rollouts (ophsd decides per example)
    trace: Trace | None = None  # the harness's run on it (methods that run the harness)
    harness_answer: str | None = None  # the task's parse of the harness's answer
    # --teacher-contexts: the teacher context an earlier run recorded (no harness ran)
    recorded: RecordedContext | None = None
    rollouts: list[Any] = field(default_factory=list)  # the student's samples


def sample_seed(run_seed: int, step: int, index: int) -> int:
    """A per-request sampling seed: a resumed run draws the same rollouts."""
    return (run_seed * 1_000_003 + step * 10_007 + index) % (2**31 - 1)


def on_policy_example(cfg: Any, step: int, index: int) -> bool:
    """Whether example `index` of `step` trains on the student's rollouts (probability
    `on_policy_fraction`, seeded so a resumed run decides the same) or on the harness's
    own answer (GKD's mix of student-generated and teacher-generated sequences)."""
    if cfg.on_policy_fraction >= 1.0:
        return True
    return random.Random(sample_seed(cfg.seed, step, index)).random() < cfg.on_policy_fraction


class Method:
    """A training method; subclasses set the flags and implement `add_pairs`."""

    name: ClassVar[str]
    runs_harness: ClassVar[bool] = False  # each step runs the harness
    samples: ClassVar[bool] = False  # each step samples the student from the served policy
    reads_answers: ClassVar[bool] = False  # trains on labelled examples (the bank, if scarce)
    has_teacher: ClassVar[bool] = True  # distils a teacher's distribution (else cross-entropy)
    reads_policy: ClassVar[bool] = True  # its steps read the served policy (sync before them)
    min_rollouts: ClassVar[int] = 1  # --rollouts it needs
    # --harness-rollouts: "no" (refused), "optional" or "required"
    harness_rollouts: ClassVar[str] = "no"

    def on_policy(self, cfg: Any, step: int, index: int) -> bool:
        """Whether example `index` of `step` is sampled and trained on its rollouts."""
        return self.samples

    def trains_on_harness_answers(self, cfg: Any) -> bool:
        """Whether the harness's own answers become training targets."""
        return False

    def add_pairs(self, ctx: Any, out: StepInputs, item: Collected) -> None:
        raise NotImplementedError


class OPHSD(Method):
    name = "ophsd"
    runs_harness = samples = True
    harness_rollouts = "optional"

    def on_policy(self, cfg: Any, step: int, index: int) -> bool:
        return on_policy_example(cfg, step, index)

    def trains_on_harness_answers(self, cfg: Any) -> bool:
        return cfg.on_policy_fraction < 1.0

    def add_pairs(self, ctx: Any, out: StepInputs, item: Collected) -> None:
        if item.recorded is not None:  # filtered when read (distill/replay.py)
            _distill(ctx, out, item, teacher_ctx.recorded(item.recorded.teacher_messages,
                                                          item.student_messages),
                     harness_path=False)
            return
        if ctx.cfg.harness_filter != "none" and not harness_right(ctx, item):
            out.counts["harness_filtered"] += 1
            if ctx.cfg.harness_filter == "gold":
                add_target(ctx, out, item.student_ids,
                           gold_target_ids(ctx.tokenizer, ctx.task, item.example),
                           PairSource("gold", item.example.id,
                                      student_messages=item.student_messages))
            return
        tc = teacher_ctx.from_trace(item.trace, item.student_messages, ctx.cfg.teacher_policy,
                                    getattr(ctx.harness, "teacher_call", None))
        _distill(ctx, out, item, tc, harness_path=not item.on_policy)


class OPSD(Method):
    name = "opsd"
    samples = reads_answers = True

    def add_pairs(self, ctx: Any, out: StepInputs, item: Collected) -> None:
        _distill(ctx, out, item, teacher_ctx.with_reference(ctx.task, item.example),
                 harness_path=False)


class SSOPD(Method):
    name = "ssopd"
    samples = reads_answers = True
    min_rollouts = 2  # a group to compare

    def add_pairs(self, ctx: Any, out: StepInputs, item: Collected) -> None:
        """Teacher = the bare prompt plus the group's shortest correct rollout as a worked
        answer; student tokens = the group's longest wrong rollout."""
        tok, task = ctx.tokenizer, ctx.task
        graded = [(task.grade(c.text, item.example) >= 1.0, c) for c in item.rollouts]
        for c in item.rollouts:
            count_rollout(out, task, c)
        n_correct = sum(ok for ok, _ in graded)
        out.counts["student_correct"] += n_correct
        weight = ssopd_weight(n_correct, len(graded))
        if weight <= 0:
            return  # no contrast in this group: counted in rollouts, no pair
        out.counts["ssopd_mixed"] += 1
        correct = min((c for ok, c in graded if ok), key=lambda c: len(c.token_ids))
        wrong = max((c for ok, c in graded if not ok), key=lambda c: len(c.token_ids))
        shown = tok.decode(answer_ids(tok, task, correct)[0], skip_special_tokens=True).strip()
        tc = teacher_ctx.with_worked_answer(item.student_messages, shown)
        ids, logprobs = answer_ids(tok, task, wrong)
        if ids:
            out.add(item.student_ids, render_ids(tok, tc.messages), ids, ctx.cfg.max_len, weight,
                    logprobs, space=_answer_space(ctx),
                    source=PairSource("ssopd", item.example.id, tc.messages,
                                      student_messages=item.student_messages))


class SFT(Method):
    name = "sft"
    runs_harness = reads_answers = True
    has_teacher = False
    harness_rollouts = "optional"

    def trains_on_harness_answers(self, cfg: Any) -> bool:
        return True

    def add_pairs(self, ctx: Any, out: StepInputs, item: Collected) -> None:
        """The harness's final completion, if correct, becomes the target after the bare
        prompt. With `--harness-rollouts`, every sample of the student's own prompt that
        grades correct does instead (rejection-sampling fine-tuning on the policy's own
        solutions), the returned one included."""
        if ctx.cfg.harness_rollouts:
            for comp in item.rollouts:
                count_rollout(out, ctx.task, comp)
                if ctx.task.grade(comp.text, item.example) >= 1.0:
                    out.counts["student_correct"] += 1
                    add_target(ctx, out, item.student_ids, list(comp.token_ids),
                               PairSource("harness_sample", item.example.id, trace=item.trace,
                                          student_messages=item.student_messages))
            return
        if not harness_right(ctx, item):
            return
        trace = item.trace
        final = trace.final_call()
        target = final.completion_token_ids or ctx.tokenizer.encode(
            final.completion, add_special_tokens=False)
        add_target(ctx, out, item.student_ids, list(target),
                   PairSource("harness_answer", item.example.id, trace=trace,
                              student_messages=item.student_messages))


class GoldSFT(Method):
    name = "gold_sft"
    reads_answers = True
    has_teacher = reads_policy = False

    def add_pairs(self, ctx: Any, out: StepInputs, item: Collected) -> None:
        add_target(ctx, out, item.student_ids,
                   gold_target_ids(ctx.tokenizer, ctx.task, item.example),
                   PairSource("gold", item.example.id, student_messages=item.student_messages))


class VoteRL(Method):
    """A sequence-level reward in place of per-token agreement (issue 15, item 2, sixteenth
    attempt). Fifteen per-token distillations of self-consistency's lift left GSM8K greedy
    accuracy inside the interval: a teacher conditioned on the student's working follows
    its numbers on 91-97% of the digit tokens (scripts/transcript_numbers.py), so the
    per-token signal sits on the wording. Here each of the harness's samples of the bare
    prompt (`--harness-rollouts`) is rewarded 1 if its parsed answer is the harness's
    answer (the vote's), else 0, and trains with advantage reward - group mean (TTRL, Zuo
    et al. 2025, with Dr. GRPO's unscaled advantage): the samples that reach the vote's
    answer are pushed up, the others down, whatever their wording. One update per batch on
    the policy that sampled it, so the importance ratio is 1 and nothing is clipped. No gold
    answer is read: the pool of a label-scarce run trains too."""

    name = "vote_rl"
    runs_harness = True
    has_teacher = False
    harness_rollouts = "required"

    def add_pairs(self, ctx: Any, out: StepInputs, item: Collected) -> None:
        task, ex = ctx.task, item.example
        answers = [count_rollout(out, task, comp) for comp in item.rollouts]
        if is_labelled(ex):
            out.counts["student_correct"] += sum(task.grade(c.text, ex) >= 1.0
                                                 for c in item.rollouts)
        if item.harness_answer is None or item.trace is None or \
                teacher_ctx.no_signal_kinds(item.trace):
            out.counts["skipped_fallback"] += 1
            return
        rewards = [float(a is not None and a == item.harness_answer) for a in answers]
        add_advantage_pairs(ctx, out, item, rewards, "harness_sample")


class GoldRL(Method):
    """The same policy gradient with the gold answer as the reward (GRPO with a verifiable
    reward, Dr. GRPO's advantage): the student samples `--rollouts` of the bare prompt
    itself, no harness runs. Not a distillation of any harness: the control that says what
    a sequence-level reward does at this scale when every reward is right (on the GSM8K
    test items a vote of exactly 3 of 8 was right on 10 of 31)."""

    name = "gold_rl"
    samples = reads_answers = True
    has_teacher = False
    min_rollouts = 2  # a group to compare

    def add_pairs(self, ctx: Any, out: StepInputs, item: Collected) -> None:
        task, ex = ctx.task, item.example
        for comp in item.rollouts:
            count_rollout(out, task, comp)
        rewards = [float(task.grade(c.text, ex) >= 1.0) for c in item.rollouts]
        out.counts["student_correct"] += int(sum(rewards))
        add_advantage_pairs(ctx, out, item, rewards, "rollout")


def group_advantages(rewards: list[float]) -> list[float]:
    """Each sample's reward less its group's mean (Dr. GRPO: not divided by the spread, which
    would weigh a near-unanimous group's few dissenters most): all 0 where the group agrees."""
    mean = sum(rewards) / len(rewards) if rewards else 0.0
    return [r - mean for r in rewards]


def add_advantage_pairs(ctx: Any, out: StepInputs, item: Collected, rewards: list[float],
                        kind: str) -> None:
    """Each rollout with a nonzero advantage as a cross-entropy pair after the bare prompt,
    weighted by its advantage: the trainer's weighted token-mean NLL is then the on-policy
    policy gradient (a negative weight pushes the sample down)."""
    source = PairSource(kind, item.example.id, trace=item.trace,
                        student_messages=item.student_messages)
    for comp, advantage in zip(item.rollouts, group_advantages(rewards), strict=True):
        if advantage and comp.token_ids and out.add(
                item.student_ids, item.student_ids, list(comp.token_ids), ctx.cfg.max_len,
                advantage, sft=True, source=source):
            out.counts["rewarded" if advantage > 0 else "penalized"] += 1


METHODS: dict[str, Method] = {m.name: m for m in (OPHSD(), OPSD(), SFT(), GoldSFT(), SSOPD(),
                                                  VoteRL(), GoldRL())}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: one of {', '.join(METHODS)}") from None


# ---------------------------------------------------------------------------- pair builders


def _answer_space(ctx: Any) -> AnswerSpace | None:
    """The run's answer space (the teacher's support on closed-set tasks), if any."""
    return getattr(ctx, "answer_space", None)


def _distill(ctx: Any, out: StepInputs, item: Collected, tc: teacher_ctx.TeacherContext,
             harness_path: bool) -> None:
    """The student's rollouts (and, for `harness_path`, the harness's own answer) scored
    under the teacher context `tc`; a fallback context is weighted or skipped, counted."""
    cfg, tok, task, ex = ctx.cfg, ctx.tokenizer, ctx.task, item.example
    weight = 1.0
    if tc.fallback:
        out.counts["fallback"] += 1
        weight = cfg.fallback_weight
    if tc.messages is None or weight <= 0:
        out.counts["skipped_fallback"] += 1
        return
    teacher_ids = render_ids(tok, tc.messages)
    source = PairSource("rollout", ex.id, tc.messages, item.trace, item.student_messages,
                        item.recorded.harness_text if item.recorded else None)
    for comp in item.rollouts:
        parsed = count_rollout(out, task, comp)
        out.counts["student_agrees_harness"] += parsed is not None and \
            parsed == item.harness_answer
        if is_labelled(ex):
            out.counts["student_correct"] += task.grade(comp.text, ex) >= 1.0
        ids, logprobs = answer_ids(tok, task, comp)
        if ids:
            out.add(item.student_ids, teacher_ids, ids, cfg.max_len, weight, logprobs,
                    space=_answer_space(ctx), source=source)
    if harness_path:
        add_harness_path(ctx, out, item.student_ids, teacher_ids, item.trace, weight,
                         replace(source, kind="harness_path"))


def count_rollout(out: StepInputs, task: TaskContract, comp: Completion) -> str | None:
    """Count one student rollout (its tokens, whether it parses: what the collapse guard
    watches, distill/guard.py; whether it ran into max_new_tokens); returns its parsed
    answer."""
    parsed = task.parse(comp.text)
    out.counts["rollouts"] += 1
    out.counts["rollout_tokens"] += len(comp.token_ids)
    # GSM8K's vote_rl at lr 5e-4 broke into unfinished answers (65 of 200 greedy ones cut)
    # while its rollouts first grew, which the guard's length watch does not flag
    out.counts["rollouts_cut"] += comp.finish_reason == "length"
    out.counts["student_parsed"] += parsed is not None
    return parsed


def harness_right(ctx: Any, item: Collected) -> bool:
    """Whether the harness's final answer grades correct on a labelled example (a failed or
    empty run is wrong): sft's filter, and ophsd's under `--harness-filter gold` (which the
    config allows only where every example carries its answer)."""
    trace = item.trace
    final = trace.final_call() if trace is not None and not trace.error else None
    return final is not None and ctx.task.grade(final.completion, item.example) >= 1.0


def add_harness_path(ctx: Any, out: StepInputs, student_ids: list[int],
                     teacher_ids: list[int], trace: Trace | None, weight: float,
                     source: PairSource) -> None:
    """The harness's final answer (its exact sampled ids, first line) as the response: the
    teacher scores the path it produced itself, the student learns it from the bare prompt.
    Answers that do not parse, or have no recorded ids, are counted skips."""
    final = trace.final_call() if trace is not None else None
    ids = list(final.completion_token_ids or []) if final is not None else []
    if not ids or ctx.task.parse(final.completion) is None:
        out.counts["harness_paths_skipped"] += 1
        return
    if ctx.task.kind != "math":
        ids = first_line(ctx.tokenizer, ids)
    if out.add(student_ids, teacher_ids, ids, ctx.cfg.max_len, weight,
               space=_answer_space(ctx), source=source):
        out.counts["harness_paths"] += 1


def ssopd_weight(correct: int, total: int) -> float:
    """Prompt-level weight 4 p (1 - p), p = fraction of the group graded correct: 1 where
    correct and wrong are evenly mixed, 0 where the group agrees (no contrast, no signal)."""
    p = correct / total if total else 0.0
    return 4.0 * p * (1.0 - p)


def add_target(ctx: Any, out: StepInputs, student_ids: list[int], target: list[int],
               source: PairSource) -> bool:
    """A supervised pair: `target` after the bare prompt (teacher side unused)."""
    if target and out.add(student_ids, student_ids, list(target), ctx.cfg.max_len, sft=True,
                          source=source):
        out.counts["sft_targets"] += 1
        return True
    return False


def add_gold(ctx: Any, out: StepInputs, example: Example) -> bool:
    """A labelled bank example on its gold answer, beside a step's distilled pairs."""
    messages = ctx.task.student_messages(example)
    return add_target(ctx, out, render_ids(ctx.tokenizer, messages),
                      gold_target_ids(ctx.tokenizer, ctx.task, example),
                      PairSource("gold", example.id, student_messages=messages))
