"""One on-policy step: student rollouts -> harness -> teacher contexts -> splice -> update.

The student samples from the *served* policy (base + current adapter) on the
bare prompt; the harness runs on the same examples against the same policy;
the method (`distill.methods`) turns each example into training pairs (the
teacher context from the harness's trace for ophsd, from the reference for
opsd, ...); the server scores the teacher where it can; the trainer then scores
the student's exact sampled ids under both contexts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distill.methods import Collected, add_gold, get_method, sample_seed
from distill.pairs import StepInputs, line_end_ids
from distill.replay import RecordedContexts, check_prompt
from scaffold.chat import render_ids
from scaffold.client import Completion
from scaffold.executor import run_program
from scaffold.types import Example, Item, is_labelled


def collect(ctx: Any, step: int, examples: list[Item], gold: Sequence[Example] = ()) -> StepInputs:
    """Build the training pairs of one step. `ctx` is the run (see distill.run.Run).

    `examples` are the step's items: labelled `Example`s, or unlabelled pool `Question`s,
    whose answers are never read (they have none). `gold` are labelled bank examples that
    train beside them on their gold answers (cross-entropy: a teacher certain of the label).
    The method (`distill.methods`, by `cfg.method`) says what runs and what trains.
    """
    cfg, task, tok = ctx.cfg, ctx.task, ctx.tokenizer
    method = get_method(cfg.method)
    out = StepInputs()
    out.counts["examples"] = len(examples)
    out.counts["unlabelled"] = sum(not is_labelled(ex) for ex in examples)
    student_msgs = [task.student_messages(ex) for ex in examples]
    student_ids = [render_ids(tok, m) for m in student_msgs]
    on_policy = [method.on_policy(cfg, step, i) for i in range(len(examples))]
    # An example to sample whose prompt leaves no room for max_new_tokens under --max-len
    # trains on nothing, and the server would refuse its rollout (a 400 that crashed the
    # step, and the resumed run drew the same batch): a counted skip, before any request.
    keep = [not on_policy[i] or len(ids) + ctx.max_new_tokens <= cfg.max_len
            for i, ids in enumerate(student_ids)]
    if not all(keep):
        out.counts["skipped_too_long"] += keep.count(False)
        examples, student_msgs, student_ids, on_policy = (
            [x for x, ok in zip(column, keep, strict=True) if ok]
            for column in (examples, student_msgs, student_ids, on_policy))
    items = [Collected(ex, student_msgs[i], student_ids[i], on_policy[i])
             for i, ex in enumerate(examples)]

    # 1. harness (ophsd teacher contexts, sft targets) and student rollouts, in flight
    # together on the live policy: the engine batches both
    t0 = time.perf_counter()
    to_sample = [False] * len(on_policy) if cfg.harness_rollouts else on_policy
    with ThreadPoolExecutor(max_workers=1) as side:
        pending = side.submit(_seeded_many, ctx, student_ids, step, to_sample) \
            if any(to_sample) else None
        recorded = getattr(ctx, "contexts", None)  # --teacher-contexts: no harness runs
        if recorded is not None:
            for item in items:
                use_recorded(recorded, item, out)
        elif method.runs_harness and examples:
            results = run_program(ctx.harness, examples, lm=ctx.policy_lm(temperature=0.0),
                                  concurrency=max(cfg.concurrency, len(examples)),
                                  progress=False)
            for item, r in zip(items, results, strict=True):
                item.trace = r.trace
                out.counts["harness_failed"] += r.failed
                if r.failed:
                    continue
                item.harness_answer = task.parse(r.prediction.completion or "")
                if is_labelled(r.example):
                    out.counts["harness_correct"] += task.grade(r.prediction.completion or "",
                                                                r.example) >= 1.0
        out.times["harness_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if pending is not None:
            for item, rollouts in zip(items, pending.result(), strict=True):
                item.rollouts = rollouts
    # the rollouts' wall time beyond the harness's (0 when they finished under its cover)
    out.times["rollout_s"] = time.perf_counter() - t1
    if cfg.harness_rollouts:
        for item in items:
            item.rollouts = harness_rollouts(ctx.harness, item, out,
                                             leave_out_shown=method.has_teacher)

    # 2. teacher contexts and splicing, as the method says
    for item in items:
        method.add_pairs(ctx, out, item)

    # 3. labelled bank examples on their gold answers, beside the distilled pairs
    for ex in gold:
        if add_gold(ctx, out, ex):
            out.counts["gold_targets"] += 1

    # what evals.compare reports as the examples a run trained on
    out.counts["trained_examples"] = len({s.example_id for s in out.sources})

    # 4. the teacher's distributions, scored by the server that just ran the harness
    if getattr(ctx, "teacher_scorer", "trainer") == "vllm":
        t0 = time.perf_counter()
        score_teacher_on_server(ctx, out)
        out.times["teacher_score_s"] = time.perf_counter() - t0
    return out


def use_recorded(contexts: RecordedContexts, item: Collected, out: StepInputs) -> None:
    """Give `item` the teacher context an earlier run recorded for it. The student prompt must
    be the one that run trained (a changed task prompt would pair this student with a
    teacher that read another question form)."""
    rec = contexts.by_id[item.example.id]
    check_prompt(rec, item.student_messages)
    item.recorded = rec
    item.harness_answer = rec.harness_answer
    out.counts["contexts_recorded"] += 1
    out.counts["harness_correct"] += rec.harness_right


def harness_rollouts(harness: Any, item: Collected, out: StepInputs,
                     leave_out_shown: bool = True) -> list[Completion]:
    """The harness's own samples of the student's prompt as the student's rollouts
    (`--harness-rollouts`), less, with `leave_out_shown`, the one the teacher is shown (the
    trace's returned completion: scored under a context that holds it, it would be copied,
    not taught).

    A sample counts only if the server rendered exactly the student's prompt ids and
    returned its completion ids (the exact-token contract); others are counted skips."""
    if item.trace is None or item.trace.error:
        return []
    shown = item.trace.outputs.get("completion") if leave_out_shown else None
    rollouts = []
    for call in harness.student_samples(item.trace):
        if call.prompt_token_ids != item.student_ids or not call.completion_token_ids:
            out.counts["harness_rollouts_skipped"] += 1
            continue
        if shown is not None and call.completion == shown:
            shown = None  # only one copy of the shown sample is left out
            continue
        rollouts.append(Completion(list(call.completion_token_ids), call.completion, None,
                                   call.finish_reason))
    return rollouts


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
