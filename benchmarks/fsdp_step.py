"""FSDP vs whole-model data parallelism: the real BANKING77 step on 2 gloo ranks.

    .venv/bin/python benchmarks/fsdp_step.py                 # whole, then fsdp, 3 steps each
    .venv/bin/python benchmarks/fsdp_step.py --steps 5 --sides fsdp,whole

Each side starts 2 processes (mp.spawn, gloo, 1 thread each: this machine's 2 cores),
builds the trainer on SmolLM2-135M-Instruct (LoRA r=16 on every decoder linear, bf16
weights where the CPU runs bf16) and takes `--warmup` + `--steps` steps on the same 32
examples as benchmarks/distill_step.py's label shapes (the 77-label student prompt,
draft_verify's draft prompt as the teacher's, the gold label as the response), each rank
on its half; the teacher is the frozen base, forwarded in the trainer.

- whole: every rank holds the whole model; the LoRA gradients are summed with one
  all_reduce (distill/distributed.py); the 601-token label prefix is computed once a step.
- fsdp: `TrainerConfig.fsdp` (distill/fsdp.py): the decoder sharded over the 2 ranks;
  no shared prefix (each row computes its whole prompt), FSDP's all-gathers and
  reduce-scatters, and the LoRA weights gathered whole after each step.

Printed per side (rank 0, and the slower rank's step): mean step time, the decoder's
parameter bytes one rank holds, and peak RSS over the steps; the fsdp row carries its
ratio to the whole row of the same run. JSON: benchmarks/results/fsdp_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, side: str, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      TRANSFORMERS_VERBOSITY="error")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from distill_step import MODEL, _peak_mb, _reset_peak, _rss_mb, build_examples
    from transformers import AutoTokenizer

    from distill.answer_space import AnswerSpace
    from distill.distributed import init_from_env, shard
    from distill.fsdp import sharded_fraction
    from distill.losses import LossConfig
    from distill.pairs import StepInputs
    from distill.trainer import DistillTrainer, TrainerConfig
    from evals.tasks import get_task
    from scaffold.chat import render_ids
    from scaffold.registry import resolve

    w = init_from_env()
    try:
        path = resolve(MODEL)
        tokenizer = AutoTokenizer.from_pretrained(path)
        space = AnswerSpace.from_texts(tokenizer, get_task("banking77").answer_texts())
        inputs = StepInputs()
        for ex in build_examples(tokenizer, "label", args.batch, 0):
            inputs.add(render_ids(tokenizer, ex["student_messages"]),
                       render_ids(tokenizer, ex["teacher_messages"]), ex["response_ids"],
                       max_len=4096, space=space)
        mine = shard(range(len(inputs.pairs)), w)
        trainer = DistillTrainer(TrainerConfig(
            model=path, lora_r=16, lora_alpha=32, lr=1e-4, max_grad_norm=1.0,
            micro_batch_size=args.micro_batch, teacher="frozen", seed=0,
            loss=LossConfig(kind="forward_kl"), fsdp=side == "fsdp"), tokenizer=tokenizer)
        decoder = list(trainer.decoder.parameters())
        held_mb = sharded_fraction(decoder) * sum(p.numel() * p.element_size()
                                                  for p in decoder) / 2**20
        rss_loaded = _rss_mb()
        reset_ok = _reset_peak()
        steps, losses = [], []
        for i in range(args.warmup + args.steps):
            dist.barrier()
            t0 = time.perf_counter()
            stats = trainer.train_step([inputs.pairs[j] for j in mine],
                                       supports=[inputs.supports[j] for j in mine])
            wall = time.perf_counter() - t0
            if i >= args.warmup:
                steps.append(wall)
                losses.append(stats["loss"])
        peak = _peak_mb(reset_ok)
        result = {"rank": w.rank, "side": side, "steps_s": steps, "losses": losses,
                  "decoder_held_mb": held_mb, "rss_after_load_mb": rss_loaded,
                  "peak_rss_mb": peak, "dtype": str(trainer.dtype),
                  "shared_prefix_tokens": stats["shared_prefix_tokens"],
                  "positions": stats.get("student_positions")}
        Path(out, f"{side}-rank{w.rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_side(side: str, args: argparse.Namespace) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(side, _free_port(), args, out), nprocs=WORLD, join=True)
        return [json.loads(Path(out, f"{side}-rank{r}.json").read_text()) for r in range(WORLD)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sides", default="whole,fsdp", help="comma-separated: whole, fsdp")
    p.add_argument("--steps", type=int, default=3, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--batch", type=int, default=32, help="examples a step (both ranks)")
    p.add_argument("--micro-batch", type=int, default=8, help="rows a micro-batch")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fsdp_step.json"))
    args = p.parse_args()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not sides or any(s not in ("whole", "fsdp") for s in sides):
        p.error(f"--sides takes whole and/or fsdp, got {args.sides!r}")

    rows = {}
    for side in sides:
        print(f"[{side}] 2 gloo ranks, {args.warmup} + {args.steps} steps ...", flush=True)
        ranks = run_side(side, args)
        slowest = [max(r["steps_s"][i] for r in ranks) for i in range(args.steps)]
        rows[side] = {"ranks": ranks, "step_s": sum(slowest) / len(slowest),
                      "decoder_held_mb": ranks[0]["decoder_held_mb"],
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
                      "loss": ranks[0]["losses"][0]}
    print(f"\nBANKING77 step of {args.batch} on {WORLD} gloo ranks x 1 thread, "
          f"{rows[sides[0]]['ranks'][0]['dtype']}, {args.steps} timed steps (slowest rank)")
    print("| side | step s | ratio | decoder params held / rank | peak RSS / rank | loss, step 1 |")
    print("|---|---|---|---|---|---|")
    base = rows.get("whole")
    for side, r in rows.items():
        ratio = f"{r['step_s'] / base['step_s']:.2f}x" if base and side != "whole" else "1.00x" \
            if side == "whole" else "n/a"
        held = f"{r['decoder_held_mb']:.0f} MB"
        if base and side != "whole":
            held += f" ({r['decoder_held_mb'] / base['decoder_held_mb']:.2f}x)"
        print(f"| {side} | {r['step_s']:.2f} | {ratio} | {held} | {r['peak_rss_mb']:.0f} MB | "
              f"{r['loss']:.5f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
