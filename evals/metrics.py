"""Scores with intervals, and the held-out item selection every comparison shares."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np


def held_out(examples: Sequence[Any], limit: int | None, seed: int = 0) -> list[Any]:
    """A seeded sample of `limit` items (files are often sorted by label: never take the head)."""
    items = list(examples)
    random.Random(seed).shuffle(items)
    return items if limit is None or limit <= 0 else items[:limit]


def mean_ci(scores: Sequence[float], level: float = 0.95, n_boot: int = 2000,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean and a percentile-bootstrap interval (works for 0/1 accuracy and for F1)."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(x.mean()), float(lo), float(hi)


def fmt_ci(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"
