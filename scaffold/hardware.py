"""What this machine computes fast: the one place Scaffold decides on CUDA and on bf16.

bf16 is only worth it where the hardware runs it natively. On a CPU with AVX512-BF16 or
AMX it is 2.5-3.5x faster than fp32; on an AVX2-only CPU (no native bf16) torch emulates
it and a [2048 x 576] @ [576 x 1536] matmul ran at 1.3 GFLOPS against 78 GFLOPS in fp32
(AMD EPYC, 2 cores), and vLLM served SmolLM2 at 65 prompt tokens/s in bf16. So "auto"
means bf16 only where it is native, for the server and the trainer alike.
"""

from __future__ import annotations

import functools


@functools.cache
def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - torch missing or broken: treat as CPU
        return False


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, with its family and model numbers: a VM may name only "AMD
    EPYC", and on these machines family 25 (Zen 4) and 26 (Zen 5, full-width AVX-512) ran
    the same distillation step at 18.7 and 9.5 s (README, Benchmarks)."""
    info: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name", "unknown CPU")
    if "cpu family" in info:
        name += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return name


@functools.cache
def cpu_native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX tiles)."""
    import torch

    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def auto_dtype_name(device_type: str | None = None) -> str:
    """"bfloat16" where the device runs it natively, else "float32" (a torch dtype name)."""
    device_type = device_type or ("cuda" if cuda_available() else "cpu")
    if device_type == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_native_bf16() else "float32"


GIB = 1 << 30


def colocated_memory_utilization(weights_bytes: int, kv_cache_gib: float, free_bytes: int,
                                 total_bytes: int, overhead_gib: float = 1.5) -> float:
    """vLLM's --gpu-memory-utilization for a server sharing its GPU with the trainer.

    vLLM reserves that fraction of the device's *total* memory and refuses to start when
    less is free, so its default 0.9 fails once the trainer has loaded first. The server
    needs its weights, `kv_cache_gib` of KV cache and about `overhead_gib` (activations,
    CUDA graphs); it gets that, never more than what is free now less 1 GiB of headroom,
    and the rest stays the trainer's. Raises ValueError when even that does not fit."""
    need = weights_bytes + (kv_cache_gib + overhead_gib) * GIB
    room = free_bytes - GIB
    if need > room:
        raise ValueError(
            f"the policy server needs about {need / GIB:.1f} GiB (weights {weights_bytes / GIB:.1f}"
            f" + KV cache {kv_cache_gib:g} + {overhead_gib:g} overhead) but {free_bytes / GIB:.1f}"
            f" GiB of {total_bytes / GIB:.1f} are free: serve on another device "
            "(--server-devices), lower --kv-cache-gib, or set --gpu-memory-utilization")
    return round(need / total_bytes, 4)


def keep_freed_memory() -> bool:
    """Have glibc keep memory the process frees, for the process to reuse, instead of handing
    it back to the kernel; True if it took effect (glibc's `mallopt`; False elsewhere).

    Why: a training step frees and reallocates a few GB of activations, and glibc returns
    most of it (munmap of large blocks, heap trims) between steps. On a VM whose balloon
    reports free pages to its host (this project's machines) a page faulted in again costs
    15-40 us, not ~2: inside a SmolLM2 run the trainer spent 2-5 s a step in the kernel on
    50-190k page faults. One arena, no mmap for large blocks and no trims keep those pages
    in the process: faults fall to what the heap's growth needs.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_top_pad, m_mmap_max, m_arena_max = -1, -2, -4, -8
    settings = ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1),
                (m_top_pad, 64 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)
