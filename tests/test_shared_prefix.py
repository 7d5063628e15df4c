"""Shared-prefix forward/backward equals the plain per-row computation (tiny fp32 Llama)."""

from __future__ import annotations

import pytest
import torch

from distill.splicing import collate, pad_suffixes, shared_prefix_len, splice
from tests.test_trainer import make_trainer, tiny_model_dir  # noqa: F401  (fixture)

PREFIX = [int(t) for t in torch.randint(3, 120, (70,), generator=torch.Generator().manual_seed(7))]


def prefixed_pairs() -> list:
    """Student prompts share 70 tokens; teacher contexts share 68 of them (then differ)."""
    return [
        splice(PREFIX + [5, 6], PREFIX[:68] + [90, 91, 5, 6], [9, 10, 11]),
        splice(PREFIX + [7], PREFIX[:68] + [92, 7], [20, 21]),
        splice(PREFIX + [8, 9, 10, 11], PREFIX[:68] + [93, 94, 95, 8, 9, 10, 11], [30, 31, 32, 33]),
        splice(PREFIX + [12, 13], PREFIX[:68] + [96, 12, 13], [34]),
        splice(PREFIX + [14], PREFIX[:68] + [97, 98, 14], [35, 36]),
    ]


def test_shared_prefix_len_keeps_the_last_prompt_position():
    rows = [[1, 2, 3, 4, 9], [1, 2, 3, 5, 9]]
    assert shared_prefix_len(rows, [4, 4]) == 3
    # identical prompts: the cap (shortest prompt - 1) keeps the position predicting r_0
    assert shared_prefix_len([[1, 2, 3, 7], [1, 2, 3, 8]], [3, 3]) == 2
    assert shared_prefix_len([[4, 2], [1, 2]], [1, 1]) == 0


def test_pad_suffixes_layout_by_hand():
    # prompts [1,2,3 | 4] and [1,2,3 | 5,6], responses [7,8] and [9]; shared prefix 3
    rows, prompt_lens = [[1, 2, 3, 4, 7, 8], [1, 2, 3, 5, 6, 9]], [4, 5]
    ids, attention, mask, positions = pad_suffixes(rows, prompt_lens, 3, pad_id=0)
    assert ids.tolist() == [[4, 7, 8], [5, 6, 9]]
    assert attention.tolist() == [[1, 1, 1], [1, 1, 1]]
    # row 0: logits at suffix 0 (token 4) predict 7, at suffix 1 predict 8
    assert mask.tolist() == [[True, True, False], [False, True, False]]
    assert positions.tolist() == [[3, 4, 5], [3, 4, 5]]
    ids, attention, mask, _ = pad_suffixes([[1, 2, 3, 4, 7, 8], [1, 2, 3, 5, 9]], [4, 4], 3, 0)
    assert ids.tolist() == [[4, 7, 8], [5, 9, 0]]
    assert attention.tolist()[1] == [1, 1, 0]
    assert mask.tolist() == [[True, True, False], [True, False, False]]


def test_pad_to_multiple_of_rounds_widths_by_hand():
    rows, prompt_lens = [[1, 2, 3, 4, 7, 8], [1, 2, 3, 5, 6, 9]], [4, 5]
    ids, attention, mask, positions = pad_suffixes(rows, prompt_lens, 3, 0, pad_to_multiple_of=4)
    assert ids.tolist() == [[4, 7, 8, 0], [5, 6, 9, 0]]
    assert attention.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]
    assert mask.tolist() == [[True, True, False, False], [False, True, False, False]]
    assert positions.tolist() == [[3, 4, 5, 6], [3, 4, 5, 6]]
    # left padding: 6 and 5 tokens become width 8; the masks still predict the responses
    pairs = [splice([1, 2, 3, 4], [1, 2, 3, 4], [7, 8]), splice([1, 2, 3, 5], [1, 5], [9])]
    batch = collate(pairs, pad_id=0, pad_to_multiple_of=8)
    assert batch.student_input_ids.tolist() == [[0, 0, 1, 2, 3, 4, 7, 8], [0, 0, 0, 1, 2, 3, 5, 9]]
    assert batch.teacher_input_ids.shape == (2, 8)
    assert batch.student_position_ids.tolist()[1] == [0, 0, 0, 0, 1, 2, 3, 4]
    assert collate(pairs, pad_id=0).student_input_ids.shape == (2, 6)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_pad_to_multiple_of_leaves_the_step_unchanged(tiny_model_dir, share_prefix):  # noqa: F811
    # padding is masked (left) or after the last token (right, causal): same loss, same update
    kwargs = {"teacher": "live", "micro_batch_size": 2, "share_prefix": share_prefix,
              "min_shared_prefix": 16}
    exact = make_trainer(tiny_model_dir, pad_to_multiple_of=None, **kwargs)
    rounded = make_trainer(tiny_model_dir, pad_to_multiple_of=16, **kwargs)
    for _ in range(2):
        a = exact.train_step(prefixed_pairs())
        b = rounded.train_step(prefixed_pairs())
        assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"])), (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"]
    for name, value in exact.adapter_state().items():
        torch.testing.assert_close(rounded.adapter_state()[name], value, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["auto", "sdpa"])
def test_shared_prefix_step_matches_plain_step(tiny_model_dir, attention):  # noqa: F811
    # the reference: HF's own sdpa attention, every row computed whole; "auto" attends to the
    # prefix in place (distill.attention), "sdpa" through an expanded HF cache
    plain = make_trainer(tiny_model_dir, teacher="live", micro_batch_size=2, share_prefix=False,
                         attention="sdpa")
    shared = make_trainer(tiny_model_dir, teacher="live", micro_batch_size=2,
                          min_shared_prefix=16, attention=attention)
    for _ in range(3):  # live teacher: after step 1 the adapter changes both passes
        a = plain.train_step(prefixed_pairs())
        b = shared.train_step(prefixed_pairs())
        assert b["shared_prefix_tokens"] == 70 and a["shared_prefix_tokens"] == 0
        assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"])), (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"]
    assert a["loss"] > 0  # the teacher's extra tokens change the distributions
    sa, sb = plain.adapter_state(), shared.adapter_state()
    for name in sa:
        torch.testing.assert_close(sb[name], sa[name], atol=1e-5, rtol=1e-4)


def test_shared_prefix_with_frozen_and_ema_teachers_and_sft(tiny_model_dir):  # noqa: F811
    for kwargs in ({"teacher": "frozen"}, {"teacher": "ema", "ema_decay": 0.5},
                   {"objective": "sft"}):
        objective = kwargs.pop("objective", "distill")
        plain = make_trainer(tiny_model_dir, share_prefix=False, micro_batch_size=2, **kwargs)
        shared = make_trainer(tiny_model_dir, min_shared_prefix=16, micro_batch_size=2, **kwargs)
        for _ in range(3):
            a = plain.train_step(prefixed_pairs(), objective=objective)
            b = shared.train_step(prefixed_pairs(), objective=objective)
            # an EMA teacher turns sharing off (see DistillTrainer._prefix)
            assert b["shared_prefix_tokens"] == (0 if kwargs.get("teacher") == "ema" else 70)
            assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"]))
        for name, value in plain.adapter_state().items():
            torch.testing.assert_close(shared.adapter_state()[name], value, atol=1e-4, rtol=1e-3)
