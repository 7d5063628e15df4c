"""On-policy harness self-distillation: train the bare model to do what it does with a harness.

    python -m distill.run --program draft_verify                 # embedded demo (make demo)
    python -m distill.run --config configs/banking77_full.yaml  # the full-quality run
    python -m distill.run --method opsd --steps 40 --out runs/opsd
    python -m distill.run --method ssopd --rollouts 4 --out runs/ssopd
    python -m distill.run --seeds 3 --out runs/ophsd            # runs/ophsd/seed0..2

What it does, in order:
1. resolves the model (bundled SmolLM2 by default), starts vLLM with LoRA (or
   uses --api-base), loads the task and, for draft_verify, the precedent bank
   (train split only);
2. for --steps steps: samples the student on the bare prompt from the live
   policy, runs the harness on the same examples, builds teacher contexts,
   scores the student's exact tokens under teacher and student contexts, takes
   an optimizer step on the LoRA adapter and syncs the served policy (merged
   weights reloaded in place on CPU, the adapter hot-loaded on GPU: --sync);
3. evaluates the base and the trained model with no harness on --eval-limit
   held-out test items and prints the table.

Runs are durable: `--out` holds config.json, metrics.jsonl, transcripts.jsonl (read
them with `python -m distill.view OUT`), checkpoints.jsonl
and adapters. Kill it at any moment and rerun the same command: it resumes
from the last checkpoint with the same data order and sampling seeds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from distill import transcripts
from distill.answer_space import AnswerSpace
from distill.checkpoint import FINAL_ADAPTER_DIR, RESUMABLE_KEYS, DataCursor, RunDir
from distill.config import (
    RESUMABLE,
    RunConfig,
    guard_config,
    parse_args,
    resolve_answer_space,
    resolve_loss,
    resolve_teacher_scorer,
)
from distill.distributed import (
    World,
    any_rank,
    barrier,
    broadcast,
    gather,
    init_from_env,
    merge_counts,
    shard,
    world,
)
from distill.export import record_rows
from distill.guard import CollapseGuard, healthy_checkpoint
from distill.loop import collect
from distill.losses import LossConfig
from distill.methods import get_method
from distill.replay import RecordedContexts, check_prompts, read_contexts
from distill.trainer import DistillTrainer, TrainerConfig
from evals.bank import task_bank
from evals.metrics import held_out
from evals.run import results_table
from evals.runner import MAX_TOKENS, EvalResult, evaluate
from evals.split import split_train
from evals.tasks import Task, get_task
from harnesses import build_harness, needs_index
from scaffold.cli import run_cli
from scaffold.client import PolicyClient
from scaffold.errors import ScaffoldError
from scaffold.hardware import keep_freed_memory
from scaffold.registry import resolve
from scaffold.server import ExternalServer, install_sigterm_handler, policy_endpoint
from scaffold.trace import Trace, write_jsonl
from scaffold.types import Example, Item, TaskContract

log = logging.getLogger("distill.run")


@dataclass
class Run:
    """Everything a step needs (see distill.loop.collect)."""

    cfg: RunConfig
    task: TaskContract
    tokenizer: Any
    harness: Any
    client: PolicyClient
    server: Any
    policy_name: str
    max_new_tokens: int
    sync_mode: str  # "lora" | "merged" (see resolve_sync)
    run_dir: RunDir
    model_path: str
    answer_space: AnswerSpace | None = None  # the teacher's support (closed-set tasks)
    teacher_scorer: str = "trainer"  # "vllm": the server scores the teacher (config.py)
    contexts: RecordedContexts | None = None  # --teacher-contexts: replaces the harness

    def policy_lm(self, **kw: Any) -> Any:
        return self.client.dspy_lm(self.policy_name, max_tokens=self.max_new_tokens, **kw)

    def sync(self, trainer: DistillTrainer, step: int) -> None:
        """Make the served policy base + the trainer's current adapter. Under torchrun rank 0
        talks to the server; every rank learns the new policy name and waits for it."""
        name = self.server.model_name if self.sync_mode == "merged" else f"policy-step-{step}"
        if world().main:
            if self.sync_mode == "merged":
                self.server.reload_weights(
                    trainer.save_merged(self.run_dir.path / "policy_weights"))
            else:
                adapter = self.run_dir.path / "policy" / f"step_{step:06d}"
                trainer.save_adapter(adapter)
                self.server.load_adapter(name, adapter)
                if self.policy_name not in (self.server.model_name, name):
                    self.server.unload_adapter(self.policy_name)
        self.policy_name = name
        barrier()  # no rank samples from the policy before it is served

    def serve_base(self) -> str:
        """Serve the untrained model; returns the name to request it by."""
        if self.sync_mode == "merged":
            self.server.reload_weights(self.model_path)
        return self.server.model_name


def resolve_sync(sync: str, api_base: str | None, fsdp: bool = False) -> str:
    """"auto": merged weights on CPU (vLLM's CPU LoRA kernels run 4-5x slower than the plain
    model, measured in benchmarks/serving.py), a LoRA adapter on GPU, external servers and
    under --fsdp (whose base weights stay sharded: distill/fsdp.py)."""
    if sync == "auto":
        from scaffold.server import cuda_available

        return "lora" if api_base or fsdp or cuda_available() else "merged"
    if sync not in ("lora", "merged"):
        raise ValueError(f"--sync must be auto, lora or merged, got {sync!r}")
    return sync


def trainer_config(cfg: RunConfig, model_path: str, task_kind: str) -> TrainerConfig:
    loss = LossConfig(kind=resolve_loss(cfg.loss, task_kind), beta=cfg.beta, temperature=cfg.loss_temperature,
                      top_k=cfg.top_k, clip=cfg.clip, agreed_weight=cfg.agreed_weight)
    return TrainerConfig(model=model_path, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                         lr=cfg.lr, lr_schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
                         total_steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio,
                         micro_batch_size=cfg.micro_batch_size, teacher=cfg.teacher,
                         loss=loss, seed=cfg.seed, skip_first_tokens=cfg.skip_first_tokens,
                         anchor_kl=cfg.anchor_kl, attention=cfg.attention, fsdp=cfg.fsdp)


def train(run: Run, trainer: DistillTrainer, run_dir: RunDir, train_set: Sequence[Item],
          gold_set: Sequence[Example] = (), writer: Any = None) -> dict | None:
    """The loop: per step, the next `batch_size` items of `train_set` (pool questions or
    examples) and `gold_batch_size` labelled examples of `gold_set`, collected into training
    pairs, one optimizer step, a policy sync; checkpoints carry both data cursors. Every
    step's row goes through the collapse guard (distill/guard.py); returns its stop record
    when --guard-stop ended the run early (the trainer then holds the healthy adapter)."""
    cfg = run.cfg
    w = world()  # under torchrun: this rank trains on its share of every step (shard)
    stopped = run_dir.guard_stop()
    if stopped is not None:  # the guard ended this run before a crash: end it the same way
        return end_at_healthy(run, trainer, stopped)
    restored = run_dir.restore(trainer, rank=w.rank, world_size=w.size)
    # rank 0 owns the guard (only it scores the curve points) and decides for every rank
    guard = CollapseGuard.replay(guard_config(cfg), run_dir.metrics() if w.main else [])
    cursor = DataCursor.from_dict(restored["cursor"]) if restored else DataCursor()
    gold_cursor = DataCursor.from_dict(restored["gold_cursor"]) \
        if restored and restored.get("gold_cursor") else DataCursor()
    start = int(restored["loop_step"]) if restored else 0
    if restored:
        run.sync(trainer, start)
        if w.main:
            print(f"resumed from step {start} (cursor {cursor})")
    elif cfg.init_adapter:
        trainer.load_adapter(cfg.init_adapter)  # a fresh run starts from the given adapter
        run.sync(trainer, 0)
    served = start  # the policy step the server holds (what this step's rollouts read)
    if broadcast(cfg.guard_stop and bool(guard.alarms())):
        # killed after the alarmed step's checkpoint, before its stop record was written
        return stop_at_healthy(run, trainer, run_dir, guard, start)
    sampled_loss = resolve_loss(cfg.loss, run.task.kind) == "sampled_token"
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="distill",
               dynamic_ncols=True, disable=not w.main)
    for step in bar:
        t_step = time.perf_counter()
        warmup = step < cfg.gold_warmup_steps  # gold answers only (config.py)
        batch: list[Item] = []
        if not warmup:
            indices, cursor = cursor.take(len(train_set), cfg.batch_size, cfg.seed)
            batch = [train_set[i] for i in shard(indices, w)]
        gold: list[Example] = []
        n_gold = cfg.batch_size if warmup else cfg.gold_batch_size
        if n_gold and gold_set:
            gold_indices, gold_cursor = gold_cursor.take(len(gold_set), n_gold, cfg.seed + 1)
            gold = [gold_set[i] for i in shard(gold_indices, w)]
        inputs = collect(run, step, batch, gold)
        row: dict[str, Any] = {"step": step + 1, "policy_step": served,
                               **merge_counts(inputs.counts, inputs.times)}
        if any_rank(bool(inputs.pairs)):  # a rank with an empty share still joins the step
            given = run.teacher_scorer == "vllm"
            stats = trainer.train_step(
                inputs.pairs, inputs.weights,
                inputs.sampling_logprobs if sampled_loss and not any(inputs.sft) else None,
                supports=inputs.supports, sft=inputs.sft,
                teacher_logprobs=inputs.teacher_logprobs if given else None,
                inspect=transcripts.pick(inputs, cfg.transcripts))
            row.update(stats)
            trained = gather(record_rows(step + 1, inputs, run.tokenizer, run.task, w.rank))
            if w.main:  # rank 0 writes the run folder: its transcripts, every rank's pairs
                run_dir.log_transcripts(transcripts.rows(
                    step + 1, inputs, trainer.last_token_reports, run.tokenizer))
                run_dir.log_trained(r for rows in trained for r in rows)
        else:
            # no signal, no step: counted, the data moves on, and so does the trainer's step
            # counter (a resumed run must find the trainer where the loop is)
            trainer.skip_step()
            row["skipped_no_pairs"] = 1
        t0 = time.perf_counter()
        curve = bool(cfg.eval_every) and (step + 1) % cfg.eval_every == 0 \
            and step + 1 < cfg.steps
        if step + 1 == cfg.steps or curve or (
                reads_policy(cfg, step + 1) and (step + 1) % cfg.sync_every == 0):
            run.sync(trainer, step + 1)
            served = step + 1
        row["sync_s"] = time.perf_counter() - t0
        row["step_s"] = time.perf_counter() - t_step
        if curve:
            if w.main:
                row.update(curve_point(run))  # timed apart: eval_s is not part of step_s
            barrier()
        row.update(guard.observe(row))
        if w.main:
            run_dir.log_metrics(row)
            for line in guard.new_warnings():
                log.warning("step %d: %s", step + 1, line)
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, int | float):
                    writer.add_scalar(k, v, step + 1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            ranks = gather(trainer.rank_state()) if w.size > 1 else None
            if w.main:
                run_dir.save_checkpoint(step + 1, trainer, {
                    "cursor": cursor.to_dict(), "gold_cursor": gold_cursor.to_dict(),
                    "loop_step": step + 1}, ranks=ranks)
            barrier()  # a crash now resumes every rank from the same checkpoint
        alarm = guard.postfix()
        bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}",
                        kl=f"{row.get('kl', float('nan')):.3f}", pairs=len(inputs.pairs),
                        **({"acc": f"{row['eval_score']:.3f}"} if "eval_score" in row else {}),
                        **({"COLLAPSE": alarm} if alarm else {}))
        if broadcast(cfg.guard_stop and bool(guard.alarms())):
            bar.close()
            return stop_at_healthy(run, trainer, run_dir, guard, step + 1)
    bar.close()
    return None


class CollapsedBeforeCheckpoint(ScaffoldError, RuntimeError):
    """--guard-stop fired before any checkpoint the alarm had not read."""


def stop_at_healthy(run: Run, trainer: DistillTrainer, run_dir: RunDir, guard: CollapseGuard,
                    step: int) -> dict:
    """--guard-stop: record why, then end the run at the last healthy checkpoint. Rank 0
    decides (its guard saw every signal) and every rank follows its record or its error."""
    decision: dict[str, Any] = {}
    if world().main:
        first, oldest = guard.first_alarm_step or step, guard.first_alarm_policy or step
        ckpt = healthy_checkpoint(run_dir.committed_checkpoints(), oldest)
        ratios = guard.ratios()
        alarms = {s: round(ratios[s], 4) for s in guard.alarms(ratios)}
        if ckpt is None:
            decision = {"error": (
                f"the collapse guard fired at step {first} ({alarms}, as a share of each "
                f"signal's start), and no checkpoint predates the policies it read (one every "
                f"{run.cfg.checkpoint_every} steps): lower --lr or --checkpoint-every, or "
                "lower the --guard-* factors; metrics.jsonl holds every step so far")}
        else:
            decision = {"stopped_at_step": step, "first_alarm_step": first,
                        "alarms": alarms, "healthy_step": int(ckpt["step"]),
                        "healthy_path": str(ckpt["path"])}
            run_dir.record_guard_stop(decision)
    decision = broadcast(decision)
    if "error" in decision:
        raise CollapsedBeforeCheckpoint(decision["error"])
    barrier()
    return end_at_healthy(run, trainer, run_dir.guard_stop() or decision)


def end_at_healthy(run: Run, trainer: DistillTrainer, stopped: dict) -> dict:
    """Load the healthy checkpoint's adapter and serve it: what the run saves and evaluates."""
    trainer.load_adapter(stopped["healthy_adapter"])
    run.sync(trainer, int(stopped["stopped_at_step"]) + 1)  # a policy name never served
    if world().main:
        log.warning("collapse guard: the run stopped at step %d (%s); it ends with step %d's "
                    "adapter", stopped["stopped_at_step"], stopped["alarms"],
                    stopped["healthy_step"])
    return stopped


def reads_policy(cfg: RunConfig, step: int) -> bool:
    """Whether loop step `step` (0-based) reads the served policy (rollouts, the live
    harness, the server-scored teacher). Gold-only steps do not, so the policy is synced
    only before a step or an evaluation that reads it: a gold_sft step of 32 spent 3 s of
    its 37 s on a sync nothing read."""
    return get_method(cfg.method).reads_policy and step >= cfg.gold_warmup_steps


def curve_point(run: Run) -> dict[str, float]:
    """Accuracy of the served policy with no harness on the run's held-out items (the
    training curve that `benchmarks/time_to_accuracy.py` reads), with its own wall time."""
    t0 = time.perf_counter()
    items = held_out(run.task.load("test"), run.cfg.eval_limit, run.cfg.eval_seed)
    lm = run.client.dspy_lm(run.policy_name, temperature=0.0, max_tokens=run.max_new_tokens)
    res = evaluate(run.task, "none", items, lm=lm, model_label="curve",
                   concurrency=run.cfg.concurrency, progress=False)
    return {"eval_score": res.score, "eval_n": res.n, "eval_s": time.perf_counter() - t0,
            # the collapse guard's view of methods that never sample (distill/guard.py)
            "eval_answer_tokens": res.answer_tokens_per_example,
            "eval_parse_rate": 1.0 - res.parse_failures / res.n if res.n else float("nan")}


def final_eval(run: Run, run_dir: RunDir) -> list[Any]:
    """Trained (the policy being served now), then base, with no harness, same items."""
    cfg, task = run.cfg, run.task
    items = held_out(task.load("test"), cfg.eval_limit, cfg.eval_seed)
    results = {}
    for label in ("trained", "base"):
        name = run.policy_name if label == "trained" else run.serve_base()
        lm = run.client.dspy_lm(name, temperature=0.0, max_tokens=run.max_new_tokens)
        res = evaluate(task, "none", items, lm=lm, model_label=label,
                       concurrency=cfg.concurrency)
        results[label] = res
        write_jsonl(res.traces, run_dir.path / f"eval-traces-{label}.jsonl")
    results = [results["base"], results["trained"]]
    print_eval(results, f"{task.name}: no harness, {len(items)} held-out items")
    record = {"eval_limit": cfg.eval_limit, "eval_seed": cfg.eval_seed,
              "rows": [r.row() for r in results]}
    (run_dir.path / "eval.json").write_text(json.dumps(record, indent=2))
    return results


def print_eval(results: list[EvalResult], title: str) -> None:
    from rich.console import Console

    Console(width=160).print(results_table(results, title))


def completed(run_dir: RunDir, cfg: RunConfig) -> list[EvalResult] | None:
    """A finished run rerun with the same command: its saved evaluation (an empty list when
    --eval-limit is 0), so nothing is trained or evaluated twice; None if work remains."""
    last = run_dir.latest_checkpoint()
    ended = run_dir.guard_stop() is not None or (last and last.get("loop_step") == cfg.steps)
    if not ended or \
            not (run_dir.path / FINAL_ADAPTER_DIR / "adapter_config.json").exists():
        return None
    if cfg.eval_limit <= 0:
        return []
    try:
        record = json.loads((run_dir.path / "eval.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or (record.get("eval_limit"), record.get("eval_seed")) != \
            (cfg.eval_limit, cfg.eval_seed):
        return None  # evaluated on other items (or by an older version): evaluate again
    return [EvalResult(**row) for row in record["rows"]]


def training_data(cfg: RunConfig, task: Task) -> tuple[list[Example], list[Item]]:
    """(bank, train set): the labelled examples the harness and the gold baselines may use,
    and what the method trains on. Full labels: both are the train split. Label-scarce
    (--labeled-per-class / --labeled): the seeded bank, and for ophsd the unlabelled pool,
    for the methods that read answers the bank itself."""
    train = task.load("train")
    if not train:
        raise ValueError(f"{task.name}: the train split holds no examples")
    if not (cfg.labeled_per_class or cfg.labeled):
        return train, train
    split = split_train(task, train, per_class=cfg.labeled_per_class, total=cfg.labeled,
                        seed=cfg.split_seed)
    if get_method(cfg.method).reads_answers:
        return split.bank, split.bank
    if not split.pool:
        raise ValueError(f"{task.name}: the labelled bank takes the whole train split "
                         f"({len(train)} examples), which leaves no unlabelled pool")
    return split.bank, split.pool


def replayed_contexts(cfg: RunConfig, task: Task, train_set: list[Item], run_dir: RunDir,
                      main: bool) -> tuple[RecordedContexts, list[Item]]:
    """--teacher-contexts: the contexts to train on and their examples, in the train split's
    order. Read from the recording runs at the first start and kept in the run folder, so a
    resume draws the same batches even if those runs' files have grown since."""
    saved = run_dir.recorded_contexts()
    if saved is not None:
        contexts = RecordedContexts.from_record(saved)
    else:
        runs = [r.strip() for r in cfg.teacher_contexts.split(",") if r.strip()]
        contexts = read_contexts(runs, task, train_set, drop_wrong=cfg.harness_filter == "drop")
        if main:
            run_dir.record_contexts(contexts.to_record())
    train = [ex for ex in train_set if ex.id in contexts.by_id]
    check_prompts(contexts, task, train)
    if main:
        c = contexts.counts
        print(f"--teacher-contexts: {len(train)} examples to train on, from {c['rows']} "
              f"recorded rows ({c['duplicates']} repeats, {c['no_signal']} no-signal "
              f"fallbacks, {c['dropped_wrong']} dropped as wrong by --harness-filter drop, "
              f"{c['unknown_example']} not among this run's training examples: another "
              "split, or the labelled bank)")
    return contexts, train


def check_student_samples(harness: object, program: str) -> None:
    """`--harness-rollouts` needs a harness that names its samples of the student's prompt
    (`student_samples(trace)`, which raises ValueError where its options sample none): checked
    on an empty trace before any server starts."""
    samples = getattr(harness, "student_samples", None)
    if not callable(samples):
        raise ScaffoldError(f"--harness-rollouts: the harness {program!r} does not say which of "
                            "its calls sample the student's prompt (a student_samples(trace) "
                            "method): drop --harness-rollouts")
    try:
        samples(Trace("check", program))
    except ValueError as e:
        raise ScaffoldError(f"--harness-rollouts: {e}") from None


def main(cfg: RunConfig) -> dict:
    install_sigterm_handler()
    keep_freed_memory()  # before the trainer allocates (scaffold/hardware.py says why)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    model_path = resolve(cfg.model)
    task = get_task(cfg.task, data_root=cfg.data_root)
    bank, train_set = training_data(cfg, task)
    if cfg.eval_limit > 0:  # a broken test file is found now, not after training
        task.load("test")
    labelled_regime = bool(cfg.labeled_per_class or cfg.labeled)
    w = init_from_env()  # torchrun: rank 0 owns the folder and the server (README, Scaling)
    run_dir = open_run_dir(cfg, w)
    done = completed(run_dir, cfg)
    if done is not None:
        stopped = run_dir.guard_stop()
        if stopped is not None:
            print(f"{run_dir.path}: the collapse guard ended this run at step "
                  f"{stopped['stopped_at_step']} with step {stopped['healthy_step']}'s adapter "
                  f"(guard_stop.json); nothing to redo. To train on from there, start a new "
                  f"--out with --init-adapter {stopped['healthy_adapter']}.")
        else:
            print(f"{run_dir.path} already finished its {cfg.steps} steps; nothing to redo.")
        if done:
            print_eval(done, f"{task.name}: no harness, {done[0].n} held-out items (eval.json)")
        return {"run_dir": str(run_dir.path), "eval": [r.row() for r in done]}
    contexts = None
    if cfg.teacher_contexts is not None:
        contexts, train_set = replayed_contexts(cfg, task, train_set, run_dir, w.main)
    harness = None  # only ophsd (teacher contexts) and sft (targets) run the harness
    if get_method(cfg.method).runs_harness and contexts is None:
        index = None
        if needs_index(cfg.program):  # the labelled bank, or a seeded share of the train split
            index = task_bank(task, examples=bank) if labelled_regime else \
                task_bank(task, limit=cfg.bank_size, seed=cfg.seed)
        harness = build_harness(cfg.program, task, index=index, **cfg.harness)
        if cfg.harness_rollouts:
            check_student_samples(harness, cfg.program)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    answers = task.answer_texts()
    space = AnswerSpace.from_texts(tokenizer, answers) if resolve_answer_space(
        cfg.answer_space, resolve_loss(cfg.loss, task.kind), answers is not None) else None
    scorer = resolve_teacher_scorer(cfg.teacher_scorer, cfg.teacher, space is not None) \
        if get_method(cfg.method).has_teacher else "trainer"
    trainer = DistillTrainer(trainer_config(cfg, model_path, task.kind), tokenizer=tokenizer)
    writer = None
    if cfg.tensorboard and w.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir.path / "tensorboard"))

    sync_mode = resolve_sync(cfg.sync, cfg.api_base, cfg.fsdp)
    with ExitStack() as stack:
        started = None  # rank 0 starts (or reaches) the server; the other ranks share it
        if w.main:
            try:
                started = stack.enter_context(policy_endpoint(
                    model_path, cfg.api_base, max_lora_rank=max(16, cfg.lora_r),
                    # every prompt --max-len lets in
                    max_model_len=cfg.max_model_len or max(4096, cfg.max_len),
                    memory_utilization=cfg.gpu_memory_utilization,
                    kv_cache_gib=cfg.kv_cache_gib, tensor_parallel_size=cfg.tensor_parallel,
                    data_parallel_size=cfg.data_parallel, devices=cfg.server_devices,
                    enable_lora=sync_mode == "lora",
                    log_path=str(run_dir.path / "vllm.log")))
            except BaseException:
                broadcast(None)  # the other ranks stop too; this one reports why
                raise
        endpoint = broadcast((started.base_url, started.model_name) if started else None)
        if endpoint is None:
            raise SystemExit(1)
        server = started or stack.enter_context(ExternalServer(*endpoint))
        client = PolicyClient(server.base_url, server.model_name)
        run = Run(cfg, task, tokenizer, harness, client, server, server.model_name,
                  cfg.max_new_tokens or MAX_TOKENS[task.kind], sync_mode, run_dir, model_path,
                  space, scorer, contexts)
        client.check_render(tokenizer, task.student_messages(train_set[0]))  # exact-token contract
        stopped = train(run, trainer, run_dir, train_set,
                        bank if cfg.gold_batch_size or cfg.gold_warmup_steps else (), writer)
        final = run_dir.path / FINAL_ADAPTER_DIR
        if not w.main:
            return {"run_dir": str(run_dir.path), "eval": []}  # rank 0 saves and evaluates
        trainer.save_adapter(final)
        results = final_eval(run, run_dir) if cfg.eval_limit > 0 else []
    if stopped:
        print(f"\nThe collapse guard stopped the run at step {stopped['stopped_at_step']} "
              f"({stopped['alarms']}); {final} is step {stopped['healthy_step']}'s adapter "
              f"({run_dir.path}/guard_stop.json).")
    print(f"\nTrained adapter: {final}\nServe it with:\n  python -m distill.serve "
          f"--model {cfg.model} --adapter {final}")
    return {"run_dir": str(run_dir.path), "eval": [r.row() for r in results]}


def open_run_dir(cfg: RunConfig, w: World) -> RunDir:
    """The run folder: rank 0 opens (locks, checks, writes) it first; under torchrun the other
    ranks then open it read-only. A refusal on rank 0 (another config, a live owner) stops
    every rank, reported once."""
    kw = dict(resumable_keys=RESUMABLE | RESUMABLE_KEYS, defaults=RunConfig().to_dict())
    if w.size == 1:
        return RunDir(cfg.out, cfg.to_dict(), **kw)
    run_dir, refused = None, None
    if w.main:
        try:
            run_dir = RunDir(cfg.out, cfg.to_dict(), **kw)
        except ScaffoldError as e:
            refused = e
    if broadcast(refused is not None):
        if refused is not None:
            raise refused
        raise SystemExit(1)  # rank 0 prints why
    return run_dir or RunDir(cfg.out, cfg.to_dict(), writer=False, **kw)


def main_seeds(cfg: RunConfig) -> list[dict]:
    """`--seeds N`: N runs with seeds seed .. seed+N-1, each in OUT/seed<k> (compare them with
    `python -m evals.compare --runs OUT/seed*`, which reports mean and spread)."""
    if cfg.seeds <= 1:
        return [main(cfg)]
    return [main(replace(cfg, seed=cfg.seed + i, seeds=1, out=f"{cfg.out}/seed{cfg.seed + i}"))
            for i in range(cfg.seeds)]


if __name__ == "__main__":
    run_cli(lambda: main_seeds(parse_args()))
