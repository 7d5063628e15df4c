"""Compute a prompt prefix that every row of a step shares once, not once per row.

A task's bare prompt usually starts with the same long instruction (BANKING77: the
77 label names, ~600 of ~670 tokens), so a plain batched forward spends most of its
time recomputing identical keys and values. Here the shared prefix runs once; its
per-layer keys/values become leaf tensors that every micro-batch attends to in place
(`distill.attention`: one copy, every row's queries in one matmul); each micro-batch's
backward accumulates gradients into those leaves; `backward()` then sends the accumulated
gradients through the prefix's own graph once. The result equals the per-row forward and
backward up to float rounding (tests/test_shared_prefix.py checks hidden states and LoRA
gradients).

With any other attention implementation (sdpa on a GPU, say) the rows attend to the prefix
through an expanded HF cache instead: same result, but the backward sums a per-row copy of
the prefix's keys and values. Not used with gradient checkpointing (HF turns the cache off
in that mode).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache

from distill.attention import ATTENTION


class PrefixKV:
    """Keys/values of one prefix, ready to be attended to by any number of suffix rows."""

    def __init__(self, decoder: torch.nn.Module, prefix_ids: list[int], grad: bool) -> None:
        self.length = len(prefix_ids)
        ids = torch.tensor([prefix_ids], dtype=torch.long, device=_device(decoder))
        with torch.set_grad_enabled(grad):
            out = decoder(input_ids=ids, use_cache=True)
        self._outputs: list[Tensor] = []  # the graph's ends (keep their autograd history)
        self._leaves: list[tuple[Tensor, Tensor]] = []
        for layer in _layers(out.past_key_values):
            keys, values = layer
            self._outputs += [keys, values]
            self._leaves.append((keys.detach().requires_grad_(grad),
                                 values.detach().requires_grad_(grad)))
        self.grad = grad

    @property
    def layers(self) -> list[tuple[Tensor, Tensor]]:
        """Per layer the ``[1, Hkv, P, D]`` keys and values (the gradient-collecting leaves)."""
        return self._leaves

    def cache(self, batch_size: int) -> DynamicCache:
        """A fresh HF cache for `batch_size` rows that views (expands) the prefix tensors."""
        cache = DynamicCache()
        for i, (k, v) in enumerate(self._leaves):
            cache.update(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1), i)
        return cache

    def backward(self) -> None:
        """Push the gradients accumulated on the prefix keys/values into the weights."""
        if not self.grad:
            return
        ends, grads = [], []
        for (k_out, v_out), (k, v) in zip(_pairs(self._outputs), self._leaves, strict=True):
            for out, leaf in ((k_out, k), (v_out, v)):
                if leaf.grad is not None and out.requires_grad:
                    ends.append(out)
                    grads.append(leaf.grad)
        if ends:
            torch.autograd.backward(ends, grads)
        self.release()

    def release(self) -> None:
        self._outputs, self._leaves = [], []


def suffix_hidden(decoder: torch.nn.Module, prefix: PrefixKV, ids: Tensor, attention: Tensor,
                  positions: Tensor) -> Tensor:
    """Last hidden states ``[B, S, H]`` of the suffix rows after the shared prefix.
    `attention` is ``[B, S]`` over the suffix columns (the prefix is always attended)."""
    if getattr(decoder.config, "_attn_implementation", None) == ATTENTION:
        out = decoder(input_ids=ids, attention_mask=attention, position_ids=positions,
                      shared_prefix=prefix.layers, use_cache=False)
    else:
        full = torch.cat([attention.new_ones(attention.shape[0], prefix.length), attention], 1)
        out = decoder(input_ids=ids, attention_mask=full, position_ids=positions,
                      past_key_values=prefix.cache(ids.shape[0]), use_cache=True)
    return out.last_hidden_state


def _layers(cache) -> list[tuple[Tensor, Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(cache.key_cache[i], cache.value_cache[i]) for i in range(len(cache.key_cache))]


def _pairs(flat: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
