"""One on-policy step: student rollouts -> harness -> teacher contexts -> splice -> update.

The student samples from the *served* policy (base + current adapter) on the
bare prompt; the harness runs on the same examples against the same policy;
the teacher context comes from its trace (ophsd) or from the reference
(opsd); the trainer scores the student's exact sampled ids under both
contexts. `sft` instead trains on the harness's own correct final answers,
`gold_sft` on the dataset's gold answers (the sceptic's baseline), and `ssopd`
distils, per prompt, the shortest correct of a group of rollouts into the
longest wrong one (no reference, no harness).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from distill import teacher as teacher_ctx
from distill.answer_space import AnswerSpace
from distill.splicing import ContextTooLong, SplicedPair, splice
from scaffold.chat import render_ids
from scaffold.executor import run_program
from scaffold.types import Example, Item, is_labelled

HARNESS_METHODS = ("ophsd", "sft")  # the methods that run the harness each step


@dataclass
class StepInputs:
    pairs: list[SplicedPair] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    sampling_logprobs: list[list[float]] = field(default_factory=list)
    supports: list[list[list[int]] | None] = field(default_factory=list)
    # per pair: the teacher's log-probabilities on its support, scored by the vLLM server
    # (None: the trainer runs the teacher forward itself)
    teacher_logprobs: list[list[list[float]] | None] = field(default_factory=list)
    teacher_ids: list[list[int]] = field(default_factory=list)  # per pair: its teacher prompt
    sft: list[bool] = field(default_factory=list)  # per pair: cross-entropy on a gold target
    counts: dict = field(default_factory=lambda: {
        "examples": 0, "rollouts": 0, "fallback": 0, "skipped_fallback": 0,
        "skipped_too_long": 0, "harness_failed": 0, "harness_correct": 0,
        "student_correct": 0, "student_parsed": 0, "sft_targets": 0, "ssopd_mixed": 0,
        "harness_paths": 0, "harness_paths_skipped": 0, "off_answer_space": 0,
        "answer_space_cut_tokens": 0, "unlabelled": 0, "student_agrees_harness": 0,
        "gold_targets": 0, "teacher_scored_positions": 0, "teacher_requests": 0})
    times: dict = field(default_factory=dict)

    def add(self, student_ids: list[int], teacher_ids: list[int], response: list[int],
            max_len: int, weight: float = 1.0, logprobs: list[float] | None = None,
            space: AnswerSpace | None = None, sft: bool = False) -> bool:
        """Splice and keep one pair; a context over `max_len` is a counted skip, never cut.
        With an answer `space` the teacher is restricted to it, and a response that leaves
        it is cut after its first token off it (counted; see distill.answer_space)."""
        support = None
        if space is not None:
            kept, support = space.supports(response)
            if kept < len(response):
                self.counts["off_answer_space"] += 1
                self.counts["answer_space_cut_tokens"] += len(response) - kept
                response = response[:kept]
                logprobs = None if logprobs is None else logprobs[:kept]
        try:
            pair = splice(student_ids, teacher_ids, response, max_len=max_len)
        except ContextTooLong:
            self.counts["skipped_too_long"] += 1
            return False
        self.pairs.append(pair)
        self.weights.append(weight)
        self.sampling_logprobs.append(list(logprobs) if logprobs is not None else [])
        self.supports.append(support)
        self.teacher_logprobs.append(None)
        self.teacher_ids.append(list(teacher_ids))
        self.sft.append(sft)
        return True


def sample_seed(run_seed: int, step: int, index: int) -> int:
    """A per-request sampling seed: a resumed run draws the same rollouts."""
    return (run_seed * 1_000_003 + step * 10_007 + index) % (2**31 - 1)


def collect(ctx: Any, step: int, examples: list[Item], gold: Sequence[Example] = ()) -> StepInputs:
    """Build the training pairs of one step. `ctx` is the run (see distill.run.Run).

    `examples` are the step's items: labelled `Example`s, or unlabelled pool `Question`s,
    whose answers are never read (they have none). `gold` are labelled bank examples that
    train beside them on their gold answers (cross-entropy: a teacher certain of the label).
    """
    cfg, task, tok = ctx.cfg, ctx.task, ctx.tokenizer
    out = StepInputs()
    out.counts["examples"] = len(examples)
    out.counts["unlabelled"] = sum(not is_labelled(ex) for ex in examples)
    student_msgs = [task.student_messages(ex) for ex in examples]
    student_ids = [render_ids(tok, m) for m in student_msgs]
    # ophsd samples only the examples it trains on-policy (the others train on the
    # harness's own answer); opsd and ssopd sample every example
    on_policy = [cfg.method != "ophsd" or on_policy_example(cfg, step, i)
                 for i in range(len(examples))]
    # An example to sample whose prompt leaves no room for max_new_tokens under --max-len
    # trains on nothing, and the server would refuse its rollout (a 400 that crashed the
    # step, and the resumed run drew the same batch): a counted skip, before any request.
    samples = cfg.method in ("ophsd", "opsd", "ssopd")
    keep = [not (samples and on_policy[i]) or len(ids) + ctx.max_new_tokens <= cfg.max_len
            for i, ids in enumerate(student_ids)]
    if not all(keep):
        out.counts["skipped_too_long"] += keep.count(False)
        examples, student_msgs, student_ids, on_policy = (
            [x for x, ok in zip(column, keep, strict=True) if ok]
            for column in (examples, student_msgs, student_ids, on_policy))
    wants_rollouts = cfg.method in ("ophsd", "opsd", "ssopd") and any(on_policy)

    # 1. harness (ophsd teacher contexts, sft targets) and student rollouts, in flight
    # together on the live policy: the engine batches both
    t0 = time.perf_counter()
    traces: list[Any] = [None] * len(examples)
    answers: list[Any] = [None] * len(examples)
    rollouts: list[list[Any]] = [[] for _ in examples]
    with ThreadPoolExecutor(max_workers=1) as side:
        pending = side.submit(_seeded_many, ctx, student_ids, step, on_policy) \
            if wants_rollouts else None
        if cfg.method in HARNESS_METHODS and examples:
            results = run_program(ctx.harness, examples, lm=ctx.policy_lm(temperature=0.0),
                                  concurrency=max(cfg.concurrency, len(examples)),
                                  progress=False)
            for i, r in enumerate(results):
                traces[i] = r.trace
                out.counts["harness_failed"] += r.failed
                if r.failed:
                    continue
                answers[i] = task.parse(r.prediction.completion or "")
                if is_labelled(r.example):
                    out.counts["harness_correct"] += task.grade(r.prediction.completion or "",
                                                                r.example) >= 1.0
        out.times["harness_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if pending is not None:
            rollouts = pending.result()
    # the rollouts' wall time beyond the harness's (0 when they finished under its cover)
    out.times["rollout_s"] = time.perf_counter() - t1

    # 2. teacher contexts and splicing
    for i, ex in enumerate(examples):
        if cfg.method == "sft":
            _add_sft(ctx, out, ex, student_ids[i], traces[i])
            continue
        if cfg.method == "gold_sft":
            _add_target(ctx, out, student_ids[i], gold_target_ids(tok, task, ex))
            continue
        if cfg.method == "ssopd":
            _add_ssopd(ctx, out, ex, student_msgs[i], student_ids[i], rollouts[i])
            continue
        if cfg.method == "ophsd":
            tc = teacher_ctx.from_trace(traces[i], student_msgs[i], cfg.teacher_policy,
                                        getattr(ctx.harness, "teacher_call", None))
        else:
            tc = teacher_ctx.with_reference(task, ex)
        weight = 1.0
        if tc.fallback:
            out.counts["fallback"] += 1
            weight = cfg.fallback_weight
        if tc.messages is None or weight <= 0:
            out.counts["skipped_fallback"] += 1
            continue
        teacher_ids = render_ids(tok, tc.messages)
        for comp in rollouts[i]:
            out.counts["rollouts"] += 1
            parsed = task.parse(comp.text)
            out.counts["student_parsed"] += parsed is not None
            out.counts["student_agrees_harness"] += parsed is not None and parsed == answers[i]
            if is_labelled(ex):
                out.counts["student_correct"] += task.grade(comp.text, ex) >= 1.0
            ids, logprobs = answer_ids(tok, task, comp)
            if ids:
                out.add(student_ids[i], teacher_ids, ids, cfg.max_len, weight, logprobs,
                        space=_answer_space(ctx))
        if not on_policy[i]:
            _add_harness_path(ctx, out, student_ids[i], teacher_ids, traces[i], weight)

    # 3. labelled bank examples on their gold answers, beside the distilled pairs
    for ex in gold:
        if _add_target(ctx, out, render_ids(tok, task.student_messages(ex)),
                       gold_target_ids(tok, task, ex)):
            out.counts["gold_targets"] += 1

    # 4. the teacher's distributions, scored by the server that just ran the harness
    if getattr(ctx, "teacher_scorer", "trainer") == "vllm":
        t0 = time.perf_counter()
        score_teacher_on_server(ctx, out)
        out.times["teacher_score_s"] = time.perf_counter() - t0
    return out


def score_teacher_on_server(ctx: Any, out: StepInputs) -> None:
    """Fill `out.teacher_logprobs` for every distilled pair: at each response position the
    live policy's log-probabilities of the position's allowed ids (its answer-space support)
    after the teacher prompt and the response so far, from the vLLM server. The harness's
    final request has just been computed there, so every request is a prefix-cache hit but
    for its tail. A position with one allowed id needs no request: the restricted teacher is
    certain of it. The values equal the trainer's own teacher forward on the live weights
    (tests/test_integration_serving.py compares them on SmolLM2)."""
    jobs: list[tuple[int, int, list[int], list[int]]] = []
    for k, (pair, support) in enumerate(zip(out.pairs, out.supports, strict=True)):
        if out.sft[k]:
            continue
        if support is None:
            raise ValueError("the server can only score a teacher restricted to the answer "
                             "space (this pair has no support): use --teacher-scorer trainer")
        out.teacher_logprobs[k] = [[0.0] if len(ids) == 1 else [] for ids in support]
        prompt = out.teacher_ids[k]
        for t, ids in enumerate(support):
            if len(ids) > 1:
                jobs.append((k, t, prompt + pair.response_ids[:t], ids))
    out.counts["teacher_scored_positions"] += sum(
        len(s) for k, s in enumerate(out.supports) if s is not None and not out.sft[k])
    out.counts["teacher_requests"] += len(jobs)
    if not jobs:
        return

    def one(job: tuple[int, int, list[int], list[int]]) -> list[float]:
        return ctx.client.next_token_logprobs(job[2], job[3], model=ctx.policy_name)

    with ThreadPoolExecutor(max_workers=max(ctx.cfg.concurrency, 32)) as pool:
        for (k, t, _, _), values in zip(jobs, pool.map(one, jobs), strict=True):
            out.teacher_logprobs[k][t] = values


def _answer_space(ctx: Any) -> AnswerSpace | None:
    return getattr(ctx, "answer_space", None)


def on_policy_example(cfg: Any, step: int, index: int) -> bool:
    """Whether example `index` of `step` trains on the student's rollouts (probability
    `on_policy_fraction`, seeded so a resumed run decides the same) or on the harness's
    own answer (GKD's mix of student-generated and teacher-generated sequences)."""
    if cfg.on_policy_fraction >= 1.0:
        return True
    return random.Random(sample_seed(cfg.seed, step, index)).random() < cfg.on_policy_fraction


def _add_harness_path(ctx: Any, out: StepInputs, student_ids: list[int],
                      teacher_ids: list[int], trace: Any, weight: float) -> None:
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
               space=_answer_space(ctx)):
        out.counts["harness_paths"] += 1


def answer_ids(tokenizer: Any, task: Any, completion: Any) -> tuple[list[int], list[float]]:
    """The sampled ids (and their logprobs) that make up the answer: all of them for math,
    the first line for one-line label answers (see `first_line`)."""
    ids, logprobs = list(completion.token_ids), list(completion.logprobs or [])
    if task.kind != "math":
        ids = first_line(tokenizer, ids)
        logprobs = logprobs[: len(ids)]
    return ids, logprobs


def first_line(tokenizer: Any, ids: list[int]) -> list[int]:
    """The ids up to and including the first token that ends the line (newline or EOS).

    A label answer is one line. Training on a small model's ramblings after it
    teaches the student whatever the teacher expects there (e.g. quoting the
    message), and those tokens outnumber the answer's; the teacher's verdict on
    the line end itself (EOS vs newline) stays in.
    """
    for k, t in enumerate(ids):
        if t == tokenizer.eos_token_id or "\n" in tokenizer.decode([t]):
            return ids[: k + 1]
    return ids


def line_end_ids(tokenizer: Any) -> list[int]:
    """Every vocabulary id whose text contains a newline: sampling that stops on them (and
    on EOS) yields exactly the ids `first_line` keeps, without decoding the rest."""
    cached = getattr(tokenizer, "_scaffold_line_end_ids", None)
    if cached is None:
        vocab = len(tokenizer)
        cached = [t for t in range(vocab) if "\n" in tokenizer.decode([t])]
        try:
            tokenizer._scaffold_line_end_ids = cached
        except AttributeError:  # a tokenizer that takes no new attributes: recompute next time
            pass
    return cached


def _seeded_many(ctx: Any, prompts: list[list[int]], step: int,
                 wanted: list[bool]) -> list[list[Any]]:
    """`cfg.rollouts` samples of each wanted prompt (seeded per step and index, so a resumed
    run draws the same ones); [] for the others. One-line label answers stop at the first
    line end: the loop would cut them there anyway (`answer_ids`)."""
    cfg = ctx.cfg
    stop_ids = line_end_ids(ctx.tokenizer) if ctx.task.kind != "math" else None

    def one(i: int) -> list[Any]:
        if not wanted[i]:
            return []
        return ctx.client.complete(prompts[i], model=ctx.policy_name, n=cfg.rollouts,
                                   max_tokens=ctx.max_new_tokens, temperature=cfg.temperature,
                                   seed=sample_seed(cfg.seed, step, i), stop_token_ids=stop_ids)

    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        return list(pool.map(one, range(len(prompts))))


def _add_sft(ctx: Any, out: StepInputs, example: Any, student_ids: list[int], trace: Any) -> None:
    """sft: the harness's final completion, if correct, becomes the target after the bare prompt."""
    final = trace.final_call() if trace is not None and not trace.error else None
    if final is None or ctx.task.grade(final.completion, example) < 1.0:
        return
    target = final.completion_token_ids or ctx.tokenizer.encode(
        final.completion, add_special_tokens=False)
    _add_target(ctx, out, student_ids, list(target))


def gold_target_ids(tokenizer: Any, task: Any, example: Any) -> list[int]:
    """The gold answer as the completion after the bare prompt's prefill, ending in EOS:
    " card_arrival<eos>" after "Label:"; the reference solution for math."""
    text = task.reference_text(example)
    prefix = task.answer_prefix or ""
    if prefix and text.startswith(prefix):
        text = " " + text[len(prefix):].lstrip()
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [*ids, tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else ids


def ssopd_weight(correct: int, total: int) -> float:
    """Prompt-level weight 4 p (1 - p), p = fraction of the group graded correct: 1 where
    correct and wrong are evenly mixed, 0 where the group agrees (no contrast, no signal)."""
    p = correct / total if total else 0.0
    return 4.0 * p * (1.0 - p)


def _add_ssopd(ctx: Any, out: StepInputs, example: Any, student_msgs: list[dict],
               student_ids: list[int], group: list[Any]) -> None:
    """ssopd: teacher = the bare prompt plus the group's shortest correct rollout as a worked
    answer; student tokens = the group's longest wrong rollout."""
    tok, task = ctx.tokenizer, ctx.task
    graded = [(task.grade(c.text, example) >= 1.0, c) for c in group]
    out.counts["rollouts"] += len(graded)
    n_correct = sum(ok for ok, _ in graded)
    out.counts["student_correct"] += n_correct
    weight = ssopd_weight(n_correct, len(graded))
    if weight <= 0:
        return  # no contrast in this group: counted in rollouts, no pair
    out.counts["ssopd_mixed"] += 1
    correct = min((c for ok, c in graded if ok), key=lambda c: len(c.token_ids))
    wrong = max((c for ok, c in graded if not ok), key=lambda c: len(c.token_ids))
    shown = tok.decode(answer_ids(tok, task, correct)[0], skip_special_tokens=True).strip()
    tc = teacher_ctx.with_worked_answer(student_msgs, shown)
    ids, logprobs = answer_ids(tok, task, wrong)
    if ids:
        out.add(student_ids, render_ids(tok, tc.messages), ids, ctx.cfg.max_len, weight, logprobs,
                space=_answer_space(ctx))


def _add_target(ctx: Any, out: StepInputs, student_ids: list[int], target: list[int]) -> bool:
    """A supervised pair: `target` after the bare prompt (teacher side unused)."""
    if target and out.add(student_ids, student_ids, list(target), ctx.cfg.max_len, sft=True):
        out.counts["sft_targets"] += 1
        return True
    return False
