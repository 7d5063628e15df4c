"""Fully sharded data parallelism for the trainer (`--fsdp`, `TrainerConfig.fsdp`): torch's
FSDP2 (`torch.distributed.fsdp.fully_shard`) over the ranks torchrun starts.

    torchrun --nproc_per_node 2 -m distill.run --fsdp --sync lora ...

What is sharded: every decoder layer (its frozen base weights and its LoRA weights, with
their gradients and AdamW state), then the decoder itself (the input embeddings and the
final norm). The output head stays whole on every rank: the loss applies its weight
itself, in chunks (distill.losses), and it is frozen. With tied embeddings the head keeps
its own full copy of the embedding matrix.

What changes against the data-parallel step (distill.distributed):
- FSDP reduces the LoRA gradients itself (reduce-scatter after each backward). It sums
  them (divide factor 1) because the trainer already divides by the step's token count
  over all ranks; sum-only collectives are forced because gloo has no pre-scaled sum
  (`ReduceOp.PREMUL_SUM`), measured on CPU.
- No shared prompt prefix (distill.shared_prefix): its backward enters each layer through
  the prefix's keys and values, after FSDP has resharded that layer and freed its full
  weights (on gloo: "setStorage ... out of bounds for storage of size 0"). Each row then
  computes its whole prompt; the step is otherwise the same.
- Weights leave the trainer whole: after every step each rank all-gathers the LoRA
  weights into a plain copy (`gather_full`), so saving an adapter (rank 0 alone, in the
  sync and the checkpoint) needs no collective. The LoRA weights are a few percent of the
  model; the base weights are never gathered, so the policy follows the trainer by LoRA
  hot-load only (a merged sync would gather the whole model on one rank).
- Each rank loads the whole model before sharding it, so loading needs one model's memory
  per device (meta-device loading is not built).
- Every forward and backward is a collective: a rank with fewer pairs runs idle passes
  (DistillTrainer._idle_pass), and `hidden_states` or `load_adapter` must run on every rank.
- AdamW's state stays sharded: each rank saves and restores its own shard
  (`local_optimizer_state`), so a checkpoint resumes only with the same process count,
  which distill.checkpoint already enforces.

Tested on 2 gloo processes against one process on the same batch (tests/test_distributed.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

# FSDPModule methods shard_decoder needs: torch 2.13 has all three; torch 2.11 (an H200's
# image) lacks the last (versions between were not seen), without which the ranks'
# collectives could differ (see shard_decoder)
NEEDED_METHODS = ("set_gradient_divide_factor", "set_force_sum_reduction_for_comms",
                  "set_reduce_scatter_unused_params")


def unsupported_reason() -> str | None:
    """Why this torch cannot run --fsdp (None: it can), in words that name the fix."""
    from torch.distributed.fsdp import FSDPModule

    missing = [m for m in NEEDED_METHODS if not hasattr(FSDPModule, m)]
    if not missing:
        return None
    return (f"torch {torch.__version__} lacks FSDPModule.{', .'.join(missing)}, which the "
            "sharded step needs: install a torch that has it (2.13 has it), or drop --fsdp "
            "(the whole-model ranks of plain torchrun need neither)")


def shard_decoder(decoder: torch.nn.Module, device: torch.device, world_size: int) -> None:
    """Shard each decoder layer, then the decoder, over a 1-D mesh of `world_size` ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if (why := unsupported_reason()) is not None:
        raise RuntimeError(f"--fsdp: {why}")

    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise ValueError(f"{type(decoder).__name__} has no `layers` list to shard: --fsdp "
                         "supports decoders laid out as HF's (embed_tokens, layers, norm)")
    mesh = init_device_mesh(device.type, (world_size,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(decoder, mesh=mesh)
    for module in decoder.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
            # a LoRA weight without a gradient on one rank (a module its rows never reach)
            # still joins the reduce-scatter, as zeros: otherwise the ranks' collectives differ
            module.set_reduce_scatter_unused_params(True)


def is_sharded(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, DTensor)


def gather_full(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain, detached copy of every parameter: sharded ones all-gathered (a collective:
    every rank must call it at the same point)."""
    with torch.no_grad():
        return {n: (p.full_tensor() if is_sharded(p) else p).detach().clone()
                for n, p in params.items()}


@torch.no_grad()
def load_full(params: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> None:
    """Copy whole tensors into (possibly sharded) parameters: each rank keeps its shard of
    its own copy (every rank read the same file), so no data moves between ranks."""
    for name, param in params.items():
        value = values[name].to(device=param.device, dtype=param.dtype)
        if is_sharded(param):
            value = distribute_tensor(value, param.device_mesh, param.placements,
                                      src_data_rank=None)
        param.copy_(value)


def local_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """A copy of this rank's optimizer state with plain tensors (its shards), for torch.save."""
    state = optimizer.state_dict()
    return {**state, "state": {
        idx: {k: _plain_copy(v) for k, v in entry.items()} for idx, entry in state["state"].items()}}


def _plain_copy(value: object) -> object:
    """On the CPU: rank 0 gathers every rank's shard for the checkpoint, and a CUDA tensor
    would unpickle there onto the GPU of the rank that sent it."""
    if is_sharded(value):
        return value.to_local().detach().cpu().clone()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()  # Adam's step counts
    return value


def load_local_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of `local_optimizer_state` on the same rank of the same mesh: a state tensor
    shaped like its parameter's shard becomes a shard of that parameter's layout again."""
    params: list[torch.Tensor] = [p for g in optimizer.param_groups for p in g["params"]]
    restored = {}
    for idx, entry in state["state"].items():
        param = params[int(idx)]
        restored[idx] = {k: _like(param, v) for k, v in entry.items()}
    optimizer.load_state_dict({**state, "state": restored})


def _like(param: torch.Tensor, value: object) -> object:
    if not (is_sharded(param) and isinstance(value, torch.Tensor) and value.dim()
            and value.shape == param.to_local().shape):
        return value
    return DTensor.from_local(value.to(param.device), param.device_mesh, param.placements,
                              run_check=False, shape=param.shape, stride=param.stride())


def sharded_fraction(params: Iterable[torch.Tensor]) -> float:
    """Share of these parameters' elements that this rank holds (1.0: nothing sharded)."""
    total = held = 0
    for p in params:
        total += p.numel()
        held += p.to_local().numel() if is_sharded(p) else p.numel()
    return held / total if total else 1.0
