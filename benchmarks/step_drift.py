"""Step-time drift benchmark: many different BANKING77 batches through one DistillTrainer.

    .venv/bin/python benchmarks/step_drift.py                       # pad 1 vs 16, 28 steps
    .venv/bin/python benchmarks/step_drift.py --sides 1,16,16+thp --steps 40
    .venv/bin/python benchmarks/step_drift.py --print-only          # re-print saved JSON

Why this exists: `benchmarks/distill_step.py` times one batch again and again, and there
the step is fast; inside a run every step brings a new batch with new padded widths, and
the step grew slower as the run went on. The cause is oneDNN (torch's CPU matmul library):
it builds a kernel ("primitive") for every distinct matmul shape and keeps 1024 of them,
so a run whose widths keep changing builds new kernels every step (~2.6 ms each) and
evicts old ones, and its heap grows with them. Rounding every padded width up to a
multiple (`TrainerConfig.pad_to_multiple_of`) makes the shapes repeat.

A side is a padding multiple ("1": no rounding), optionally "+thp" (the process runs with
torch's ``THP_MEM_ALLOC_ENABLE=1``: transparent huge pages for its large CPU allocations).
Each side runs in a fresh interpreter: the trainer of ``distill_step.py --side
ours-trainer`` (SmolLM2-135M-Instruct, LoRA r=16 on every linear layer, the frozen start
as the teacher, forward KL on the answer space, micro-batches of 8), step i on test
examples 32i..32i+31 in their label shapes, after ``scaffold.hardware.keep_freed_memory``
as ``distill.run`` does. No warm-up step is dropped: the drift is the measurement. The
table gives each side's mean step per third of the run, the last third over the first,
the CPU time of its steps, and its peak RSS; the last column is its mean step over
the first side's (the peer: no rounding) from the same invocation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_step import MODEL, REPO, _env, build_examples  # noqa: E402

BATCH = 32


def run_side(multiple: int, steps: int) -> dict:
    from scaffold.hardware import keep_freed_memory

    keep_freed_memory()
    import torch
    from transformers import AutoTokenizer

    from distill.answer_space import AnswerSpace
    from distill.losses import LossConfig
    from distill.pairs import StepInputs
    from distill.trainer import DistillTrainer, TrainerConfig
    from evals.tasks import get_task
    from scaffold.chat import render_ids
    from scaffold.registry import resolve

    path = resolve(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = build_examples(tokenizer, "label", BATCH * steps, 7)
    space = AnswerSpace.from_texts(tokenizer, get_task("banking77").answer_texts())
    cfg = TrainerConfig(
        model=path, lora_r=16, lora_alpha=32, lora_dropout=0.0, lr=1e-4, max_grad_norm=1.0,
        micro_batch_size=8, teacher="frozen", loss=LossConfig(kind="forward_kl"), seed=0,
        pad_to_multiple_of=multiple)
    trainer = DistillTrainer(cfg, tokenizer=tokenizer)
    rows = []
    for i in range(steps):
        inputs = StepInputs()
        for ex in examples[BATCH * i: BATCH * (i + 1)]:
            inputs.add(render_ids(tokenizer, ex["student_messages"]),
                       render_ids(tokenizer, ex["teacher_messages"]), ex["response_ids"],
                       max_len=4096, space=space)
        t0, c0 = time.perf_counter(), time.process_time()
        stats = trainer.train_step(inputs.pairs, supports=inputs.supports)
        rows.append({"step_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                     "student_s": stats["time_student_s"], "teacher_s": stats["time_teacher_s"],
                     "loss": stats["loss"]})
        print(json.dumps({"i": i, **{k: round(v, 3) for k, v in rows[-1].items()}}), flush=True)
    peak = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM"))) // 1024
    return {"steps": rows, "peak_rss_mb": peak, "threads": torch.get_num_threads()}


def spawn(side: str, steps: int) -> dict:
    """One side in a fresh interpreter (its own oneDNN cache and heap)."""
    multiple, _, thp = side.partition("+")
    env = dict(os.environ)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if thp == "thp":
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    cmd = [sys.executable, __file__, "--worker", multiple, "--worker-out", str(out),
           "--steps", str(steps)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        if proc.returncode != 0:
            raise SystemExit(f"side {side} failed (exit {proc.returncode}); its output:\n"
                             + proc.stdout[-2000:])
        result = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    return {"side": side, "process_wall_s": time.perf_counter() - t0, **result}


def thirds(values: list[float]) -> list[float]:
    n = len(values)
    cuts = [0, n // 3, 2 * n // 3, n]
    return [statistics.fmean(values[a:b]) for a, b in itertools.pairwise(cuts) if b > a]


def print_table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    base = statistics.fmean(s["step_s"] for s in results[0]["steps"])
    table = Table(title=f"DistillTrainer.train_step over {len(results[0]['steps'])} different "
                        f"{BATCH}-example BANKING77 batches, one process per side")
    for col in ("side", "step s: 1st third", "2nd", "3rd", "3rd / 1st", "student s (mean)",
                "teacher s (mean)", "CPU s (mean)", "peak RSS MB",
                "mean step vs side 1"):
        table.add_column(col, justify="right")
    for r in results:
        steps = r["steps"]
        t = thirds([s["step_s"] for s in steps])
        mean = statistics.fmean(s["step_s"] for s in steps)
        table.add_row(
            r["side"], *(f"{x:.2f}" for x in t), f"{t[-1] / t[0]:.3f}",
            f"{statistics.fmean(s['student_s'] for s in steps):.2f}",
            f"{statistics.fmean(s['teacher_s'] for s in steps):.2f}",
            f"{statistics.fmean(s['cpu_s'] for s in steps):.2f}", str(r["peak_rss_mb"]), f"{mean / base:.3f}")
    Console(width=200).print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", default="1,16", help="comma-separated padding multiples, each "
                   "optionally +thp; the first is the peer the last column divides by")
    p.add_argument("--steps", type=int, default=28, help="steps (batches) per side")
    p.add_argument("--out", default="benchmarks/results/step_drift.json")
    p.add_argument("--print-only", action="store_true", help="re-print --out")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    _env()
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(run_side(int(args.worker), args.steps)))
        return
    out = REPO / args.out
    if args.print_only:
        print_table(json.loads(out.read_text())["results"])
        return
    load = os.getloadavg()[0]
    results = [spawn(side, args.steps) for side in args.sides.split(",")]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "load_before": load,
                               "load_after": os.getloadavg()[0], "cpu": _cpu_name(),
                               "command": " ".join(sys.argv)}, indent=1))
    print_table(results)
    print(f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after; JSON: {out}")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
