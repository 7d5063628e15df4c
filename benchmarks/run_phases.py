"""Median step time by phase of finished runs, side by side, each against the first.

    .venv/bin/python benchmarks/run_phases.py runs/a runs/b [--skip 1] [--json out.json]

Reads each run folder's metrics.jsonl (the rows with `step_s`), leaves out the first
`--skip` steps (the first warms kernels and caches), and prints the median of every
phase with the ratio to the first run's. `scripts/step_ab.sh` runs the same short
OPHSD phase at several commits and calls this on the result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import median

from rich.console import Console
from rich.table import Table

PHASES = ("step_s", "harness_s", "rollout_s", "teacher_score_s", "time_student_s", "sync_s")


def phase_medians(run: Path, skip: int) -> dict[str, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    rows = [r for r in rows if "step_s" in r][skip:]
    if not rows:
        raise SystemExit(f"error: {run / 'metrics.jsonl'} has no step rows after --skip {skip}")
    out = {k: median(r[k] for r in rows if k in r) for k in PHASES if any(k in r for r in rows)}
    out["steps"] = len(rows)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (--out of distill.run)")
    p.add_argument("--skip", type=int, default=1, help="first steps left out")
    p.add_argument("--json", type=Path, default=None, help="also write the medians here")
    args = p.parse_args()
    medians = {str(run): phase_medians(run, args.skip) for run in args.runs}
    first = next(iter(medians.values()))
    table = Table(title=f"median s per step (first {args.skip} left out); ratio to {args.runs[0]}")
    table.add_column("phase")
    for run in medians:
        table.add_column(Path(run).name, justify="right")
    for phase in PHASES:
        if phase not in first:
            continue
        cells = []
        for m in medians.values():
            value = m.get(phase)
            ratio = f" ({value / first[phase]:.2f})" if value is not None and first[phase] > 0.05 else ""
            cells.append("-" if value is None else f"{value:.2f}{ratio}")
        table.add_row(phase, *cells)
    table.add_row("steps", *(str(m["steps"]) for m in medians.values()))
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps(medians, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
