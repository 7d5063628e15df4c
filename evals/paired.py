"""Two programs' traces on the same items: the paired difference, with its interval.

    python -m evals.paired --task gsm8k runs/g8k-sc8bare/traces-self_consistency.jsonl \\
        runs/g8k-precsolve/traces-none.jsonl

Two separate intervals overlap long before the difference they bound is noise: on 200
GSM8K items, 0.345 [0.280, 0.410] and 0.235 [0.180, 0.290] overlap, but scored item by
item the difference is +0.110 [+0.060, +0.165]. This regrades both traces' final
completions with the task, bootstraps the per-item difference (`mean_ci`), and counts
the items each side alone got right. Where A's traces hold several samples of one
prompt (self_consistency over the bare prompt), it also prints the vote over its first
k samples for each k, and how often one sample and any sample is right.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from evals.metrics import fmt_ci, mean_ci
from evals.tasks import get_task
from harnesses.self_consistency import vote_samples
from scaffold.trace import Trace, read_jsonl
from scaffold.types import TaskContract


def load_traces(path: Path) -> dict[str, Trace]:
    return {t.example_id: t for t in read_jsonl(path)}


def paired_scores(task: TaskContract, a: dict[str, Trace], b: dict[str, Trace],
                  examples: dict) -> tuple[list[str], list[float], list[float]]:
    """The shared item ids, and each side's grade of its final completion on them."""
    ids = sorted(set(a) & set(b))

    def grade(trace: Trace, i: str) -> float:
        return task.grade(trace.outputs.get("completion") or "", examples[i])

    return ids, [grade(a[i], i) for i in ids], [grade(b[i], i) for i in ids]


def paired_difference(scores_a: list[float], scores_b: list[float]
                      ) -> tuple[float, float, float]:
    """Mean of the per-item differences A - B and its bootstrap interval."""
    return mean_ci([x - y for x, y in zip(scores_a, scores_b, strict=True)], n_boot=10000)


def vote_curve(task: TaskContract, traces: dict[str, Trace], ids: list[str],
               examples: dict) -> list[float]:
    """Score of the majority answer over each item's first k samples, k = 1..n."""
    samples = {i: [c.completion for c in vote_samples(traces[i])] for i in ids}
    n = min(len(s) for s in samples.values())
    curve = []
    for k in range(1, n + 1):
        right = 0.0
        for i in ids:
            votes = Counter(a for a in map(task.parse, samples[i][:k]) if a is not None)
            if votes:
                best = votes.most_common(1)[0][0]
                right += task.grade(next(c for c in samples[i] if task.parse(c) == best),
                                    examples[i])
        curve.append(right / len(ids))
    return curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="traces-*.jsonl of program A (from evals.run)")
    p.add_argument("b", type=Path, help="traces-*.jsonl of program B, on the same items")
    p.add_argument("--task", required=True)
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    for flag, path in (("A", args.a), ("B", args.b)):
        if not path.is_file():
            print(f"error: traces file {flag} {path} does not exist", file=sys.stderr)
            return 2
    task = get_task(args.task, data_root=args.data_root)
    examples = {ex.id: ex for ex in task.load("test")}
    a, b = load_traces(args.a), load_traces(args.b)
    for flag, path, traces in (("A", args.a, a), ("B", args.b, b)):
        unknown = sorted(set(traces) - set(examples))
        if unknown:
            print(f"error: traces file {flag} {path} holds items that {task.name}'s test split "
                  f"lacks ({', '.join(unknown[:3])}): pass the --task they were run on",
                  file=sys.stderr)
            return 2
    ids, sa, sb = paired_scores(task, a, b, examples)
    if not ids:
        print(f"error: {args.a} and {args.b} share no item", file=sys.stderr)
        return 2
    diff = paired_difference(sa, sb)
    print(f"{len(ids)} shared items ({len(a)} in A, {len(b)} in B)")
    print(f"A {fmt_ci(*mean_ci(sa))}   B {fmt_ci(*mean_ci(sb))}")
    print(f"A - B, paired: {diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]; "
          f"right in A only {sum(x > y for x, y in zip(sa, sb, strict=True))}, "
          f"in B only {sum(y > x for x, y in zip(sa, sb, strict=True))}")
    calls = [len(vote_samples(a[i])) for i in ids]
    steps = {c.step for i in ids for c in vote_samples(a[i])}
    if min(calls) > 1 and len(steps) == 1:  # n samples of one prompt
        curve = vote_curve(task, a, ids, examples)
        singles = [task.grade(c.completion, examples[i]) for i in ids
                   for c in vote_samples(a[i])]
        anyone = [max(task.grade(c.completion, examples[i]) for c in vote_samples(a[i]))
                  for i in ids]
        print("A's vote over its first k samples: "
              + ", ".join(f"k={k} {s:.3f}" for k, s in enumerate(curve, 1)))
        print(f"A's single sample {sum(singles) / len(singles):.3f}; "
              f"any of its samples right {sum(anyone) / len(anyone):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
