"""Teachers scored elsewhere (the vLLM server), gold pairs beside distilled ones, and length
bucketing: each must leave the step's loss and gradients what the plain path computes."""

from __future__ import annotations

import pytest
import torch

from distill.losses import LossConfig
from distill.splicing import collate, gather_response_positions, splice
from tests.test_trainer import make_trainer, tiny_model_dir  # noqa: F401  (fixture)


def pairs_and_supports() -> tuple[list, list]:
    """Four pairs whose every response position allows the sampled token and a few others."""
    pairs = [
        splice([1, 2, 3], [1, 40, 41, 42, 2, 3], [9, 10, 11, 12]),
        splice([4, 5], [4, 50, 51, 5], [20, 21]),
        splice([6, 7, 8, 9, 10], [60, 61, 6, 7, 8, 9, 10], [30, 31, 32]),
        splice([11], [11, 70, 71, 72, 73], [33, 34, 35, 36, 37]),
    ]
    supports = [[sorted({t, (t * 7) % 128, (t * 13 + 5) % 128}) for t in p.response_ids]
                for p in pairs]
    supports[1][0] = [20]  # a single allowed id: the restricted teacher is one-hot there
    return pairs, supports


def teacher_logprobs_on(trainer, pairs, supports) -> list[list[list[float]]]:
    """What the server would return: the teacher's full-vocabulary log-probabilities of each
    position's support ids, from the trainer's own (live) weights."""
    batch = collate(pairs, pad_id=0)
    hidden = trainer.hidden_states(batch.teacher_input_ids, batch.teacher_attention_mask,
                                   batch.teacher_position_ids, weights="live")
    rows = gather_response_positions(hidden, batch.teacher_response_mask.to(hidden.device))
    logprobs = torch.log_softmax(trainer.lm_head(rows).float(), dim=-1)
    out, k = [], 0
    for sup in supports:
        out.append([[float(logprobs[k + t, i]) for i in ids] for t, ids in enumerate(sup)])
        k += len(sup)
    return out


def grads(trainer) -> dict[str, torch.Tensor]:
    named = dict(trainer.model.named_parameters())
    return {n: named[n].grad.clone() for n in trainer.adapter_state()}


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_given_teacher_logprobs_equal_the_teacher_forward(tiny_model_dir, kind):  # noqa: F811
    pairs, supports = pairs_and_supports()
    results = []
    for given in (False, True):
        trainer = make_trainer(tiny_model_dir, teacher="live", micro_batch_size=2,
                               max_grad_norm=None, loss=LossConfig(kind=kind))
        trainer.train_step(pairs, supports=supports)  # LoRA B non-zero: live != base
        logprobs = teacher_logprobs_on(trainer, pairs, supports) if given else None
        metrics = trainer.train_step(pairs, supports=supports, teacher_logprobs=logprobs)
        results.append((metrics, grads(trainer)))
    (plain, g_plain), (given, g_given) = results
    assert plain["time_teacher_s"] > 0 and given["time_teacher_s"] == pytest.approx(0, abs=1e-3)
    assert given["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert given["kl"] == pytest.approx(plain["kl"], rel=1e-5)
    for name, grad in g_plain.items():
        torch.testing.assert_close(g_given[name], grad, rtol=1e-4, atol=1e-7)


def test_given_teacher_must_match_its_support(tiny_model_dir):  # noqa: F811
    trainer = make_trainer(tiny_model_dir)
    pairs, supports = pairs_and_supports()
    logprobs = [[[0.0] * len(ids) for ids in sup] for sup in supports]
    logprobs[2][1] = logprobs[2][1][:-1]
    with pytest.raises(ValueError, match="pair 2: teacher logprobs do not match"):
        trainer.train_step(pairs, supports=supports, teacher_logprobs=logprobs)
    with pytest.raises(ValueError, match="need the support"):
        trainer.train_step(pairs, teacher_logprobs=[None, None, None, [[0.0]] * 5])


def test_gold_pairs_beside_distilled_pairs_sum_their_losses(tiny_model_dir):  # noqa: F811
    """A step mixing sft (gold) and distilled pairs has the token-weighted sum of the two
    steps' losses and gradients: the global token mean runs over both kinds."""
    pairs, _ = pairs_and_supports()
    gold, distilled = [pairs[0], pairs[2]], [pairs[1], pairs[3]]
    n_gold = sum(len(p.response_ids) for p in gold)
    n_dist = sum(len(p.response_ids) for p in distilled)

    def step(chosen, **kw):
        trainer = make_trainer(tiny_model_dir, teacher="frozen", max_grad_norm=None)
        return trainer.train_step(chosen, **kw), grads(trainer)

    m_gold, g_gold = step(gold, objective="sft")
    m_dist, g_dist = step(distilled)
    m_mix, g_mix = step([gold[0], distilled[0], gold[1], distilled[1]],
                        sft=[True, False, True, False])
    total = n_gold + n_dist
    assert m_mix["tokens"] == total and m_mix["sft_tokens"] == n_gold
    assert m_mix["loss"] == pytest.approx((m_gold["loss"] * n_gold + m_dist["loss"] * n_dist)
                                          / total, rel=1e-5)
    assert m_mix["kl"] == pytest.approx(m_dist["kl"], rel=1e-5)  # the distilled tokens only
    for name in g_mix:
        expected = (g_gold[name] * n_gold + g_dist[name] * n_dist) / total
        torch.testing.assert_close(g_mix[name], expected, rtol=1e-4, atol=1e-7)


def test_length_bucketing_leaves_the_loss_unchanged(tiny_model_dir):  # noqa: F811
    """The trainer sorts pairs by length into micro-batches: any input order and any
    micro-batch size give the same loss and gradients, with less padding than input order."""
    pairs, _ = pairs_and_supports()
    interleaved = [pairs[3], pairs[1], pairs[2], pairs[0]]  # long, short, long, short
    results = []
    for order, mbs in ((pairs, 2), (interleaved, 2), (interleaved, 4), (pairs, 1)):
        # widths unrounded, so the padding arithmetic below is the bucketing's alone
        trainer = make_trainer(tiny_model_dir, teacher="frozen", micro_batch_size=mbs,
                               max_grad_norm=None, share_prefix=False, pad_to_multiple_of=None)
        results.append((trainer.train_step(order), grads(trainer)))
    (first, g_first), *rest = results
    for metrics, g in rest:
        assert metrics["loss"] == pytest.approx(first["loss"], rel=1e-5)
        for name, grad in g_first.items():
            torch.testing.assert_close(g[name], grad, rtol=1e-4, atol=1e-7)
    # student lengths in input order are 7, 4, 8, 6: micro-batches of 2 in that order pad
    # to [7, 7] + [8, 8] (30 cells for 25 tokens); sorted, with at most 2 x the median
    # length (6) of cells each, to [8] + [7] + [6, 6] (27 cells)
    lengths = [len(p.student_ids) for p in pairs]
    assert lengths == [7, 4, 8, 6]
    unsorted = 1 - 25 / (2 * 7 + 2 * 8)
    assert first["padding_frac"] == pytest.approx(1 - 25 / (8 + 7 + 2 * 6))
    assert first["padding_frac"] < unsorted
    assert results[1][0]["padding_frac"] == pytest.approx(first["padding_frac"])
