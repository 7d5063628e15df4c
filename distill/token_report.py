"""What the teacher and the student said at each response token of one training pair.

Pure torch, logits in, plain lists out: the run's transcripts (distill.transcripts) show
it per token, coloured by divergence, so a collapsing run can be read token by token
(both GSM8K runs collapsed and nobody could see what the teacher had said).

Per token: the divergence the `kl` metric reports (reverse KL of the student from the
teacher, both restricted to the answer support when there is one, at the loss
temperature), the loss term itself (`per_token_divergence`; the cross-entropy for a
gold/sft pair), and each side's most likely tokens with their probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from distill.losses import LossConfig, kl_from_logprobs, log_probs, per_token_divergence, restrict

TOP_TOKENS = 3


@dataclass(frozen=True)
class TokenReport:
    """One pair's response, token by token (lists of equal length)."""

    ids: list[int]
    loss: list[float]  # the loss term of each token (cross-entropy for sft pairs)
    kl: list[float] | None  # reverse KL(student || teacher); None for sft pairs
    student_top: list[list[tuple[int, float]]]  # (id, probability), most likely first
    teacher_top: list[list[tuple[int, float]]] | None  # None for sft pairs


def _top(logp: Tensor, k: int) -> list[list[tuple[int, float]]]:
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return [[(int(i), float(v)) for i, v in zip(row_ids, row_v, strict=True)]
            for row_ids, row_v in zip(ids.tolist(), values.exp().tolist(), strict=True)]


@torch.no_grad()
def token_report(student_logits: Tensor, response_ids: Tensor, cfg: LossConfig,
                 teacher_logits: Tensor | None = None, support: Tensor | None = None,
                 sampling_logprobs: Tensor | None = None, k: int = TOP_TOKENS) -> TokenReport:
    """The report of one pair from its ``[N, V]`` logits at its N response positions.

    ``teacher_logits`` None means a supervised pair (the gold ids are the target)."""
    student_logits = student_logits.float()
    ids = response_ids.long()
    if teacher_logits is None:
        logp = torch.log_softmax(student_logits, dim=-1)
        nll = -logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return TokenReport(ids.tolist(), nll.tolist(), None, _top(logp, k), None)
    teacher_logits = teacher_logits.float()
    loss = per_token_divergence(student_logits, teacher_logits, cfg, ids,
                                sampling_logprobs, support)
    s_logp = log_probs(restrict(student_logits, support), cfg.temperature)
    t_logp = log_probs(restrict(teacher_logits, support), cfg.temperature)
    kl = kl_from_logprobs(s_logp, t_logp)
    # each side's own distribution: the student's over the whole vocabulary (where its
    # mass really goes), the teacher's as the loss sees it (restricted to the support)
    student_top = _top(torch.log_softmax(student_logits, dim=-1), k)
    return TokenReport(ids.tolist(), loss.tolist(), kl.tolist(), student_top, _top(t_logp, k))
