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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

METHODS = ("ophsd", "opsd", "sft", "gold_sft", "ssopd")


@dataclass
class RunConfig:
    program: str = "draft_verify"  # the harness (ophsd teacher, sft data source)
    task: str = "banking77"
    model: str = "smollm2-135m-instruct"
    method: str = "ophsd"  # ophsd | opsd | ssopd | sft | gold_sft
    steps: int = 16
    batch_size: int = 32  # examples per optimizer step
    rollouts: int = 1  # student samples per example (ssopd: the group size G, >= 2)
    # ophsd: the share of examples trained on the student's own rollouts; the rest train on
    # the harness's own answer, scored by the teacher along the path it produced (GKD's
    # lambda). 1.0 is pure on-policy. On BANKING77 pure on-policy taught SmolLM2 to invent
    # label names: after a student's made-up first tokens the teacher happily ends the line.
    # 0.25 (the demo and configs/banking77_full.yaml) fixed that; 1.0 is DESIGN's pure form.
    on_policy_fraction: float = 0.25
    micro_batch_size: int = 8
    # LoRA lr. 1e-3 with forward KL and the answer space trains SmolLM2 on BANKING77 without
    # trouble (configs/banking77_full.yaml); 5e-4 with reverse KL at batch 8 and no answer
    # space collapsed it within 4 steps.
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # constant | cosine | linear (decay over --steps)
    warmup_steps: int = 2
    min_lr_ratio: float = 0.1  # cosine/linear: the lr at the last step, as a share of --lr
    # auto | reverse_kl | forward_kl | jsd | topk_reverse_kl | sampled_token. "auto" is
    # forward KL for label tasks and reverse KL (DESIGN's default) otherwise: on BANKING77 the
    # mode-seeking reverse KL taught SmolLM2 to hedge on a token every teacher context gives
    # some mass (" [", then the literal "<label>"), never a real label; see resolve_loss.
    loss: str = "auto"
    beta: float = 0.5  # jsd
    top_k: int | None = None  # topk_reverse_kl
    # Student rollout temperature. Below 1 keeps rollouts near the student's own mode: at
    # 1.0 SmolLM2's flat first-token distribution on BANKING77 made most rollouts junk,
    # and the teacher's verdicts on junk prefixes taught it to invent label names.
    temperature: float = 0.5
    loss_temperature: float = 1.0
    clip: float | None = None
    teacher: str = "frozen"  # live | frozen | ema  (weights that score the teacher context)
    # auto | server | trainer: who computes the teacher's distributions. "server": the vLLM
    # server that ran the harness scores the answer-space support of every response
    # position (its prefix cache holds the teacher prompt already), so the trainer runs no
    # teacher forward; it scores the live policy, so it needs --teacher live and an answer
    # space. "auto" is server exactly then, trainer otherwise.
    teacher_scorer: str = "auto"
    # auto | on | off. "on" restricts the teacher to the task's answers (a token trie of its
    # labels) and cuts a response after its first token off them; "auto" is on for closed-set
    # tasks (task.answer_texts()) unless the loss is sampled_token. See distill/answer_space.py.
    answer_space: str = "auto"
    teacher_policy: str = "final_request"  # final_request | transcript
    fallback_weight: float = 0.0  # weight of no-signal examples (0 = skip them)
    lora_r: int = 16
    lora_alpha: int = 32
    # A peft adapter folder (e.g. another run's final_adapter) the LoRA starts from instead
    # of zeros: OPHSD after SFT on the labelled bank. The served policy starts from it too;
    # evals.compare adds that run's training compute to this one's.
    init_adapter: str | None = None
    max_new_tokens: int | None = None  # default per task kind
    max_len: int = 2048  # longest student/teacher sequence; longer is a counted skip
    sync_every: int = 1  # update the served policy every k steps
    sync: str = "auto"  # auto | lora (hot-load the adapter) | merged (reload merged weights)
    checkpoint_every: int = 4
    harness: dict = field(default_factory=dict)  # harness options, e.g. {"verify": "never"}
    bank_size: int | None = 2000  # precedents from the train split (None or 0: all of it)
    # The label-scarce regime (evals/split.py): the train split becomes a labelled bank of
    # this many examples per class (--labeled-per-class) or in all (--labeled, for tasks
    # without classes) and an unlabelled pool. The bank is the harness's precedents (then
    # --bank-size is ignored) and the data of the methods that read answers (opsd, ssopd,
    # sft, gold_sft); ophsd trains on the pool, whose answers it never sees.
    labeled_per_class: int | None = None
    labeled: int | None = None
    split_seed: int = 0  # the bank's draw: the same for every training seed and for compare
    # Labelled bank examples per step trained on their gold answers (cross-entropy) beside
    # the batch_size distilled ones: OPHSD using the labels it has.
    gold_batch_size: int = 0
    # The first N steps train on gold answers of the labelled bank only (batch_size of them
    # a step, cross-entropy), then the method proper: SFT on the labels you have, then OPHSD
    # on the pool, in one run with one lr schedule.
    gold_warmup_steps: int = 0
    eval_limit: int = 100  # held-out test items for the final table (0 skips it)
    # > 0: also evaluate the policy (no harness) on those items every N steps: the curve
    # benchmarks/time_to_accuracy.py reads (eval_score, eval_s; not counted in step_s)
    eval_every: int = 0
    eval_seed: int = 0
    concurrency: int = 16
    seed: int = 0
    seeds: int = 1  # > 1: train this many runs (seed, seed+1, ...) under OUT/seedN
    api_base: str | None = None  # use this server instead of starting one
    out: str = "runs/demo"
    tensorboard: bool = False
    data_root: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# Changing these does not change what a step computes: a run may resume with new values.
RESUMABLE = frozenset({"steps", "sync", "seeds", "checkpoint_every", "eval_limit", "eval_seed", "concurrency",
                       "api_base", "out", "tensorboard", "data_root", "eval_every"})


LOSSES = ("reverse_kl", "forward_kl", "jsd", "topk_reverse_kl", "sampled_token")
TEACHER_SCORERS = ("auto", "server", "trainer")
READS_ANSWERS = ("opsd", "ssopd", "sft", "gold_sft")  # methods that train on labelled data


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
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown}; known: {sorted(known)}")
    return data


def parse_args(argv: list[str] | None = None) -> RunConfig:
    defaults = RunConfig()
    p = argparse.ArgumentParser(prog="python -m distill.run",
                                description="On-policy harness self-distillation.")
    p.add_argument("--config", help="JSON or YAML file with RunConfig keys (flags override it)")
    for f in fields(RunConfig):
        if f.name == "harness":
            p.add_argument("--harness", type=json.loads, default=None,
                           help='harness options as JSON, e.g. \'{"verify": "never"}\'')
            continue
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = type(value) if value is not None else (int if f.name in {
                "top_k", "max_new_tokens", "bank_size", "labeled_per_class", "labeled"} else float if f.name == "clip" else str)
            p.add_argument(flag, type=kind, default=None)
    args = p.parse_args(argv)
    values = defaults.to_dict()
    if args.config:
        values.update(load_file(args.config))
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    cfg = RunConfig(**values)
    if cfg.method not in METHODS:
        p.error(f"--method must be one of {METHODS}")
    if not 0.0 <= cfg.on_policy_fraction <= 1.0:
        p.error("--on-policy-fraction must be in [0, 1]")
    if cfg.on_policy_fraction < 1.0 and resolve_loss(cfg.loss, "classification") == "sampled_token":
        p.error("sampled_token needs the sampling logprobs of every response: use "
                "--on-policy-fraction 1")
    trains_on_harness_answers = cfg.method == "sft" or (
        cfg.method == "ophsd" and cfg.on_policy_fraction < 1.0)
    if cfg.harness.get("reference_in_plan") and trains_on_harness_answers:
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
    if cfg.gold_batch_size < 0:
        p.error("--gold-batch-size must be >= 0")
    if not 0 <= cfg.gold_warmup_steps <= cfg.steps:
        p.error("--gold-warmup-steps must be between 0 and --steps")
    if cfg.gold_warmup_steps and cfg.method != "ophsd":
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
    if cfg.eval_every < 0:
        p.error("--eval-every must be >= 0")
    if cfg.eval_every and cfg.eval_limit <= 0:
        # held_out(limit=0) is the whole test split: 3,080 BANKING77 items, 25 min a point
        p.error(f"--eval-every {cfg.eval_every} evaluates --eval-limit items, which is "
                f"{cfg.eval_limit}: pass --eval-limit N (e.g. 300) or --eval-every 0")
    if (cfg.labeled_per_class or cfg.labeled) and cfg.harness.get("reference_in_plan") \
            and cfg.method == "ophsd":
        p.error("reference_in_plan reads a reference solution, which the unlabelled pool "
                "does not have (--labeled-per-class / --labeled)")
    if cfg.method == "ssopd" and cfg.rollouts < 2:
        p.error("--method ssopd compares a group of rollouts: set --rollouts >= 2 (e.g. 4)")
    return cfg
