"""Two processes on gloo (what torchrun starts) take the step one process takes on the
whole batch: loss and KL to 1e-5, clipped gradients to 1e-4 relative, adapters after the
optimizer step to 1e-4 relative (float summation order differs), and the two ranks'
adapters identical bit for bit."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from distill.distributed import World, shard
from tests.test_trainer import make_pairs, make_trainer, tiny_model_dir  # noqa: F401  (fixture)

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grads(trainer) -> dict[str, torch.Tensor]:
    named = dict(trainer.model.named_parameters())
    return {n: named[n].grad.clone() for n in trainer.adapter_state()}


def one_rank(rank: int, model_dir: str, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    from distill.distributed import init_from_env

    w = init_from_env()
    try:
        trainer = make_trainer(model_dir, micro_batch_size=1, max_grad_norm=0.05)
        pairs = make_pairs()
        mine = [pairs[i] for i in shard(range(len(pairs)), w)]
        stats = trainer.train_step(mine)
        torch.save({"stats": stats, "grads": grads(trainer), "adapter": trainer.adapter_state()},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_shard_takes_every_size_th_example():
    assert shard(range(7), World(0, 2)) == [0, 2, 4, 6]
    assert shard(range(7), World(1, 2)) == [1, 3, 5]
    assert shard(range(3), World(0, 1)) == [0, 1, 2]


def test_two_gloo_ranks_take_the_one_process_step(tiny_model_dir, tmp_path):  # noqa: F811
    mp.spawn(one_rank, args=(tiny_model_dir, free_port(), str(tmp_path)), nprocs=WORLD,
             join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    single = make_trainer(tiny_model_dir, micro_batch_size=1, max_grad_norm=0.05)
    stats = single.train_step(make_pairs())
    expected_grads, expected_adapter = grads(single), single.adapter_state()

    for got in ranks:  # every rank reports the step's global figures
        assert got["stats"]["tokens"] == stats["tokens"]
        assert got["stats"]["loss"] == pytest.approx(stats["loss"], rel=1e-5)
        assert got["stats"]["kl"] == pytest.approx(stats["kl"], rel=1e-5)
        assert got["stats"]["grad_norm"] == pytest.approx(stats["grad_norm"], rel=1e-4)
        for name, grad in expected_grads.items():  # the summed gradient, clipped the same way
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-7)
        for name, value in expected_adapter.items():  # after Adam's first step, which scales
            # each update by 1/sqrt(v): summation-order rounding in a tiny gradient shows more
            torch.testing.assert_close(got["adapter"][name], value, rtol=1e-4, atol=1e-6)
    for name in expected_adapter:  # and the ranks hold one adapter, bit for bit
        assert torch.equal(ranks[0]["adapter"][name], ranks[1]["adapter"][name])
