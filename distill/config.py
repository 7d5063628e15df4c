"""The run config: one dataclass, set from defaults, a JSON/YAML file and flags.

    cfg = parse_args(["--program", "draft_verify", "--steps", "40"])
    cfg = parse_args(["--config", "configs/banking77_full.yaml"])   # flags override the file

The defaults are the embedded demo (`make demo`): SmolLM2-135M on BANKING77,
small enough to finish in minutes on a 2-core CPU. `configs/` holds the
full-quality runs.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from distill.guard import GuardConfig
from distill.methods import METHODS
from scaffold.errors import ScaffoldError

TEACHER_SCORERS = ("auto", "server", "trainer")
LOSSES = ("reverse_kl", "forward_kl", "jsd", "topk_reverse_kl", "sampled_token")


def opt(default: Any, help: str, choices: Collection[str] | None = None) -> Any:  # noqa: A002
    """A RunConfig field with its --help text (and choices), like TRL's config fields."""
    meta: dict[str, Any] = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    program: str = opt("draft_verify", "the harness: the OPHSD teacher's context, SFT's data "
                       "source; a built-in (none, draft_verify, plan_solve, self_consistency, "
                       "program_solve) or your own as package.module:Name")
    task: str = opt("banking77", "a built-in (banking77, lawbench-3-3, gsm8k, math500), user "
                    "data (classification:TRAIN,TEST or math:TRAIN,TEST), or a Task from your "
                    "own code (package.module:factory)")
    model: str = opt("smollm2-135m-instruct", "bundled model name, HF model folder or hub id")
    method: str = opt("ophsd", "ophsd: distil the harness on the student's rollouts; opsd: "
                      "the reference answer as the teacher's context; ssopd: group-relative "
                      "self-distillation; sft: train on the harness's answers; gold_sft: train "
                      "on gold labels; vote_rl: policy gradient on the harness's samples, "
                      "rewarded for the harness's answer; gold_rl: the same on the student's "
                      "--rollouts, rewarded by the gold answer",
                      METHODS)  # the live registry: a method added to it is a choice
    steps: int = opt(16, "optimizer steps")
    batch_size: int = opt(32, "examples per optimizer step")
    rollouts: int = opt(1, "student samples per example (ssopd: the group size G, >= 2)")
    # On BANKING77 pure on-policy taught SmolLM2 to invent label names: after a student's
    # made-up first tokens the teacher happily ends the line. 0.25 fixed that.
    on_policy_fraction: float = opt(0.25, "ophsd: the share of examples trained on the "
                                    "student's own rollouts; the rest train on the harness's "
                                    "answer scored by the teacher along it (GKD's lambda). 1.0 "
                                    "is pure on-policy")
    micro_batch_size: int = opt(8, "examples per forward/backward (gradient accumulation)")
    # The real BANKING77 step: 8.0 s with sdpa, 6.1 s with distill/attention.py (CPU).
    attention: str = opt("auto", "the trainer's attention: auto (distill/attention.py's "
                         "grouped kernel on CPU, the model's own sdpa on CUDA), or one of "
                         "transformers' implementations", ("auto", "scaffold_grouped", "sdpa",
                                                           "eager", "flash_attention_2"))
    # 1e-3 with forward KL and the answer space trains SmolLM2 on BANKING77 without trouble;
    # 5e-4 with reverse KL at batch 8 and no answer space collapsed it within 4 steps.
    lr: float = opt(1e-3, "LoRA learning rate")
    lr_schedule: str = opt("cosine", "decay over --steps", ("constant", "cosine", "linear"))
    warmup_steps: int = opt(2, "linear warmup steps")
    min_lr_ratio: float = opt(0.1, "cosine/linear: the lr at the last step, as a share of --lr")
    # On BANKING77 the mode-seeking reverse KL taught SmolLM2 to hedge on a token every
    # teacher context gives some mass (" [", then the literal "<label>"), never a real label.
    loss: str = opt("auto", "the divergence; auto: forward KL for label tasks, reverse KL "
                    "otherwise (see resolve_loss)", ("auto", *LOSSES))
    beta: float = opt(0.5, "jsd: the mixture weight")
    top_k: int | None = opt(None, "topk_reverse_kl: the teacher's top-k tokens")
    # At 1.0 SmolLM2's flat first-token distribution on BANKING77 made most rollouts junk,
    # and the teacher's verdicts on junk prefixes taught it to invent label names.
    temperature: float = opt(0.5, "student rollout temperature (below 1 keeps rollouts near "
                             "the student's mode)")
    loss_temperature: float = opt(1.0, "softmax temperature of both sides inside the loss")
    clip: float | None = opt(None, "clip each token's divergence at this value")
    agreed_weight: float = opt(1.0, "weight of the teacher's term at a token the teacher would "
                               "have picked too (its most likely token is the student's "
                               "sampled one); below 1 leans the loss on the tokens the "
                               "teacher overrules (GSM8K: most of the divergence is wording, "
                               "scripts/transcript_numbers.py); 1: every token alike")
    skip_first_tokens: int = opt(0, "no loss on the first N tokens of each distilled "
                                 "response (where a teacher that knows the answer pulls "
                                 "hardest toward stating it at once)")
    anchor_kl: float = opt(0.0, "weight of KL(student || base) on the student's own "
                           "rollouts, added to each distilled token's loss (a KL anchor to the "
                           "starting model, as RLHF's reference penalty); 0: off")
    teacher: str = opt("frozen", "weights that score the teacher context: the live policy, "
                       "the frozen base, or an EMA of the policy", ("live", "frozen", "ema"))
    teacher_scorer: str = opt("auto", "who computes the teacher's distributions: the vLLM "
                              "server that ran the harness (answer-space support, prefix cache "
                              "warm; needs --teacher live and an answer space) or a teacher "
                              "forward in the trainer; auto: server exactly then",
                              TEACHER_SCORERS)
    answer_space: str = opt("auto", "on: restrict the teacher to the task's answers (a token "
                            "trie of its labels) and cut a response after its first token off "
                            "them; auto: on for closed-set tasks unless the loss is "
                            "sampled_token", ("auto", "on", "off"))
    teacher_policy: str = opt("final_request", "how a trace becomes the teacher's messages",
                              ("final_request", "transcript"))
    # Full-label BANKING77: the harness was right on 78% of its training questions, and
    # OPHSD taught its mistakes too (docs/notes/banking77-all-labels.md).
    harness_filter: str = opt("none", "ophsd where every example is labelled: on the "
                              "examples the harness gets wrong, gold: their gold answer trains "
                              "instead; drop: nothing trains (both counted in "
                              "harness_filtered)", ("none", "gold", "drop"))
    # GSM8K's filtered vote spent 71 of 82 training minutes in the harness to keep 92
    # problems (configs/gsm8k_vote_disagree.yaml): distill/replay.py trains on them again.
    teacher_contexts: str | None = opt(None, "ophsd without running the harness: the teacher "
                                       "contexts earlier runs trained on (their --out folders, "
                                       "comma-separated; the first context of each example), "
                                       "and only their examples; the student's rollouts are "
                                       "drawn fresh each step")
    # self_consistency over the bare prompt samples the student's own prompt n times on the
    # served policy: 7 rollouts a problem at no cost, where drawing each one again would
    # cost as much as a harness sample (about 1.5 s of the server's time on GSM8K here).
    harness_rollouts: bool = opt(False, "the harness's own samples of the bare student prompt "
                                 "(a harness with student_samples(trace): self_consistency "
                                 "with solver 'none') are the student's rollouts; ophsd: less "
                                 "the one shown to the teacher, instead of new samples; sft: "
                                 "each that grades correct is a target; vote_rl: each is "
                                 "rewarded for reaching the harness's answer")
    fallback_weight: float = opt(0.0, "weight of no-signal examples (0 skips them, counted)")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha")
    init_adapter: str | None = opt(None, "a peft adapter folder (e.g. RUN/final_adapter) the "
                                   "LoRA and the served policy start from: OPHSD after SFT on "
                                   "the labelled bank; evals.compare adds that run's compute")
    max_new_tokens: int | None = opt(None, "rollout length limit (default per task kind)")
    max_len: int = opt(2048, "longest student/teacher sequence; longer is a counted skip")
    sync_every: int = opt(1, "update the served policy every k steps")
    sync: str = opt("auto", "how the served policy follows the trainer: hot-load the adapter "
                    "(lora) or reload merged weights (merged, fastest on CPU)",
                    ("auto", "lora", "merged"))
    checkpoint_every: int = opt(4, "steps between checkpoints (a resume starts at the last)")
    harness: dict = opt({}, 'harness options as JSON, e.g. \'{"verify": "never"}\'')
    bank_size: int | None = opt(2000, "precedents from the train split (0: all of it; "
                                "ignored in the label-scarce regime)")
    labeled_per_class: int | None = opt(None, "label-scarce regime: a labelled bank of N "
                                        "examples per class (the harness's precedents, the "
                                        "gold baselines' data); the rest of the train split is "
                                        "an unlabelled pool whose answers ophsd never reads")
    labeled: int | None = opt(None, "label-scarce regime for tasks without classes: a "
                              "labelled bank of N examples in all")
    split_seed: int = opt(0, "the bank's draw: keep it the same across training seeds and in "
                          "evals.compare")
    gold_batch_size: int = opt(0, "labelled bank examples per step trained on their gold "
                               "answers (cross-entropy) beside the distilled ones")
    gold_warmup_steps: int = opt(0, "the first N steps train on gold answers only, then the "
                                 "method proper, in one run with one lr schedule")
    eval_limit: int = opt(100, "held-out test items for the final table (0 skips it)")
    eval_every: int = opt(0, "> 0: also evaluate the policy (no harness) on those items every "
                          "N steps (the curve benchmarks/time_to_accuracy.py reads)")
    eval_seed: int = opt(0, "the draw of the held-out items")
    concurrency: int = opt(16, "requests in flight to the policy server")
    seed: int = opt(0, "data order and sampling seed")
    seeds: int = opt(1, "> 1: train this many runs (seed, seed+1, ...) under OUT/seedN")
    api_base: str | None = opt(None, "use this OpenAI-compatible server instead of starting one")
    gpu_memory_utilization: float | None = opt(None, "vLLM's share of its GPU's memory; default "
                                               "on CUDA: computed from the model size and "
                                               "--kv-cache-gib beside the trainer (vLLM's 0.9 "
                                               "refuses to start once the trainer has loaded)")
    kv_cache_gib: float = opt(2.0, "the policy server's KV cache, GiB")
    max_model_len: int | None = opt(None, "the policy server's context limit (default: "
                                    "max(4096, --max-len))")
    tensor_parallel: int = opt(1, "vLLM tensor parallelism of the policy server")
    data_parallel: int = opt(1, "vLLM data parallelism (engine replicas) of the policy server")
    server_devices: str | None = opt(None, "CUDA devices of the policy server, e.g. '1' or "
                                     "'2,3' (default: the trainer's, colocated)")
    fsdp: bool = opt(False, "under torchrun: shard the decoder's weights, LoRA gradients and "
                     "optimizer state over the ranks (torch FSDP2) instead of a whole copy "
                     "per rank; the policy then syncs by LoRA (distill/fsdp.py)")
    # Collapse guard (distill/guard.py). 0.5 on length is the issue's own collapse line
    # (answers within half the base's length): GSM8K OPHSD fell to 0.04x its start and lost
    # 0.26 accuracy, gold SFT on terse references to 0.43x and lost 0.20, while SSOPD held
    # 0.95x and kept its accuracy (docs/notes/gsm8k.md).
    guard_length: float = opt(0.5, "collapse guard: alarm when the mean rollout (or "
                              "curve-point answer) length falls below this factor of its "
                              "start (0: off)")
    guard_parse: float = opt(0.5, "collapse guard: alarm when the share of rollouts (or "
                             "curve-point answers) that parse falls below this factor of its "
                             "start (0: off)")
    # Off by default: on label tasks learning itself drives the student's entropy down (a
    # confident right label is a low-entropy one), so a fall alone does not say collapse.
    guard_entropy: float = opt(0.0, "collapse guard: alarm when the student's per-token "
                               "entropy on the distilled tokens falls below this factor of "
                               "its start (0: off)")
    guard_window: int = opt(2, "collapse guard: steps averaged for the start and for the "
                            "current value of each signal (4 rollouts a step are noisy)")
    guard_stop: bool = opt(False, "collapse guard: on an alarm, end the run at the last "
                           "checkpoint older than every policy the alarm read (its adapter "
                           "becomes final_adapter and is what the final table evaluates)")
    out: str = opt("runs/demo", "the run folder (an existing one is resumed)")
    tensorboard: bool = opt(False, "also log to OUT/tensorboard")
    transcripts: int = opt(4, "training pairs a step written to OUT/transcripts.jsonl with the "
                           "prompts, the harness trace and per-token divergence and top "
                           "tokens (read them with python -m distill.view OUT; 0: none)")
    data_root: str | None = opt(None, "folder holding the bundled tasks' data (default: "
                                "../shared/datasets or $SCAFFOLD_DATA)")

    def to_dict(self) -> dict:
        return asdict(self)


# Changing these does not change what a step computes: a run may resume with new values.
RESUMABLE = frozenset({"steps", "sync", "seeds", "checkpoint_every", "eval_limit", "eval_seed", "concurrency",
                       "api_base", "out", "tensorboard", "data_root", "eval_every", "transcripts",
                       "gpu_memory_utilization", "kv_cache_gib", "max_model_len",
                       "tensor_parallel", "data_parallel", "server_devices", "guard_length",
                       "guard_parse", "guard_entropy", "guard_window", "guard_stop"})




def guard_config(cfg: RunConfig) -> GuardConfig:
    """The run's collapse guard settings (distill/guard.py)."""
    return GuardConfig(length_factor=cfg.guard_length, parse_factor=cfg.guard_parse,
                       entropy_factor=cfg.guard_entropy, window=cfg.guard_window,
                       stop=cfg.guard_stop)


def resolve_teacher_scorer(setting: str, teacher: str, answer_space: bool) -> str:
    """Who scores the teacher: "vllm" (the server, on the answer-space support) or
    "trainer" (a teacher forward in the trainer)."""
    if setting == "server" and not answer_space:
        raise ValueError("--teacher-scorer server needs an answer space (a task with labels "
                         "and --answer-space auto or on): the server scores only its support")
    use_server = setting == "server" or (setting == "auto" and teacher == "live"
                                         and answer_space)
    return "vllm" if use_server else "trainer"


def resolve_loss(loss: str, task_kind: str) -> str:
    """The divergence a run uses: `loss`, or for "auto" the one that fits the task kind."""
    if loss == "auto":
        return "reverse_kl" if task_kind == "math" else "forward_kl"
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use auto or one of {LOSSES}")
    return loss


def resolve_answer_space(setting: str, loss: str, has_answers: bool) -> bool:
    """Whether a run restricts the teacher to the task's answer space."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"answer_space must be auto, on or off, got {setting!r}")
    if setting == "on" and not has_answers:
        raise ValueError("answer_space on needs a task with a closed answer set (labels)")
    if setting == "on" and loss == "sampled_token":
        raise ValueError("answer_space on does not combine with the sampled_token loss")
    return setting == "on" or (setting == "auto" and has_answers and loss != "sampled_token")


def load_file(path: str | Path) -> dict[str, Any]:
    """A config file's keys, refused with the file named when a key or a choice is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror}") from None
    import yaml

    try:
        data = yaml.safe_load(text) or {} if str(path).endswith((".yaml", ".yml")) else \
            json.loads(text)
    except (ValueError, yaml.YAMLError) as e:  # both messages say the line
        raise ConfigError(f"--config {path}: not valid {Path(path).suffix[1:]}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of RunConfig keys")
    known = {f.name: f for f in fields(RunConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown config keys {unknown}; known: {sorted(known)}")
    for key, value in list(data.items()):
        choices = known[key].metadata.get("choices")
        if isinstance(value, bool) and choices and "on" in choices:
            value = data[key] = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
        if choices and value not in choices:
            raise ConfigError(f"{path}: {key}: {value!r} is not one of {', '.join(choices)}")
    return data


class ConfigError(ScaffoldError, ValueError):
    """A config file that cannot be used; the message names the file and key."""


def build_parser() -> argparse.ArgumentParser:
    """`python -m distill.run`'s flags: one per RunConfig field, with its help, default and
    choices."""
    defaults = RunConfig()
    p = argparse.ArgumentParser(prog="python -m distill.run",
                                description="On-policy harness self-distillation: train the "
                                "model to do alone what it does inside a harness.")
    p.add_argument("--config", help="JSON or YAML file with RunConfig keys (flags override it)")
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        # default=None so that a flag left out keeps the file's value; help shows the real one
        common = {"default": None, "help": f"{f.metadata['help']} (default: {value!r})"}
        if f.name == "harness":
            p.add_argument(flag, type=json.loads, **common)
        elif isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        else:
            kind = type(value) if value is not None else (int if f.name in {
                "top_k", "max_new_tokens", "bank_size", "labeled_per_class", "labeled"} else float if f.name == "clip" else str)
            p.add_argument(flag, type=kind, choices=f.metadata.get("choices"), **common)
    return p


def parse_args(argv: list[str] | None = None) -> RunConfig:
    from harnesses import ProgramSpecError, load_program

    p = build_parser()
    args = p.parse_args(argv)
    values = RunConfig().to_dict()
    if args.config:
        try:
            values.update(load_file(args.config))
        except ConfigError as e:
            p.error(str(e))
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    if isinstance(values.get("teacher_contexts"), list):  # a YAML list of run folders
        values["teacher_contexts"] = ",".join(map(str, values["teacher_contexts"]))
    cfg = RunConfig(**values)
    try:
        load_program(cfg.program)
    except ProgramSpecError as e:
        p.error(f"--program {e}")
    if cfg.method not in METHODS:
        p.error(f"--method must be one of {', '.join(METHODS)}")
    method = METHODS[cfg.method]
    if not 0.0 <= cfg.on_policy_fraction <= 1.0:
        p.error("--on-policy-fraction must be in [0, 1]")
    if cfg.on_policy_fraction < 1.0 and resolve_loss(cfg.loss, "classification") == "sampled_token":
        p.error("sampled_token needs the sampling logprobs of every response: use "
                "--on-policy-fraction 1")
    if cfg.harness.get("reference_in_plan") and method.trains_on_harness_answers(cfg):
        # The harness's own answers were written after reading the reference: training the
        # bare prompt on them teaches the answer without the work (GSM8K, Qwen: 0.28 -> 0.00,
        # every answer "The answer is N.").
        p.error("a harness that sees the reference (reference_in_plan) may only score the "
                "student's own rollouts: use --method ophsd --on-policy-fraction 1")
    if cfg.labeled_per_class is not None and cfg.labeled is not None:
        p.error("--labeled-per-class and --labeled are two ways to size the labelled bank: "
                "give one")
    for name in ("labeled_per_class", "labeled"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if cfg.harness_filter != "none" and (cfg.method != "ophsd" or cfg.labeled_per_class
                                         or cfg.labeled):
        p.error(f"--harness-filter {cfg.harness_filter} checks the harness against gold "
                "answers: it needs --method ophsd and every train example labelled (not "
                "--labeled-per-class or --labeled, whose pool has no answers)")
    if cfg.teacher_contexts is not None:
        if cfg.method != "ophsd" or cfg.on_policy_fraction < 1.0 or cfg.harness_rollouts:
            p.error("--teacher-contexts scores fresh student rollouts under recorded teacher "
                    "contexts: it needs --method ophsd with --on-policy-fraction 1 and no "
                    "--harness-rollouts (no harness runs, so there is no harness answer path "
                    "or harness sample)")
        if cfg.harness_filter == "gold":
            p.error("--teacher-contexts with --harness-filter gold: a recorded context has no "
                    "harness run to replace; use --harness-filter drop to leave out the "
                    "examples its harness got wrong")
        if not [r for r in cfg.teacher_contexts.split(",") if r.strip()]:
            p.error("--teacher-contexts: give at least one run folder")
    if method.harness_rollouts == "required" and not cfg.harness_rollouts:
        p.error(f"--method {cfg.method} trains on the harness's own samples of the student "
                "prompt: add --harness-rollouts (and a harness that samples it, e.g. --program "
                "self_consistency with solver none)")
    if cfg.harness_rollouts and (method.harness_rollouts == "no" or cfg.rollouts != 1 or
                                 cfg.method == "ophsd" and cfg.on_policy_fraction < 1.0):
        takers = ", ".join(m.name for m in METHODS.values() if m.harness_rollouts != "no")
        p.error("--harness-rollouts trains on the harness's own samples of the student prompt: "
                f"it needs --method one of {takers} (ophsd with --on-policy-fraction 1), and "
                "no --rollouts")
    if cfg.harness_rollouts and resolve_loss(cfg.loss, "math") == "sampled_token":
        p.error("--harness-rollouts: the harness's samples carry no sampling logprobs, which "
                "the sampled_token loss needs: use another --loss")
    if cfg.gold_batch_size < 0:
        p.error("--gold-batch-size must be >= 0")
    if not 0 <= cfg.gold_warmup_steps <= cfg.steps:
        p.error("--gold-warmup-steps must be between 0 and --steps")
    if cfg.gold_warmup_steps and method.reads_answers:
        p.error("--gold-warmup-steps precedes OPHSD; for SFT alone use --method gold_sft")
    if (cfg.gold_batch_size or cfg.gold_warmup_steps) and \
            resolve_loss(cfg.loss, "classification") == "sampled_token":
        p.error("--gold-batch-size trains gold answers the engine never sampled, which the "
                "sampled_token loss cannot score: use another --loss")
    if cfg.teacher_scorer not in TEACHER_SCORERS:
        p.error(f"--teacher-scorer must be one of {TEACHER_SCORERS}")
    if cfg.teacher_scorer == "server" and cfg.teacher != "live":
        p.error("--teacher-scorer server scores the served (live) policy: use --teacher live, "
                "or --teacher-scorer trainer for a frozen or EMA teacher")
    if cfg.init_adapter:
        adapter = Path(cfg.init_adapter)
        if not (adapter / "adapter_config.json").is_file() or \
                not (adapter / "adapter_model.safetensors").is_file():
            p.error(f"--init-adapter {adapter}: not a peft adapter folder (adapter_config.json "
                    "and adapter_model.safetensors), e.g. RUN/final_adapter")
        rank = json.loads((adapter / "adapter_config.json").read_text()).get("r")
        if rank != cfg.lora_r:
            p.error(f"--init-adapter {adapter} has LoRA rank {rank}, this run --lora-r "
                    f"{cfg.lora_r}: pass --lora-r {rank}")
    if cfg.gpu_memory_utilization is not None and not 0 < cfg.gpu_memory_utilization <= 1:
        p.error("--gpu-memory-utilization must be in (0, 1]")
    if cfg.fsdp:
        ranks = int(os.environ.get("WORLD_SIZE", "1"))
        if ranks < 2:
            p.error("--fsdp shards the model over the processes torchrun starts, and this is "
                    f"{ranks} process: launch with torchrun --nproc_per_node N (N >= 2), or "
                    "drop --fsdp")
        if cfg.sync == "merged":
            p.error("--fsdp keeps the base weights sharded, and --sync merged would gather the "
                    "whole model on one rank: use --sync lora (or auto)")
        if cfg.teacher == "ema":
            p.error("--fsdp does not support --teacher ema: use live or frozen")
        from distill.fsdp import unsupported_reason

        if (why := unsupported_reason()) is not None:
            p.error(f"--fsdp: {why}")
    if cfg.tensor_parallel < 1 or cfg.data_parallel < 1:
        p.error("--tensor-parallel and --data-parallel must be >= 1")
    if cfg.max_model_len is not None and cfg.max_model_len < cfg.max_len:
        p.error(f"--max-model-len {cfg.max_model_len} is under --max-len {cfg.max_len}: the "
                "server would refuse prompts training accepts")
    if cfg.sync_every < 1 or cfg.checkpoint_every < 1:
        p.error("--sync-every and --checkpoint-every must be >= 1")
    if cfg.checkpoint_every % cfg.sync_every:
        # a resume restores the checkpoint's adapter, but the server would hold the policy of
        # the last sync after it: the resumed steps would sample a newer policy than before
        p.error(f"--sync-every {cfg.sync_every} must divide --checkpoint-every "
                f"{cfg.checkpoint_every}, or a resumed run samples another policy")
    if cfg.eval_every < 0:
        p.error("--eval-every must be >= 0")
    if cfg.agreed_weight < 0:
        p.error("--agreed-weight must be >= 0")
    if cfg.agreed_weight != 1.0 and cfg.loss == "sampled_token":
        p.error("--agreed-weight weighs a full-distribution loss; sampled_token already "
                "weighs each token by the teacher's verdict on it")
    if cfg.transcripts < 0:
        p.error("--transcripts must be >= 0")
    if cfg.skip_first_tokens < 0:
        p.error("--skip-first-tokens must be >= 0")
    if cfg.anchor_kl < 0:
        p.error(f"--anchor-kl is a weight: >= 0 (0 turns it off), got {cfg.anchor_kl}")
    if cfg.anchor_kl and not method.has_teacher:
        p.error(f"--anchor-kl weighs the distilled tokens, and --method {cfg.method} trains "
                "only cross-entropy targets: drop --anchor-kl or use a distilling method")
    if cfg.anchor_kl and cfg.fsdp:
        p.error("--anchor-kl is not supported with --fsdp (its extra forward of the base is "
                "not matched across ranks): drop one of them")
    for name in ("guard_length", "guard_parse", "guard_entropy"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            p.error(f"--{name.replace('_', '-')} is a factor of the signal's start: in [0, 1) "
                    "(0 turns it off)")
    if cfg.guard_window < 1:
        p.error("--guard-window must be >= 1")
    if cfg.eval_every and cfg.eval_limit <= 0:
        # held_out(limit=0) is the whole test split: 3,080 BANKING77 items, 25 min a point
        p.error(f"--eval-every {cfg.eval_every} evaluates --eval-limit items, which is "
                f"{cfg.eval_limit}: pass --eval-limit N (e.g. 300) or --eval-every 0")
    if (cfg.labeled_per_class or cfg.labeled) and cfg.harness.get("reference_in_plan") \
            and not method.reads_answers:
        p.error("reference_in_plan reads a reference solution, which the unlabelled pool "
                "does not have (--labeled-per-class / --labeled)")
    if cfg.rollouts < method.min_rollouts:
        p.error(f"--method {cfg.method} compares a group of rollouts: set --rollouts >= "
                f"{method.min_rollouts} (e.g. 4)")
    return cfg
