"""Step-time drift benchmark: many different BANKING77 batches through one DistillTrainer.

    .venv/bin/python benchmarks/step_drift.py                       # pad 1 vs 16, 28 steps
    .venv/bin/python benchmarks/step_drift.py --sides 1,16,16+thp,16+cache4096 --steps 40
    .venv/bin/python benchmarks/step_drift.py --print-only          # re-print saved JSON

Why this exists: `benchmarks/distill_step.py` times one batch again and again, and there
the step is fast; inside a run every step brings a new batch with new padded widths, and
the step grew slower as the run went on. The cause is oneDNN (torch's CPU matmul library):
it builds a kernel ("primitive") for every distinct matmul shape and keeps 1024 of them,
so a run whose widths keep changing builds new kernels every step (~2.6 ms each) and
evicts old ones, and its heap grows with them. Rounding every padded width up to a
multiple (`TrainerConfig.pad_to_multiple_of`) makes the shapes repeat.

A side is a padding multiple ("1": no rounding), optionally with switches: "+thp" runs the
process with torch's ``THP_MEM_ALLOC_ENABLE=1`` (transparent huge pages for its large CPU
buffers), "+cache4096" with ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=4096`` (oneDNN keeps 4x the
kernels). Each side runs in a fresh interpreter: the trainer of ``distill_step.py --side
ours-trainer`` (SmolLM2-135M-Instruct, LoRA r=16 on every linear layer, the frozen start as
the teacher, forward KL on the answer space, micro-batches of 8), after
``scaffold.hardware.keep_freed_memory`` as ``distill.run`` does. Step i trains on test
examples 32i..32i+31 in their label shapes; batch 0 runs again every ``--reference-every``
steps and at the end, and its times are the drift (the varying batches differ in length,
so their own times move with their content). The table gives each side's reference times,
its mean step over the varying batches (student, teacher, CPU time), its peak RSS, and its
mean step over the first side's (the peer: no rounding) on the same batches in the same
invocation.
"""

from __future__ import annotations

import argparse
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


def run_side(multiple: int, steps: int, reference_every: int) -> dict:
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

    def step_inputs(batch: int) -> StepInputs:
        inputs = StepInputs()
        for ex in examples[BATCH * batch: BATCH * (batch + 1)]:
            inputs.add(render_ids(tokenizer, ex["student_messages"]),
                       render_ids(tokenizer, ex["teacher_messages"]), ex["response_ids"],
                       max_len=4096, space=space)
        return inputs

    def timed(inputs: StepInputs, batch: int) -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        stats = trainer.train_step(inputs.pairs, supports=inputs.supports)
        row = {"batch": batch, "step_s": time.perf_counter() - t0,
               "cpu_s": time.process_time() - c0, "student_s": stats["time_student_s"],
               "teacher_s": stats["time_teacher_s"], "loss": stats["loss"]}
        print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
        return row

    # batch 0 again every `reference_every` steps and at the end: the same shapes each time,
    # so its time moves only with the process's state (the varying batches differ in length)
    reference = step_inputs(0)
    rows, references = [], []
    for i in range(steps):
        if i % reference_every == 0:
            references.append({"after_steps": i, **timed(reference, 0)})
        rows.append(timed(step_inputs(i), i))
    references.append({"after_steps": steps, **timed(reference, 0)})
    peak = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM"))) // 1024
    return {"steps": rows, "references": references, "peak_rss_mb": peak, "threads": torch.get_num_threads()}


SIDE_ENV = {
    "thp": ("THP_MEM_ALLOC_ENABLE", "1"),  # torch: transparent huge pages for big CPU buffers
    "cache4096": ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096"),  # oneDNN's default: 1024
}


def spawn(side: str, steps: int, reference_every: int) -> dict:
    """One side in a fresh interpreter (its own oneDNN cache and heap)."""
    multiple, *switches = side.split("+")
    env = dict(os.environ)
    for name, _ in SIDE_ENV.values():
        env.pop(name, None)
    for switch in switches:
        if switch not in SIDE_ENV:
            raise SystemExit(f"--sides: unknown switch +{switch} in {side!r} "
                             f"(known: {', '.join(SIDE_ENV)})")
        name, value = SIDE_ENV[switch]
        env[name] = value
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    cmd = [sys.executable, __file__, "--worker", multiple, "--worker-out", str(out),
           "--steps", str(steps), "--reference-every", str(reference_every)]
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


def print_table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    def mean(rows: list[dict], key: str = "step_s") -> float:
        return statistics.fmean(r[key] for r in rows)

    base = mean(results[0]["steps"])
    refs = results[0]["references"]
    table = Table(title=f"DistillTrainer.train_step over {len(results[0]['steps'])} different "
                        f"{BATCH}-example BANKING77 batches, one process per side; the "
                        f"reference batch (batch 0) again after steps "
                        f"{', '.join(str(r['after_steps']) for r in refs)}")
    for col in ("side", "reference step s, first .. last", "last / 2nd",
                "varying batches: mean step s", "student s", "teacher s", "CPU s",
                "peak RSS MB", "mean step vs side 1"):
        table.add_column(col, justify="right")
    for r in results:
        steps, refs = r["steps"], r["references"]
        table.add_row(
            r["side"], " ".join(f"{x['step_s']:.1f}" for x in refs),
            f"{refs[-1]['step_s'] / refs[1]['step_s']:.3f}", f"{mean(steps):.2f}",
            f"{mean(steps, 'student_s'):.2f}", f"{mean(steps, 'teacher_s'):.2f}",
            f"{mean(steps, 'cpu_s'):.2f}", str(r["peak_rss_mb"]), f"{mean(steps) / base:.3f}")
    Console(width=200).print(table)
    print("last / 2nd: the reference step at the end over its second timing (the first is "
          "the process's first step, cold)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", default="1,16", help="comma-separated padding multiples, each "
                   f"optionally +{' +'.join(SIDE_ENV)}; the first is the peer the last column "
                   "divides by")
    p.add_argument("--steps", type=int, default=28, help="varying batches per side")
    p.add_argument("--reference-every", type=int, default=9,
                   help="run the reference batch again every this many steps")
    p.add_argument("--out", default="benchmarks/results/step_drift.json")
    p.add_argument("--print-only", action="store_true", help="re-print --out")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    _env()
    if args.worker:
        result = run_side(int(args.worker), args.steps, args.reference_every)
        Path(args.worker_out).write_text(json.dumps(result))
        return
    out = REPO / args.out
    if args.print_only:
        print_table(json.loads(out.read_text())["results"])
        return
    from scaffold.hardware import cpu_model

    load = os.getloadavg()[0]
    results = [spawn(side, args.steps, args.reference_every) for side in args.sides.split(",")]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "load_before": load,
                               "load_after": os.getloadavg()[0], "cpu": cpu_model(),
                               "command": " ".join(sys.argv)}, indent=1))
    print_table(results)
    print(f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after; JSON: {out}")


if __name__ == "__main__":
    main()
