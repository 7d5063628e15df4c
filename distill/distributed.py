"""Data parallelism across processes (torchrun), for the trainer's step.

    torchrun --nproc_per_node 2 ...   # gloo on CPU, NCCL on GPU (`init_from_env`)

Each rank trains on its share of a step's pairs; `DistillTrainer.train_step` then makes
the step the one a single process would take on all of them: the loss is normalised by
the step's token count over every rank, and the LoRA gradients are summed over ranks
with one `all_reduce` of one flat buffer before clipping, so every rank clips the same
gradient and takes the same optimizer step (tests/test_distributed.py checks both
against a 1-process step on the same batch).

Why not torch's DistributedDataParallel wrapper: its reducer syncs inside each backward
of the wrapped module's forward, and a step here runs several backwards (one per
micro-batch, then one through the shared prompt prefix, distill.shared_prefix) whose sum
is the gradient; reducing once after all of them is the same collective DDP issues,
without syncing partial gradients or tracking which parameters each backward touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from scaffold.errors import ScaffoldError


class MoreRanksThanGPUs(ScaffoldError, RuntimeError):
    """A node starts more ranks than it has GPUs; the message says how many to start."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's rank and the world size (rank 0 of 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env() -> World:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
    environment); a plain `python` process stays alone. On CUDA each rank takes the GPU of
    its LOCAL_RANK first, so that "cuda" (the trainer's device) is its own GPU, not GPU 0
    for every rank (not yet run on GPUs: README, Scaling)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
            if local >= gpus:  # else CUDA's "invalid device ordinal" (seen on one H200)
                raise MoreRanksThanGPUs(
                    f"this node's rank {local} has no GPU of its own: {gpus} visible. Start at "
                    f"most {gpus} process(es) a node (torchrun --nproc-per-node {gpus}), or "
                    "hide the GPUs (CUDA_VISIBLE_DEVICES=) to run every rank on CPU with gloo")
            torch.cuda.set_device(local)
            # the small reductions below (counts, flags) are CPU tensors: gloo carries them,
            # NCCL the gradients and FSDP's GPU collectives
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend=backend)
    return world()


def shard(indices: Sequence[int], w: World) -> list[int]:
    """This rank's share of a step's examples: every `size`-th one from `rank` on."""
    return list(indices[w.rank::w.size])


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks (each rank passes the same number of values)."""
    if world().size == 1:
        return list(values)
    buf = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.tolist()


def max_over_ranks(values: Sequence[int]) -> list[int]:
    """Element-wise maximum over ranks (each rank passes the same number of values)."""
    if world().size == 1:
        return list(values)
    buf = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return [int(v) for v in buf.tolist()]


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any rank."""
    if world().size == 1:
        return flag
    buf = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return bool(buf.item())


def sum_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its sum over ranks (one flat all_reduce); a
    parameter without a gradient contributes zeros."""
    if world().size == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def broadcast(value: object) -> object:
    """Rank 0's `value` on every rank (any picklable object; other ranks pass anything)."""
    if world().size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: object) -> list[object] | None:
    """Every rank's `value` in rank order on rank 0; None on the other ranks."""
    w = world()
    if w.size == 1:
        return [value]
    out: list[object] | None = [None] * w.size if w.main else None
    dist.gather_object(value, out, dst=0)
    return out


def merge_counts(counts: dict[str, float], times: dict[str, float]) -> dict[str, float]:
    """One step's figures over every rank: counts summed, phase times at their maximum
    (the step waits for the slowest rank)."""
    if world().size == 1:
        return {**counts, **times}
    everyone: list = [None] * world().size
    dist.all_gather_object(everyone, (counts, times))
    merged: dict[str, float] = {}
    for c, _ in everyone:
        for k, v in c.items():
            merged[k] = merged.get(k, 0) + v
    for _, t in everyone:
        for k, v in t.items():
            merged[k] = max(merged.get(k, v), v)
    return merged


def barrier() -> None:
    if world().size > 1:
        dist.barrier()
