"""Merge a peft LoRA adapter into its base model: a plain model folder any engine serves.

    folder = merge_adapter("smollm2-135m-instruct", "runs/demo/final_adapter")

Used by `distill.serve --merge` and by `evals.compare`, which reloads merged weights
into one running vLLM server instead of serving the adapter (vLLM's CPU LoRA kernels
are 4-5x slower than the plain model).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from scaffold.hardware import auto_dtype_name
from scaffold.registry import cache_dir, resolve


def merge_adapter(model: str, adapter: str | Path, out_root: Path | None = None) -> Path:
    """Merge a peft adapter into its base model; returns the merged folder (cached by content)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = resolve(model)
    adapter = Path(adapter).resolve()
    weights = adapter / "adapter_model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{adapter} has no adapter_model.safetensors: not a peft adapter")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    out = (out_root or cache_dir() / "merged") / f"{Path(base_path).name}-{digest}-{auto_dtype_name()}"
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # the dtype the server runs (scaffold.hardware): merging in bf16 on a CPU without native
    # bf16 would round the adapter's small deltas away for nothing
    base = AutoModelForCausalLM.from_pretrained(base_path,
                                                dtype=getattr(torch, auto_dtype_name()))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(tmp)
        shutil.move(tmp, out)  # the temp dir is gone after the move; TemporaryDirectory tolerates it
    return out
