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
