"""Time to accuracy: minutes of training until the bare model reaches 0.5 and 0.6.

    bash scripts/banking77_full_report.sh                             # trains the runs it reads
    .venv/bin/python benchmarks/time_to_accuracy.py                   # all three sides
    .venv/bin/python benchmarks/time_to_accuracy.py --sides trl --trl-budget-min 30
    .venv/bin/python benchmarks/time_to_accuracy.py --print-only      # re-print saved JSON
    # the TRL side (the bench extra) comes with scripts/setup_env.sh

Three ways to teach SmolLM2-135M BANKING77 with every train label at hand, each scored on the
same --limit held-out test items (greedy, bare prompt, no harness, one vLLM server):

- ophsd: the full-label recipe of docs/results.md (banking77-all-labels): 44 gold-SFT steps
  (runs/b77-full-sft), then 28 OPHSD steps from that adapter (runs/b77-full-ophsd);
- gold_sft: the same 44 steps continued with gold SFT to 115 steps, about the same minutes
  (runs/b77-full-sft-115);
- trl: TRL's `SFTTrainer` on stage 1's exact setup (configs/banking77_full_sft.yaml: the
  same prompt text and gold completion " label<eos>", completion-only loss, LoRA r=16 alpha=32
  on every decoder linear layer, lr, cosine schedule, warmup, batch of 32), scored at the
  same steps as our checkpoints; its adapter is merged and reloaded into the server.

The Scaffold curves are read from the runs' checkpoints (every 11 or 7 steps), so nothing
is evaluated inside a timed loop. The clock is training time only: for Scaffold the sum of
`step_s` through the checkpoint's step (harness, rollouts, teacher, student, sync; a
two-stage run adds its first stage, as evals.compare's compute does), for TRL the
Trainer's steps. Evaluation, model loading, server start and bank embedding are excluded.
Scores are cached by adapter digest in the output JSON, so a rerun scores only new
checkpoints. The TRL side runs in a subprocess with a wall budget (--trl-budget-min): it
computes the whole 77-label prompt for every row (Scaffold computes the shared prefix once
per step), so a threshold it does not reach within the budget is printed as such, never
extrapolated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIDES = {"ophsd": "runs/b77-full-ophsd", "gold_sft": "runs/b77-full-sft-115",
         # 60-minute recipes (issue 14 item 3): gold SFT for 200 steps, and the same run's
         # step 150 continued with OPHSD (harness filtered by gold) for the same minutes
         "gold_sft_200": "runs/b77-full-gold-sft", "ophsd_polish": "runs/b77-full-polish"}
TRL_CONFIG = "configs/banking77_full_sft.yaml"
TASK, MODEL = "banking77", "smollm2-135m-instruct"
THRESHOLDS = (0.5, 0.6)


def _env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def _digest(adapter: Path) -> str:
    return hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- Scaffold sides


def run_chain(run: Path) -> list[tuple[Path, int | None]]:
    """The run and the runs it started from (each stage's init_adapter), oldest first, each
    with the last step that fed the next stage (None: all of it, the final adapter)."""
    from distill.checkpoint import read_run
    from evals.compare import adapter_origin

    chain: list[tuple[Path, int | None]] = [(run, None)]
    while init := read_run(chain[0][0]).config.get("init_adapter"):
        origin = adapter_origin(init if Path(init).is_absolute() else REPO / init)
        if origin is None or origin[0].resolve() in {c.resolve() for c, _ in chain}:
            break
        chain.insert(0, origin)
    return chain


def side_points(run: Path) -> list[dict]:
    """Every committed checkpoint of the run's stages: (training seconds so far, adapter)."""
    from distill.checkpoint import read_run
    from evals.compare import run_compute

    points = []
    for stage, last in run_chain(run):
        for step, adapter in sorted(read_run(stage).adapters.items()):
            if last is not None and step > last:
                continue  # past the checkpoint the next stage started from
            compute = run_compute(stage, up_to=step)
            points.append({"run": str(stage.relative_to(REPO)), "step": step,
                           "train_s": compute["train_wall_s"], "examples": compute["examples"],
                           "steps": compute["steps"],
                           "adapter": str(adapter), "sha256": _digest(adapter)})
    return points


def score_points(points: list[dict], scores: dict[str, dict], limit: int) -> None:
    """Score every point's adapter not in `scores` (keyed by digest; adapter None: the base
    model) on one vLLM server."""
    todo = [p for p in points if p["sha256"] not in scores]
    if not todo:
        return
    from evals.metrics import held_out
    from evals.runner import MAX_TOKENS, evaluate
    from evals.tasks import get_task
    from scaffold.client import PolicyClient
    from scaffold.merge import merge_adapter
    from scaffold.registry import resolve
    from scaffold.server import PolicyServer, ServerConfig

    task = get_task(TASK)
    items = held_out(task.load("test"), limit, 0)
    with tempfile.TemporaryDirectory(prefix="tta-merged-") as work, \
            PolicyServer(ServerConfig(model=resolve(MODEL), enable_lora=False,
                                      log_path=str(Path(work) / "vllm.log"))) as server:
        lm = PolicyClient(server.base_url, server.model_name).dspy_lm(
            server.model_name, temperature=0.0, max_tokens=MAX_TOKENS[task.kind])
        for p in todo:
            if p["adapter"] is not None:  # None: the base weights the server started with
                server.reload_weights(merge_adapter(MODEL, p["adapter"], out_root=Path(work)))
            res = evaluate(task, "none", items, lm=lm, model_label=f"{p['run']}@{p['step']}",
                           progress=False)
            scores[p["sha256"]] = {"score": res.score, "ci": [res.ci_low, res.ci_high],
                                   "n": res.n}
            print(f"{p['run']}@{p['step']}: {res.score:.3f} after "
                  f"{p['train_s'] / 60:.1f} training min", flush=True)


def run_scaffold(side: str, run: Path, base: dict, scores: dict, args) -> dict:
    from distill.checkpoint import NotARunFolder

    try:
        points = side_points(run)
    except NotARunFolder:
        return {"side": side, "skipped": f"{run} is missing: bash scripts/banking77_full_report.sh "
                                         "trains it"}
    score_points(points, scores, args.limit)
    curve = [(0.0, base["score"])] + [(p["train_s"], scores[p["sha256"]]["score"])
                                      for p in points]
    last = points[-1]
    return {"side": side, "run": str(run.relative_to(REPO)), "curve": curve,
            "points": [{**p, **scores[p["sha256"]]} for p in points],
            "steps": last["steps"], "train_s": last["train_s"],
            "examples": last["examples"],
            "s_per_step": _median_step_s(run)}


def _median_step_s(run: Path) -> float:
    import statistics

    from distill.checkpoint import read_run

    return statistics.median(r["step_s"] for r in read_run(run).metrics if "step_s" in r)


def score_base(scores: dict, limit: int) -> dict:
    """The untrained model's score (step 0 of every curve), cached under the key "base"."""
    score_points([{"sha256": "base", "adapter": None, "run": "base", "step": 0,
                   "train_s": 0.0}], scores, limit)
    return scores["base"]


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

    cfg = yaml.safe_load((REPO / TRL_CONFIG).read_text())
    path = resolve(cfg["model"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    task = get_task(cfg["task"])
    train = task.load("train")
    rows = [{"prompt": render_text(tokenizer, task.student_messages(ex)),
             "completion": tokenizer.decode(gold_target_ids(tokenizer, task, ex))}
            for ex in train]
    items = held_out(task.load("test"), args.limit, 0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype("auto"))
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0,
                             bias="none", target_modules=lora_target_modules(model, "all-linear"))
    work = Path(tempfile.mkdtemp(prefix="tta-trl-"))
    micro = args.trl_micro_batch  # the same 32 examples per optimizer step, accumulated
    config = SFTConfig(
        output_dir=str(work), per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg["batch_size"] // micro, max_steps=cfg["steps"], seed=0,
        learning_rate=cfg["lr"], lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg["min_lr_ratio"]},
        warmup_steps=cfg["warmup_steps"], weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=1.0, completion_only_loss=True, max_length=None, packing=False,
        gradient_checkpointing=False, bf16=False, use_cpu=not torch.cuda.is_available(),
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config)
    clock = {"train_s": 0.0, "t0": 0.0, "steps_s": []}
    curve: list[tuple[float, float | None]] = []
    points: list[dict] = []
    budget = args.trl_budget_min * 60
    every = cfg["checkpoint_every"]  # scored at the steps our stage-1 checkpoints were

    server = PolicyServer(ServerConfig(model=path, enable_lora=False,
                                       log_path=str(work / "vllm.log"))).start()
    lm = PolicyClient(server.base_url, server.model_name).dspy_lm(
        server.model_name, temperature=0.0, max_tokens=MAX_TOKENS[task.kind])

    def score(step: int) -> float:
        res = evaluate(task, "none", items, lm=lm, model_label=f"trl@{step}", progress=False)
        points.append({"step": step, "train_s": clock["train_s"], "score": res.score,
                       "ci": [res.ci_low, res.ci_high], "n": res.n})
        return res.score

    class Clock(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kw):
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            took = time.perf_counter() - clock["t0"]
            clock["train_s"] += took
            clock["steps_s"].append(took)
            step = state.global_step
            print(f"trl step {step}: {took:.1f} s", flush=True)
            out_of_time = clock["train_s"] >= budget
            if step % every == 0 or step == cfg["steps"] or out_of_time:
                adapter = work / f"step_{step}"
                trainer.model.save_pretrained(str(adapter))
                server.reload_weights(merge_adapter(cfg["model"], adapter, out_root=work))
                curve.append((clock["train_s"], score(step)))
                print(f"trl step {step}: {clock['train_s'] / 60:.1f} min, "
                      f"accuracy {curve[-1][1]:.3f}", flush=True)
            if out_of_time:
                control.should_training_stop = True

    try:
        curve.append((0.0, score(0)))
        trainer.add_callback(Clock())
        trainer.train()
    finally:
        server.stop()
    import statistics

    steps = trainer.state.global_step
    return {"side": "trl", "trl_version": trl.__version__, "config": TRL_CONFIG,
            "curve": curve, "points": points, "steps": steps, "train_s": clock["train_s"],
            "examples": steps * cfg["batch_size"], "budget_s": budget,
            "s_per_step": statistics.median(clock["steps_s"]) if clock["steps_s"] else None,
            "stopped_by_budget": steps < cfg["steps"]}


# ---------------------------------------------------------------------------- report


def minutes_to(curve: list, threshold: float) -> float | None:
    for t, acc in curve:
        if acc is not None and acc >= threshold:
            return t / 60
    return None


def report(results: list[dict], limit: int, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Time to accuracy: SmolLM2-135M on BANKING77 (all labels), {limit} "
                        "held-out items, no harness, training minutes only")
    for col in ("side", "min to 0.5", "min to 0.6", "final acc", "steps", "examples",
                "train min", "median s/step"):
        table.add_column(col, justify="right")
    for r in results:
        if "skipped" in r:
            table.add_row(r["side"], "skipped", r["skipped"][:60], "", "", "", "", "")
            continue
        label = f"TRL {r['trl_version']} SFTTrainer" if r["side"] == "trl" else r["side"]
        cells = []
        for th in THRESHOLDS:
            m = minutes_to(r["curve"], th)
            cells.append(f"{m:.1f}" if m is not None else
                         f"> {r['train_s'] / 60:.1f} (not reached)")
        table.add_row(label, *cells, f"{r['curve'][-1][1]:.3f}", str(r["steps"]),
                      str(r["examples"]), f"{r['train_s'] / 60:.1f}",
                      f"{r['s_per_step']:.1f}" if r.get("s_per_step") else "")
    Console(width=160).print(table)
    same_step = _same_step_rows(results)
    if same_step:
        step_table = Table(title="At the same step of the same schedule (stage 1 setup)")
        for col in ("step", "Scaffold gold SFT", "TRL SFTTrainer", "Scaffold min", "TRL min",
                    "time ratio TRL/ours"):
            step_table.add_column(col, justify="right")
        for row in same_step:
            step_table.add_row(*row)
        Console(width=160).print(step_table)
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
        ax.set_ylabel(f"accuracy, no harness ({limit} items)")
        ax.set_title("BANKING77, all labels: time to accuracy")
        ax.legend()
        fig.tight_layout()
        png = out.with_suffix(".png")
        fig.savefig(png, dpi=120)
        print(f"wrote {png}")


def _same_step_rows(results: list[dict]) -> list[tuple[str, ...]]:
    """TRL's scored steps beside Scaffold's gold-SFT checkpoint of the same step (both
    follow stage 1's 44-step schedule through step 44)."""
    by_side = {r["side"]: r for r in results if "skipped" not in r}
    if "trl" not in by_side or "gold_sft" not in by_side:
        return []
    ours = {p["step"]: p for p in by_side["gold_sft"]["points"]
            if p["run"] == SIDES["gold_sft"] and p["step"] <= 44}
    rows = []
    for p in by_side["trl"]["points"]:
        if p["step"] in ours:
            o = ours[p["step"]]
            rows.append((str(p["step"]), f"{o['score']:.3f}", f"{p['score']:.3f}",
                         f"{o['train_s'] / 60:.1f}", f"{p['train_s'] / 60:.1f}",
                         f"{p['train_s'] / o['train_s']:.2f}x"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", nargs="+", default=["ophsd", "gold_sft", "trl"],
                   choices=(*SIDES, "trl"), help="which curves to draw (sides not named keep "
                   "their saved results)")
    p.add_argument("--limit", type=int, default=300, help="held-out test items (seed 0)")
    p.add_argument("--trl-budget-min", type=float, default=30.0,
                   help="stop the TRL side after this many training minutes")
    p.add_argument("--trl-micro-batch", type=int, default=4,
                   help="TRL's rows per forward (gradient accumulation makes up the batch of "
                        "32): at 32 and at 8 rows of the whole 77-label prompt the worker was "
                        "OOM-killed at 24 GB beside the evaluation server")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "time_to_accuracy.json"),
                   help="results JSON (its scores are reused by a rerun); the PNG goes beside it")
    p.add_argument("--print-only", action="store_true", help="re-print the saved results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    _env()
    out = Path(args.out)
    if args.worker:
        Path(args.worker).write_text(json.dumps(run_trl(args)))
        return
    saved = json.loads(out.read_text()) if out.exists() else {}
    if args.print_only:
        if not saved:
            p.error(f"--print-only: {out} does not exist yet; run without it first")
        report(saved["results"], saved["limit"], out)
        return
    scores = saved.get("scores", {}) if saved.get("limit") == args.limit else {}
    previous = {r["side"]: r for r in saved.get("results", [])}
    base = score_base(scores, args.limit)
    results = []
    for side in args.sides:
        if side != "trl":
            results.append(run_scaffold(side, REPO / SIDES[side], base, scores, args))
            continue
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            worker_out = Path(tmp.name)
        cmd = [sys.executable, __file__, "--worker", str(worker_out), "--limit", str(args.limit),
               "--trl-budget-min", str(args.trl_budget_min),
               "--trl-micro-batch", str(args.trl_micro_batch)]
        code = subprocess.run(cmd, cwd=REPO, check=False).returncode
        try:
            results.append(json.loads(worker_out.read_text()))
        except (OSError, ValueError):
            why = "killed by SIGKILL (out of memory?)" if code == -9 else f"exit code {code}"
            results.append({"side": "trl", "skipped": f"the TRL worker wrote no result: {why}"})
        worker_out.unlink(missing_ok=True)
    kept = [r for s, r in previous.items() if s not in args.sides]  # sides not rerun stay
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"task": TASK, "model": MODEL, "limit": args.limit,
                               "sides": SIDES, "trl_config": TRL_CONFIG, "scores": scores,
                               "results": kept + results}, indent=1))
    report(kept + results, args.limit, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
