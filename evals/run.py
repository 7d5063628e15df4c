"""Evaluate a harness (or the bare prompt) on held-out test items.

    python -m evals.run --task banking77 --program draft_verify --model smollm2-135m-instruct --limit 200
    python -m evals.run --task banking77 --program none --adapter runs/demo/final_adapter --limit 300
    python -m evals.run --task gsm8k --program plan_solve --model qwen2.5-coder-0.5b-instruct --limit 100

Starts a vLLM server for --model (or uses --api-base URL), loads --adapter
under the name "trained" if given, runs the program over --limit seeded
test items with --concurrency in flight, and prints a table (score with a 95%
bootstrap interval, n, parse failures, tokens per example, wall time). Writes
`results.json` and `traces.jsonl` under --out.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evals.bank import task_bank
from evals.metrics import fmt_ci, held_out
from evals.runner import MAX_TOKENS, EvalResult, evaluate
from evals.tasks import get_task
from harnesses import HARNESSES, ProgramSpecError, load_program, needs_index
from scaffold.cli import run_cli
from scaffold.client import PolicyClient
from scaffold.server import install_sigterm_handler, policy_endpoint
from scaffold.trace import write_jsonl


def results_table(results: list[EvalResult], title: str = "evaluation") -> Table:
    table = Table(title=title)
    for col in ("task", "program", "model", "score [95% CI]", "n", "parse fail", "failed",
                "fallbacks", "calls/ex", "tokens/ex", "wall s"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r.task, r.program, r.model, fmt_ci(r.score, r.ci_low, r.ci_high), str(r.n),
                      str(r.parse_failures), str(r.failed), str(r.fallbacks),
                      f"{r.calls_per_example:.2f}", f"{r.tokens_per_example:.0f}",
                      f"{r.wall_s:.1f}")
    return table


def main(argv: list[str] | None = None) -> list[EvalResult]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="banking77")
    p.add_argument("--program", nargs="+", default=["draft_verify"],
                   help=f"one or more programs, evaluated on the same items: built-ins "
                        f"({', '.join(HARNESSES)}) or your own as package.module:Name")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--adapter", help="peft adapter folder to evaluate (served as 'trained')")
    p.add_argument("--api-base", help="use this OpenAI-compatible server instead of starting one")
    p.add_argument("--limit", type=int, default=200, help="held-out items (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out sample")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--verify", default=None, help="draft_verify: disagree | always | never")
    p.add_argument("--harness", type=json.loads, default={},
                   help='harness options as JSON, e.g. \'{"draft_prompt": "short"}\'')
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="output folder (default runs/eval-TASK)")
    args = p.parse_args(argv)
    for program in args.program:
        try:
            load_program(program)
        except ProgramSpecError as e:
            p.error(f"--program {e}")
    install_sigterm_handler()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    task = get_task(args.task, data_root=args.data_root)
    items = held_out(task.load("test"), args.limit, args.seed)
    index = task_bank(task) if any(needs_index(p) for p in args.program) else None
    out = Path(args.out or f"runs/eval-{task.name.replace('/', '_')}")
    out.mkdir(parents=True, exist_ok=True)
    options = {**args.harness, **({"verify": args.verify} if args.verify else {})}
    max_tokens = args.max_tokens or MAX_TOKENS[task.kind]

    results = []
    with policy_endpoint(args.model, args.api_base, log_path=str(out / "vllm.log"),
                         enable_lora=bool(args.adapter)) as server:
        client = PolicyClient(server.base_url, server.model_name)
        model_name = server.model_name
        if args.adapter:
            server.load_adapter("trained", args.adapter)
            model_name = "trained"
        lm = client.dspy_lm(model_name, temperature=0.0, max_tokens=max_tokens)
        for program in args.program:
            opts = options if program != "none" else {}
            res = evaluate(task, program, items, lm=lm, model_label=model_name, index=index,
                           concurrency=args.concurrency, harness_options=opts)
            results.append(res)
            write_jsonl(res.traces, out / f"traces-{program}.jsonl")
    Console(width=160).print(results_table(results, f"{task.name}: {len(items)} held-out items"))
    (out / "results.json").write_text(json.dumps(
        {"args": vars(args), "results": [r.row() for r in results]}, indent=2))
    print(f"wrote {out / 'results.json'} and traces-*.jsonl")
    return results


if __name__ == "__main__":
    run_cli(main)
