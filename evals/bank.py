"""The precedent bank of a task: its TRAIN split only, embedded once and cached.

    index = task_bank(task)        # PrecedentIndex over task.load("train")

The cache key covers the task name, the embedder and the exact train texts and
labels, so a changed file rebuilds. Test items are passed as `forbidden_texts`:
building fails if any test question is in the bank (no leakage).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock

from evals.metrics import held_out
from evals.tasks.base import Task
from evals.tasks.errors import SplitUnavailableError
from scaffold.embeddings import DEFAULT_EMBEDDER, load_embedder
from scaffold.precedents import PrecedentIndex
from scaffold.registry import cache_dir
from scaffold.types import Example


def task_bank(task: Task, embedder_name: str = DEFAULT_EMBEDDER, progress: bool = True,
              cache: Path | None = None, limit: int | None = None, seed: int = 0,
              examples: Sequence[Example] | None = None) -> PrecedentIndex:
    """The train split's bank; `limit`: a seeded subset of it (quicker to embed, e.g. for
    the demo); `examples`: exactly these labelled train examples (the label-scarce bank,
    evals/split.py)."""
    train = list(examples) if examples is not None else task.load("train")
    if limit and examples is None:
        train = held_out(train, limit, seed)
    try:
        test_texts = [ex.question for ex in task.load("test")]
    except SplitUnavailableError:  # a task without a test split has nothing to leak into
        test_texts = []
    key = hashlib.sha256(
        "\n".join([task.name, embedder_name]
                  + [f"{ex.id}\t{ex.question}\t{task.label_of(ex)}" for ex in train]).encode()
    ).hexdigest()[:16]
    folder = (cache or cache_dir()) / "banks" / f"{task.name.replace('/', '_')}-{key}"
    embedder = load_embedder(embedder_name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if folder.is_dir():
            try:
                return PrecedentIndex.load(folder, embedder=embedder)
            except (OSError, ValueError):  # a broken cache entry is rebuilt
                shutil.rmtree(folder)
        index = PrecedentIndex.build(
            ids=[ex.id for ex in train], texts=[ex.question for ex in train],
            labels=[task.label_of(ex) for ex in train], embedder=embedder,
            progress=progress, forbidden_texts=test_texts)
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        index.save(tmp)
        os.rename(tmp, folder)  # atomic: a folder is either complete or absent
    return index
