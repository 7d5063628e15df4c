"""Policy sync benchmark: serve the trained policy as a LoRA adapter or as merged weights.

    .venv/bin/python benchmarks/policy_sync.py                  # SmolLM2, BANKING77 prompts
    .venv/bin/python benchmarks/policy_sync.py --requests 64 --rounds 3

One vLLM server with LoRA enabled. A trainer's adapter (random B, scale 0.01, like a
few steps of training) is synced both ways: saved as a peft folder and hot-loaded
(`/v1/load_lora_adapter`), and merged into the base weights and reloaded in place
(`/collective_rpc reload_weights`). Then the same workload a distill step sends, the
bare BANKING77 prompts (~670 tokens, 77 labels) with 24 sampled tokens each at
--concurrency in flight, runs against the adapter name and against the merged
weights. Prints sync time, requests/s and prompt tokens/s of each, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from distill.trainer import DistillTrainer, TrainerConfig
from evals.metrics import held_out
from evals.tasks import get_task
from scaffold.chat import render_ids
from scaffold.client import PolicyClient
from scaffold.registry import resolve
from scaffold.server import PolicyServer, ServerConfig


def workload(client: PolicyClient, model: str, prompts: list[list[int]],
             concurrency: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda i: client.complete(prompts[i], model=model, max_tokens=24,
                                                temperature=1.0, seed=i), range(len(prompts))))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "requests_per_s": len(prompts) / wall,
            "prompt_tokens_per_s": sum(map(len, prompts)) / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="repeat each mode; report the mean")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    path = resolve(args.model)
    task = get_task("banking77")
    trainer = DistillTrainer(TrainerConfig(model=path, dtype="bfloat16"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
    prompts = [render_ids(trainer.tokenizer, task.student_messages(ex))
               for ex in held_out(task.load("train"), args.requests, seed=1)]

    results: dict[str, dict] = {}
    with PolicyServer(ServerConfig(model=path, enable_lora=True,
                                   log_path=str(out / "vllm-policy-sync.log"))) as server:
        client = PolicyClient(server.base_url, server.model_name)
        workload(client, server.model_name, prompts[:4], 4)  # warm-up
        for mode in ("lora", "merged"):
            syncs, runs = [], []
            for r in range(args.rounds):
                t0 = time.perf_counter()
                if mode == "lora":
                    adapter = out / "sync-adapter"
                    trainer.save_adapter(adapter)
                    server.load_adapter(f"policy-{r}", adapter)
                    model = f"policy-{r}"
                else:
                    server.reload_weights(trainer.save_merged(out / "sync-merged"))
                    model = server.model_name
                syncs.append(time.perf_counter() - t0)
                runs.append(workload(client, model, prompts, args.concurrency))
                if mode == "lora":
                    server.unload_adapter(model)
            results[mode] = {
                "sync_s": statistics.fmean(syncs),
                **{k: statistics.fmean(x[k] for x in runs) for k in runs[0]}}
        server.reload_weights(path)

    table = Table(title=f"policy sync, {args.model}: {args.requests} BANKING77 bare prompts, "
                        f"24 tokens, concurrency {args.concurrency}")
    for col in ("mode", "sync s", "workload s", "requests/s", "prompt tok/s", "vs lora"):
        table.add_column(col, justify="right")
    for mode, r in results.items():
        ratio = r["requests_per_s"] / results["lora"]["requests_per_s"]
        table.add_row(mode, f"{r['sync_s']:.2f}", f"{r['wall_s']:.1f}",
                      f"{r['requests_per_s']:.2f}", f"{r['prompt_tokens_per_s']:.0f}",
                      f"{ratio:.2f}x")
    Console(width=160).print(table)
    (out / "policy_sync.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'policy_sync.json'}")


if __name__ == "__main__":
    main()
