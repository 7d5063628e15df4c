"""Harness executor throughput vs the same prompts sent raw to the same server.

    .venv/bin/python benchmarks/harness_throughput.py                # draft_verify, 64 BANKING77 items
    .venv/bin/python benchmarks/harness_throughput.py --program none --items 128 --concurrency 32

1. Runs the harness over --items test items through the executor (DSPy +
   PlainChatAdapter + trace collector, --concurrency examples in flight) and
   records every request it made.
2. Sends exactly those requests (same messages, max_tokens, greedy) straight
   to the server's chat endpoint with the same concurrency (httpx threads).
Prints tokens/s (prompt + completion, and completion only) of both, the client
process's CPU per request, and the ratio harness/raw (issue 14's goal: >= 0.95), as
the median over --repeats; also the ratio without the harness's `prepare` (draft_verify's
query embedding), the executor's own overhead. One run of each side varied from 0.88 to 1.03 on the same
machine, so repeats alternate which side goes first, each pair on the same items. The
prefix cache is reset before each side, so the raw replay does not find the harness's
prompts already computed. The raw side has no step dependencies, so it is an upper
bound for a multi-step harness.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median

import httpx
from rich.console import Console
from rich.table import Table

from evals.bank import task_bank
from evals.metrics import held_out
from evals.runner import MAX_TOKENS
from evals.tasks import get_task
from harnesses import build_harness, needs_index
from scaffold.chat import template_kwargs
from scaffold.client import PolicyClient
from scaffold.executor import run_program
from scaffold.server import policy_endpoint, reset_prefix_cache


def program_stop(program) -> list[str] | None:
    """The stop strings the harness's steps send (label tasks stop at the line end)."""
    stops = {tuple(p.config.get("stop") or ()) for _, p in program.named_predictors()}
    return list(stops.pop()) if len(stops) == 1 and () not in stops else None


def raw_requests(base_url: str, model: str, requests: list[list[dict]], max_tokens: int,
                 concurrency: int, stop: list[str] | None = None) -> tuple[float, int, int]:
    http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency))

    def send(messages: list[dict]) -> tuple[int, int]:
        r = http.post(f"{base_url}/chat/completions", json={
            "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
            **({"stop": stop} if stop else {}), **template_kwargs(messages)})
        r.raise_for_status()
        u = r.json()["usage"]
        return u["prompt_tokens"], u["completion_tokens"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        usage = list(pool.map(send, requests))
    wall = time.perf_counter() - t0
    return wall, sum(u[0] for u in usage), sum(u[1] for u in usage)


@dataclass
class Side:
    """One side of one repeat: its wall time, tokens, and the client process's CPU."""

    wall_s: float
    prompt_tokens: int
    completion_tokens: int
    client_cpu_s: float
    calls: int
    requests: list[list[dict]]
    prepare_cpu_s: float = 0.0
    prepare_wall_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.completion_tokens) / self.wall_s


def time_harness(program, items: list, lm, concurrency: int) -> Side:
    """The executor's run, its batch work up front (`prepare`: draft_verify embeds every
    query) timed inside it and also apart; run_program's own prepare then finds it done."""
    t0, c0 = time.perf_counter(), time.process_time()
    prepare = getattr(program, "prepare", None)
    if callable(prepare):
        prepare(list(items))
    prepare_cpu, prepare_wall = time.process_time() - c0, time.perf_counter() - t0
    results = run_program(program, items, lm=lm, concurrency=concurrency, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    calls = [c for r in results for c in r.trace.calls]
    return Side(wall, sum(c.prompt_tokens or 0 for c in calls),
                sum(c.completion_tokens or 0 for c in calls), cpu, len(calls),
                [c.messages for c in calls], prepare_cpu, prepare_wall)


def time_raw(server, requests: list[list[dict]], max_tokens: int, concurrency: int,
             stop: list[str] | None) -> Side:
    c0 = time.process_time()
    wall, pt, ct = raw_requests(server.base_url, server.model_name, requests, max_tokens,
                                concurrency, stop)
    return Side(wall, pt, ct, time.process_time() - c0, len(requests), requests)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="banking77")
    p.add_argument("--program", default="draft_verify")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--repeats", type=int, default=4,
                   help="timings of both sides; even repeats run the harness first, odd ones raw first "
                        "(one run of each varied 0.88-1.03 on the same machine)")
    p.add_argument("--api-base", default=None)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)

    task = get_task(args.task)
    pairs = (args.repeats + 1) // 2  # a pair of repeats times the same items in both orders
    pool = held_out(task.load("test"), args.items * pairs, seed=0)
    index = task_bank(task) if needs_index(args.program) else None
    program = build_harness(args.program, task, index=index)
    stop = program_stop(program)
    max_tokens = MAX_TOKENS[task.kind]
    runs: list[dict[str, Side]] = []
    with policy_endpoint(args.model, args.api_base,
                         log_path=str(Path(args.out) / "vllm-harness.log")) as server:
        client = PolicyClient(server.base_url, server.model_name)
        lm = client.dspy_lm(temperature=0.0, max_tokens=max_tokens)
        run_program(program, pool[:4], lm=lm, concurrency=4, progress=False)  # warm-up
        for rep in range(args.repeats):
            items = pool[(rep // 2) * args.items:(rep // 2 + 1) * args.items]
            # Neither side may reuse the other's (or an earlier repeat's) prompt keys/values,
            # nor the harness its own earlier query embeddings.
            if rep % 2 == 0:  # harness first; the raw side replays what it sent
                reset_prefix_cache(server.base_url)
                harness = time_harness(program, items, lm, args.concurrency)
                reset_prefix_cache(server.base_url)
                raw = time_raw(server, harness.requests, max_tokens, args.concurrency, stop)
            else:  # raw first, on the requests the last repeat's harness sent
                reset_prefix_cache(server.base_url)
                raw = time_raw(server, runs[-1]["harness executor"].requests, max_tokens,
                               args.concurrency, stop)
                reset_prefix_cache(server.base_url)
                if index is not None:
                    index.forget_queries()
                harness = time_harness(program, items, lm, args.concurrency)
            runs.append({"harness executor": harness, "raw requests": raw})
            print(f"repeat {rep + 1}/{args.repeats} ({'harness' if rep % 2 == 0 else 'raw'} "
                  f"first): harness/raw {harness.tokens_per_s / raw.tokens_per_s:.2f}", flush=True)

    ratios = [r["harness executor"].tokens_per_s / r["raw requests"].tokens_per_s for r in runs]
    # The executor's own share: the harness side's tokens over its wall less its `prepare`
    # (draft_verify's query embedding, the harness's work rather than the executor's).
    executor_ratios = [
        (h.prompt_tokens + h.completion_tokens) / (h.wall_s - h.prepare_wall_s)
        / r["raw requests"].tokens_per_s
        for r in runs for h in [r["harness executor"]]]
    requests = runs[0]["harness executor"].calls
    table = Table(title=f"{args.program} on {task.name}: {args.items} items x {args.repeats} "
                        f"repeats, ~{requests} requests each, concurrency {args.concurrency} "
                        "(medians)")
    for col in ("path", "wall s", "tokens/s (all)", "completion tok/s", "client CPU ms/request",
                "of which prepare"):
        table.add_column(col, justify="right")
    for name in ("harness executor", "raw requests"):
        sides = [r[name] for r in runs]
        table.add_row(name, f"{median(s.wall_s for s in sides):.1f}",
                      f"{median(s.tokens_per_s for s in sides):.0f}",
                      f"{median(s.completion_tokens / s.wall_s for s in sides):.1f}",
                      f"{median(1000 * s.client_cpu_s / s.calls for s in sides):.1f}",
                      f"{median(1000 * s.prepare_cpu_s / s.calls for s in sides):.1f}")
    table.add_row("ratio harness/raw", "", f"{median(ratios):.2f} "
                  f"[{min(ratios):.2f}, {max(ratios):.2f}]", "", "", "")
    table.add_row("ratio without prepare", "", f"{median(executor_ratios):.2f} "
                  f"[{min(executor_ratios):.2f}, {max(executor_ratios):.2f}]", "", "", "")
    Console(width=160).print(table)
    out = Path(args.out) / "harness_throughput.json"
    out.write_text(json.dumps({
        "args": vars(args), "ratio": median(ratios), "ratios": ratios,
        "ratio_without_prepare": median(executor_ratios), "ratios_without_prepare": executor_ratios,
        "repeats": [{name: {k: v for k, v in asdict(side).items() if k != "requests"}
                     for name, side in r.items()} for r in runs]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
