"""Distillation step benchmark: Scaffold's DistillTrainer vs TRL 1.16.0 SDFT, same model and batch.

    .venv/bin/python benchmarks/distill_step.py                     # both sides, 3 timed steps
    .venv/bin/python benchmarks/distill_step.py --side ours --micro-batch 4 2
    .venv/bin/python benchmarks/distill_step.py --steps 5 --response-tokens 128 --batch 4
    .venv/bin/python benchmarks/distill_step.py --gradient-checkpointing   # both sides
    .venv/bin/python benchmarks/distill_step.py --print-only               # re-print saved JSON
    # the peer needs the bench extra:  pip install -c constraints-cpu.txt -e '.[bench]'

Setup, identical on both sides where the libraries allow it:

- Model: SmolLM2-135M-Instruct (``scaffold.registry.resolve``), bf16 base weights where the
  CPU runs bf16 natively (``distill.trainer.resolve_dtype("auto")``), LoRA r=16, alpha=32,
  dropout 0 on every decoder linear layer (fp32 adapter weights), AdamW lr 1e-4, grad-norm
  clip 1.0, no gradient checkpointing, teacher = the frozen starting model (adapter disabled).
- Data: ``--batch`` BANKING77 test questions. Student prompt = the task's bare prompt
  (``student_messages``, 77 labels, ending with the "Label:" prefill); teacher prompt = the
  same user turn plus 5 training examples ("Message: ...\\nLabel: ...") chosen by word
  overlap, a stand-in for the precedent index. Response = ``--response-tokens`` token ids.
- Loss: full-vocabulary reverse KL(student || teacher), temperature 1, token mean.

What each side's step contains (the table says it again):

- ours: ``DistillTrainer.train_step`` on pre-built ``SplicedPair``s (fixed, deterministic
  response ids: in Scaffold rollouts come from the vLLM server and are not part of the step).
  One step = teacher forward (no grad) + student forward/backward + chunked fp32 loss +
  clip + AdamW. Phases from the trainer's own ``time_teacher_s / time_student_s /
  time_optim_s``.
- trl: one optimizer step of ``trl.experimental.sdft.SDFTTrainer`` (``Trainer.train`` with
  ``max_steps`` = warm-up + steps), i.e. HF ``generate`` of the responses with the current
  adapter (sampling, temperature 1, ``min_new_tokens = max_new_tokens = --response-tokens``
  so every completion has exactly that many tokens) + teacher-prompt tokenization + student
  forward with grad + teacher forward (no grad, adapter disabled) + full logits loss
  (``distillation_mode="full_logits"``, ``distillation_alpha=1.0`` = reverse KL,
  importance-sampling clip off) + backward + clip + AdamW. Generation and teacher time are
  measured by wrapping ``_generate`` and the no-grad calls of ``_forward_logits``; "student"
  is the rest of ``training_step`` (forward+loss+backward), "optim" the rest of the step.
  The prompt is the user turn without the "Label:" prefill (SDFT rejects prompts ending in an
  assistant turn; its chat template opens the assistant turn instead), so its prompts are a
  few tokens shorter; the table lists both sides' prompt lengths.

Memory: each side (and each micro-batch size of ours) runs in a fresh subprocess. After the
trainer is built (model loaded, LoRA attached) the process's peak-RSS mark is reset
(``/proc/self/clear_refs`` 5) and its RSS recorded; "peak dRSS" is VmHWM at the end minus
that RSS (warm-up included), so model loading does not count and the sides don't share a heap.
Falls back to ``ru_maxrss`` minus the post-load RSS where the reset is not allowed.

Results go to ``--out`` (JSON, every timed step included) next to the printed table, with
the load average before and after. On a shared machine step times are noisy (identical steps
vary 2-4x on 2 busy cores): the table adds the fastest step ("min") beside mean ± std. On a
2-core CPU one full run (1 warm-up + 3 steps per side) takes about 20 minutes, mostly the
peer's generation; ``--steps 2`` about 15.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
N_PRECEDENTS = 5
PRECEDENT_HEADER = "Similar customer messages from the training set, with their labels:"


# ---------------------------------------------------------------------------- shared setup


def _env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def build_examples(tokenizer, batch: int, response_tokens: int) -> list[dict]:
    """`batch` examples: student and teacher messages (ours), SDFT's prompt and privileged
    context (peer), and deterministic response ids of exactly `response_tokens` tokens."""
    from evals.tasks import get_task

    task = get_task("banking77")
    train, test = task.load("train"), task.load("test")
    train_words = [_words(ex.question) for ex in train]
    examples = []
    for b, ex in enumerate(test[:batch]):
        question = _words(ex.question)
        ranked = sorted(
            range(len(train)),
            key=lambda i: (-len(question & train_words[i]) / (len(question | train_words[i]) or 1), i),
        )
        precedents = "\n\n".join(
            f"Message: {train[i].question}\nLabel: {train[i].answer}" for i in ranked[:N_PRECEDENTS]
        )
        privileged = f"{PRECEDENT_HEADER}\n\n{precedents}"
        student = task.student_messages(ex)
        user = student[0]["content"]
        teacher = [{"role": "user", "content": f"{user}\n\n{privileged}"}, *student[1:]]
        # deterministic text, different per row, cut to exactly `response_tokens` ids
        start = 37 * b
        text = " " + " ".join(t.question for t in train[start : start + 4 * response_tokens])
        response = tokenizer.encode(text, add_special_tokens=False)[:response_tokens]
        if len(response) != response_tokens:
            raise ValueError(f"only {len(response)} response tokens could be built")
        examples.append({
            "student_messages": student,
            "teacher_messages": teacher,
            "sdft_prompt": [{"role": "user", "content": user}],
            "privileged_context": privileged,
            "response_ids": response,
        })
    return examples


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb(reset_ok: bool) -> float:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _summary(steps: list[dict], tokens: int) -> dict:
    out = {}
    for key in steps[0]:
        mean, std = _mean_std([s[key] for s in steps])
        out[key] = {"mean": mean, "std": std}
    out["tokens_per_s"] = tokens / out["step_s"]["mean"]
    if "step_excl_gen_s" in out:
        out["tokens_per_s_excl_gen"] = tokens / out["step_excl_gen_s"]["mean"]
    return out


# ---------------------------------------------------------------------------- ours


def run_ours(args: argparse.Namespace, micro_batch: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from distill.losses import LossConfig
    from distill.splicing import splice
    from distill.trainer import DistillTrainer, TrainerConfig
    from scaffold.chat import render_ids
    from scaffold.registry import resolve

    path = resolve(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = build_examples(tokenizer, args.batch, args.response_tokens)
    pairs = [
        splice(
            render_ids(tokenizer, ex["student_messages"]),
            render_ids(tokenizer, ex["teacher_messages"]),
            ex["response_ids"],
        )
        for ex in examples
    ]
    cfg = TrainerConfig(
        model=path, lora_r=16, lora_alpha=32, lora_dropout=0.0, lora_target_modules="all-linear",
        lr=1e-4, max_grad_norm=1.0, micro_batch_size=micro_batch, teacher="frozen",
        loss=LossConfig(kind="reverse_kl"), seed=0,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    trainer = DistillTrainer(cfg, tokenizer=tokenizer)
    rss_loaded = _rss_mb()
    reset_ok = _reset_peak()

    steps = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        stats = trainer.train_step(pairs)
        wall = time.perf_counter() - t0
        if i >= args.warmup:
            steps.append({
                "step_s": wall, "teacher_s": stats["time_teacher_s"],
                "student_s": stats["time_student_s"], "optim_s": stats["time_optim_s"],
            })
    peak = _peak_mb(reset_ok)
    tokens = sum(len(p.response_ids) for p in pairs)
    return {
        "side": "ours", "micro_batch": micro_batch, "dtype": str(trainer.dtype),
        "threads": torch.get_num_threads(),
        "student_prompt_tokens": [p.student_prompt_len for p in pairs],
        "teacher_prompt_tokens": [p.teacher_prompt_len for p in pairs],
        "response_tokens": [len(p.response_ids) for p in pairs],
        "last_loss": stats["loss"], "steps": steps, **_summary(steps, tokens),
        "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak, "peak_rss_delta_mb": peak - rss_loaded,
        "peak_reset": reset_ok,
        "contains": "teacher fwd + student fwd/bwd + chunked loss + clip + AdamW; "
                    "rollouts precomputed (vLLM in Scaffold), not in the step",
    }


# ---------------------------------------------------------------------------- peer (TRL SDFT)


def run_trl(args: argparse.Namespace) -> dict:
    try:
        import trl
        from trl.experimental.sdft import SDFTConfig, SDFTTrainer
    except Exception as err:  # noqa: BLE001 - any import failure means "peer unavailable"
        return {"side": "trl", "skipped": f"TRL SDFT not importable: {type(err).__name__}: {err}"}
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from distill.trainer import lora_target_modules, resolve_dtype
    from scaffold.registry import resolve

    path = resolve(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", truncation_side="left")
    examples = build_examples(tokenizer, args.batch, args.response_tokens)
    total_steps = args.warmup + args.steps
    rows = [{"prompt": ex["sdft_prompt"], "privileged_context": ex["privileged_context"]}
            for ex in examples] * total_steps
    dtype = resolve_dtype("auto")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    peft_config = LoraConfig(
        task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0, bias="none",
        target_modules=lora_target_modules(model, "all-linear"),
    )
    R = args.response_tokens
    config = SDFTConfig(
        output_dir=tempfile.mkdtemp(prefix="sdft-bench-"),
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        num_generations=1, max_steps=total_steps, shuffle_dataset=False, seed=0,
        learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch", max_grad_norm=1.0,
        # TRL's default is True; both sides follow --gradient-checkpointing (ours: off by default)
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=False,  # no autocast: the bf16 base + fp32 LoRA weights are used as loaded, like ours
        use_cpu=not torch.cuda.is_available(),
        max_prompt_length=None,  # the default 512 would cut the 77-label prompt from the left
        max_completion_length=R, generation_kwargs={"min_new_tokens": R},
        temperature=1.0, top_p=1.0, top_k=0,
        distillation_mode="full_logits", distillation_alpha=1.0, distillation_is_clip=None,
        teacher_model_kind="base", disable_dropout=True,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SDFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=peft_config)

    clock = {"gen": 0.0, "teacher": 0.0, "train_step": 0.0, "prompt_lens": None, "comp_lens": []}
    steps: list[dict] = []

    generate, forward_logits, training_step = (
        trainer._generate, trainer._forward_logits, trainer.training_step)

    def timed_generate(prompt_ids):
        t0 = time.perf_counter()
        out = generate(prompt_ids)
        clock["gen"] += time.perf_counter() - t0
        clock["prompt_lens"] = [len(p) for p in prompt_ids]
        clock["comp_lens"] = [len(c) for c in out[1]]
        return out

    def timed_forward_logits(model, input_ids, attention_mask, logits_to_keep):
        if torch.is_grad_enabled():  # the student forward; the teacher runs under no_grad
            return forward_logits(model, input_ids, attention_mask, logits_to_keep)
        t0 = time.perf_counter()
        out = forward_logits(model, input_ids, attention_mask, logits_to_keep)
        clock["teacher"] += time.perf_counter() - t0
        clock["teacher_prompt_len"] = int(attention_mask.sum(-1).max()) - logits_to_keep
        return out

    def timed_training_step(*a, **kw):
        t0 = time.perf_counter()
        out = training_step(*a, **kw)
        clock["train_step"] += time.perf_counter() - t0
        return out

    trainer._generate = timed_generate
    trainer._forward_logits = timed_forward_logits
    trainer.training_step = timed_training_step

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kw):
            for key in ("gen", "teacher", "train_step"):
                clock[key] = 0.0
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            wall = time.perf_counter() - clock["t0"]
            if state.global_step > args.warmup:
                student = clock["train_step"] - clock["gen"] - clock["teacher"]
                steps.append({
                    "step_s": wall, "teacher_s": clock["teacher"], "student_s": student,
                    "optim_s": wall - clock["train_step"], "generation_s": clock["gen"],
                    "step_excl_gen_s": wall - clock["gen"],
                })

    trainer.add_callback(StepTimer())
    rss_loaded = _rss_mb()
    reset_ok = _reset_peak()
    trainer.train()
    peak = _peak_mb(reset_ok)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = sum(clock["comp_lens"])
    return {
        "side": "trl", "trl_version": trl.__version__, "micro_batch": args.batch,
        "dtype": str(dtype), "threads": torch.get_num_threads(),
        "student_prompt_tokens": clock["prompt_lens"],
        "teacher_prompt_tokens_max": clock.get("teacher_prompt_len"),
        "response_tokens": clock["comp_lens"],
        "last_loss": losses[-1] if losses else None, "steps": steps, **_summary(steps, tokens),
        "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak, "peak_rss_delta_mb": peak - rss_loaded,
        "peak_reset": reset_ok,
        "contains": "HF generate (LoRA on, min=max new tokens) + teacher-prompt tokenize + "
                    "student fwd + teacher fwd + full-logits reverse KL + bwd + clip + AdamW",
    }


# ---------------------------------------------------------------------------- driver


def _worker(args: argparse.Namespace) -> None:
    _env()
    side, _, mbs = args.worker.partition(":")
    result = run_ours(args, int(mbs)) if side == "ours" else run_trl(args)
    Path(args.worker_out).write_text(json.dumps(result, indent=1))


def _spawn(args: argparse.Namespace, worker: str) -> dict:
    """Run one side in a fresh interpreter (own heap, own peak RSS) and read its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    cmd = [sys.executable, __file__, "--worker", worker, "--worker-out", str(out),
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch", str(args.batch), "--response-tokens", str(args.response_tokens)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    try:
        if proc.returncode != 0 or not out.stat().st_size:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"side": worker.split(":")[0], "skipped": f"exit {proc.returncode}: " + " | ".join(tail)}
        result = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    result["process_wall_s"] = wall
    return result


def _fmt(stat: dict | None, digits: int = 2) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.{digits}f}±{stat['std']:.{digits}f}"


def _min(r: dict, key: str) -> float:
    """Fastest timed step: on a shared machine the least disturbed sample."""
    return min(step.get(key, step["step_s"]) for step in r["steps"])


def print_table(results: list[dict], args: argparse.Namespace, load: dict) -> list[str]:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(230, Console().width))
    table = Table(title=f"Distillation step: {MODEL}, batch {args.batch} x {args.response_tokens} "
                        f"response tokens, reverse KL, LoRA r=16, frozen teacher, gradient "
                        f"checkpointing {'on' if args.gradient_checkpointing else 'off'} "
                        f"({args.steps} timed steps after {args.warmup} warm-up)")
    cols = ("side", "step s", "step min s", "teacher s", "student f+b s", "optim s",
            "generation s", "step-gen s", "step-gen min s", "peak dRSS MB", "peak RSS MB",
            "tok/s", "tok/s excl gen", "prompt S/T")
    table.add_column(cols[0], min_width=18)
    for col in cols[1:]:
        table.add_column(col, justify="right", no_wrap=True)
    ran = [r for r in results if "skipped" not in r]
    for r in ran:
        label = "ours" if r["side"] == "ours" else f"TRL {r.get('trl_version', '')} SDFT"
        t_prompt = r.get("teacher_prompt_tokens") or [r.get("teacher_prompt_tokens_max")]
        table.add_row(
            f"{label} (mbs {r['micro_batch']})", _fmt(r["step_s"]), f"{_min(r, 'step_s'):.2f}",
            _fmt(r["teacher_s"]), _fmt(r["student_s"]), _fmt(r["optim_s"]),
            _fmt(r.get("generation_s")), _fmt(r.get("step_excl_gen_s", r["step_s"])),
            f"{_min(r, 'step_excl_gen_s'):.2f}", f"{r['peak_rss_delta_mb']:.0f}",
            f"{r['peak_rss_mb']:.0f}", f"{r['tokens_per_s']:.1f}",
            f"{r.get('tokens_per_s_excl_gen', r['tokens_per_s']):.1f}",
            f"{max(r['student_prompt_tokens'])}/{max(t for t in t_prompt if t is not None)}",
        )
    notes = []
    peer = next((r for r in ran if r["side"] == "trl"), None)
    ours = [r for r in ran if r["side"] == "ours"]
    if peer and ours:
        for o in ours:
            def ratio(key: str, peer_key: str | None = None, o=o) -> float:
                return o[key]["mean"] / peer[peer_key or key]["mean"]

            min_excl = _min(o, "step_s") / _min(peer, "step_excl_gen_s")
            mem = o["peak_rss_delta_mb"] / peer["peak_rss_delta_mb"]
            table.add_row(
                f"ours/peer (mbs {o['micro_batch']})", f"{ratio('step_s'):.2f}x",
                f"{_min(o, 'step_s') / _min(peer, 'step_s'):.2f}x", f"{ratio('teacher_s'):.2f}x",
                f"{ratio('student_s'):.2f}x", f"{ratio('optim_s'):.2f}x", "",
                f"{ratio('step_s', 'step_excl_gen_s'):.2f}x", f"{min_excl:.2f}x", f"{mem:.2f}x",
                f"{o['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x",
                f"{o['tokens_per_s'] / peer['tokens_per_s']:.2f}x",
                f"{o['tokens_per_s'] / peer['tokens_per_s_excl_gen']:.2f}x", "",
            )
            excl = 1 / ratio("step_s", "step_excl_gen_s")
            notes.append(
                f"mbs {o['micro_batch']}: speed-up {1 / ratio('step_s'):.2f}x incl. peer generation, "
                f"{excl:.2f}x excl. it (min over steps: {1 / min_excl:.2f}x); goal >= 1.5x on the "
                f"like-for-like (excl. generation) number: {'met' if excl >= 1.5 else 'NOT met'}. "
                f"Peak dRSS {mem:.2f}x of peer; goal <= 0.7x: {'met' if mem <= 0.7 else 'NOT met'}.")
    console.print(table)
    console.print("ours: train_step on fixed response ids (rollouts from vLLM, outside the step). "
                  "TRL: Trainer step incl. HF generate. Last row = ours / peer "
                  "(times and memory: < 1 is better for ours; tok/s: > 1).")
    for r in results:
        if "skipped" in r:
            console.print(f"[yellow]{r['side']} skipped:[/] {r['skipped']}")
    for note in notes:
        console.print(note)
    console.print(f"load average before {load['before']}, after {load['after']} "
                  f"({os.cpu_count()} CPUs; the machine is shared, times are noisy)")
    return notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--response-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--micro-batch", type=int, nargs="+", default=[4],
                   help="our micro_batch_size(s), one subprocess each (the peer uses --batch)")
    p.add_argument("--side", choices=("both", "ours", "trl"), default="both")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="checkpoint the decoder layers on both sides (TRL's default; ours: off)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "distill_step.json"))
    p.add_argument("--print-only", action="store_true",
                   help="print the table of an existing --out JSON without running anything")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.print_only:
        saved = json.loads(Path(args.out).read_text())
        for key in ("batch", "response_tokens", "steps", "warmup", "gradient_checkpointing"):
            setattr(args, key, saved.get(key, False))
        print_table(saved["results"], args, saved["load_average"])
        return

    load_before = [round(x, 2) for x in os.getloadavg()]
    workers = []
    if args.side in ("both", "ours"):
        workers += [f"ours:{m}" for m in args.micro_batch]
    if args.side in ("both", "trl"):
        workers.append("trl")
    results = [_spawn(args, w) for w in workers]
    load = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    notes = print_table(results, args, load)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": MODEL, "batch": args.batch, "response_tokens": args.response_tokens,
        "steps": args.steps, "warmup": args.warmup, "load_average": load,
        "gradient_checkpointing": args.gradient_checkpointing,
        "cpus": os.cpu_count(), "results": results, "verdict": notes,
    }, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
