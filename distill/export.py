"""Export what a run trained on, for the trainers people scale on.

    python -m distill.export runs/b77 --format trl  --out b77-sdft.jsonl
    python -m distill.export runs/b77 --format verl --out b77.parquet

Every step of `distill.run` appends one row per trained pair to the run's trained.jsonl
(`record_rows`, through `RunDir.log_trained`; cut back with the metrics on resume): the
student's messages, the teacher's messages (None for a supervised pair), the response ids
and text, the pair's kind, weight and step. This module turns those rows into:

- ``trl``: JSONL rows for TRL's self-distillation trainer (`trl.experimental.sdft`):
  ``prompt`` (the student's messages, without a trailing assistant prefill, which SDFT
  rejects: it goes to ``prefill``), ``privileged_context`` (what the teacher saw that the
  student did not), plus ``teacher_messages``, ``completion`` and ``completion_ids`` kept
  beside them (SDFT ignores extra columns with ``remove_unused_columns=False``). Load with
  ``datasets.load_dataset("json", data_files=FILE)["train"]``.
- ``verl``: parquet rows in the form verl's RLHFDataset reads: ``data_source``, ``prompt``
  (chat messages), ``ability``, ``reward_model`` ({"style", "ground_truth"}), and
  ``extra_info`` holding the teacher's messages, the privileged context and the response.

TRL composes its teacher prompt as the student's system messages plus one user turn made
from ``teacher_prompt_template`` ("{prompt}\\n\\n{privileged_context}"); Scaffold's teacher
is the harness's own messages, where the evidence sits inside the user turn (draft_verify:
the precedents before the question). The TRL teacher therefore sees the same words in a
different place. ``privileged_context`` is the teacher's text minus the prefix and suffix it
shares with the student's, so nothing the student sees is given twice; the exact teacher
messages travel in ``teacher_messages`` for a custom ``teacher_context_builder``.
Supervised pairs (gold answers, harness answers as targets) have no teacher: they are left
out of the ``trl`` form (SDFT needs a context; they are SFT rows) and kept in ``verl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from distill.pairs import StepInputs
from scaffold.trace import Trace
from scaffold.types import TaskContract

FORMATS = ("trl", "verl")


def record_rows(step: int, inputs: StepInputs, tokenizer: Any, task: TaskContract,
                rank: int = 0) -> list[dict]:
    """One trained.jsonl row per pair of loop step `step` (1-based), what distill.export
    reads: every pair in full (transcripts keep a few, clipped). `rank`: the torchrun rank
    that trained the pair (a pair is (step, rank, pair))."""
    rows = []
    for i, (pair, source) in enumerate(zip(inputs.pairs, inputs.sources, strict=True)):
        rows.append({
            "step": step,
            "rank": rank,
            "pair": i,
            "kind": source.kind,
            "example_id": source.example_id,
            "task": task.name,
            "task_kind": task.kind,
            "weight": inputs.weights[i],
            "sft": inputs.sft[i],
            "student_messages": source.student_messages,
            "student_prompt_tokens": pair.student_prompt_len,
            "teacher_messages": source.teacher_messages,
            "teacher_prompt_tokens": pair.teacher_prompt_len,
            "response_ids": list(pair.response_ids),
            "response": tokenizer.decode(pair.response_ids),
            # what the harness answered (distill/replay.py grades it under --harness-filter)
            "harness_completion": source.harness_completion or _final_completion(source.trace),
        })
    return rows


def _final_completion(trace: Trace | None) -> str | None:
    final = trace.final_call() if trace is not None and not trace.error else None
    return final.completion if final is not None else None


def _text(messages: list[dict] | None) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages or [])


def privileged_context(student_messages: list[dict] | None,
                       teacher_messages: list[dict] | None) -> str:
    """The teacher's text without the prefix and suffix it shares with the student's: for a
    teacher prompt that is the student's with a block inserted, exactly that block."""
    student, teacher = _text(student_messages), _text(teacher_messages)
    start = 0
    while start < min(len(student), len(teacher)) and student[start] == teacher[start]:
        start += 1
    end = 0
    while end < min(len(student), len(teacher)) - start and \
            student[len(student) - 1 - end] == teacher[len(teacher) - 1 - end]:
        end += 1
    return teacher[start:len(teacher) - end].strip()


def to_trl(rows: list[dict]) -> list[dict]:
    """Rows for trl.experimental.sdft (distilled pairs only: SDFT needs a teacher context)."""
    out = []
    for r in rows:
        if r["teacher_messages"] is None or r["student_messages"] is None:
            continue
        prompt, prefill = r["student_messages"], ""
        if prompt and prompt[-1].get("role") == "assistant":
            # SDFT rejects a prompt that ends in an assistant turn: the answer prefill
            # (a label task's "Label:") moves to its own column
            prompt, prefill = prompt[:-1], str(prompt[-1].get("content", ""))
        out.append({
            "prompt": prompt,
            "prefill": prefill,
            "privileged_context": privileged_context(r["student_messages"], r["teacher_messages"]),
            "teacher_messages": r["teacher_messages"],
            "completion": r["response"],
            "completion_ids": r["response_ids"],
            "kind": r["kind"], "example_id": r["example_id"], "step": r["step"],
            "weight": r["weight"],
        })
    return out


def to_verl(rows: list[dict]) -> list[dict]:
    """Rows for verl's parquet loader (RLHFDataset): the prompt as chat messages and the rest
    under extra_info. A pool question's ground truth is empty: training never saw its label."""
    out = []
    for index, r in enumerate(rows):
        if r["student_messages"] is None:
            continue
        teacher = r["teacher_messages"]
        out.append({
            "data_source": r["task"],
            "prompt": r["student_messages"],
            "ability": r["task_kind"],
            "reward_model": {"style": "rule",
                             "ground_truth": r["response"] if r["kind"] == "gold" else ""},
            "extra_info": {
                "index": index, "split": "train", "step": r["step"], "kind": r["kind"],
                "example_id": r["example_id"], "weight": r["weight"], "sft": r["sft"],
                # JSON text: parquet needs one schema, and teacher messages may be absent
                "teacher_messages": json.dumps(teacher) if teacher is not None else "",
                "privileged_context": privileged_context(r["student_messages"], teacher)
                if teacher is not None else "",
                "response": r["response"], "response_ids": r["response_ids"],
            },
        })
    return out


def write(rows: list[dict], fmt: str, out: Path) -> int:
    """Write `rows` (trained.jsonl rows) in `fmt` to `out`; returns the rows written."""
    converted = to_trl(rows) if fmt == "trl" else to_verl(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "trl":
        out.write_text("".join(json.dumps(r) + "\n" for r in converted), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(converted), out)
    return len(converted)


def main(argv: list[str] | None = None) -> None:
    from distill.checkpoint import NotARunFolder, read_run, read_trained

    p = argparse.ArgumentParser(prog="python -m distill.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a distill.run --out folder")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="trl: JSONL for trl.experimental.sdft; verl: parquet for verl's loader")
    p.add_argument("--out", required=True, help="the file to write (.jsonl for trl, "
                   ".parquet for verl)")
    args = p.parse_args(argv)
    try:
        record = read_run(args.run)
    except NotARunFolder as e:
        p.error(f"RUN: {e}")
    rows = read_trained(record)
    if not rows:
        p.error(f"RUN: {args.run} has no trained.jsonl rows (a run from before distill.run "
                "recorded its pairs, or one that has not finished a step): train or resume it "
                "to write them")
    written = write(rows, args.format, Path(args.out))
    kinds = Counter(r["kind"] for r in rows)
    left = len(rows) - written
    print(f"wrote {written} rows ({args.format}) to {args.out} from {len(rows)} trained pairs "
          f"of {max(r['step'] for r in rows)} steps ({dict(kinds)})"
          + (f"; {left} supervised pairs left out (no teacher context)" if left else ""),
          file=sys.stderr)


if __name__ == "__main__":
    from scaffold.cli import run_cli

    run_cli(main)
