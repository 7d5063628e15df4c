"""Serving benchmark: cold start, and decode tokens/s at 1 and at N concurrent requests.

    .venv/bin/python benchmarks/serving.py                       # both bundled models
    .venv/bin/python benchmarks/serving.py --models smollm2-135m-instruct --max-tokens 64

For each model: start a managed vLLM server (cold start = process start to
/v1/models answering, model already converted in the cache), warm up, then send
`--requests` requests one at a time and the same number with `--concurrency` in
flight; every request decodes exactly `--max-tokens` tokens (ignore_eos) from the
same chat prompt. Prints a table and writes JSON next to it (--out).
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

from scaffold.registry import resolve
from scaffold.server import PolicyServer, ServerConfig

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


def one_request(base_url: str, model: str, max_tokens: int) -> int:
    r = httpx.post(f"{base_url}/chat/completions", timeout=600, json={
        "model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0,
        "ignore_eos": True})
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"])


def throughput(base_url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        tokens = sum(pool.map(lambda _: one_request(base_url, model, max_tokens), range(n)))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": n, "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall}


def bench_model(name: str, args: argparse.Namespace) -> dict:
    path = resolve(name)  # converted before the clock starts: cold start = server only
    t0 = time.perf_counter()
    with PolicyServer(ServerConfig(model=path, served_name="policy", enable_lora=True,
                                   log_path=str(Path(args.out) / f"vllm-{name}.log"))) as server:
        cold = time.perf_counter() - t0
        one_request(server.base_url, "policy", 8)  # warm-up
        single = throughput(server.base_url, "policy", args.requests, 1, args.max_tokens)
        multi = throughput(server.base_url, "policy", args.requests, args.concurrency,
                           args.max_tokens)
    return {"model": name, "cold_start_s": cold, "single": single, "concurrent": multi,
            "speedup": multi["tokens_per_s"] / single["tokens_per_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)

    rows = [bench_model(m, args) for m in args.models]
    table = Table(title=f"vLLM serving ({args.max_tokens} tokens/request, {args.requests} requests)")
    for col in ("model", "cold start s", "tok/s @1", f"tok/s @{args.concurrency}", "ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], f"{r['cold_start_s']:.1f}", f"{r['single']['tokens_per_s']:.1f}",
                      f"{r['concurrent']['tokens_per_s']:.1f}", f"{r['speedup']:.2f}x")
    Console(width=160).print(table)
    out = Path(args.out) / "serving.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
