"""Time to accuracy: minutes of training until the bare model reaches 0.5 and 0.6.

    .venv/bin/python benchmarks/time_to_accuracy.py                  # all three sides
    .venv/bin/python benchmarks/time_to_accuracy.py --sides trl --trl-budget-min 30
    .venv/bin/python benchmarks/time_to_accuracy.py --print-only     # re-print saved JSON
    # the TRL side needs the bench extra:  pip install -c constraints-cpu.txt -e '.[bench]'

Three ways to teach SmolLM2-135M BANKING77, each evaluated every --eval-every steps on the
same --limit held-out test items (greedy, no harness, through the same vLLM server path):

- ophsd: `distill.run --config configs/banking77_full.yaml` (the harness teaches; gold
  answers of the bank beside it as that config says);
- gold_sft: the same config with `--method gold_sft` (cross-entropy on the gold labels,
  same trainer, same prompt, same LoRA, lr and schedule);
- trl: TRL's `SFTTrainer` on the same prompt text and gold completion (" label<eos>",
  completion-only loss), the same LoRA (r=16, alpha=32, every decoder linear layer), lr,
  schedule and batch; its adapter is merged and reloaded into a vLLM server to evaluate.

The clock is training time only: for Scaffold the sum of `step_s` (harness, rollouts,
teacher, student, sync), for TRL the Trainer's steps; evaluation, model loading, server
start and bank embedding are excluded (printed apart as setup). The Scaffold runs live in
runs/tta-*, resume, and are reused by a rerun. The TRL side runs in a subprocess with a
wall budget (--trl-budget-min): on this 2-core CPU it computes the whole 77-label prompt
for every example (Scaffold computes the shared prefix once per step), so a threshold it
does not reach within the budget is printed as such, never extrapolated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/banking77_full.yaml"
THRESHOLDS = (0.5, 0.6)


def _env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------- Scaffold sides


def run_scaffold(method: str, args: argparse.Namespace) -> dict:
    """Train (or resume, or find finished) runs/tta-<method> and read its curve."""
    out = REPO / "runs" / f"tta-{method}"
    cmd = [sys.executable, "-m", "distill.run", "--config", CONFIG, "--method", method,
           "--steps", str(args.steps), "--eval-every", str(args.eval_every),
           "--eval-limit", str(args.limit), "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    elapsed, curve = 0.0, [(0.0, None)]
    for r in rows:
        elapsed += r.get("step_s", 0.0)
        if "eval_score" in r:
            curve.append((elapsed, r["eval_score"]))
    final = json.loads((out / "eval.json").read_text())["rows"]
    trained = next(r for r in final if r["model"] == "trained")
    base = next(r for r in final if r["model"] == "base")
    curve[0] = (0.0, base["score"])
    curve.append((elapsed, trained["score"]))
    return {"side": method, "run": str(out.relative_to(REPO)), "curve": curve,
            "steps": len(rows), "train_s": elapsed,
            "examples": sum(r.get("examples", 0) + r.get("gold_targets", 0) for r in rows),
            "command_wall_s": wall}


# ---------------------------------------------------------------------------- TRL side


def run_trl(args: argparse.Namespace) -> dict:
    try:
        import trl
        from trl import SFTConfig, SFTTrainer
    except Exception as err:  # noqa: BLE001 - any import failure means "peer unavailable"
        return {"side": "trl", "skipped": f"TRL not importable: {type(err).__name__}: {err}"}
    import torch
    import yaml
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from distill.pairs import gold_target_ids
    from distill.trainer import lora_target_modules, resolve_dtype
    from evals.metrics import held_out
    from evals.runner import MAX_TOKENS, evaluate
    from evals.tasks import get_task
    from scaffold.chat import render_text
    from scaffold.client import PolicyClient
    from scaffold.merge import merge_adapter
    from scaffold.registry import resolve
    from scaffold.server import PolicyServer, ServerConfig

    cfg = yaml.safe_load((REPO / CONFIG).read_text())
    path = resolve(cfg["model"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    task = get_task(cfg["task"])
    train = task.load("train")
    rows = [{"prompt": render_text(tokenizer, task.student_messages(ex)),
             "completion": tokenizer.decode(gold_target_ids(tokenizer, task, ex))}
            for ex in train]
    items = held_out(task.load("test"), args.limit, 0)
    dtype = resolve_dtype("auto")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0,
                             bias="none", target_modules=lora_target_modules(model, "all-linear"))
    work = Path(tempfile.mkdtemp(prefix="tta-trl-"))
    config = SFTConfig(
        output_dir=str(work), per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=1, max_steps=args.steps, seed=0,
        learning_rate=cfg["lr"], lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg["min_lr_ratio"]},
        warmup_steps=cfg["warmup_steps"], weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=1.0, completion_only_loss=True, max_length=None, packing=False,
        gradient_checkpointing=False, bf16=False, use_cpu=not torch.cuda.is_available(),
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config)
    clock = {"train_s": 0.0, "t0": 0.0}
    curve: list[tuple[float, float | None]] = []
    budget = args.trl_budget_min * 60

    server = PolicyServer(ServerConfig(model=path, enable_lora=False,
                                       log_path=str(work / "vllm.log"))).start()
    client = PolicyClient(server.base_url, server.model_name)
    lm = client.dspy_lm(temperature=0.0, max_tokens=MAX_TOKENS[task.kind])

    def score() -> float:
        return evaluate(task, "none", items, lm=lm, model_label="trl", progress=False).score

    class Clock(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kw):
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            clock["train_s"] += time.perf_counter() - clock["t0"]
            step = state.global_step
            if step % args.eval_every == 0 or step == args.steps \
                    or clock["train_s"] >= budget:
                adapter = work / f"step_{step}"
                trainer.model.save_pretrained(str(adapter))
                server.reload_weights(merge_adapter(cfg["model"], adapter, out_root=work))
                curve.append((clock["train_s"], score()))
                print(f"trl step {step}: {clock['train_s'] / 60:.1f} min, "
                      f"accuracy {curve[-1][1]:.3f}", flush=True)
            if clock["train_s"] >= budget:
                control.should_training_stop = True

    try:
        curve.append((0.0, score()))
        trainer.add_callback(Clock())
        trainer.train()
    finally:
        server.stop()
    steps = trainer.state.global_step
    return {"side": "trl", "trl_version": trl.__version__, "curve": curve, "steps": steps,
            "train_s": clock["train_s"], "examples": steps * cfg["batch_size"],
            "budget_s": budget, "stopped_by_budget": steps < args.steps}


# ---------------------------------------------------------------------------- report


def minutes_to(curve: list, threshold: float) -> float | None:
    for t, acc in curve:
        if acc is not None and acc >= threshold:
            return t / 60
    return None


def report(results: list[dict], args: argparse.Namespace, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Time to accuracy: SmolLM2-135M on BANKING77, {args.limit} held-out "
                        f"items, evaluated every {args.eval_every} steps (training time only)")
    for col in ("side", "min to 0.5", "min to 0.6", "final acc", "steps", "examples",
                "train min"):
        table.add_column(col, justify="right")
    for r in results:
        if "skipped" in r:
            table.add_row(r["side"], "skipped", r["skipped"][:60], "", "", "", "")
            continue
        label = f"TRL {r['trl_version']} SFTTrainer" if r["side"] == "trl" else r["side"]
        cells = []
        for th in THRESHOLDS:
            m = minutes_to(r["curve"], th)
            cells.append(f"{m:.1f}" if m is not None else
                         f"> {r['train_s'] / 60:.1f} (not reached)")
        table.add_row(label, *cells, f"{r['curve'][-1][1]:.3f}", str(r["steps"]),
                      str(r["examples"]), f"{r['train_s'] / 60:.1f}")
    Console(width=160).print(table)
    ran = [r for r in results if "skipped" not in r]
    if ran:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for r in ran:
            xs = [t / 60 for t, a in r["curve"] if a is not None]
            ys = [a for _, a in r["curve"] if a is not None]
            ax.plot(xs, ys, marker="o", label=r["side"])
        for th in THRESHOLDS:
            ax.axhline(th, color="grey", linewidth=0.5, linestyle="--")
        ax.set_xlabel("training minutes (evaluation excluded)")
        ax.set_ylabel(f"accuracy, no harness ({args.limit} items)")
        ax.set_title("BANKING77: time to accuracy")
        ax.legend()
        fig.tight_layout()
        png = out.with_suffix(".png")
        fig.savefig(png, dpi=120)
        print(f"wrote {png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", nargs="+", default=["ophsd", "gold_sft", "trl"],
                   choices=("ophsd", "gold_sft", "trl"))
    p.add_argument("--steps", type=int, default=96, help="training steps (batch per config)")
    p.add_argument("--eval-every", type=int, default=8)
    p.add_argument("--limit", type=int, default=300, help="held-out test items (seed 0)")
    p.add_argument("--trl-budget-min", type=float, default=30.0,
                   help="stop the TRL side after this many training minutes")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "time_to_accuracy.json"))
    p.add_argument("--print-only", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    _env()
    out = Path(args.out)
    if args.worker:
        Path(args.worker).write_text(json.dumps(run_trl(args)))
        return
    if args.print_only:
        report(json.loads(out.read_text())["results"], args, out)
        return
    results = []
    for side in args.sides:
        if side != "trl":
            results.append(run_scaffold(side, args))
            continue
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            worker_out = Path(tmp.name)
        cmd = [sys.executable, __file__, "--worker", str(worker_out), "--steps", str(args.steps),
               "--eval-every", str(args.eval_every), "--limit", str(args.limit),
               "--trl-budget-min", str(args.trl_budget_min)]
        subprocess.run(cmd, cwd=REPO, check=False)
        try:
            results.append(json.loads(worker_out.read_text()))
        except (OSError, ValueError):
            results.append({"side": "trl", "skipped": "the TRL worker wrote no result"})
        worker_out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": CONFIG, "limit": args.limit,
                               "eval_every": args.eval_every, "results": results}, indent=1))
    report(results, args, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
