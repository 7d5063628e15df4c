"""One on-policy step: student rollouts -> harness -> teacher contexts -> splice -> update.

The student samples from the *served* policy (base + current adapter) on the
bare prompt; the harness runs on the same examples against the same policy;
the teacher context comes from its trace (ophsd) or from the reference
(opsd); the trainer scores the student's exact sampled ids under both
contexts. `sft` instead trains on the harness's own correct final answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from distill import teacher as teacher_ctx
from distill.splicing import ContextTooLong, SplicedPair, splice
from scaffold.chat import render_ids
from scaffold.executor import run_program


@dataclass
class StepInputs:
    pairs: list[SplicedPair] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    sampling_logprobs: list[list[float]] = field(default_factory=list)
    counts: dict = field(default_factory=lambda: {
        "examples": 0, "rollouts": 0, "fallback": 0, "skipped_fallback": 0,
        "skipped_too_long": 0, "harness_failed": 0, "harness_correct": 0,
        "student_correct": 0, "sft_targets": 0})
    times: dict = field(default_factory=dict)


def sample_seed(run_seed: int, step: int, index: int) -> int:
    """A per-request sampling seed: a resumed run draws the same rollouts."""
    return (run_seed * 1_000_003 + step * 10_007 + index) % (2**31 - 1)


def collect(ctx: Any, step: int, examples: list[Any]) -> StepInputs:
    """Build the training pairs of one step. `ctx` is the run (see distill.run.Run)."""
    cfg, task, tok = ctx.cfg, ctx.task, ctx.tokenizer
    out = StepInputs()
    out.counts["examples"] = len(examples)
    student_msgs = [task.student_messages(ex) for ex in examples]
    student_ids = [render_ids(tok, m) for m in student_msgs]

    # 1. harness on the live policy (ophsd teacher contexts, sft targets)
    t0 = time.perf_counter()
    traces = [None] * len(examples)
    if cfg.method in ("ophsd", "sft"):
        results = run_program(ctx.harness, examples, lm=ctx.policy_lm(temperature=0.0),
                              concurrency=cfg.concurrency, progress=False)
        traces = [r.trace for r in results]
        for r in results:
            out.counts["harness_failed"] += r.failed
            if not r.failed:
                out.counts["harness_correct"] += task.grade(r.prediction.completion or "",
                                                            r.example) >= 1.0
    out.times["harness_s"] = time.perf_counter() - t0

    # 2. student rollouts on the bare prompt, exact sampled ids
    t0 = time.perf_counter()
    rollouts = []
    if cfg.method in ("ophsd", "opsd"):
        rollouts = _seeded_many(ctx, student_ids, step)
    out.times["rollout_s"] = time.perf_counter() - t0

    # 3. teacher contexts and splicing
    for i, ex in enumerate(examples):
        if cfg.method == "sft":
            _add_sft(ctx, out, ex, student_ids[i], traces[i])
            continue
        if cfg.method == "ophsd":
            tc = teacher_ctx.from_trace(traces[i], student_msgs[i], cfg.teacher_policy)
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
            out.counts["student_correct"] += task.grade(comp.text, ex) >= 1.0
            ids, logprobs = comp.token_ids, list(comp.logprobs or [])
            if task.kind != "math":  # one-line answers: what follows the line is not the answer
                ids = first_line(tok, ids)
                logprobs = logprobs[: len(ids)]
            if not ids:
                continue
            try:
                pair = splice(student_ids[i], teacher_ids, ids, max_len=cfg.max_len)
            except ContextTooLong:
                out.counts["skipped_too_long"] += 1
                continue
            out.pairs.append(pair)
            out.weights.append(weight)
            out.sampling_logprobs.append(logprobs)
    return out


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


def _seeded_many(ctx: Any, prompts: list[list[int]], step: int) -> list[list[Any]]:
    from concurrent.futures import ThreadPoolExecutor

    cfg = ctx.cfg

    def one(i: int) -> list[Any]:
        return ctx.client.complete(prompts[i], model=ctx.policy_name, n=cfg.rollouts,
                                   max_tokens=ctx.max_new_tokens, temperature=cfg.temperature,
                                   seed=sample_seed(cfg.seed, step, i))

    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        return list(pool.map(one, range(len(prompts))))


def _add_sft(ctx: Any, out: StepInputs, example: Any, student_ids: list[int], trace: Any) -> None:
    """sft: the harness's final completion, if correct, becomes the target after the bare prompt."""
    final = trace.final_call() if trace is not None and not trace.error else None
    if final is None or ctx.task.grade(final.completion, example) < 1.0:
        return
    target = final.completion_token_ids or ctx.tokenizer.encode(
        final.completion, add_special_tokens=False)
    if not target:
        return
    try:
        pair = splice(student_ids, student_ids, list(target), max_len=ctx.cfg.max_len)
    except ContextTooLong:
        out.counts["skipped_too_long"] += 1
        return
    out.counts["sft_targets"] += 1
    out.pairs.append(pair)
    out.weights.append(1.0)
