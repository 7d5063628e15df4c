"""Distillation step benchmark: Scaffold's DistillTrainer vs TRL 1.16.0 SDFT, same model and batch.

    .venv/bin/python benchmarks/distill_step.py                     # label shapes, all sides
    .venv/bin/python benchmarks/distill_step.py --shapes long       # 4 x 256 response tokens
    .venv/bin/python benchmarks/distill_step.py --side ours-server --steps 5
    .venv/bin/python benchmarks/distill_step.py --print-only        # re-print saved JSON
    .venv/bin/python benchmarks/distill_step.py --side ours-trainer --profile   # top ops
    .venv/bin/python benchmarks/distill_step.py --side ours-trainer trl --micro-batch 8 32 \
        --model qwen2.5-coder-0.5b-instruct --shapes long --batch 16   # a GPU, no vLLM there
    # the peer (TRL, the bench extra) comes with scripts/setup_env.sh

Shapes (``--shapes``):

- ``label`` (default): the real BANKING77 step of 32 examples. Student prompt = the task's
  bare prompt (77 label names, ending with the "Label:" prefill); teacher prompt =
  draft_verify's draft prompt (3 training examples, most similar last; similarity by word
  overlap here, a stand-in for the precedent index); response = the gold label's token
  ids and EOS (6-7 tokens). Loss: forward KL with the teacher restricted to the labels'
  token trie (Scaffold's label recipe); TRL: forward KL over the full vocabulary
  (``distillation_alpha=0``), its responses sampled with exactly 7 new tokens.
- ``long``: 4 examples x 256 response tokens, the student prompt as above, the teacher
  prompt the same user turn plus 5 precedents; reverse KL over the full vocabulary
  (``distillation_alpha=1``), both sides.

Sides, each in a fresh subprocess (own heap, own peak RSS):

- ``ours-trainer``: ``DistillTrainer.train_step`` with the trainer's own teacher forward
  (teacher = the frozen starting model). Fixed, deterministic response ids: in Scaffold the
  rollouts come from the vLLM server and are not part of this step.
- ``ours-server`` (label shapes only): the teacher scored by a vLLM server
  (``distill.loop.score_teacher_on_server``: the answer-space support of every response
  position, prefix-cache hits for the teacher prompt), then ``train_step`` with those
  log-probabilities and no teacher forward (teacher = the served live policy). The
  scoring requests are timed inside the step; the server starts before the clock, and its
  memory is its own process's (not in the peak RSS column).
- ``trl``: one optimizer step of ``trl.experimental.sdft.SDFTTrainer`` (``Trainer.train``
  with ``max_steps`` = warm-up + steps): HF ``generate`` of the responses with the current
  adapter (``min_new_tokens = max_new_tokens``) + teacher-prompt tokenization + student
  forward with grad + teacher forward (no grad, adapter disabled) + full-logits loss +
  backward + clip + AdamW. Generation and teacher time are measured by wrapping
  ``_generate`` and the no-grad calls of ``_forward_logits``; "step-gen" is the step
  without generation, the like-for-like number against ours. SDFT's prompt is the user
  turn without the "Label:" prefill (it rejects prompts ending in an assistant turn), so
  its prompts are a few tokens shorter; the table lists both sides' prompt lengths.

Common: SmolLM2-135M-Instruct (``--model``: any bundled name or model folder), base weights
in the dtype the device runs natively (``scaffold.hardware``: bf16 on a GPU or with
AVX512-BF16/AMX, else fp32), LoRA r=16, alpha=32,
dropout 0 on every decoder linear layer (fp32 adapter weights), AdamW, grad-norm clip 1.0,
no gradient checkpointing. Memory: after the trainer is built the peak-RSS mark is reset
(``/proc/self/clear_refs`` 5); "peak dRSS" is VmHWM at the end minus the RSS then. On a GPU
both sides run there (TRL's Trainer and ours pick CUDA when it is present), each step is
timed between ``torch.cuda.synchronize()`` calls, and "peak GPU MB" is
``torch.cuda.max_memory_allocated`` over the warm-up and timed steps, the weights included.

``--attention`` and ``--lora-compute`` set the trainer's (`distill.trainer.TrainerConfig`);
``--attention sdpa --lora-compute float32`` is the step as it was before the grouped
attention and the bf16 LoRA compute. ``--profile`` runs one more step of each of our sides
under ``torch.profiler`` and prints its most expensive operators (not in the timings).

Results go to ``--out`` (JSON, every timed step) next to the printed table, with the load
average before and after and the CPU. Step times on a shared machine are noisy: the table
adds the fastest step ("min") beside mean ± std.
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


def _nearest(train: list, train_words: list[set[str]], question: str, k: int) -> list:
    words = _words(question)
    ranked = sorted(range(len(train)), key=lambda i: (
        -len(words & train_words[i]) / (len(words | train_words[i]) or 1), i))
    return [train[i] for i in ranked[:k]]


def build_examples(tokenizer, shapes: str, batch: int, response_tokens: int) -> list[dict]:
    """`batch` examples: student and teacher messages (ours), SDFT's prompt and privileged
    context (peer), and deterministic response ids (label shapes: the gold label + EOS;
    long shapes: exactly `response_tokens` ids of training text)."""
    from evals.tasks import get_task

    task = get_task("banking77")
    train, test = task.load("train"), task.load("test")
    train_words = [_words(ex.question) for ex in train]
    examples = []
    for b, ex in enumerate(test[:batch]):
        student = task.student_messages(ex)
        user = student[0]["content"]
        if shapes == "label":  # draft_verify's draft prompt (harnesses/draft_verify.py)
            shown = _nearest(train, train_words, ex.question, 3)[::-1]  # most similar last
            block = "\n\n".join(f"Message: {p.question}\nLabel: {p.answer}" for p in shown)
            privileged = f"Here are similar messages with their labels:\n\n{block}"
            teacher = [{"role": "user", "content": f"Classify the message. {privileged}\n\n"
                        f"Message: {ex.question}\n\n{task.format_instruction()}"}, *student[1:]]
            response = tokenizer.encode(f" {ex.answer}", add_special_tokens=False) + \
                [tokenizer.eos_token_id]
        else:
            block = "\n\n".join(f"Message: {p.question}\nLabel: {p.answer}"
                                 for p in _nearest(train, train_words, ex.question, N_PRECEDENTS))
            privileged = f"{PRECEDENT_HEADER}\n\n{block}"
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


def _cpu_name() -> str:
    """The CPU model and whether it runs bf16 natively: step times depend on both."""
    from scaffold.hardware import cpu_model, cpu_native_bf16

    name = cpu_model()
    import torch

    gpu = f"; GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{name}, {os.cpu_count()} cores, native bf16: "
            f"{'yes' if cpu_native_bf16() else 'no'}{gpu}")


def _sync() -> None:
    """Wait for the GPU's queued work, so that a wall-clock mark means what it says."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
            "gpu": torch.cuda.get_device_name()}


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


def run_ours(args: argparse.Namespace, micro_batch: int, scorer: str) -> dict:
    import torch
    from transformers import AutoTokenizer

    from distill.answer_space import AnswerSpace
    from distill.losses import LossConfig
    from distill.pairs import StepInputs
    from distill.trainer import DistillTrainer, TrainerConfig
    from evals.tasks import get_task
    from scaffold.chat import render_ids
    from scaffold.registry import resolve

    path = resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = build_examples(tokenizer, args.shapes, args.batch, args.response_tokens)
    label = args.shapes == "label"
    space = AnswerSpace.from_texts(tokenizer, get_task("banking77").answer_texts()) \
        if label else None
    inputs = StepInputs()
    for ex in examples:
        inputs.add(render_ids(tokenizer, ex["student_messages"]),
                   render_ids(tokenizer, ex["teacher_messages"]), ex["response_ids"],
                   max_len=4096, space=space)
    pairs = inputs.pairs
    server = None
    if scorer == "server":  # the loop (and DSPy with it) only where a server scores
        from distill.loop import score_teacher_on_server
        from scaffold.client import PolicyClient
        from scaffold.server import PolicyServer, ServerConfig

        server = PolicyServer(ServerConfig(model=path, enable_lora=False)).start()
        ctx = type("Ctx", (), {"client": PolicyClient(server.base_url, server.model_name),
                               "policy_name": server.model_name,
                               "cfg": type("Cfg", (), {"concurrency": 32})()})()
    cfg = TrainerConfig(
        model=path, lora_r=16, lora_alpha=32, lora_dropout=0.0, lora_target_modules="all-linear",
        lr=1e-4, max_grad_norm=1.0, micro_batch_size=micro_batch,
        teacher="live" if scorer == "server" else "frozen",
        loss=LossConfig(kind="forward_kl" if label else "reverse_kl"), seed=0,
        gradient_checkpointing=args.gradient_checkpointing, attention=args.attention,
        lora_compute=args.lora_compute,
    )
    trainer = DistillTrainer(cfg, tokenizer=tokenizer)
    rss_loaded = _rss_mb()
    reset_ok = _reset_peak()
    _reset_gpu_peak()

    steps = []
    try:
        for i in range(args.warmup + args.steps):
            _sync()
            t0 = time.perf_counter()
            scoring = 0.0
            if server is not None:
                score_teacher_on_server(ctx, inputs)
                scoring = time.perf_counter() - t0
            stats = trainer.train_step(
                pairs, supports=inputs.supports,
                teacher_logprobs=inputs.teacher_logprobs if server is not None else None)
            _sync()
            wall = time.perf_counter() - t0
            if i >= args.warmup:
                steps.append({
                    "step_s": wall, "teacher_s": stats["time_teacher_s"] + scoring,
                    "student_s": stats["time_student_s"], "optim_s": stats["time_optim_s"],
                })
        peak = _peak_mb(reset_ok)
        gpu = _gpu_peak()
        top_ops = _profile_step(trainer, inputs, server is not None, ctx if server else None) \
            if args.profile else []
    finally:
        if server is not None:
            server.stop()
    tokens = sum(len(p.response_ids) for p in pairs)
    teacher = "vLLM server scores the answer-space support (timed in the step)" \
        if server is not None else "teacher fwd (frozen, in the trainer)"
    return {
        "side": f"ours-{scorer}", "micro_batch": micro_batch, "dtype": str(trainer.dtype),
        "attention": trainer.base.config._attn_implementation,
        "lora_compute": args.lora_compute, "top_ops": top_ops,
        "threads": torch.get_num_threads(),
        "student_prompt_tokens": [p.student_prompt_len for p in pairs],
        "teacher_prompt_tokens": [p.teacher_prompt_len for p in pairs],
        "response_tokens": [len(p.response_ids) for p in pairs],
        "teacher_requests": inputs.counts["teacher_requests"] // max(1, args.warmup + args.steps),
        "last_loss": stats["loss"], "steps": steps, **_summary(steps, tokens),
        "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak, "peak_rss_delta_mb": peak - rss_loaded,
        "peak_reset": reset_ok, **gpu,
        "contains": f"{teacher} + student fwd/bwd + chunked loss + clip + AdamW; rollouts "
                    "precomputed (vLLM in Scaffold), not in the step",
    }


def _profile_step(trainer, inputs, given: bool, ctx) -> list[dict]:
    """One more step under torch.profiler: the operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        if given:  # the loop (and DSPy with it) only where a server scores
            from distill.loop import score_teacher_on_server

            score_teacher_on_server(ctx, inputs)
        trainer.train_step(inputs.pairs, supports=inputs.supports,
                           teacher_logprobs=inputs.teacher_logprobs if given else None)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count}
            for e in events[:15]]


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

    path = resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", truncation_side="left")
    examples = build_examples(tokenizer, args.shapes, args.batch, args.response_tokens)
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
    trl_micro = args.trl_micro_batch or args.batch
    if args.batch % trl_micro:
        raise SystemExit(f"--trl-micro-batch {trl_micro} must divide --batch {args.batch}")
    config = SDFTConfig(
        output_dir=tempfile.mkdtemp(prefix="sdft-bench-"),
        # the same examples per optimizer step as ours, in micro-batches: at 32 label-shape
        # examples in one batch TRL's full-vocabulary logits were OOM-killed at 24 GB
        per_device_train_batch_size=trl_micro,
        gradient_accumulation_steps=args.batch // trl_micro,
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
        # forward KL for label shapes (Scaffold's label loss), reverse KL for long ones
        distillation_mode="full_logits", distillation_is_clip=None,
        distillation_alpha=0.0 if args.shapes == "label" else 1.0,
        teacher_model_kind="base", disable_dropout=True,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SDFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=peft_config)

    clock = {"gen": 0.0, "teacher": 0.0, "train_step": 0.0, "prompt_lens": [], "comp_lens": []}
    steps: list[dict] = []

    generate, forward_logits, training_step = (
        trainer._generate, trainer._forward_logits, trainer.training_step)

    def timed_generate(prompt_ids):
        t0 = time.perf_counter()
        out = generate(prompt_ids)
        clock["gen"] += time.perf_counter() - t0
        clock["prompt_lens"] += [len(p) for p in prompt_ids]  # one call per micro-batch
        clock["comp_lens"] += [len(c) for c in out[1]]
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
            clock["prompt_lens"], clock["comp_lens"] = [], []
            _sync()
            clock["t0"] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            _sync()
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
    _reset_gpu_peak()
    trainer.train()
    peak = _peak_mb(reset_ok)
    gpu = _gpu_peak()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = sum(clock["comp_lens"])
    return {
        "side": "trl", "trl_version": trl.__version__, "micro_batch": trl_micro,
        "dtype": str(dtype), "threads": torch.get_num_threads(),
        "student_prompt_tokens": clock["prompt_lens"],
        "teacher_prompt_tokens_max": clock.get("teacher_prompt_len"),
        "response_tokens": clock["comp_lens"],
        "last_loss": losses[-1] if losses else None, "steps": steps, **_summary(steps, tokens),
        "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak, "peak_rss_delta_mb": peak - rss_loaded,
        "peak_reset": reset_ok, **gpu,
        "contains": "HF generate (LoRA on, min=max new tokens) + teacher-prompt tokenize + "
                    "student fwd + teacher fwd + full-logits reverse KL + bwd + clip + AdamW",
    }


# ---------------------------------------------------------------------------- driver


def _worker(args: argparse.Namespace) -> None:
    _env()
    side, _, mbs = args.worker.partition(":")
    if side == "trl":
        result = run_trl(args)
    else:
        result = run_ours(args, int(mbs), side.removeprefix("ours-"))
    Path(args.worker_out).write_text(json.dumps(result, indent=1))


def _spawn(args: argparse.Namespace, worker: str) -> dict:
    """Run one side in a fresh interpreter (own heap, own peak RSS) and read its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    cmd = [sys.executable, __file__, "--worker", worker, "--worker-out", str(out),
           "--model", args.model,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--shapes", args.shapes,
           "--batch", str(args.batch), "--response-tokens", str(args.response_tokens)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if args.profile:
        cmd.append("--profile")
    cmd += ["--attention", args.attention, "--lora-compute", args.lora_compute]
    if args.trl_micro_batch:
        cmd += ["--trl-micro-batch", str(args.trl_micro_batch)]
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


def print_table(results: list[dict], args: argparse.Namespace, load: dict,
                machine: str) -> list[str]:
    """The table, the verdict notes (returned) and the load line; `machine`: where the
    results were measured (the saved JSON's, under --print-only)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(230, Console().width))
    shape = "label answers (77-label prompt, draft prompt teacher), forward KL" \
        if args.shapes == "label" else f"{args.response_tokens} response tokens, reverse KL"
    table = Table(title=f"Distillation step: {args.model}, batch {args.batch}, {shape}, LoRA r=16, "
                        f"gradient "
                        f"checkpointing {'on' if args.gradient_checkpointing else 'off'} "
                        f"({args.steps} timed steps after {args.warmup} warm-up)")
    cols = ("side", "step s", "step min s", "teacher s", "student f+b s", "optim s",
            "generation s", "step-gen s", "step-gen min s", "peak dRSS MB", "peak RSS MB",
            "peak GPU MB", "tok/s", "tok/s excl gen", "prompt S/T")
    table.add_column(cols[0], min_width=18)
    for col in cols[1:]:
        table.add_column(col, justify="right", no_wrap=True)
    ran = [r for r in results if "skipped" not in r]
    for r in ran:
        label = r["side"] if r["side"] != "trl" else f"TRL {r.get('trl_version', '')} SDFT"
        t_prompt = r.get("teacher_prompt_tokens") or [r.get("teacher_prompt_tokens_max")]
        table.add_row(
            f"{label} (mbs {r['micro_batch']})", _fmt(r["step_s"]), f"{_min(r, 'step_s'):.2f}",
            _fmt(r["teacher_s"]), _fmt(r["student_s"]), _fmt(r["optim_s"]),
            _fmt(r.get("generation_s")), _fmt(r.get("step_excl_gen_s", r["step_s"])),
            f"{_min(r, 'step_excl_gen_s'):.2f}", f"{r['peak_rss_delta_mb']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-", f"{r['tokens_per_s']:.1f}",
            f"{r.get('tokens_per_s_excl_gen', r['tokens_per_s']):.1f}",
            f"{max(r['student_prompt_tokens'])}/{max(t for t in t_prompt if t is not None)}",
        )
    notes = []
    peer = next((r for r in ran if r["side"] == "trl"), None)
    ours = [r for r in ran if r["side"].startswith("ours")]
    if peer and ours:
        for o in ours:
            def ratio(key: str, peer_key: str | None = None, o=o) -> float:
                return o[key]["mean"] / peer[peer_key or key]["mean"]

            min_excl = _min(o, "step_s") / _min(peer, "step_excl_gen_s")
            mem = o["peak_rss_delta_mb"] / peer["peak_rss_delta_mb"]
            gpu_mem = o["peak_gpu_mb"] / peer["peak_gpu_mb"] \
                if "peak_gpu_mb" in peer and "peak_gpu_mb" in o else None
            table.add_row(
                f"{o['side']}/peer (mbs {o['micro_batch']})", f"{ratio('step_s'):.2f}x",
                f"{_min(o, 'step_s') / _min(peer, 'step_s'):.2f}x", f"{ratio('teacher_s'):.2f}x",
                f"{ratio('student_s'):.2f}x", f"{ratio('optim_s'):.2f}x", "",
                f"{ratio('step_s', 'step_excl_gen_s'):.2f}x", f"{min_excl:.2f}x", f"{mem:.2f}x",
                f"{o['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x",
                f"{gpu_mem:.2f}x" if gpu_mem is not None else "",
                f"{o['tokens_per_s'] / peer['tokens_per_s']:.2f}x",
                f"{o['tokens_per_s'] / peer['tokens_per_s_excl_gen']:.2f}x", "",
            )
            excl = 1 / ratio("step_s", "step_excl_gen_s")
            notes.append(
                f"{o['side']} mbs {o['micro_batch']}: speed-up {1 / ratio('step_s'):.2f}x incl. peer generation, "
                f"{excl:.2f}x excl. it (min over steps: {1 / min_excl:.2f}x); goal >= 1.5x on the "
                f"like-for-like (excl. generation) number: {'met' if excl >= 1.5 else 'NOT met'}. "
                f"Peak dRSS {mem:.2f}x of peer; goal <= 0.7x: {'met' if mem <= 0.7 else 'NOT met'}."
                + (f" Peak GPU memory {gpu_mem:.2f}x of peer." if gpu_mem is not None else ""))
    console.print(table)
    console.print("ours: train_step on fixed response ids (rollouts from vLLM, outside the step). "
                  "TRL: Trainer step incl. HF generate. Last row = ours / peer "
                  "(times and memory: < 1 is better for ours; tok/s: > 1).")
    for r in ran:
        if r.get("attention"):
            console.print(f"{r['side']}: attention {r['attention']}, LoRA compute "
                          f"{r['lora_compute']}, {r['dtype']}")
        if r.get("top_ops"):
            ops = Table(title=f"{r['side']}: one profiled step, top operators by self CPU time")
            for col in ("operator", "self ms", "calls"):
                ops.add_column(col, justify="left" if col == "operator" else "right")
            for op in r["top_ops"]:
                ops.add_row(op["op"], f"{op['self_ms']:.0f}", str(op["calls"]))
            console.print(ops)
    for r in results:
        if "skipped" in r:
            console.print(f"[yellow]{r['side']} skipped:[/] {r['skipped']}")
    for note in notes:
        console.print(note)
    console.print(f"load average before {load['before']}, after {load['after']} "
                  f"({machine}; the machine is shared, times are noisy)")
    return notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL,
                   help="a bundled model name or a model folder, for both sides")
    p.add_argument("--steps", type=int, default=3, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--shapes", choices=("label", "long"), default="label",
                   help="label: the real BANKING77 step (32 bare prompts, label answers); "
                   "long: 4 x 256 response tokens")
    p.add_argument("--response-tokens", type=int, default=None,
                   help="long: response ids per example (256); label: TRL's fixed new tokens (7)")
    p.add_argument("--batch", type=int, default=None, help="examples per step (label 32, long 4)")
    p.add_argument("--micro-batch", type=int, nargs="+", default=[8],
                   help="our micro_batch_size(s), one subprocess each (the peer uses --batch)")
    p.add_argument("--trl-micro-batch", type=int, default=None,
                   help="TRL: per-device batch, the rest by gradient accumulation (default: "
                        "the whole --batch in one)")
    p.add_argument("--side", choices=("all", "ours", "ours-trainer", "ours-server", "trl"),
                   nargs="+", default=["all"],
                   help="one or more; ours: both of our teacher scorers (ours-server starts "
                        "a vLLM server: leave it out where vLLM is not installed)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="checkpoint the decoder layers on both sides (TRL's default; ours: off)")
    p.add_argument("--attention", default="auto",
                   help="our trainer's attention (TrainerConfig.attention): auto, sdpa, eager")
    p.add_argument("--lora-compute", choices=("auto", "float32"), default="auto",
                   help="our trainer's LoRA compute dtype (TrainerConfig.lora_compute)")
    p.add_argument("--profile", action="store_true",
                   help="profile one extra step of each of our sides; print its top operators")
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
        for key in ("batch", "response_tokens", "steps", "warmup", "gradient_checkpointing",
                    "shapes"):
            setattr(args, key, saved.get(key, False))
        args.model = saved.get("model", MODEL)
        print_table(saved["results"], args, saved["load_average"], saved.get("cpu", "unknown"))
        return

    load_before = [round(x, 2) for x in os.getloadavg()]
    workers = []
    label = args.shapes == "label"
    args.batch = args.batch or (32 if label else 4)
    args.response_tokens = args.response_tokens or (7 if label else 256)
    sides = set(args.side)
    scorers = [s for s in ("trainer", "server") if sides & {"all", "ours", f"ours-{s}"}]
    if not label and "server" in scorers:
        if "ours-server" in sides:
            p.error("--side ours-server: the server scores label answers only (--shapes label)")
        scorers.remove("server")
    workers += [f"ours-{s}:{m}" for s in scorers for m in args.micro_batch]
    if sides & {"all", "trl"}:
        workers.append("trl")
    results = [_spawn(args, w) for w in workers]
    load = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    machine = _cpu_name()
    notes = print_table(results, args, load, machine)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": args.model, "shapes": args.shapes, "batch": args.batch,
        "response_tokens": args.response_tokens, "cpu": machine, "steps": args.steps, "warmup": args.warmup, "load_average": load,
        "gradient_checkpointing": args.gradient_checkpointing,
        "cpus": os.cpu_count(), "results": results, "verdict": notes,
    }, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
