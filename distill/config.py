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

METHODS = ("ophsd", "opsd", "sft")


@dataclass
class RunConfig:
    program: str = "draft_verify"  # the harness (ophsd teacher, sft data source)
    task: str = "banking77"
    model: str = "smollm2-135m-instruct"
    method: str = "ophsd"  # ophsd | opsd | sft
    steps: int = 16
    batch_size: int = 8  # examples per optimizer step
    rollouts: int = 1  # student samples per example
    micro_batch_size: int = 4
    lr: float = 1e-4  # 5e-4 collapsed SmolLM2 within 4 steps (see distill issue notes)
    loss: str = "reverse_kl"  # reverse_kl | forward_kl | jsd | topk_reverse_kl | sampled_token
    beta: float = 0.5  # jsd
    top_k: int | None = None  # topk_reverse_kl
    temperature: float = 1.0  # student sampling temperature
    loss_temperature: float = 1.0
    clip: float | None = None
    teacher: str = "frozen"  # live | frozen | ema  (weights that score the teacher context)
    teacher_policy: str = "final_request"  # final_request | transcript
    fallback_weight: float = 0.0  # weight of no-signal examples (0 = skip them)
    lora_r: int = 16
    lora_alpha: int = 32
    max_new_tokens: int | None = None  # default per task kind
    max_len: int = 2048  # longest student/teacher sequence; longer is a counted skip
    sync_every: int = 1  # hot-load the adapter into vLLM every k steps
    checkpoint_every: int = 4
    harness: dict = field(default_factory=dict)  # harness options, e.g. {"verify": "never"}
    bank_size: int | None = 2000  # precedents from the train split (None: all of it)
    eval_limit: int = 100  # held-out test items for the final table (0 skips it)
    eval_seed: int = 0
    concurrency: int = 16
    seed: int = 0
    api_base: str | None = None  # use this server instead of starting one
    out: str = "runs/demo"
    tensorboard: bool = False
    data_root: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# Changing these does not change what a step computes: a run may resume with new values.
RESUMABLE = frozenset({"steps", "checkpoint_every", "eval_limit", "eval_seed", "concurrency",
                       "api_base", "out", "tensorboard", "data_root"})


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
                "top_k", "max_new_tokens", "bank_size"} else float if f.name == "clip" else str)
            p.add_argument(flag, type=kind, default=None)
    args = p.parse_args(argv)
    values = defaults.to_dict()
    if args.config:
        values.update(load_file(args.config))
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    cfg = RunConfig(**values)
    if cfg.method not in METHODS:
        p.error(f"--method must be one of {METHODS}")
    return cfg
