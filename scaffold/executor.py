"""The harness executor: run a DSPy program over many examples at once.

    results = run_program(program, examples, lm=client.dspy_lm(), concurrency=16)
    [r.prediction.answer for r in results]; [r.trace for r in results]

Many examples are in flight together (a thread pool; each harness call blocks
on the server), so the server batches them: harness throughput approaches the
engine's batched throughput on the same prompts. Every example gets its own
trace (contextvar-scoped, never mixed). A failed example (a harness bug, a bad
reply) is retried with backoff, then recorded as failed with its error; the run
goes on. An unreachable server is not an example's failure: it ends the run with
`PolicyServerUnreachable` (no half-scored result to save and reuse: with the engine
killed, every later example scored 0 and `evals.run` exited 0). A progress bar
shows examples done, failures and elapsed time.

A harness's `prepare(examples)` (batch work: draft_verify embeds its questions) runs once,
before any example starts. Overlapping it with the server's work, one chunk of
`concurrency` examples at a time, was measured worse on the 2-core machine: the embedding
and the server contend for the same cores, the embedding's CPU per question tripled, and
draft_verify ran at 0.75 of the raw requests against 0.90 prepared up front (a variant of
`benchmarks/harness_throughput.py` that timed both executors in one run, 64 items x 6
repeats; not kept).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import dspy
from tqdm.auto import tqdm

from scaffold.adapter import PlainChatAdapter
from scaffold.errors import PolicyServerUnreachable
from scaffold.trace import Trace, TraceCollector, submit


@dataclass
class ExampleResult:
    example: Any
    prediction: Any | None  # dspy.Prediction, None when the example failed
    trace: Trace
    error: str | None = None
    attempts: int = 1

    @property
    def failed(self) -> bool:
        return self.error is not None


def _run_one(program: dspy.Module, example: Any, collector: TraceCollector, max_attempts: int,
             backoff_s: float) -> ExampleResult:
    error = None
    trace = None
    for attempt in range(1, max_attempts + 1):
        try:
            with collector.trace(example.id, program, {"question": example.question}) as trace:
                prediction = program(example=example)
            trace.outputs = {"answer": getattr(prediction, "answer", None),
                             "completion": getattr(prediction, "completion", None)}
            return ExampleResult(example, prediction, trace, None, attempt)
        except PolicyServerUnreachable:
            raise  # the client has retried already; nothing after this can score
        except Exception as exc:  # noqa: BLE001 - one bad example must not end the run
            error = f"{type(exc).__name__}: {exc}"
            if attempt < max_attempts:
                time.sleep(backoff_s * 2 ** (attempt - 1))
    assert trace is not None
    trace.error = error
    return ExampleResult(example, None, trace, error, max_attempts)


def run_program(program: dspy.Module, examples: Sequence[Any], *, lm: Any,
                adapter: Any | None = None, concurrency: int = 16, max_attempts: int = 3,
                backoff_s: float = 1.0, progress: bool = True, desc: str | None = None,
                collector: TraceCollector | None = None) -> list[ExampleResult]:
    """Run `program(example=ex)` for every example; results in input order."""
    collector = collector or TraceCollector()
    adapter = adapter or PlainChatAdapter()
    prepare = getattr(program, "prepare", None)
    if callable(prepare):  # batch work a harness can do up front (e.g. embedding all queries)
        prepare(list(examples))
    results: list[ExampleResult | None] = [None] * len(examples)
    bar = tqdm(total=len(examples), desc=desc or getattr(program, "name", "harness"),
               disable=not progress, dynamic_ncols=True)
    failures = 0
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        with dspy.context(lm=lm, adapter=adapter):
            futures = {submit(pool, _run_one, program, ex, collector, max_attempts, backoff_s): i
                       for i, ex in enumerate(examples)}
            for fut in as_completed(futures):
                res = fut.result()
                results[futures[fut]] = res
                failures += res.failed
                bar.update(1)
                if failures:
                    bar.set_postfix(failed=failures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, queued examples never start
        bar.close()
    return [r for r in results if r is not None]
