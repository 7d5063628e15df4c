"""Per-token divergences between teacher and student next-token distributions.

Every function here is pure torch: logits (or hidden states) in, per-token
losses out. Rows are *response positions* only (see ``distill.splicing`` for
how they are gathered): row ``i`` of the student and the teacher predict the
same response token.

Kinds (``LossConfig.kind``), with ``S = softmax(student / T)`` and
``P = softmax(teacher / T)``:

``reverse_kl`` (default, OPHSD)
    ``KL(S || P) = sum_v S_v (log S_v - log P_v)``: mode seeking.
``forward_kl``
    ``KL(P || S)``: mass covering.
``jsd``
    Generalized Jensen-Shannon divergence, TRL GKD's convention::

        M       = beta * P + (1 - beta) * S
        JSD_beta = beta * KL(P || M) + (1 - beta) * KL(S || M)

    ``beta = 0.5`` is the symmetric JSD (bounded by ``log 2``). Limits, checked
    in the tests: ``JSD_beta -> 0`` at both ends (``M`` collapses onto one
    side), to first order ``JSD_beta = beta * KL(P || S) + O(beta^2)`` and
    ``JSD_beta = (1 - beta) * KL(S || P) + O((1 - beta)^2)``. So
    ``JSD_beta / beta -> forward KL`` as ``beta -> 0`` and
    ``JSD_beta / (1 - beta) -> reverse KL`` as ``beta -> 1``. As in TRL, the
    endpoints are defined by those normalized limits: ``beta == 0`` *is*
    ``forward_kl`` and ``beta == 1`` *is* ``reverse_kl`` (the raw formula would
    be identically zero there). Also ``JSD_beta(S, P) = JSD_{1-beta}(P, S)``.
``topk_reverse_kl``
    Reverse KL on the teacher's top-``k`` tokens, both distributions
    renormalized on that support. With ``tail_bucket=True`` a ``(k+1)``-th
    bucket holds each side's remaining mass ``1 - sum_topk``; the ``k+1``
    buckets already sum to one, so nothing is renormalized.
``sampled_token``
    Tinker-style single-sample estimator on the engine's sampled token ``y``.
    ``advantage = log P(y) - log S(y)`` (detached) and the surrogate loss is
    ``-advantage * log S(y)``, whose gradient ``(log S(y) - log P(y)) *
    grad log S(y)`` is the score-function (policy-gradient) estimator of
    ``grad KL(S || P)`` for ``y ~ S``. With ``sampling_logprobs`` (the engine's
    ``log q(y)``) the surrogate is multiplied by the detached importance ratio
    ``exp(log S(y) - log q(y))``. The surrogate's *value* is not a divergence;
    log :func:`sampled_token_kl_estimate` instead.

Answer support (``support``, a boolean ``[N, V]`` mask, see ``distill.answer_space``):
the teacher is restricted to the allowed tokens of each position and renormalized
there. ``forward_kl`` and ``jsd`` then compare that teacher with the full student
(student mass outside the support is pushed back in); ``reverse_kl`` and
``topk_reverse_kl`` restrict and renormalize the student too (outside the support the
restricted teacher is zero, so the full reverse KL would be infinite).
``sampled_token`` takes no support.

The teacher never receives gradients. ``temperature`` divides both logits.
``clip`` clamps each token's loss from above before reduction (tokens above
the clip get no gradient); for ``sampled_token`` it clamps the advantage to
``[-clip, clip]`` instead, since clamping a surrogate's value is meaningless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

LOSSES = ("reverse_kl", "forward_kl", "jsd", "topk_reverse_kl", "sampled_token")


@dataclass(frozen=True)
class LossConfig:
    """Which divergence and how; see the module docstring for the conventions."""

    kind: str = "reverse_kl"
    beta: float = 0.5  # jsd: 0 -> forward KL, 1 -> reverse KL (normalized limits)
    temperature: float = 1.0  # divides both logits before the softmax
    top_k: int | None = None  # topk_reverse_kl: size of the teacher's support
    tail_bucket: bool = False  # topk_reverse_kl: one extra bucket with the remaining mass
    clip: float | None = None  # per-token clamp (max) of the loss before reduction
    chunk_size: int = 256  # response positions per chunk in chunked_distill_loss
    # weight of a position whose teacher argmax is the student's sampled token (1: all alike);
    # the anchor term is not reweighted
    agreed_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in LOSSES:
            raise ValueError(f"unknown loss kind {self.kind!r}; expected one of {LOSSES}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.kind == "topk_reverse_kl" and (self.top_k is None or self.top_k < 1):
            raise ValueError("topk_reverse_kl needs top_k >= 1")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be > 0, got {self.clip}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.agreed_weight < 0:
            raise ValueError(f"agreed_weight must be >= 0, got {self.agreed_weight}")


def kl_from_logprobs(logp: Tensor, logq: Tensor) -> Tensor:
    """``KL(p || q)`` per row from log-probabilities, with ``0 log 0 = 0``."""
    return (logp.exp() * (logp - logq)).sum(-1)


def log_probs(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(logits / temperature, dim=-1)


def _jsd(student_logp: Tensor, teacher_logp: Tensor, beta: float) -> Tensor:
    if beta == 0.0:
        return kl_from_logprobs(teacher_logp, student_logp)
    if beta == 1.0:
        return kl_from_logprobs(student_logp, teacher_logp)
    mixture_logp = torch.logsumexp(
        torch.stack([teacher_logp + math.log(beta), student_logp + math.log1p(-beta)]), dim=0
    )
    return beta * kl_from_logprobs(teacher_logp, mixture_logp) + (1 - beta) * kl_from_logprobs(
        student_logp, mixture_logp
    )


def _topk_reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, top_k: int, tail_bucket: bool
) -> Tensor:
    k = min(top_k, teacher_logits.shape[-1])
    idx = teacher_logits.topk(k, dim=-1).indices
    if not tail_bucket:
        s_logp = F.log_softmax(student_logits.gather(-1, idx), dim=-1)
        t_logp = F.log_softmax(teacher_logits.gather(-1, idx), dim=-1)
        return kl_from_logprobs(s_logp, t_logp)

    def buckets(logits: Tensor) -> Tensor:
        full_lse = logits.logsumexp(-1, keepdim=True)
        head = logits.gather(-1, idx) - full_lse
        # Tail from the tokens outside the support (accurate when the tail is tiny);
        # a finite fill keeps gradients finite when k == V (empty tail).
        floor = torch.finfo(logits.dtype).min
        rest = logits.scatter(-1, idx, floor).logsumexp(-1, keepdim=True) - full_lse
        tail = rest.clamp_min(math.log(torch.finfo(logits.dtype).tiny))
        return torch.cat([head, tail], dim=-1)

    return kl_from_logprobs(buckets(student_logits), buckets(teacher_logits))


def _sampled_logprobs(
    student_logits: Tensor, teacher_logits: Tensor, sampled_ids: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    ids = sampled_ids.long().unsqueeze(-1)
    s = log_probs(student_logits, temperature).gather(-1, ids).squeeze(-1)
    t = log_probs(teacher_logits, temperature).gather(-1, ids).squeeze(-1)
    return s, t


def sampled_token_kl_estimate(
    student_logits: Tensor, teacher_logits: Tensor, sampled_ids: Tensor, temperature: float = 1.0
) -> Tensor:
    """Per-token ``log S(y) - log P(y)`` (detached): unbiased for ``KL(S || P)`` when ``y ~ S``."""
    with torch.no_grad():
        s, t = _sampled_logprobs(student_logits, teacher_logits, sampled_ids, temperature)
        return s - t


NO_MASS = -1e30  # finite (0 * log 0 terms stay 0) and still finite after a temperature divide


def restrict(logits: Tensor, support: Tensor | None) -> Tensor:
    """``logits`` with every token outside ``support`` (bool, same shape) at -1e30: zero
    probability after a softmax, while ``p * (log p - log q)`` terms stay finite."""
    if support is None:
        return logits
    if support.shape != logits.shape:
        raise ValueError(f"support {tuple(support.shape)} does not match logits "
                         f"{tuple(logits.shape)}")
    if not bool(support.any(-1).all()):
        raise ValueError("every position's support needs at least one allowed token")
    return logits.masked_fill(~support, NO_MASS)


def per_token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    cfg: LossConfig,
    sampled_ids: Tensor | None = None,
    sampling_logprobs: Tensor | None = None,
    support: Tensor | None = None,
) -> Tensor:
    """Loss per response position, shape ``[N]``, from ``[N, V]`` logits.

    Differentiable with respect to ``student_logits`` only (the teacher is detached).
    ``sampled_ids`` (``[N]``) is required for ``sampled_token``; ``sampling_logprobs``
    (``[N]``, the engine's log-probability of each sampled token) is optional;
    ``support`` (bool ``[N, V]``) restricts the teacher (module docstring).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logit shapes differ: {student_logits.shape} vs {teacher_logits.shape}")
    teacher_logits = teacher_logits.detach()
    temp = cfg.temperature
    if support is not None:
        if cfg.kind == "sampled_token":
            raise ValueError("sampled_token takes no answer support")
        teacher_logits = restrict(teacher_logits, support)
        if cfg.kind in ("reverse_kl", "topk_reverse_kl"):
            student_logits = restrict(student_logits, support)

    if cfg.kind == "sampled_token":
        if sampled_ids is None:
            raise ValueError("sampled_token needs sampled_ids")
        s, t = _sampled_logprobs(student_logits, teacher_logits, sampled_ids, temp)
        advantage = (t - s).detach()
        if cfg.clip is not None:
            advantage = advantage.clamp(-cfg.clip, cfg.clip)
        loss = -advantage * s
        if sampling_logprobs is not None:
            loss = loss * (s.detach() - sampling_logprobs.to(s.dtype)).exp()
        return loss

    if cfg.kind == "topk_reverse_kl":
        assert cfg.top_k is not None
        loss = _topk_reverse_kl(
            student_logits / temp, teacher_logits / temp, cfg.top_k, cfg.tail_bucket
        )
    else:
        s_logp = log_probs(student_logits, temp)
        t_logp = log_probs(teacher_logits, temp)
        if cfg.kind == "reverse_kl":
            loss = kl_from_logprobs(s_logp, t_logp)
        elif cfg.kind == "forward_kl":
            loss = kl_from_logprobs(t_logp, s_logp)
        else:
            loss = _jsd(s_logp, t_logp, cfg.beta)
    if cfg.clip is not None:
        loss = loss.clamp(max=cfg.clip)
    return loss


def token_mean(per_token: Tensor, mask: Tensor, num_tokens: int | float | None = None) -> Tensor:
    """Global token mean ``sum(per_token * mask) / num_tokens``.

    Pass ``num_tokens`` = the response tokens of the WHOLE optimizer step (all
    gradient-accumulation micro-batches), so that summing the micro-batch
    losses weights every token equally instead of averaging per micro-batch or
    per sequence. Defaults to ``mask.sum()``; an empty mask gives 0, not NaN.
    """
    total = (per_token * mask.to(per_token.dtype)).sum()
    if num_tokens is None:
        num_tokens = mask.sum().item()
    return total / max(float(num_tokens), 1.0)


_STAT_NAMES = ("kl_sum", "clipped", "teacher_entropy_sum", "student_entropy_sum",
               "sampled_kl_sum", "anchor_sum")


def _chunk_losses(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    sampled_ids: Tensor | None,
    sampling_logprobs: Tensor | None,
    token_weights: Tensor,
    cfg: LossConfig,
    support: Tensor | None = None,
    teacher_given: Tensor | None = None,
    anchor_hidden: Tensor | None = None,
    anchor_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One chunk: returns (sum of weighted losses, detached stats in ``_STAT_NAMES`` order)."""
    dtype = torch.promote_types(student_hidden.dtype, torch.float32)
    w = weight.to(dtype)
    b = None if bias is None else bias.to(dtype)
    student_logits = F.linear(student_hidden.to(dtype), w, b)
    with torch.no_grad():
        if teacher_given is not None:
            teacher_logits = teacher_given.to(dtype)
        else:
            t_bias = None if b is None else b.detach()
            teacher_logits = F.linear(teacher_hidden.to(dtype), w.detach(), t_bias)
    loss = per_token_divergence(student_logits, teacher_logits, cfg, sampled_ids, sampling_logprobs,
                                support)
    token_weights = token_weights.to(dtype)
    if cfg.agreed_weight != 1.0 and sampled_ids is not None:
        agreed = teacher_logits.argmax(-1) == sampled_ids.long()  # over the full vocabulary
        token_weights = torch.where(agreed, token_weights * cfg.agreed_weight, token_weights)
    loss_sum = (loss * token_weights).sum()
    anchor_sum = loss_sum.new_zeros(())
    if anchor_hidden is not None:  # the same student logits, against the base's
        with torch.no_grad():
            base_logp = log_probs(F.linear(anchor_hidden.to(dtype), w.detach(),
                                           None if b is None else b.detach()), 1.0)
        anchor = kl_from_logprobs(log_probs(student_logits, 1.0), base_logp)
        anchor_sum = (anchor * anchor_weights.to(dtype)).sum()
        loss_sum = loss_sum + anchor_sum
    with torch.no_grad():
        temp = cfg.temperature  # stats under a support: both sides restricted to it
        s_logp = log_probs(restrict(student_logits.detach(), support), temp)
        t_logp = log_probs(restrict(teacher_logits, support), temp)
        kl_sum = kl_from_logprobs(s_logp, t_logp).sum()
        entropy_sum = -(t_logp.exp() * t_logp).sum()
        student_entropy_sum = -(s_logp.exp() * s_logp).sum()  # the collapse guard's signal
        zero = kl_sum.new_zeros(())
        sampled_kl = zero
        if sampled_ids is not None:
            ids = sampled_ids.long().unsqueeze(-1)
            est = (s_logp.gather(-1, ids) - t_logp.gather(-1, ids)).squeeze(-1)
            sampled_kl = est.sum()
        if cfg.clip is None:
            clipped = zero
        elif cfg.kind == "sampled_token":
            clipped = (est.abs() > cfg.clip).sum().to(dtype)
        else:
            clipped = (loss >= cfg.clip).sum().to(dtype)
        stats = torch.stack([kl_sum, clipped, entropy_sum, student_entropy_sum, sampled_kl,
                             anchor_sum.detach()])
    return loss_sum, stats


def chunked_distill_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor | None,
    lm_head_weight: Tensor,
    cfg: LossConfig,
    lm_head_bias: Tensor | None = None,
    sampled_ids: Tensor | None = None,
    sampling_logprobs: Tensor | None = None,
    weights: Tensor | None = None,
    support: Tensor | None = None,
    teacher_logits: Tensor | None = None,
    anchor_hidden: Tensor | None = None,
    anchor_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Sum over response positions of ``weights_i * loss_i``, computed chunk by chunk.

    ``student_hidden`` / ``teacher_hidden`` are the final hidden states at the
    ``N`` response positions (``[N, H]``, aligned row by row, e.g. from
    ``distill.splicing.gather_response_positions``). Full-vocabulary logits
    exist for at most ``cfg.chunk_size`` positions at a time: each chunk runs
    under ``torch.utils.checkpoint``, so the forward keeps only the chunk's
    inputs and the backward recomputes one chunk's logits at a time; peak
    memory grows with ``chunk_size x V``, not ``N x V``. Logits are computed in
    float32 (bf16 inputs are upcast per chunk; float64 stays float64). The
    teacher side runs under ``no_grad`` with a detached head.

    Returns the differentiable scalar sum (divide by the step's token count,
    as in :func:`token_mean`, for a global token mean) and detached stats:
    ``tokens`` (N), ``weight_sum``, ``loss_sum``, ``kl_sum`` (full-vocabulary
    reverse KL at the configured temperature, whatever the loss kind, unweighted),
    ``clipped`` (tokens hit by the clip), ``teacher_entropy_sum``, ``student_entropy_sum`` and, when
    ``sampled_ids`` are given, ``sampled_kl_sum`` (sum of ``log S(y) - log P(y)``).
    ``support`` (bool ``[N, V]``, optional) restricts the teacher to each position's
    allowed tokens (module docstring); the stats are then over the support.

    ``teacher_logits`` (``[N, V]``) replaces ``teacher_hidden`` when the teacher was scored
    elsewhere (the vLLM server's log-probabilities on the support, ``NO_MASS`` elsewhere:
    ``distill.trainer.given_teacher_logits``); give exactly one of the two.

    ``anchor_hidden`` (``[N, H]``, the base model's hidden states on the student's own rows)
    adds ``anchor_weights_i * KL(S_i || B_i)`` to each position's term: a KL anchor to the
    base, full vocabulary, temperature 1, no support and no clip, on the student logits the
    main term already computed. ``anchor_weights`` carries its weight (the anchor's scale
    times the pair's weight); stats get ``anchor_sum``, that term's weighted sum.
    """
    n = student_hidden.shape[0]
    if (teacher_hidden is None) == (teacher_logits is None):
        raise ValueError("give exactly one of teacher_hidden and teacher_logits")
    if teacher_hidden is not None and teacher_hidden.shape != student_hidden.shape:
        raise ValueError(f"hidden shapes differ: {student_hidden.shape} vs {teacher_hidden.shape}")
    if teacher_logits is not None and teacher_logits.shape != (n, lm_head_weight.shape[0]):
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match "
                         f"{n} positions x vocabulary {lm_head_weight.shape[0]}")
    if cfg.kind == "sampled_token" and sampled_ids is None:
        raise ValueError("sampled_token needs sampled_ids")
    if anchor_hidden is not None and anchor_hidden.shape != student_hidden.shape:
        raise ValueError(f"anchor hidden {tuple(anchor_hidden.shape)} does not match the "
                         f"student's {tuple(student_hidden.shape)}")
    if (anchor_hidden is None) != (anchor_weights is None):
        raise ValueError("give anchor_hidden and anchor_weights together")
    if anchor_hidden is not None:
        anchor_hidden = anchor_hidden.detach()
    if teacher_hidden is not None:
        teacher_hidden = teacher_hidden.detach()
    dtype = torch.promote_types(student_hidden.dtype, torch.float32)
    if weights is None:
        weights = torch.ones(n, dtype=dtype, device=student_hidden.device)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (student_hidden, lm_head_weight, lm_head_bias)
    )
    total = torch.zeros((), dtype=dtype, device=student_hidden.device)
    stats_sum = torch.zeros(len(_STAT_NAMES), dtype=dtype, device=student_hidden.device)
    for start in range(0, n, cfg.chunk_size):
        sl = slice(start, start + cfg.chunk_size)
        args = (
            student_hidden[sl],
            None if teacher_hidden is None else teacher_hidden[sl],
            lm_head_weight,
            lm_head_bias,
            None if sampled_ids is None else sampled_ids[sl],
            None if sampling_logprobs is None else sampling_logprobs[sl],
            weights[sl],
            cfg,
            None if support is None else support[sl],
            None if teacher_logits is None else teacher_logits[sl],
            None if anchor_hidden is None else anchor_hidden[sl],
            None if anchor_weights is None else anchor_weights[sl],
        )
        if needs_grad:
            loss_sum, chunk_stats = checkpoint(_chunk_losses, *args, use_reentrant=False)
        else:
            loss_sum, chunk_stats = _chunk_losses(*args)
        total = total + loss_sum
        stats_sum += chunk_stats.detach()
    values = dict(zip(_STAT_NAMES, stats_sum.tolist(), strict=True))
    stats: dict[str, float] = {
        "tokens": n,
        "weight_sum": float(weights.sum()),
        "loss_sum": float(total.detach()),
        **values,
    }
    if sampled_ids is None:
        del stats["sampled_kl_sum"]
    if anchor_hidden is None:
        del stats["anchor_sum"]
    return total, stats


def _nll_chunk(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
    logits = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    return F.cross_entropy(logits, targets, reduction="none")


def chunked_nll(student_hidden: Tensor, lm_head_weight: Tensor, target_ids: Tensor,
                lm_head_bias: Tensor | None = None, weights: Tensor | None = None,
                chunk_size: int = 256) -> tuple[Tensor, dict]:
    """Supervised loss (the `sft` baseline): sum over positions of -log p(target), weighted.

    Same memory contract as `chunked_distill_loss`: logits exist one chunk at a
    time and are recomputed in backward (checkpointed), never [N, V] at once.
    """
    n = student_hidden.shape[0]
    total = student_hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        args = (student_hidden[sl], lm_head_weight, lm_head_bias, target_ids[sl])
        if torch.is_grad_enabled():
            per_token = checkpoint(_nll_chunk, *args, use_reentrant=False)
        else:
            per_token = _nll_chunk(*args)
        if weights is not None:
            per_token = per_token * weights[sl].to(per_token.dtype)
        total = total + per_token.sum()
    return total, {"tokens": n, "kl_sum": 0.0}
