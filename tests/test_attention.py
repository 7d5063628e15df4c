"""distill.attention against transformers' own eager attention, and bf16 LoRA compute
against peft's fp32 default."""

from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from distill.attention import grouped_attention
from tests.test_shared_prefix import prefixed_pairs
from tests.test_trainer import make_trainer, tiny_model_dir  # noqa: F401  (fixture)


class Layer(torch.nn.Module):
    """What both attention functions read off the module: its layer index and head groups."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.layer_idx = 0
        self.num_key_value_groups = groups


def qkv(batch: int, q_heads: int, kv_heads: int, length: int, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
            for shape in ((batch, q_heads, length, dim), (batch, kv_heads, length, dim),
                          (batch, kv_heads, length, dim))]


def padding_mask(lengths: list[int], width: int, dtype=torch.float64) -> torch.Tensor:
    """HF's additive causal mask [B, 1, S, S] for right-padded rows of `lengths`."""
    keep = torch.tensor([[1] * n + [0] * (width - n) for n in lengths], dtype=torch.bool)
    return eager_mask(batch_size=len(lengths), q_length=width, kv_length=width,
                      attention_mask=keep, dtype=dtype)


def grads(outputs: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list:
    upstream = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(seed),
                           dtype=outputs.dtype)
    return torch.autograd.grad(outputs, inputs, upstream)


@pytest.mark.parametrize("q_heads,kv_heads", [(6, 2), (4, 4), (3, 1)])
def test_grouped_attention_equals_eager_with_padding(q_heads, kv_heads):
    module = Layer(q_heads // kv_heads)
    q, k, v = qkv(3, q_heads, kv_heads, 5)
    mask = padding_mask([5, 3, 1], 5)
    ours, _ = grouped_attention(module, q, k, v, mask, scaling=0.3)
    ref, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.3)
    rows = torch.tensor([5, 3, 1]).view(3, 1) > torch.arange(5)  # padded rows: don't care
    torch.testing.assert_close(ours[rows], ref[rows], rtol=1e-10, atol=1e-12)
    out_grads = grads(ours * rows[..., None, None], [q, k, v])
    ref_grads = grads(ref * rows[..., None, None], [q, k, v])
    for a, b in zip(out_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_prefix_in_place_equals_eager_over_the_concatenated_keys():
    """Rows attending to one [1, Hkv, P, D] prefix copy equal eager attention over each row's
    own copy of the prefix keys/values followed by its suffix keys; so do all gradients,
    the prefix's summed over rows."""
    batch, q_heads, kv_heads, prefix_len, length = 3, 6, 2, 4, 5
    module = Layer(q_heads // kv_heads)
    q, k, v = qkv(batch, q_heads, kv_heads, length)
    pk, pv = qkv(1, kv_heads, kv_heads, prefix_len, seed=2)[1:]
    mask = padding_mask([5, 2, 4], length)
    ours, _ = grouped_attention(module, q, k, v, mask, scaling=0.25, shared_prefix=[(pk, pv)])
    full_mask = torch.cat([torch.zeros(batch, 1, length, prefix_len, dtype=mask.dtype), mask], -1)
    ref, _ = eager_attention_forward(
        module, q, torch.cat([pk.expand(batch, -1, -1, -1), k], 2),
        torch.cat([pv.expand(batch, -1, -1, -1), v], 2), full_mask, scaling=0.25)
    rows = torch.tensor([5, 2, 4]).view(3, 1) > torch.arange(length)
    torch.testing.assert_close(ours[rows], ref[rows], rtol=1e-10, atol=1e-12)
    keep = rows[..., None, None]
    for a, b in zip(grads(ours * keep, [q, k, v, pk, pv]), grads(ref * keep, [q, k, v, pk, pv]),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_grouped_attention_refuses_a_sliding_window():
    q, k, v = qkv(1, 2, 1, 3)
    with pytest.raises(ValueError, match="sliding"):
        grouped_attention(Layer(2), q, k, v, None, scaling=1.0, sliding_window=2)


def test_bf16_lora_compute_keeps_fp32_weights_and_matches_peft_default(tiny_model_dir):  # noqa: F811
    """On a bf16 base the LoRA branch computes in bf16 (autocast) with fp32 weights and fp32
    gradients; the step's loss and gradients match peft's fp32-upcast default to bf16
    precision, and both differ from each other (the switch is live)."""
    trainers = {mode: make_trainer(tiny_model_dir, dtype="bfloat16", lora_compute=mode,
                                   micro_batch_size=2, max_grad_norm=None, lr=0.0)
                for mode in ("auto", "float32")}
    stats, flat = {}, {}
    for mode, trainer in trainers.items():
        with torch.no_grad():  # a non-zero B, so that A's gradient is not zero
            for name, p in trainer._live_params.items():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
        stats[mode] = trainer.train_step(prefixed_pairs())
        params = list(trainer._live_params.values())
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
        flat[mode] = torch.cat([p.grad.flatten() for p in params])
    assert stats["auto"]["loss"] == pytest.approx(stats["float32"]["loss"], rel=2e-2)
    err = (flat["auto"] - flat["float32"]).norm() / flat["float32"].norm()
    assert 0 < err < 5e-2, err
