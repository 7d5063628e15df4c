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
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (95% bootstrap CI)")
    ax.set_title(title)
    for i, (s, y) in enumerate(zip(scores, value_label_heights(rows), strict=True)):
        ax.text(i, y, f"{s:.3f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def value_label_heights(rows: list[dict]) -> list[float]:
    """Where each bar's score is written: just above the top of its error bar, which a
    label at the bar's own height would sit on."""
    return [max(r["score"], r["ci_high"]) + 0.015 for r in rows]


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
    """Per step, one line per run: the loss; the student's own rollouts graded (on an
    unlabelled pool, which has no answers to grade, the share that agrees with the
    harness); and the held-out accuracy with no harness where the run measured it
    (--eval-every points and its final evaluation), else the harness's accuracy on the
    training batches."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    curves = {label: held_out_curve(run_dir) for label, run_dir in runs.items()}
    held_out = any(curves.values())
    pool = False
    for i, (label, run_dir) in enumerate(runs.items()):
        rows = read_metrics(run_dir)
        color = f"C{i % 10}"  # one colour per run in every panel, even where a panel skips it
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r.get("loss", float("nan")) for r in rows], label=label,
                     color=color)
        unlabelled = any(r.get("unlabelled") for r in rows)
        pool |= unlabelled
        key = "student_agrees_harness" if unlabelled else "student_correct"
        axes[1].plot(steps, _smooth([r.get(key, 0) / r["rollouts"] if r.get("rollouts")
                                     else float("nan") for r in rows]), label=label,
                     color=color)
        if held_out:
            if curves[label]:
                axes[2].plot(*zip(*curves[label], strict=True), marker="o", label=label,
                             color=color)
        elif any(r.get("harness_correct") for r in rows):  # methods that never run the harness
            axes[2].plot(steps, _smooth([r["harness_correct"] / r["examples"]
                                         if r.get("examples") and "harness_correct" in r
                                         else float("nan") for r in rows]), label=label,
                         color=color)
    names = ("loss (per response token)",
             "student rollouts correct" + (" (pool: agreeing with the harness)" if pool else ""),
             "held-out accuracy, no harness" if held_out else "harness correct (train batches)")
    for ax, name in zip(axes, names, strict=True):
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def held_out_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, accuracy with no harness) of a run on its held-out items: the --eval-every
    points of metrics.jsonl, then its final evaluation (eval.json, the same items) at its
    last step."""
    rows = read_metrics(run_dir)
    points = {r["step"]: r["eval_score"] for r in rows if r.get("eval_score") is not None}
    try:
        final = json.loads((run_dir / "eval.json").read_text())
        trained = next(r for r in final["rows"] if r["model"] == "trained")
        if rows:
            points[max(r["step"] for r in rows)] = trained["score"]
    except (OSError, ValueError, KeyError, StopIteration):
        pass
    return sorted(points.items())


def _smooth(values: list[float], window: int = 4) -> list[float]:
    """Trailing mean over `window` steps (per-step batch accuracies are noisy)."""
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1): i + 1] if v == v]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out
