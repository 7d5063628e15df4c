"""The student learner: one optimizer step of on-policy self-distillation on a LoRA adapter.

Teacher and student are the SAME `PeftModel` over ONE copy of the base weights; only the
adapter state differs between the two passes:

- ``live``:   the current adapter (the paper's claim),
- ``frozen``: the adapter disabled (``with model.disable_adapter()``): the starting model,
- ``ema``:    a second adapter named ``"ema"`` on the same `PeftModel`, holding an
  exponential moving average of the live adapter; switched in with ``set_adapter``.

Both passes run the base transformer only (``get_decoder()``) to get last-layer hidden
states, gather the response positions, and hand them with the ``lm_head`` weight to
`chunked_distill_loss`, which computes vocabulary logits in chunks: a full ``[B, T, V]``
logits tensor is never built.

The step's loss is a global token mean: each micro-batch's summed loss is divided by the
number of response tokens in the WHOLE step, so gradients do not depend on how the step is
split into micro-batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import mmap
import random
import resource
import statistics
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch

from distill.attention import ATTENTION
from distill.distributed import any_rank, max_over_ranks, sum_gradients, sum_over_ranks, world
from distill.fsdp import (
    gather_full,
    load_full,
    load_local_optimizer_state,
    local_optimizer_state,
    shard_decoder,
)
from distill.losses import NO_MASS, LossConfig, chunked_distill_loss, chunked_nll
from distill.shared_prefix import PrefixKV, suffix_hidden
from distill.splicing import (
    SplicedPair,
    collate,
    gather_response_positions,
    pad_suffixes,
    shared_prefix_len,
)
from distill.token_report import TokenReport, token_report

log = logging.getLogger(__name__)

LIVE_ADAPTER = "default"  # peft's name for the first adapter; the one we train and save
EMA_ADAPTER = "ema"
TEACHER_KINDS = ("live", "frozen", "ema")
_SUMMED_STATS = ("kl_sum", "teacher_entropy_sum", "student_entropy_sum", "clipped",
                 "anchor_sum")  # from chunked_distill_loss


@dataclass
class TrainerConfig:
    """Everything that decides what the trainer computes (and so belongs in a run's config)."""

    model: str  # local HF folder (already resolved by scaffold.registry.resolve)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # peft's "all-linear" = every nn.Linear except the output layer: the attention and MLP
    # projections, which is what vLLM's LoRA loader supports (no embed_tokens / lm_head).
    lora_target_modules: list[str] | str = "all-linear"
    lr: float = 1e-4
    # "constant", or "cosine" / "linear" decay from lr to lr * min_lr_ratio over total_steps
    # after warmup_steps of linear warm-up. The factor is a function of the step counter
    # alone, so a resumed run continues the same schedule.
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    # The run loop draws micro_batch_size * grad_accum pairs per step; train_step itself
    # splits whatever it gets into micro-batches of at most micro_batch_size, and (with
    # bucket_by_length) at most micro_batch_size x the step's median row of padded
    # positions (see plan_micro_batches).
    grad_accum: int = 1
    micro_batch_size: int = 4
    bucket_by_length: bool = True
    max_grad_norm: float | None = 1.0  # None or <= 0: measure the norm, do not clip
    teacher: str = "live"  # "live" | "frozen" | "ema"
    ema_decay: float = 0.99
    loss: LossConfig = field(default_factory=LossConfig)
    dtype: str = "auto"  # "auto" | "bfloat16" | "float16" | "float32" (base weights only)
    seed: int = 0
    gradient_checkpointing: bool = False
    # No loss on the first N tokens of each distilled response: where a teacher that knows
    # the answer pulls hardest toward stating it at once (GSM8K: "The answer is N.").
    skip_first_tokens: int = 0
    # Weight of KL(student || base) on the student's own context, added to every distilled
    # token's loss (the base = the adapter disabled): the reference penalty of RLHF/GRPO.
    # Every teacher that saw the GSM8K answer taught "The answer is N." within 3 updates at
    # lr 2e-4; this term prices each step away from the base's own working. It applies to
    # the first tokens too (skip_first_tokens drops only the teacher's term there), and to
    # sft pairs not at all. 0: off, no extra forward.
    anchor_kl: float = 0.0
    # Compute a prompt prefix shared by all rows of a step once (see distill.shared_prefix);
    # off under gradient checkpointing. Shorter shared prefixes are not worth the detour.
    share_prefix: bool = True
    min_shared_prefix: int = 64
    # Round every padded width (left-padded rows, suffixes after a shared prefix) up to a
    # multiple of this; None: no rounding. Why on CPU: oneDNN builds (and caches, 1024
    # entries) a matmul kernel per distinct shape, and BANKING77's varying widths made ~150
    # new ones a step at ~2.6 ms each, evicting each other, and the heap grew with them.
    # benchmarks/step_drift.py (one batch timed again after 9-27 varying ones, same process):
    # unrounded it ended 1.20x and 1.32x slower than it started, with 16 0.87x and 0.91x;
    # peak RSS 11-17% lower in three runs; the mean step over 18-28 batches moved within
    # noise (0.90x, 1.10x, 0.99x), as the extra padded positions offset the drift so far.
    pad_to_multiple_of: int | None = 16
    # "auto": distill.attention's grouped kernel on CPU (the real BANKING77 student step:
    # 8.0 s with sdpa, 6.7 s with eager, 6.1 s with it), the model's own (sdpa) on CUDA,
    # where that kernel is unmeasured; or any name transformers' AttentionInterface knows.
    attention: str = "auto"
    # "auto": LoRA branches compute in the base's dtype when that is bf16 (see `compute`);
    # "float32": peft's default, every LoRA input cast to fp32 and every output back.
    lora_compute: str = "auto"
    device: str = "auto"  # "auto": cuda if available, else cpu
    # Shard the decoder over torchrun's ranks with FSDP2 (distill/fsdp.py says what is
    # sharded and what changes: no shared prefix, LoRA-only weight export, per-rank optimizer
    # shards); False: every rank holds the whole model (distill/distributed.py).
    fsdp: bool = False


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(step: int, schedule: str, warmup_steps: int = 0, total_steps: int | None = None,
              min_ratio: float = 0.0) -> float:
    """The multiplier of the base lr for optimizer step `step` (0-based): linear warm-up over
    `warmup_steps`, then constant, or a cosine / linear decay reaching `min_ratio` at
    `total_steps`."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if not total_steps:
        raise ValueError(f"lr_schedule {schedule!r} needs total_steps")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * shape


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """The dtype for the BASE weights. "auto" is bf16 where the hardware runs it natively and
    fp32 elsewhere (`scaffold.hardware`: emulated bf16 is 60x slower than fp32 on an AVX2 CPU).
    LoRA weights are always fp32 (peft upcasts them)."""
    from scaffold.hardware import auto_dtype_name

    if name == "auto":
        name = auto_dtype_name(device.type if device is not None else "cpu")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use auto, bfloat16, float16 or float32")
    return dtype


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB), at least the
    current RSS from psutil."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    current = psutil.Process().memory_info().rss
    return max(peak_kib / 1024.0, current / 2**20)


class DistillTrainer:
    """LoRA self-distillation trainer: `train_step` = one optimizer step over a list of pairs."""

    def __init__(self, cfg: TrainerConfig, model=None, tokenizer=None) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM, set_seed

        if cfg.teacher not in TEACHER_KINDS:
            raise ValueError(f"teacher must be one of {TEACHER_KINDS}, got {cfg.teacher!r}")
        if cfg.micro_batch_size < 1:
            raise ValueError("micro_batch_size must be >= 1")
        if cfg.anchor_kl < 0:
            raise ValueError(f"anchor_kl must be >= 0, got {cfg.anchor_kl}")
        if cfg.anchor_kl and cfg.fsdp:
            # its extra forward is not counted in the passes every FSDP rank must match
            raise ValueError("anchor_kl is not supported with fsdp")
        lr_factor(cfg.warmup_steps, cfg.lr_schedule, cfg.warmup_steps, cfg.total_steps,
                  cfg.min_lr_ratio)  # an unknown schedule or a decay without total_steps: now
        self.cfg = cfg
        set_seed(cfg.seed)  # the LoRA init (and dropout) must be reproducible
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        )
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=self.dtype)
            model.to(self.device)
        if tokenizer is None:
            tokenizer = _try_load_tokenizer(cfg.model)
        self.tokenizer = tokenizer

        if isinstance(model, PeftModel):
            if LIVE_ADAPTER not in model.peft_config:
                raise ValueError(f"a PeftModel passed in must have an adapter named {LIVE_ADAPTER!r}")
            self.model = model
        else:
            _check_plain_lm_head(model.config)
            if cfg.gradient_checkpointing:
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            self.lora_config = LoraConfig(
                task_type="CAUSAL_LM",
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=lora_target_modules(model, cfg.lora_target_modules),
                bias="none",
            )
            self.model = get_peft_model(model, self.lora_config)  # LoRA weights upcast to fp32
        self.model.config.use_cache = False
        self.base = self.model.get_base_model()
        attention = ATTENTION if cfg.attention == "auto" and self.device.type == "cpu" \
            else cfg.attention
        if attention != "auto":
            self.base.set_attn_implementation(attention)
        self.decoder = self.base.get_decoder()
        self.lm_head = self.base.get_output_embeddings()
        # A bf16 base computes its LoRA branches in bf16 too (autocast casts the fp32 LoRA
        # weights once per forward; their gradients come back fp32), instead of peft's
        # default of casting every LoRA input to fp32 and every output back: on the real
        # BANKING77 step those casts were ~14,000 copies a step.
        if cfg.lora_compute not in ("auto", "float32"):
            raise ValueError(f"lora_compute must be auto or float32, got {cfg.lora_compute!r}")
        self._bf16_lora = self.dtype == torch.bfloat16 and cfg.lora_compute == "auto"
        self.pad_id = _pad_id(tokenizer, self.base.config)
        if cfg.fsdp:  # before the parameters are collected: sharding replaces them
            if world().size < 2:
                raise ValueError("fsdp shards the model over the ranks torchrun starts: launch "
                                 "with torchrun --nproc_per_node N (N >= 2), or leave it off")
            if cfg.teacher == "ema":
                raise ValueError("fsdp does not support an EMA teacher (peft's set_adapter "
                                 "flips requires_grad on sharded parameters): use a live or "
                                 "frozen teacher")
            shard_decoder(self.decoder, self.device, world().size)

        self._live_params = {
            n: p
            for n, p in self.model.named_parameters()
            if "lora_" in n and f".{LIVE_ADAPTER}." in n
        }
        if not self._live_params:
            raise RuntimeError("no LoRA parameters found: check lora_target_modules")
        self._ema_params: dict[str, torch.nn.Parameter] = {}
        if cfg.teacher == "ema":
            self.model.add_adapter(EMA_ADAPTER, self.model.peft_config[LIVE_ADAPTER])
            self.model.set_adapter(LIVE_ADAPTER)  # keeps the live adapter trainable, ema frozen
            named = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, live in self._live_params.items():
                    ema = named[name.replace(f".{LIVE_ADAPTER}.", f".{EMA_ADAPTER}.")]
                    ema.requires_grad_(False)
                    ema.copy_(live)
                    self._ema_params[name] = ema

        self.optimizer = torch.optim.AdamW(
            list(self._live_params.values()),
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            weight_decay=cfg.weight_decay,
        )
        # under fsdp: the LoRA weights whole, gathered after every step (distill/fsdp.py)
        self._full_live = gather_full(self._live_params) if cfg.fsdp else None
        self._step = 0
        self._merged_file: Path | None = None  # written whole by this trainer (save_merged)
        # per pair index of the last train_step's `inspect`: what each side said per token
        self.last_token_reports: dict[int, TokenReport] = {}

    # ------------------------------------------------------------------ forward passes

    @property
    def step(self) -> int:
        """Number of `train_step` calls so far (skipped non-finite steps included), so that
        it matches the data the run loop has consumed."""
        return self._step

    def skip_step(self) -> None:
        """Count a step that had nothing to train on (no update, no optimizer state change):
        the step counter, and so the lr schedule, stays in line with the run loop's steps."""
        self._step += 1

    @contextlib.contextmanager
    def teacher_weights(self, kind: str | None = None) -> Iterator[None]:
        """Context in which the shared model computes with the teacher's weights."""
        kind = kind or self.cfg.teacher
        if kind == "live":
            yield
        elif kind == "frozen":
            with self.model.disable_adapter():
                yield
        elif kind == "ema":
            if not self._ema_params:
                raise ValueError("this trainer has no EMA adapter (TrainerConfig.teacher != 'ema')")
            self.model.set_adapter(EMA_ADAPTER, inference_mode=True)
            try:
                yield
            finally:
                self.model.set_adapter(LIVE_ADAPTER)
        else:
            raise ValueError(f"unknown teacher kind {kind!r}")

    @contextlib.contextmanager
    def compute(self) -> Iterator[None]:
        """Context for every forward of the model: bf16 LoRA compute on a bf16 base."""
        if not self._bf16_lora:
            yield
            return
        from peft.helpers import disable_input_dtype_casting

        with torch.autocast(self.device.type, dtype=torch.bfloat16), \
                disable_input_dtype_casting(self.model):
            yield

    def last_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last-layer hidden states [B, T, H] (after the final norm) of the base transformer
        under whatever adapter state is active; no logits are computed."""
        with self.compute():
            out = self.decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
        return out.last_hidden_state

    @torch.no_grad()
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        weights: str = "live",
    ) -> torch.Tensor:
        """Hidden states under the given weights ("live" | "frozen" | "ema"), eval mode, no grad.
        For inspection and tests. The ids may be on any device; the states come back on the
        trainer's (on a GPU, CPU ids failed in the embedding lookup: scripts/gpu_check_offline.sh)."""
        was_training = self.model.training
        self.model.eval()
        if position_ids is not None:
            position_ids = position_ids.to(self.device)
        try:
            with self.teacher_weights(weights):
                return self.last_hidden(input_ids.to(self.device),
                                        attention_mask.to(self.device), position_ids)
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------ training

    def train_step(
        self,
        pairs: list[SplicedPair],
        weights: list[float] | None = None,
        sampling_logprobs: list[list[float]] | None = None,
        objective: str = "distill",
        supports: list[list[list[int]] | None] | None = None,
        teacher_logprobs: list[list[list[float]] | None] | None = None,
        sft: list[bool] | None = None,
        inspect: Collection[int] = (),
    ) -> dict:
        """One optimizer step over `pairs` (micro-batches of `micro_batch_size`, gradients
        accumulated, global token-mean loss). A non-finite loss or gradient norm skips the
        update (gradients zeroed, weights and optimizer state untouched) and is reported as
        ``skipped_nonfinite=1``.

        Per pair: `weights` (spread over its response tokens); `sampling_logprobs` (per
        response token, as the engine sampled them); `supports` (None, or per response token
        the ids the teacher may put mass on: `distill.answer_space`; the teacher is restricted
        and renormalized there); `teacher_logprobs` (None, or per response token the
        teacher's log-probabilities of that token's support ids, computed elsewhere, e.g. by
        the vLLM server: no teacher forward runs for such a pair); `sft` (True: cross-entropy
        on the response ids, no teacher at all). `objective="sft"` marks every pair sft.
        `inspect`: pair indices whose per-token report (distill.token_report, from this
        step's forward, before the update) lands in `last_token_reports`.

        Pairs are grouped by what they need (sft, a given teacher, a teacher forward) and
        sorted by length inside each group, so micro-batches carry little padding; the loss
        is a global token mean, so the grouping changes nothing but float rounding."""
        if not pairs and world().size == 1:  # under torchrun a rank's share may be empty
            raise ValueError("train_step needs at least one pair")
        if objective not in ("distill", "sft"):
            raise ValueError(f"objective must be 'distill' or 'sft', got {objective!r}")
        n_pairs = len(pairs)
        sft_flags = [objective == "sft"] * n_pairs if sft is None else [bool(s) for s in sft]
        for name, values in (("weights", weights), ("sampling logprob lists", sampling_logprobs),
                             ("supports", supports), ("teacher logprob lists", teacher_logprobs),
                             ("sft flags", sft_flags)):
            if values is not None and len(values) != n_pairs:
                raise ValueError(f"{len(values)} {name} for {n_pairs} pairs")
        lengths = [len(p.response_ids) for p in pairs]
        # under torchrun this rank holds its share of the step: the token mean runs over
        # every rank's tokens (distill.distributed), so the summed gradient is the step's
        total_tokens, distill_tokens = (int(x) for x in sum_over_ranks(
            [sum(lengths), sum(n for n, s in zip(lengths, sft_flags, strict=True) if not s)]))
        if total_tokens == 0:
            raise ValueError("the pairs have no response tokens")
        for i, n in enumerate(lengths):
            sup = supports[i] if supports is not None else None
            given = teacher_logprobs[i] if teacher_logprobs is not None else None
            if sup is not None and len(sup) != n:
                raise ValueError(f"pair {i}: {len(sup)} supports for {n} tokens")
            if sampling_logprobs is not None and len(sampling_logprobs[i]) != n:
                raise ValueError(f"pair {i}: {len(sampling_logprobs[i])} sampling logprobs for "
                                 f"{n} tokens")
            if given is not None:
                if sup is None:
                    raise ValueError(f"pair {i}: teacher logprobs need the support they score")
                bad = [t for t, (ids, lps) in enumerate(zip(sup, given, strict=True))
                       if len(ids) != len(lps)]
                if len(given) != n or bad:
                    raise ValueError(f"pair {i}: teacher logprobs do not match its support")

        def needs(i: int) -> int:  # 0: sft, 1: teacher given, 2: teacher forward
            if sft_flags[i]:
                return 0
            return 1 if teacher_logprobs is not None and teacher_logprobs[i] is not None else 2

        order = sorted(range(n_pairs), key=lambda i: (needs(i), -len(pairs[i].student_ids),
                                                      -len(pairs[i].teacher_ids), i))
        # what each row costs the student: its positions after the prefix computed once
        shared = self._shared_len(pairs, "student")
        micro = plan_micro_batches(order, [needs(i) for i in range(n_pairs)],
                                   [len(p.student_ids) - shared for p in pairs],
                                   self.cfg.micro_batch_size, self.cfg.bucket_by_length)

        self.optimizer.zero_grad(set_to_none=True)
        self.last_token_reports = {}
        device = self.lm_head.weight.device
        vocab = self.lm_head.weight.shape[0]
        loss_sum = 0.0
        stat_sums = dict.fromkeys(_SUMMED_STATS, 0.0)
        nonfinite = False
        batches = [collate([pairs[i] for i in idx], self.pad_id, self.cfg.pad_to_multiple_of)
                   .to(device) for idx in micro]
        # Teacher forwards first, for every micro-batch that needs one: its hidden states at
        # response positions are small, and switching adapters (frozen/ema) never happens
        # while the student's shared-prefix graph is alive.
        t0 = time.perf_counter()
        teacher_hs: list[torch.Tensor | None] = [None] * len(micro)
        forward = [k for k, idx in enumerate(micro) if needs(idx[0]) == 2]
        # FSDP gathers each layer's weights in every forward and reduces its gradients in
        # every backward, as collectives: every rank must run as many passes as the busiest
        # one, so a rank with fewer (or no) pairs pads with one-token passes of no weight
        passes = max_over_ranks([len(forward), len(micro)]) if self.cfg.fsdp else None
        if forward:
            rows = [pairs[i] for k in forward for i in micro[k]]
            teacher_prefix = self._prefix(rows, "teacher", grad=False)
            self.model.eval()  # no dropout in the teacher
            with torch.no_grad(), self.teacher_weights():
                for k in forward:
                    teacher_hs[k] = self._response_hidden([pairs[i] for i in micro[k]],
                                                          batches[k], "teacher", teacher_prefix)
            if teacher_prefix is not None:
                teacher_prefix.release()
        if passes:
            self.model.eval()
            with torch.no_grad(), self.teacher_weights():
                for _ in range(passes[0] - len(forward)):
                    self._idle_pass()
        # the base's hidden states on the student's own rows, for the KL anchor
        anchor_hs: list[torch.Tensor | None] = [None] * len(micro)
        anchored = [k for k, idx in enumerate(micro) if needs(idx[0]) != 0] \
            if self.cfg.anchor_kl else []
        if anchored:
            rows = [pairs[i] for k in anchored for i in micro[k]]
            base_prefix = self._prefix(rows, "student", grad=False, weights="frozen")
            self.model.eval()
            with torch.no_grad(), self.teacher_weights("frozen"):
                for k in anchored:
                    anchor_hs[k] = self._response_hidden([pairs[i] for i in micro[k]],
                                                         batches[k], "student", base_prefix)
            if base_prefix is not None:
                base_prefix.release()
        t_teacher = time.perf_counter() - t0
        t0 = time.perf_counter()
        student_prefix = self._prefix(pairs, "student", grad=True, length=shared)
        t_student = time.perf_counter() - t0
        # the loss computes logits in fp32: cast the head once a step, not once per chunk and
        # again in each checkpointed recompute (8 casts of 49152 x 576 a BANKING77 step)
        head = self.lm_head.weight.float()
        bias = getattr(self.lm_head, "bias", None)
        bias = None if bias is None else bias.float()
        for k, idx in enumerate(micro):
            chunk = [pairs[i] for i in idx]
            batch = batches[k]
            chunk_lengths = [lengths[i] for i in idx]
            n_tokens = sum(chunk_lengths)
            teacher_h, teacher_hs[k] = teacher_hs[k], None
            t1 = time.perf_counter()

            self.model.train()
            student_h = self._response_hidden(chunk, batch, "student", student_prefix)
            if student_h.shape[0] != n_tokens or (teacher_h is not None
                                                  and teacher_h.shape[0] != n_tokens):
                raise RuntimeError(
                    f"response positions: student {student_h.shape[0]}, teacher "
                    f"{None if teacher_h is None else teacher_h.shape[0]}, response tokens "
                    f"{n_tokens}")
            sampled_ids = batch.flat_response_ids()
            token_weights = None if weights is None else _per_token(
                [weights[i] for i in idx], chunk_lengths, device)
            anchor_weights = token_weights
            if self.cfg.skip_first_tokens and needs(idx[0]) != 0:
                token_weights = skip_first(token_weights, chunk_lengths,
                                           self.cfg.skip_first_tokens, device)
            token_logprobs = support = given = None
            if needs(idx[0]) == 0:
                loss, stats = chunked_nll(student_h, head, sampled_ids,
                                          lm_head_bias=bias, weights=token_weights,
                                          chunk_size=self.cfg.loss.chunk_size)
            else:
                chunk_supports = None if supports is None else [supports[i] for i in idx]
                token_logprobs = None if sampling_logprobs is None else torch.tensor(
                    [x for i in idx for x in sampling_logprobs[i]], dtype=torch.float32,
                    device=device)
                given = None if teacher_h is not None else given_teacher_logits(
                    chunk_supports, [teacher_logprobs[i] for i in idx], vocab, device)
                support = None if chunk_supports is None else support_mask(
                    chunk_supports, chunk_lengths, vocab, device)
                anchor_h, anchor_hs[k] = anchor_hs[k], None
                if anchor_h is not None:  # on every token, the first ones too
                    anchor_weights = self.cfg.anchor_kl * (
                        torch.ones(n_tokens, device=device) if anchor_weights is None
                        else anchor_weights)
                loss, stats = chunked_distill_loss(
                    student_h, teacher_h, head, self.cfg.loss,
                    lm_head_bias=bias, sampled_ids=sampled_ids,
                    sampling_logprobs=token_logprobs, weights=token_weights,
                    support=support, teacher_logits=given, anchor_hidden=anchor_h,
                    anchor_weights=None if anchor_h is None else anchor_weights)
            offset = 0
            for i, n in zip(idx, chunk_lengths, strict=True):
                if i in inspect:
                    rows = slice(offset, offset + n)
                    self.last_token_reports[i] = self._report(
                        head, bias, student_h[rows], sampled_ids[rows],
                        None if given is None else given[rows],
                        None if teacher_h is None else teacher_h[rows],
                        None if support is None else support[rows],
                        None if token_logprobs is None else token_logprobs[rows])
                offset += n
            micro_loss = float(loss.detach())
            if not math.isfinite(micro_loss):
                nonfinite = True
                if not self.cfg.fsdp:  # under FSDP every pass still runs (the step is skipped)
                    t_student += time.perf_counter() - t1
                    break
            (loss / total_tokens).backward()
            t_student += time.perf_counter() - t1
            loss_sum += micro_loss
            for key in _SUMMED_STATS:
                stat_sums[key] += float(stats.get(key, 0.0))

        t0 = time.perf_counter()
        if passes:
            self.model.train()
            for _ in range(passes[1] - len(micro)):
                (self._idle_pass().sum() * 0.0).backward()
        if student_prefix is not None:
            if nonfinite:
                student_prefix.release()
            else:
                student_prefix.backward()  # the prefix's share of every row's gradient
        t_student += time.perf_counter() - t0
        t0 = time.perf_counter()
        params = list(self._live_params.values())
        grad_norm = float("nan")
        nonfinite = any_rank(nonfinite)  # one rank's overflow skips the step on all
        if not nonfinite:
            if not self.cfg.fsdp:  # FSDP has summed them in its reduce-scatter
                sum_gradients(params)
            max_norm = self.cfg.max_grad_norm
            clip_to = max_norm if max_norm is not None and max_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_to))
            nonfinite = not math.isfinite(grad_norm)
        lr_now = self.cfg.lr * lr_factor(self._step, self.cfg.lr_schedule, self.cfg.warmup_steps,
                                         self.cfg.total_steps, self.cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_now
        if nonfinite:
            log.warning(
                "step %d: non-finite loss or gradient norm (loss_sum=%s, grad_norm=%s); "
                "update skipped",
                self._step + 1,
                loss_sum,
                grad_norm,
            )
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self._update_ema()
        if self.cfg.fsdp:
            self._full_live = gather_full(self._live_params)
        t_optim = time.perf_counter() - t0
        self._step += 1

        def per_token(value: float) -> float:
            return float("nan") if nonfinite else value / total_tokens

        loss_sum, *summed = sum_over_ranks([loss_sum, *(stat_sums[k] for k in _SUMMED_STATS)])
        stat_sums = dict(zip(_SUMMED_STATS, summed, strict=True))
        return {
            "loss": per_token(loss_sum),
            # the divergence stats cover the distilled tokens only (sft pairs have no teacher)
            "kl": stat_sums["kl_sum"] / distill_tokens if distill_tokens else float("nan"),
            "teacher_entropy": (stat_sums["teacher_entropy_sum"] / distill_tokens
                                if distill_tokens else float("nan")),
            # a skipped non-finite step stopped summing part-way: no entropy to report
            "student_entropy": (stat_sums["student_entropy_sum"] / distill_tokens
                                if distill_tokens and not nonfinite else float("nan")),
            "clipped_frac": per_token(stat_sums["clipped"]),
            # KL(student || base) per distilled token, weighted by the pairs' weights
            **({"anchor_kl": stat_sums["anchor_sum"] / self.cfg.anchor_kl / distill_tokens
                if distill_tokens else float("nan")} if self.cfg.anchor_kl else {}),
            "tokens": total_tokens,
            "sft_tokens": total_tokens - distill_tokens,
            "grad_norm": grad_norm,
            "skipped_nonfinite": int(nonfinite),
            "lr": lr_now,
            "time_teacher_s": t_teacher,
            "time_student_s": t_student,
            "time_optim_s": t_optim,
            "micro_batches": len(micro),
            "padding_frac": _padding_frac(batches, student_prefix),
            # positions the student computed (a shared prefix once): what MFU counts
            "student_positions": _computed_positions(batches, student_prefix),
            **({"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}
               if torch.cuda.is_available() else {}),
            "shared_prefix_tokens": 0 if student_prefix is None else student_prefix.length,
            "peak_rss_mb": _peak_rss_mb(),
        }

    @torch.no_grad()
    def _report(self, weight: torch.Tensor, bias: torch.Tensor | None, student_h: torch.Tensor,
                ids: torch.Tensor, teacher_logits: torch.Tensor | None,
                teacher_h: torch.Tensor | None, support: torch.Tensor | None,
                logprobs: torch.Tensor | None) -> TokenReport:
        """One pair's token report (`weight`, `bias`: the fp32 head): the teacher scored
        elsewhere (`teacher_logits`), by the trainer (`teacher_h`, hidden states), or neither
        (a supervised pair)."""
        logits = torch.nn.functional.linear(student_h.detach().float(), weight, bias)
        if teacher_h is not None:
            teacher_logits = torch.nn.functional.linear(teacher_h.float(), weight, bias)
        return token_report(logits, ids, self.cfg.loss, teacher_logits, support, logprobs)

    def _prefix(self, pairs: list[SplicedPair], side: str, grad: bool,
                length: int | None = None, weights: str | None = None) -> PrefixKV | None:
        """The prefix every pair's `side` sequence shares, run once (None if not worth it);
        `length`: its `_shared_len`, if already known; `weights`: for a no-grad prefix, the
        teacher_weights kind it runs under (default: the teacher's)."""
        n = self._shared_len(pairs, side) if length is None else length
        if not n:
            return None
        rows = [getattr(p, f"{side}_ids") for p in pairs]
        if grad:
            self.model.train()
            with self.compute():
                return PrefixKV(self.decoder, rows[0][:n], grad=True)
        self.model.eval()
        with torch.no_grad(), self.teacher_weights(weights), self.compute():
            return PrefixKV(self.decoder, rows[0][:n], grad=False)

    def _idle_pass(self) -> torch.Tensor:
        """A forward of one padding token: under FSDP, a rank's turn in a pass its own
        share of the step does not need (its output only ever gets weight 0)."""
        one = torch.full((1, 1), self.pad_id, dtype=torch.long, device=self.lm_head.weight.device)
        return self.last_hidden(one, torch.ones_like(one))

    def _shared_len(self, pairs: list[SplicedPair], side: str) -> int:
        """Length of the prefix `_prefix` would compute once for `side` (0: none)."""
        # Not with an EMA teacher: peft's set_adapter flips requires_grad on the live adapter,
        # and the student's prefix graph lives across that switch (its gradients came out
        # wrong in tests/test_shared_prefix.py); the plain path is exact there.
        # Nor under fsdp: the prefix's backward reaches layers FSDP has resharded (fsdp.py).
        if not pairs or not self.cfg.share_prefix or self.cfg.gradient_checkpointing or \
                self.cfg.teacher == "ema" or self.cfg.fsdp:
            return 0
        n = shared_prefix_len([getattr(p, f"{side}_ids") for p in pairs],
                              [getattr(p, f"{side}_prompt_len") for p in pairs])
        return n if n >= self.cfg.min_shared_prefix else 0

    def _response_hidden(self, chunk: list[SplicedPair], batch, side: str,
                         prefix: PrefixKV | None) -> torch.Tensor:
        """``[N, H]`` last hidden states at `side`'s response positions of a micro-batch."""
        if prefix is None:
            hidden = self.last_hidden(getattr(batch, f"{side}_input_ids"),
                                      getattr(batch, f"{side}_attention_mask"),
                                      getattr(batch, f"{side}_position_ids"))
            return gather_response_positions(hidden, getattr(batch, f"{side}_response_mask"))
        device = self.lm_head.weight.device
        ids, attention, mask, positions = pad_suffixes(
            [getattr(p, f"{side}_ids") for p in chunk],
            [getattr(p, f"{side}_prompt_len") for p in chunk], prefix.length, self.pad_id,
            self.cfg.pad_to_multiple_of)
        with self.compute():
            hidden = suffix_hidden(self.decoder, prefix, ids.to(device), attention.to(device),
                                   positions.to(device))
        return gather_response_positions(hidden, mask.to(device))

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.cfg.ema_decay
        for name, ema in self._ema_params.items():
            ema.mul_(decay).add_(self._live_params[name].detach(), alpha=1.0 - decay)

    # ------------------------------------------------------------------ persistence

    def adapter_state(self, adapter: str = LIVE_ADAPTER) -> dict[str, torch.Tensor]:
        """A detached copy of an adapter's LoRA weights, keyed by parameter name."""
        if adapter not in (LIVE_ADAPTER, EMA_ADAPTER):
            raise ValueError(f"unknown adapter {adapter!r}")
        params = self._live_params if adapter == LIVE_ADAPTER else self._ema_params
        if adapter == LIVE_ADAPTER and self._full_live is not None:
            params = self._full_live
        return {n: p.detach().clone() for n, p in params.items()}

    def save_adapter(self, directory: str | Path) -> None:
        """Write the LIVE adapter as peft does (adapter_config.json + adapter_model.safetensors):
        a folder vLLM's /v1/load_lora_adapter and `PeftModel.from_pretrained` load."""
        whole = {} if self._full_live is None else {"state_dict": self._full_live}
        self.model.save_pretrained(
            str(directory), selected_adapters=[LIVE_ADAPTER], safe_serialization=True, **whole
        )

    @torch.no_grad()
    def _merged_layers(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(plain HF name, base + LIVE adapter delta) of every LoRA layer, in the base dtype.
        Each merged weight is summed in fp32 and rounded once, so small adapter deltas are not
        lost to bf16 twice."""
        from peft.tuners.lora import LoraLayer

        if self.cfg.fsdp:
            raise RuntimeError("under fsdp the base weights stay sharded: a merged copy would "
                               "gather the whole model on one rank; sync the policy by LoRA "
                               "(--sync lora)")
        with torch.no_grad():
            for name, module in self.base.named_modules():
                if isinstance(module, LoraLayer) and LIVE_ADAPTER in module.lora_A:
                    base = module.get_base_layer().weight
                    delta = module.get_delta_weight(LIVE_ADAPTER).float()
                    yield f"{name}.weight", (base.float() + delta).to(base.dtype)

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The base model's weights with the LIVE adapter merged in, under the plain HF names
        (what a model folder holds), in the base dtype."""
        merged = dict(self._merged_layers())
        state = {}
        for key, value in self.base.state_dict().items():
            if "lora_" in key:
                continue
            plain = key.replace(".base_layer.", ".")
            state[plain] = merged.get(plain, value).detach().contiguous()
        head = self.base.get_output_embeddings().weight
        embed = self.base.get_input_embeddings().weight
        if head is embed or head.data_ptr() == embed.data_ptr():
            state.pop("lm_head.weight", None)  # tied: the folder stores the embeddings once
        return state

    def save_merged(self, directory: str | Path) -> Path:
        """Write the merged weights as `model.safetensors` in `directory`: the folder vLLM's
        in-place reload reads. The first call of a trainer writes the whole file (complete
        or absent, never half-written); later calls into the same folder overwrite only the
        LoRA-merged tensors, in place.

        Why in place: on this project's VM a page first touched by a busy run costs tens of
        microseconds (36 us a fault, measured in a SmolLM2 run, against 1.7 us in a fresh
        process), and a new file of merged weights each step touched 270 MB of new memory
        and page cache: 1.2-3 s a sync inside runs, 0.4 s outside them. Rewriting the same
        file's pages needs only one layer's temporaries. A crash mid-write leaves a file the
        run never reads back: a resumed run's first sync writes it whole again."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / "model.safetensors"
        if self._merged_file == final and final.exists() and self._write_merged_in_place(final):
            return directory
        tmp = directory / "model.safetensors.tmp"
        save_file(self.merged_state_dict(), str(tmp), metadata={"format": "pt"})
        # A rename over an existing file makes ext4 (auto_da_alloc) write the new file back
        # to disk before returning: 0.6-0.7 s of a SmolLM2 sync, against 0.22 s without.
        final.unlink(missing_ok=True)
        tmp.rename(final)
        self._merged_file = final
        return directory

    def _write_merged_in_place(self, path: Path) -> bool:
        """Overwrite the LoRA-merged tensors of a safetensors file this trainer wrote, one
        layer at a time; False if its header does not hold them as expected (the caller then
        writes the whole file, so a partly overwritten one is never left behind)."""
        with open(path, "r+b") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
            with mmap.mmap(f.fileno(), 0) as mapped:
                for name, tensor in self._merged_layers():
                    entry = header.get(name)
                    size = tensor.numel() * tensor.element_size()
                    if entry is None or entry["shape"] != list(tensor.shape) or \
                            entry["data_offsets"][1] - entry["data_offsets"][0] != size:
                        return False
                    slot = torch.frombuffer(mapped, dtype=torch.uint8, count=size,
                                            offset=8 + header_len + entry["data_offsets"][0])
                    slot.view(tensor.dtype).view(tensor.shape).copy_(tensor)
                    del slot  # the mapping closes only once no tensor views it
        return True

    def load_adapter(self, directory: str | Path) -> None:
        """Load LoRA weights saved by `save_adapter` into the live adapter (in place, so the
        optimizer keeps pointing at the same tensors)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(Path(directory) / "adapter_model.safetensors"))
        if self.cfg.fsdp:
            self._load_adapter_sharded(directory, weights)
            return
        result = set_peft_model_state_dict(self.model, weights, adapter_name=LIVE_ADAPTER)
        missing = [k for k in result.missing_keys if f".{LIVE_ADAPTER}." in k]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"adapter at {directory} does not match this model: missing {missing[:3]}, "
                f"unexpected {list(result.unexpected_keys)[:3]}"
            )

    def _load_adapter_sharded(self, directory: str | Path, weights: dict[str, torch.Tensor]) -> None:
        """`load_adapter` under fsdp: peft's file names a weight without the adapter's name
        (``...q_proj.lora_A.weight`` for ``...q_proj.lora_A.default.weight``); every rank
        keeps its shard of each."""
        by_file = {n.replace(f".{LIVE_ADAPTER}.", "."): n for n in self._live_params}
        missing = sorted(set(by_file) - set(weights))
        unexpected = sorted(set(weights) - set(by_file))
        if missing or unexpected:
            raise RuntimeError(f"adapter at {directory} does not match this model: missing "
                               f"{missing[:3]}, unexpected {unexpected[:3]}")
        values = {by_file[k]: v for k, v in weights.items()}
        load_full(self._live_params, values)
        self._full_live = {n: values[n].to(dtype=p.dtype, device=p.device).clone()
                           for n, p in self._live_params.items()}

    def state_dict_for_resume(self) -> dict:
        """Everything beyond the adapter weights needed to continue bit-for-bit: optimizer
        state, step counter, RNG states (python, numpy, torch) and the EMA adapter. Under
        fsdp the optimizer state is each rank's own shard: `rank_state`, not here."""
        return {
            "step": self._step,
            "optimizer": None if self.cfg.fsdp else self.optimizer.state_dict(),
            "rng": rng_state(),
            "ema": self.adapter_state(EMA_ADAPTER) if self._ema_params else None,
        }

    def rank_state(self) -> dict:
        """What differs between torchrun's ranks and a resume restores on each: its RNG
        states and, under fsdp, its shard of the optimizer state."""
        return {"rng": rng_state(),
                "optimizer": local_optimizer_state(self.optimizer) if self.cfg.fsdp else None}

    def load_rank_state(self, state: dict) -> None:
        """Inverse of `rank_state`, on the same rank (after `load_resume_state`)."""
        if (state.get("optimizer") is None) == self.cfg.fsdp:
            raise ValueError("the checkpoint and this trainer disagree on fsdp: resume with "
                             "the run's own --fsdp setting")
        if self.cfg.fsdp:
            load_local_optimizer_state(self.optimizer, state["optimizer"])
        set_rng_state(state["rng"])

    def load_resume_state(self, state: dict) -> None:
        """Inverse of `state_dict_for_resume` (load the adapter weights separately)."""
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        elif not self.cfg.fsdp:
            raise ValueError("this checkpoint's optimizer state is sharded (an fsdp run): "
                             "resume with --fsdp under the same torchrun process count")
        self._step = int(state["step"])
        set_rng_state(state["rng"])
        ema = state.get("ema")
        if bool(ema) != bool(self._ema_params):
            raise ValueError("resume state and trainer disagree on whether there is an EMA teacher")
        if ema:
            with torch.no_grad():
                for name, param in self._ema_params.items():
                    param.copy_(ema[name])


def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch, CUDA): what a resume restores."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def lora_target_modules(model, spec: list[str] | str) -> list[str] | str:
    """Resolve "all-linear" to the short names (e.g. ``q_proj``) of every nn.Linear inside
    the decoder: the attention and MLP projections, never the embeddings or the lm_head.
    Short names keep adapter_config.json in the form vLLM's LoRA loader expects. Any other
    spec is passed to peft as given."""
    if spec != "all-linear":
        return spec
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.get_decoder().named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    if not names:
        raise ValueError("all-linear found no nn.Linear layers in the decoder")
    head = model.get_output_embeddings()
    head_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is head}
    if names & head_names:  # a short name would also match the lm_head: let peft resolve it
        return spec
    return sorted(names)


def plan_micro_batches(order: Sequence[int], groups: Sequence[int], widths: Sequence[int],
                       size: int, bucket: bool = True) -> list[list[int]]:
    """Split `order` (row indices, widest first within each group) into micro-batches: runs
    of one group, at most `size` rows and at most `size` x the median width of padded
    positions each. The second cap keeps one long row from padding `size - 1` short ones
    to its width: on the real BANKING77 step a 126-token suffix among ~45-token ones made
    its micro-batch of 8 cost 2.7 s instead of 1.2 s, and 2.5x the activation memory."""
    if not order:
        return []
    budget = size * statistics.median_low(widths[i] for i in order) if bucket else math.inf
    micro: list[list[int]] = []
    for i in order:
        if micro and groups[micro[-1][0]] == groups[i] and len(micro[-1]) < size and \
                (len(micro[-1]) + 1) * widths[micro[-1][0]] <= budget:
            micro[-1].append(i)
        else:
            micro.append([i])
    return micro


def support_mask(supports: Sequence[list[list[int]] | None], lengths: Sequence[int],
                 vocab: int, device) -> torch.Tensor | None:
    """``[N, V]`` bool: row k allows the ids listed for response token k (pairs in order,
    tokens in order, as `gather_response_positions` stacks them); a pair with None allows
    everything. None when no pair has a support."""
    if all(s is None for s in supports):
        return None
    mask = torch.ones(sum(lengths), vocab, dtype=torch.bool)
    row = 0
    for sup, n in zip(supports, lengths, strict=True):
        if sup is not None:
            for k, allowed in enumerate(sup):
                mask[row + k] = False
                mask[row + k, list(allowed)] = True
        row += n
    return mask.to(device)


def given_teacher_logits(supports: Sequence[list[list[int]] | None],
                         logprobs: Sequence[list[list[float]] | None], vocab: int,
                         device) -> torch.Tensor:
    """``[N, V]`` teacher logits from per-token (support ids, log-probabilities) computed
    elsewhere: each row holds the given log-probabilities at its support ids and -1e30 (no
    mass) everywhere else, which is what `losses.restrict` makes of a restricted teacher.
    A softmax over the row renormalizes the teacher on its support."""
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    row = 0
    for sup, lps in zip(supports, logprobs, strict=True):
        if sup is None or lps is None:
            raise ValueError("a given teacher needs a support and its log-probabilities")
        for ids, values in zip(sup, lps, strict=True):
            rows += [row] * len(ids)
            cols += list(ids)
            vals += list(values)
            row += 1
    out = torch.full((row, vocab), NO_MASS, dtype=torch.float32)
    out[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = torch.tensor(
        vals, dtype=torch.float32)
    return out.to(device)


def _padding_frac(batches: Sequence, prefix: PrefixKV | None) -> float:
    """Share of the student's computed positions that are padding (after a shared prefix,
    only the suffix columns are computed per row)."""
    cells = real = 0
    for b in batches:
        mask = b.student_attention_mask
        width = mask.shape[1] - (prefix.length if prefix is not None else 0)
        lengths = mask.sum(-1) - (prefix.length if prefix is not None else 0)
        cells += mask.shape[0] * width
        real += int(lengths.sum())
    return 1.0 - real / cells if cells else 0.0


def _computed_positions(batches: Sequence, prefix: PrefixKV | None) -> int:
    """This rank's student positions computed in the step: every row's real tokens past the
    shared prefix, plus the prefix once."""
    cut = prefix.length if prefix is not None else 0
    rows = sum(int((b.student_attention_mask.sum(-1) - cut).sum()) for b in batches)
    return rows + (cut if batches else 0)


def skip_first(token_weights: torch.Tensor | None, lengths: Sequence[int], n: int,
               device: torch.device | str) -> torch.Tensor:
    """Per-token weights (ones if None) with each response's first `n` tokens set to 0."""
    if token_weights is None:
        token_weights = torch.ones(sum(lengths), dtype=torch.float32, device=device)
    keep = torch.cat([torch.arange(k, device=device) >= n for k in lengths])
    return token_weights * keep.to(token_weights.dtype)


def _per_token(weights: Sequence[float], lengths: Sequence[int], device) -> torch.Tensor:
    return torch.cat(
        [torch.full((n,), float(w), dtype=torch.float32) for w, n in zip(weights, lengths, strict=True)]
    ).to(device)


def _pad_id(tokenizer, config) -> int:
    for source in (tokenizer, config):
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(source, attr, None) if source is not None else None
            if isinstance(value, list):
                value = value[0] if value else None
            if value is not None:
                return int(value)
    return 0  # any id works: padded positions are masked out


def _try_load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:  # e.g. a test model folder with no tokenizer
        log.info("no tokenizer at %s (%s); padding with the config's ids", path, err)
        return None


def _check_plain_lm_head(config) -> None:
    """The loss applies the lm_head weight itself; models that post-process logits would be
    scored wrongly, so refuse them instead."""
    if getattr(config, "final_logit_softcapping", None) is not None:
        raise NotImplementedError("final_logit_softcapping is not supported by the chunked loss")
    for attr in ("logit_scale", "logits_scaling"):
        value = getattr(config, attr, None)
        if value is not None and value != 1:
            raise NotImplementedError(f"{attr}={value} is not supported by the chunked loss")
