"""The trainer's attention: grouped-query heads without copies, and a shared prefix attended
in place.

Profiled on the real BANKING77 step (SmolLM2-135M, 32 rows sharing a 601-token prefix, bf16,
2-core Xeon with AMX; `benchmarks/distill_step.py --profile`), HF's attention cost more than
every linear layer together. SDPA's CPU flash kernel spent 2.5 s of an 8.0 s step in its
backward; HF's eager path copied the prefix's keys and values per row (`repeat_kv` and the
cache's `cat` of an expanded prefix) and summed them back in the backward, about 1 s of
copies and reductions. Here:

- the `g` query heads that share a key/value head are stacked along the query axis, so one
  matmul per key/value head serves all of them: no repeated keys or values;
- with a shared prefix, the prefix's keys and values (one copy, ``[1, Hkv, P, D]``) are
  multiplied against the queries of every row of the micro-batch at once (rows folded into
  the matmul's M dimension); the suffix's own keys are attended per row as usual. Scores
  over prefix and suffix go through one softmax, so the result is exact, not approximate.

Registered with transformers' public `AttentionInterface` / `AttentionMaskInterface` under
`ATTENTION`; a call without ``shared_prefix`` is plain causal attention with the eager
path's numerics (fp32 softmax), so the same model serves every forward of the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTENTION = "scaffold_grouped"


def grouped_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    shared_prefix: Sequence[tuple[Tensor, Tensor]] | None = None,
    sliding_window: int | None = None,
    **_: object,
) -> tuple[Tensor, None]:
    """HF attention-function contract: `query` ``[B, Hq, S, D]``, `key`/`value`
    ``[B, Hkv, T, D]``, `attention_mask` additive ``[B, 1, S, T]`` (or None); returns
    ``([B, S, Hq, D], None)``. `shared_prefix`: per layer the ``[1, Hkv, P, D]`` keys and
    values every row attends to before its own `T` keys (unmasked: a prefix has no padding)."""
    if sliding_window is not None:
        raise ValueError("scaffold_grouped attention does not implement sliding windows; "
                         "load this model with attn_implementation='sdpa'")
    batch, q_heads, length, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = q_heads // kv_heads
    # [Hkv, B, g*S, D]: query head h reads key/value head h // g (HF's repeat_kv order)
    q = query.view(batch, kv_heads, group, length, dim).transpose(0, 1) \
        .reshape(kv_heads, batch, group * length, dim)
    k = key.transpose(0, 1)  # [Hkv, B, T, D]
    v = value.transpose(0, 1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling  # [Hkv, B, g*S, T]
    if attention_mask is not None:  # [B, 1, S, T] -> broadcast over key/value heads and g
        scores = (scores.view(kv_heads, batch, group, length, kv_len)
                  + attention_mask.view(1, batch, 1, length, kv_len)) \
            .view(kv_heads, batch, group * length, kv_len)
    prefix_kv = None
    if shared_prefix is not None:
        prefix_kv = shared_prefix[module.layer_idx]
        prefix_k, prefix_v = prefix_kv[0][0], prefix_kv[1][0]  # [Hkv, P, D]
        prefix_len = prefix_k.shape[1]
        # every row's queries against the one prefix copy: [Hkv, B*g*S, P]
        prefix_scores = torch.matmul(q.reshape(kv_heads, batch * group * length, dim),
                                     prefix_k.transpose(-1, -2)) * scaling
        scores = torch.cat([prefix_scores.view(kv_heads, batch, group * length, prefix_len),
                            scores], dim=-1)
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    if prefix_kv is None:
        out = torch.matmul(probs, v)  # [Hkv, B, g*S, D]
    else:
        prefix_probs, own_probs = probs.split([prefix_len, kv_len], dim=-1)
        out = torch.matmul(own_probs, v) + torch.matmul(
            prefix_probs.reshape(kv_heads, batch * group * length, prefix_len), prefix_v
        ).view(kv_heads, batch, group * length, dim)
    # [Hkv, B, g, S, D] -> [B, S, Hkv, g, D] = [B, S, Hq, D]
    out = out.view(kv_heads, batch, group, length, dim).permute(1, 3, 0, 2, 4) \
        .reshape(batch, length, q_heads, dim)
    return out, None


AttentionInterface.register(ATTENTION, grouped_attention)
AttentionMaskInterface.register(ATTENTION, eager_mask)  # additive float masks, as eager's
