"""Two processes on gloo (what torchrun starts) take the step one process takes on the
whole batch: loss and KL to 1e-5, clipped gradients to 1e-4 relative, adapters after the
optimizer step to 1e-4 relative (float summation order differs), and the two ranks'
adapters identical bit for bit; started by mp.spawn, by torchrun and by accelerate launch."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from distill.distributed import MoreRanksThanGPUs, World, init_from_env, shard
from distill.fsdp import unsupported_reason
from tests import test_trainer
from tests.test_trainer import make_pairs, tiny_model_dir  # noqa: F401  (fixture)

WORLD = 2


NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}
needs_fsdp2 = pytest.mark.skipif(
    unsupported_reason() is not None,
    reason="this torch lacks FSDP2 methods --fsdp needs (distill.fsdp.unsupported_reason)")


def spawn_on_cpu(fn, args: tuple) -> None:
    """mp.spawn of WORLD gloo ranks on CPU, wherever the tests run: on a machine with one
    GPU, two ranks that saw it both took it, and NCCL refused them ("Duplicate GPU
    detected", on an H200). Only the children see the GPUs hidden; this process keeps
    them (hiding them here before its first CUDA query would hide them for good)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CUDA_VISIBLE_DEVICES", NO_GPU["CUDA_VISIBLE_DEVICES"])
        mp.spawn(fn, args=args, nprocs=WORLD, join=True)


def make_trainer(model_dir: str, **overrides):
    """test_trainer's trainer, on the CPU beside the ranks it is compared with (this process
    keeps its GPU, if it has one)."""
    return test_trainer.make_trainer(model_dir, device="cpu", **overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grads(trainer) -> dict[str, torch.Tensor]:
    named = dict(trainer.model.named_parameters())
    return {n: named[n].grad.clone() for n in trainer.adapter_state()}


def one_rank(rank: int, model_dir: str, port: int, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    step_on_this_ranks_share(model_dir, out)


def step_on_this_ranks_share(model_dir: str, out: str) -> None:
    """Join the group the environment describes (mp.spawn above, or a launcher: see
    tests/launched_rank.py), train one step on this rank's share of make_pairs(), save
    the step's stats, gradients and adapter as rank{RANK}.pt."""
    import torch.distributed as dist

    from distill.distributed import init_from_env

    w = init_from_env()
    try:
        trainer = make_trainer(model_dir, micro_batch_size=1, max_grad_norm=0.05)
        pairs = make_pairs()
        mine = [pairs[i] for i in shard(range(len(pairs)), w)]
        stats = trainer.train_step(mine)
        torch.save({"stats": stats, "grads": grads(trainer), "adapter": trainer.adapter_state()},
                   Path(out) / f"rank{w.rank}.pt")
    finally:
        dist.destroy_process_group()


def test_more_ranks_than_gpus_is_refused_with_the_count_to_start(monkeypatch):
    """torchrun --nproc-per-node 2 on one GPU: rank 1 is told how many to start, before
    CUDA's "invalid device ordinal" (seen on an H200) and before any process group."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device called"))
    with pytest.raises(MoreRanksThanGPUs, match=r"rank 1 has no GPU.*--nproc-per-node 1"):
        init_from_env()


def test_shard_takes_every_size_th_example():
    assert shard(range(7), World(0, 2)) == [0, 2, 4, 6]
    assert shard(range(7), World(1, 2)) == [1, 3, 5]
    assert shard(range(3), World(0, 1)) == [0, 1, 2]


def assert_step_matches_one_process(out: Path, model_dir: str) -> None:
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    single = make_trainer(model_dir, micro_batch_size=1, max_grad_norm=0.05)
    stats = single.train_step(make_pairs())
    expected_grads, expected_adapter = grads(single), single.adapter_state()

    for got in ranks:  # every rank reports the step's global figures
        assert got["stats"]["tokens"] == stats["tokens"]
        assert got["stats"]["loss"] == pytest.approx(stats["loss"], rel=1e-5)
        assert got["stats"]["kl"] == pytest.approx(stats["kl"], rel=1e-5)
        assert got["stats"]["grad_norm"] == pytest.approx(stats["grad_norm"], rel=1e-4)
        for name, grad in expected_grads.items():  # the summed gradient, clipped the same way
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-7)
        for name, value in expected_adapter.items():  # after Adam's first step, which moves
            # each weight by lr * g / (|g| + eps): where |g| is near eps, summation-order rounding
            # in g moves it by up to ~3e-4 of lr (2.4e-6 at lr 1e-2 in a full make test),
            # so the bound is 1e-3 of lr; the gradients above carry the tight check
            torch.testing.assert_close(got["adapter"][name], value, rtol=1e-4, atol=1e-5)
    for name in expected_adapter:  # and the ranks hold one adapter, bit for bit
        assert torch.equal(ranks[0]["adapter"][name], ranks[1]["adapter"][name])


def test_two_gloo_ranks_take_the_one_process_step(tiny_model_dir, tmp_path):  # noqa: F811
    spawn_on_cpu(one_rank, (tiny_model_dir, free_port(), str(tmp_path)))
    assert_step_matches_one_process(tmp_path, tiny_model_dir)


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
                 "--master_addr", "127.0.0.1", "--master_port"],
    # --multi_gpu is accelerate's name for "one process per device through torchrun"; with
    # no GPU the ranks see none, and init_from_env picks gloo
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(WORLD), "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
                   "--main_process_port"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_launched_ranks_take_the_one_process_step(launcher, tiny_model_dir, tmp_path):  # noqa: F811
    """What users type (torchrun / accelerate launch, each starting `-m` a module) starts
    ranks that join one gloo group and take the 1-process step: the launchers' environment
    (RANK, WORLD_SIZE, MASTER_ADDR/PORT) is all init_from_env needs."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, **NO_GPU, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, *LAUNCHERS[launcher], str(free_port()),
           "-m", "tests.launched_rank", tiny_model_dir, str(tmp_path)]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_step_matches_one_process(tmp_path, tiny_model_dir)


# ---------------------------------------------------------------------------- FSDP


def prefix_pairs() -> list:
    """make_pairs()'s teachers and responses after student prompts that share 6 tokens: the
    one-process step computes that prefix once (min_shared_prefix=1), an FSDP rank does
    not (distill/fsdp.py)."""
    from distill.splicing import splice

    shared = [1, 2, 3, 4, 5, 6]
    return [splice(shared + p.student_ids[:p.student_prompt_len],
                   p.teacher_ids[:p.teacher_prompt_len], p.response_ids) for p in make_pairs()]


FSDP_SHARES = ([0, 1, 2], [3])  # uneven: rank 1 pads its passes with idle ones
FSDP_STEP2 = ([0, 1, 2], [])  # rank 1 has nothing: every pass of its step is idle


def fsdp_rank(rank: int, model_dir: str, port: int, out: str) -> None:
    """Two steps on this rank's share with the decoder sharded, then a trainer restored
    from the state after step 1 retakes step 2."""
    import os

    import torch.distributed as dist

    from distill.distributed import init_from_env
    from distill.fsdp import is_sharded, sharded_fraction

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    w = init_from_env()
    try:
        def build():
            return make_trainer(model_dir, micro_batch_size=1, max_grad_norm=0.05, fsdp=True)

        trainer, pairs = build(), prefix_pairs()
        stats = trainer.train_step([pairs[i] for i in FSDP_SHARES[w.rank]])
        named = dict(trainer.model.named_parameters())
        result = {"held": sharded_fraction(trainer.decoder.parameters()),
                  "head_sharded": is_sharded(trainer.lm_head.weight),
                  "stats": stats, "adapter": trainer.adapter_state(),
                  "grads": {n: named[n].grad.full_tensor() for n in trainer.adapter_state()}}
        adapter = Path(out) / f"adapter{w.rank}"
        trainer.save_adapter(adapter)
        state, mine = trainer.state_dict_for_resume(), trainer.rank_state()
        share2 = [pairs[i] for i in FSDP_STEP2[w.rank]]
        result["stats2"] = trainer.train_step(share2)
        result["adapter2"] = trainer.adapter_state()
        resumed = build()
        resumed.load_adapter(adapter)
        resumed.load_resume_state(state)
        resumed.load_rank_state(mine)
        resumed.train_step(share2)
        result["resumed2"] = resumed.adapter_state()
        torch.save(result, Path(out) / f"rank{w.rank}.pt")
    finally:
        dist.destroy_process_group()


@needs_fsdp2
def test_fsdp_ranks_take_the_one_process_step_and_resume_exactly(tiny_model_dir, tmp_path):  # noqa: F811
    """With --fsdp each rank holds half of the decoder's weights (the head stays whole);
    the step on uneven shares (3 pairs and 1, then 3 and none) equals one process's step
    on all of them, computed with the shared prefix; and a trainer restored from the
    adapter, the resume state and the rank's optimizer shard retakes step 2 bit for bit."""
    spawn_on_cpu(fsdp_rank, (tiny_model_dir, free_port(), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single = make_trainer(tiny_model_dir, micro_batch_size=1, max_grad_norm=0.05,
                          min_shared_prefix=1)
    pairs = prefix_pairs()
    stats = single.train_step(pairs)
    assert stats["shared_prefix_tokens"] >= 6  # the reference did share the prefix
    expected_grads, expected = grads(single), single.adapter_state()
    stats2 = single.train_step([pairs[i] for i in FSDP_STEP2[0]])
    expected2 = single.adapter_state()

    assert sum(r["held"] for r in ranks) == pytest.approx(1.0)
    assert all(r["held"] < 0.6 for r in ranks) and not ranks[0]["head_sharded"]
    for got in ranks:
        for key in ("loss", "kl", "grad_norm"):
            assert got["stats"][key] == pytest.approx(stats[key], rel=1e-5), key
            assert got["stats"]["shared_prefix_tokens"] == 0
            assert got["stats2"][key] == pytest.approx(stats2[key], rel=1e-5), key
        for name, grad in expected_grads.items():
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-7)
        for name in expected:  # the bound of the launched tests above, for Adam's rounding
            torch.testing.assert_close(got["adapter"][name], expected[name], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got["adapter2"][name], expected2[name], rtol=1e-4,
                                       atol=1e-5)
            assert torch.equal(got["resumed2"][name], got["adapter2"][name])
    for name in expected:
        assert torch.equal(ranks[0]["adapter2"][name], ranks[1]["adapter2"][name])


# ---------------------------------------------------------------------------- distill.run's loop


LOOP_BATCH = 4


def fake_loop_run(steps: int, rank_of_shard: int | None):
    """distill.run.train's collaborators, faked: collect splices the given pairs and, at loop
    step 1, drops what rank 1 holds (the odd positions of the batch; under torchrun, rank
    1's whole share), so one rank of one step trains on nothing."""
    from types import SimpleNamespace

    from distill.config import RunConfig
    from distill.pairs import StepInputs
    from tests.test_transcripts import CharTokenizer

    def fake_collect(run, step, examples, gold=()):
        out = StepInputs()
        if step == 1:
            examples = [] if rank_of_shard == 1 else \
                examples if rank_of_shard == 0 else examples[0::2]
        for pair in examples:
            out.add(pair.student_ids[:pair.student_prompt_len],
                    pair.teacher_ids[:pair.teacher_prompt_len], pair.response_ids, 64)
        return out

    cfg = RunConfig(steps=steps, batch_size=LOOP_BATCH, checkpoint_every=1, seed=7,
                    lr_schedule="constant")
    return cfg, SimpleNamespace(cfg=cfg, task=SimpleNamespace(kind="classification", name="fake"),
                                teacher_scorer="trainer", tokenizer=CharTokenizer(),
                                sync=lambda trainer, step: None), fake_collect


def loop_rank(rank: int, model_dir: str, port: int, out: str, steps: int,
              fsdp: bool = False) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    import distill.run as run_mod
    from distill.distributed import init_from_env
    from tests.test_checkpoint import dataset

    w = init_from_env()
    try:
        cfg, fake, fake_collect = fake_loop_run(steps, rank)
        run_mod.collect = fake_collect  # a spawned process of its own: nothing to restore
        trainer = make_trainer(model_dir, fsdp=fsdp)
        run_mod.train(fake, trainer, run_mod.open_run_dir(replace_out(cfg, out), w), dataset())
        torch.save(trainer.adapter_state(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def replace_out(cfg, out: str):
    from dataclasses import replace

    return replace(cfg, out=str(Path(out) / "run"))


def assert_ranks_match(folder, reference) -> None:
    """Every rank saved the same adapter, equal to a one-process trainer's within float
    rounding of the summed gradients."""
    ranks = [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]
    for name, value in reference.adapter_state().items():
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-6)
        assert torch.equal(ranks[0][name], ranks[1][name])


@pytest.mark.parametrize("fsdp", [False, pytest.param(True, marks=needs_fsdp2)],
                         ids=["whole", "fsdp"])
def test_two_ranks_run_the_loop_and_resume_like_one_process(fsdp, tiny_model_dir, tmp_path,  # noqa: F811
                                                            monkeypatch):
    """distill.run.train under 2 gloo ranks (each collecting its share, one share empty at
    step 2) against one process on the whole batches: the same adapter, rank 0 writing each
    step's metrics once and every rank's pairs to trained.jsonl; then both ranks resume
    from the checkpoint (ranks.pt restores each rank's RNG, and under fsdp its optimizer
    shard) and match 4 straight steps."""
    import distill.run as run_mod
    from distill.checkpoint import RunConfigMismatch, RunDir, read_run, read_trained
    from tests.test_checkpoint import dataset

    two = tmp_path / "two"
    two.mkdir()
    spawn_on_cpu(loop_rank, (tiny_model_dir, free_port(), str(two), 3, fsdp))
    cfg, fake, fake_collect = fake_loop_run(3, None)
    monkeypatch.setattr(run_mod, "collect", fake_collect)
    single = make_trainer(tiny_model_dir)
    run_mod.train(fake, single, RunDir(tmp_path / "one", cfg.to_dict()), dataset())

    assert_ranks_match(two, single)
    record = read_run(two / "run")
    assert [r["step"] for r in record.metrics] == [1, 2, 3]
    one = read_run(tmp_path / "one")
    for mine, ref in zip(record.metrics, one.metrics, strict=True):
        assert mine["examples"] == ref["examples"] and mine["tokens"] == ref["tokens"]
    trained = read_trained(record)
    assert sorted((r["step"], r["rank"]) for r in trained) == sorted(
        [(1, 0), (1, 0), (1, 1), (1, 1), (2, 0), (2, 0), (3, 0), (3, 0), (3, 1), (3, 1)])
    assert (two / "run" / "checkpoints" / "step_000003" / "ranks.pt").is_file()

    spawn_on_cpu(loop_rank, (tiny_model_dir, free_port(), str(two), 4, fsdp))
    cfg4, fake4, _ = fake_loop_run(4, None)
    straight = make_trainer(tiny_model_dir)
    run_mod.train(fake4, straight, RunDir(tmp_path / "one4", cfg4.to_dict()), dataset())
    assert_ranks_match(two, straight)
    assert [r["step"] for r in read_run(two / "run").metrics] == [1, 2, 3, 4]
    # one process resuming what two saved would not be the same run: refused, nothing cut
    cfg5, fake5, _ = fake_loop_run(5, None)
    with pytest.raises(RunConfigMismatch, match="nproc_per_node 2"):
        run_mod.train(fake5, make_trainer(tiny_model_dir),
                      RunDir(two / "run", replace_out(cfg5, str(two)).to_dict()), dataset())
    assert [r["step"] for r in read_run(two / "run").metrics] == [1, 2, 3, 4]
