"""Harness executor throughput vs the same prompts sent raw to the same server.

    .venv/bin/python benchmarks/harness_throughput.py                # draft_verify, 64 BANKING77 items
    .venv/bin/python benchmarks/harness_throughput.py --program none --items 128 --concurrency 32

1. Runs the harness over --items test items through the executor (DSPy +
   PlainChatAdapter + trace collector, --concurrency examples in flight) and
   records every request it made.
2. Sends exactly those requests (same messages, max_tokens, greedy) straight
   to the server's chat endpoint with the same concurrency (httpx threads).
Prints tokens/s (prompt + completion, and completion only) of both and the
ratio harness/raw (goal >= 0.9). The prefix cache is reset before each side, so the
raw replay does not find the harness's prompts already computed. The raw side has no step dependencies, so it
is an upper bound for a multi-step harness.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="banking77")
    p.add_argument("--program", default="draft_verify")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--api-base", default=None)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)

    task = get_task(args.task)
    items = held_out(task.load("test"), args.items, seed=0)
    index = task_bank(task) if needs_index(args.program) else None
    program = build_harness(args.program, task, index=index)
    max_tokens = MAX_TOKENS[task.kind]
    with policy_endpoint(args.model, args.api_base,
                         log_path=str(Path(args.out) / "vllm-harness.log")) as server:
        client = PolicyClient(server.base_url, server.model_name)
        lm = client.dspy_lm(temperature=0.0, max_tokens=max_tokens)
        run_program(program, items[:4], lm=lm, concurrency=4, progress=False)  # warm-up
        # Neither side may reuse the other's (or the warm-up's) prompt keys/values: the raw
        # replay of the same prompts would otherwise be mostly prefix-cache hits.
        reset_prefix_cache(server.base_url)
        t0 = time.perf_counter()
        results = run_program(program, items, lm=lm, concurrency=args.concurrency)
        h_wall = time.perf_counter() - t0
        calls = [c for r in results for c in r.trace.calls]
        h_prompt = sum(c.prompt_tokens or 0 for c in calls)
        h_comp = sum(c.completion_tokens or 0 for c in calls)
        reset_prefix_cache(server.base_url)
        r_wall, r_prompt, r_comp = raw_requests(server.base_url, server.model_name,
                                                [c.messages for c in calls], max_tokens,
                                                args.concurrency, program_stop(program))
    rows = {
        "harness executor": (h_wall, h_prompt, h_comp),
        "raw requests": (r_wall, r_prompt, r_comp),
    }
    table = Table(title=f"{args.program} on {task.name}: {len(items)} items, {len(calls)} "
                        f"requests, concurrency {args.concurrency}")
    for col in ("path", "wall s", "tokens/s (all)", "completion tok/s"):
        table.add_column(col, justify="right")
    for name, (wall, pt, ct) in rows.items():
        table.add_row(name, f"{wall:.1f}", f"{(pt + ct) / wall:.0f}", f"{ct / wall:.1f}")
    ratio = ((h_prompt + h_comp) / h_wall) / ((r_prompt + r_comp) / r_wall)
    table.add_row("ratio harness/raw", "", f"{ratio:.2f}", "")
    Console(width=160).print(table)
    out = Path(args.out) / "harness_throughput.json"
    out.write_text(json.dumps({"args": vars(args), "requests": len(calls), "ratio": ratio,
                               **{k: {"wall_s": w, "prompt_tokens": pt, "completion_tokens": ct}
                                  for k, (w, pt, ct) in rows.items()}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
