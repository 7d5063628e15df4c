"""Report plots (matplotlib, written as PNG): the comparison table as bars with intervals,
and training curves read from runs' metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on these machines
import matplotlib.pyplot as plt  # noqa: E402


def comparison_bars(rows: list[dict], path: Path, title: str) -> Path:
    """One bar per (model, program) row: score with its 95% interval as an error bar."""
    labels = [f"{r['model']}\n{r['program']}" for r in rows]
    scores = [r["score"] for r in rows]
    err = [[max(0.0, r["score"] - r["ci_low"]) for r in rows],
           [max(0.0, r["ci_high"] - r["score"]) for r in rows]]
    colors = ["#4c72b0" if r["program"] == "none" else "#dd8452" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows)), 4.2))
    ax.bar(range(len(rows)), scores, yerr=err, capsize=4, color=colors)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (95% bootstrap CI)")
    ax.set_title(title)
    for i, s in enumerate(scores):
        ax.text(i, s + 0.02, f"{s:.2f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows (a torn last line is skipped)."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def training_curves(runs: dict[str, Path], path: Path, title: str) -> Path:
    """Loss, the student's on-policy accuracy (its own rollouts, graded) and the harness's
    accuracy on the training batches, per step, one line per run."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, (label, run_dir) in enumerate(runs.items()):
        rows = read_metrics(run_dir)
        color = f"C{i % 10}"  # one colour per run in every panel, even where a panel skips it
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r.get("loss", float("nan")) for r in rows], label=label,
                     color=color)
        axes[1].plot(steps, _smooth([r["student_correct"] / r["rollouts"] if r.get("rollouts")
                                     else float("nan") for r in rows]), label=label,
                     color=color)
        if any(r.get("harness_correct") for r in rows):  # methods that never run the harness
            axes[2].plot(steps, _smooth([r["harness_correct"] / r["examples"]
                                         if r.get("examples") and "harness_correct" in r
                                         else float("nan") for r in rows]), label=label,
                         color=color)
    for ax, name in zip(axes, ("loss (per response token)", "student rollouts correct",
                               "harness correct (train batches)"), strict=True):
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _smooth(values: list[float], window: int = 4) -> list[float]:
    """Trailing mean over `window` steps (per-step batch accuracies are noisy)."""
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1): i + 1] if v == v]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out
