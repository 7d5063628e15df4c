"""Where a math run's teacher disagrees with the student: on the numbers, or the wording?

Reads the per-token transcripts a run wrote (OUT/transcripts.jsonl: a few training pairs a
step, each token's divergence and the teacher's top 3), grades each rollout against the
task's gold answer, and prints, for right and wrong rollouts apart, the share of the
divergence (after the first `--skip` tokens, which get no teacher loss) on tokens that hold
a digit, and how often the teacher's most likely token is not the student's digit.

Why (issue 15, item 2, fourteenth attempt): the replayed right contexts never taught the
student its 80 training problems. On the reverse-KL replays the teacher's top choice was
the student's own digit on 91-97% of a wrong rollout's digit tokens: conditioned on the
student's working, the teacher follows its numbers, and the loss sits on the wording.
Training on the overruled tokens alone (--agreed-weight 0) did not change that result.

    python scripts/transcript_numbers.py --task gsm8k runs/g8k-replay-rkl runs/g8k-replay-rkl-all
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from evals.tasks import get_task
from scaffold.types import Item, TaskContract

DIGIT = re.compile(r"\d")


def summarize(run: Path, task: TaskContract, train: dict[str, Item],
              skip: int) -> list[tuple[str, int, float, float, float]]:
    """Rows (outcome, rollouts, loss share on digit tokens, teacher's top-1 not the student's
    digit, rollouts with any such digit) for the run's right and wrong rollouts."""
    groups: dict[bool, list[tuple[float, float, bool]]] = {True: [], False: []}
    with open(run / "transcripts.jsonl") as f:
        for line in f:
            pair = json.loads(line)
            if pair.get("kind") != "rollout" or pair["example_id"] not in train:
                continue
            tokens = pair["tokens"][skip:]
            digits = [t for t in tokens if DIGIT.search(t["text"])]
            total = sum(t["loss"] for t in tokens)
            overruled = [t for t in digits if t["teacher_top"][0][0] != t["text"]]
            right = bool(task.grade(pair["response"].removesuffix("<|im_end|>"),
                                    train[pair["example_id"]]))
            groups[right].append((sum(t["loss"] for t in digits) / total if total else 0.0,
                                  len(overruled) / len(digits) if digits else 0.0,
                                  bool(overruled)))
    return [(name, len(rows), statistics.mean(r[0] for r in rows),
             statistics.mean(r[1] for r in rows), statistics.mean(r[2] for r in rows))
            for name, rows in (("right", groups[True]), ("wrong", groups[False])) if rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (--out of distill.run)")
    parser.add_argument("--task", default="gsm8k", help="the runs' task (default gsm8k)")
    parser.add_argument("--skip", type=int, default=4,
                        help="leading response tokens left out (the runs' --skip-first-tokens)")
    args = parser.parse_args(argv)
    task = get_task(args.task)
    train = {ex.id: ex for ex in task.load("train")}
    print("| run | rollouts | n | divergence on digit tokens | digit tokens the teacher "
          "overrules | rollouts with any |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        if not (run / "transcripts.jsonl").is_file():
            print(f"{run}: no transcripts.jsonl (not a run folder, or --transcripts 0)",
                  file=sys.stderr)
            return 2
        for name, n, share, overruled, any_overruled in summarize(run, task, train, args.skip):
            print(f"| {run.name} | {name} | {n} | {share:.2f} | {overruled:.2f} | "
                  f"{any_overruled:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
