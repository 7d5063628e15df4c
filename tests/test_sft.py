"""The sft objective: chunked NLL against a closed form, and a trainer step that learns."""

import torch
import torch.nn.functional as F

from distill.losses import chunked_nll
from distill.splicing import splice
from tests.test_trainer import make_trainer, tiny_model_dir  # noqa: F401 (fixture)


def test_chunked_nll_matches_cross_entropy():
    torch.manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    w = torch.rand(7, dtype=torch.float64)
    ref = (F.cross_entropy(hidden @ weight.T, targets, reduction="none") * w).sum()
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    for chunk in (1, 3, 7, 12):
        got, stats = chunked_nll(hidden, weight, targets, weights=w, chunk_size=chunk)
        assert torch.allclose(got.double(), ref, atol=1e-6)
        grads = torch.autograd.grad(got, (hidden, weight))
        for g, r in zip(grads, ref_grads, strict=True):
            assert torch.allclose(g.double(), r, atol=1e-5)
        assert stats["tokens"] == 7


def test_sft_step_raises_target_likelihood(tiny_model_dir):  # noqa: F811
    trainer = make_trainer(tiny_model_dir, lr=5e-3, teacher="frozen")
    pairs = [splice([1, 2, 3, 4], [1, 2, 3, 4], [9, 10, 11]),
             splice([5, 6, 7], [5, 6, 7], [12, 13])]
    first = trainer.train_step(pairs, objective="sft")["loss"]
    for _ in range(15):
        last = trainer.train_step(pairs, objective="sft")["loss"]
    assert last < 0.5 * first  # mean NLL per target token falls


def test_a_negative_weight_pushes_its_response_down(tiny_model_dir):  # noqa: F811
    """vote_rl's policy gradient is the weighted cross-entropy with weight = advantage: a pair
    of advantage +1 grows likelier and one of -1 less likely (each response's NLL read from
    the step's own forward, before its update)."""
    trainer = make_trainer(tiny_model_dir, lr=5e-3, teacher="frozen")
    pairs = [splice([1, 2, 3, 4], [1, 2, 3, 4], [9, 10, 11]),
             splice([1, 2, 3, 4], [1, 2, 3, 4], [12, 13, 14])]

    def nll_each() -> list[float]:
        trainer.train_step(pairs, weights=[1.0, -1.0], objective="sft", inspect=[0, 1])
        return [sum(trainer.last_token_reports[i].loss) for i in (0, 1)]

    first = nll_each()
    for _ in range(6):
        last = nll_each()
    assert last[0] < first[0] - 0.5 and last[1] > first[1] + 0.5
