"""Compare base, base + harness, and trained runs with and without the harness, on the
same held-out items with the same (greedy) sampling.

    python -m evals.compare --task banking77 --program draft_verify \\
        --runs runs/banking77-ophsd runs/b77-opsd runs/b77-gold_sft --limit 300
    python -m evals.compare ... --report docs/results.md     # also write the markdown report

What it does:
1. starts one vLLM server for --model (no LoRA: each trained adapter is merged into the
   base and reloaded in place, which on CPU is 4-5x faster to serve than a LoRA adapter);
2. for the base model and for each run (its final adapter, or an adapter folder given
   directly) evaluates the bare prompt ("none") and --program on the same items;
3. adds the no-LLM nearest-neighbour vote over the train split (label tasks);
4. prints the table (score with a 95% bootstrap interval, n, answer tokens, harness calls,
   wall time, internalization diagnostics, training compute), writes compare.json, the
   table as a bar chart (compare.png) and the runs' training curves (curves.png) under
   --out; runs that differ only in their seed are also summarized as mean and spread.

Rows measured earlier on the same items (an earlier compare, a run's own final evaluation,
evals.run's results) are taken instead of evaluated again with --reuse (evals/reuse.py), and
--reattach limits the harness rows to some subjects: a report can grow a run at a time.
Each row measured is checkpointed under --out (compare.partial.json): a compare interrupted
at any moment, run again into the same --out, measures only the rows it had not finished;
rows of a subject the rerun does not list stay in the checkpoint for a later one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Collection, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evals.bank import task_bank
from evals.diagnostics import answer_diagnostics
from evals.metrics import fmt_ci, held_out, mean_ci
from evals.paired import load_traces, paired_difference, paired_scores
from evals.plots import comparison_bars, read_metrics, training_curves
from evals.reuse import SOURCE_FIELDS, Protocol, adapter_digest, earlier_row, prior_rows
from evals.runner import MAX_TOKENS, EvalResult, evaluate
from evals.split import split_train
from evals.tasks import get_task
from harnesses import HARNESSES, ProgramSpecError, load_program, needs_index
from scaffold.cli import run_cli
from scaffold.client import PolicyClient
from scaffold.merge import merge_adapter
from scaffold.registry import resolve
from scaffold.server import install_sigterm_handler, policy_endpoint
from scaffold.trace import Trace, read_jsonl, write_jsonl
from scaffold.types import TaskContract

log = logging.getLogger("evals.compare")
KNN_K = 10
PARTIAL = "compare.partial.json"  # the rows measured so far (`checkpoint`), under --out


@dataclass
class Subject:
    """A model to evaluate: the base, or one training run's adapter."""

    label: str
    adapter: Path | None = None
    run_dir: Path | None = None
    config: dict = field(default_factory=dict)
    compute: dict = field(default_factory=dict)


def load_subject(path: str | Path) -> Subject:
    """A run folder (its final adapter, else its latest checkpoint's) or a peft adapter folder."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        origin = adapter_origin(path)
        if origin is not None and origin[1] is not None:
            run_dir, at = origin  # RUN/checkpoints/step_N/adapter: the run as of step N
            return Subject(label=f"{run_dir.name}@{at}", adapter=path, run_dir=run_dir,
                           config=json.loads((run_dir / "config.json").read_text()),
                           compute=run_compute(run_dir, up_to=at))
        return Subject(label=path.name, adapter=path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path}: neither a run folder (config.json) nor a peft adapter "
                                "folder (adapter_config.json)")
    adapter = path / "final_adapter"
    if not (adapter / "adapter_config.json").exists():
        checkpoints = sorted((path / "checkpoints").glob("step_*/adapter"))
        if not checkpoints:
            raise FileNotFoundError(f"{path}: no final_adapter and no checkpoint adapters yet")
        adapter = checkpoints[-1]
    label = path.parent.name if re.fullmatch(r"seed\d+", path.name) else path.name
    return Subject(label=label, adapter=adapter, run_dir=path,
                   config=json.loads(config_file.read_text()), compute=run_compute(path))


def curve_runs(subjects: list[Subject]) -> dict[str, Path]:
    """Label -> run folder of the training curves to plot: one curve per run, even when the
    run and one of its checkpoints (RUN@N) are both compared."""
    runs: dict[Path, str] = {}
    for s in subjects:
        if s.run_dir is not None and s.run_dir.resolve() not in runs:
            runs[s.run_dir.resolve()] = s.label + (f" s{s.config.get('seed')}" if s.config else "")
    return {label: path for path, label in runs.items()}


def adapter_origin(adapter: str | Path) -> tuple[Path, int | None] | None:
    """(run folder, step) of an adapter folder in distill.run's layout (distill.checkpoint):
    RUN/final_adapter gives (RUN, None), RUN/checkpoints/step_000150/adapter (RUN, 150);
    None for an adapter kept anywhere else."""
    folder = Path(adapter)
    if folder.name == "final_adapter" and (folder.parent / "config.json").is_file():
        return folder.parent, None
    step = re.fullmatch(r"step_(\d+)", folder.parent.name)
    run = folder.parent.parent.parent
    if folder.name == "adapter" and step and folder.parent.parent.name == "checkpoints" \
            and (run / "config.json").is_file():
        return run, int(step.group(1))
    return None


def started_in(run_dir: Path, config: dict) -> Path | None:
    """The folder `distill.run` was started in, which its config's relative paths (--out,
    --init-adapter, --teacher-contexts, as typed) are relative to: `run_dir` less its `out`.
    None where that cannot be told (an absolute or `..` out, a run folder moved since)."""
    out = Path(config.get("out") or "")
    run = run_dir.resolve()
    n = len(out.parts)
    if not n or out.is_absolute() or ".." in out.parts or run.parts[-n:] != out.parts:
        return None
    return Path(*run.parts[:-n])


def as_started(path: str, start: Path | None) -> Path:
    """A path from a run's config, relative to the folder the run was started in (when that
    is known), so a compare run from any folder finds the runs it builds on."""
    typed = Path(path)
    return typed if typed.is_absolute() or start is None else start / typed


COMPUTE_KEYS = ("steps", "examples", "rollouts", "student_tokens", "train_wall_s")


def own_compute(run_dir: Path, after: int | None = None, up_to: int | None = None) -> dict:
    """What a run's own training loop spent in its steps after `after` through `up_to`
    (None: from the start, to the end), from its metrics.jsonl."""
    rows = [r for r in read_metrics(run_dir)
            if (after is None or r.get("step", 0) > after)
            and (up_to is None or r.get("step", 0) <= up_to)]
    return {
        "steps": len(rows),
        # a step's distinct trained examples (since 2026-12-05); before, every example drawn
        # less the no-signal ones skipped, plus the bank's gold ones
        "examples": sum(r["trained_examples"] if "trained_examples" in r else
                        r.get("examples", 0) - r.get("skipped_fallback", 0)
                        + r.get("gold_targets", 0) for r in rows),
        "rollouts": sum(r.get("rollouts", 0) for r in rows),
        "student_tokens": sum(r.get("tokens", 0) for r in rows),
        "train_wall_s": round(sum(r.get("step_s", 0.0) for r in rows), 1),
    }


def _add_compute(total: dict, more: dict) -> None:
    for k in COMPUTE_KEYS:
        total[k] = round(total[k] + more[k], 1) if isinstance(total[k], float) \
            else total[k] + more[k]


def run_compute(run_dir: Path, up_to: int | None = None,
                _seen: dict[Path, int | None] | None = None) -> dict:
    """What a run spent (through step `up_to`), from its metrics.jsonl: steps, examples
    trained on (distilled and gold; a skipped fallback or a filtered example is not),
    rollouts, student tokens trained on, and wall-clock time of the training loop; plus what
    the runs it builds on spent: the run it started from, up to that adapter (--init-adapter
    RUN/final_adapter: all of it; RUN/checkpoints/step_N/adapter: through step N), and the
    runs whose teacher contexts it trained on (--teacher-contexts: all of each, their
    harness time included), each step of each counted once, so a staged recipe reports its
    whole cost. A run met twice (its checkpoint as the init adapter and its contexts
    replayed) counts through the furthest step either needs."""
    seen: dict[Path, int | None] = {} if _seen is None else _seen
    seen[run_dir.resolve()] = up_to  # None: all of it
    compute = own_compute(run_dir, up_to=up_to)
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    builds_on: list[tuple[Path, int | None]] = []
    start = started_in(run_dir, config)
    origin = adapter_origin(as_started(config["init_adapter"], start)) \
        if config.get("init_adapter") else None
    if origin is not None:
        builds_on.append(origin)
    builds_on += [(as_started(r.strip(), start), None)
                  for r in (config.get("teacher_contexts") or "").split(",") if r.strip()]
    counted, missing = [], []
    for i, (parent, step) in enumerate(builds_on):
        shown = parent.relative_to(start) if start and parent.is_relative_to(start) else parent
        label = str(shown) + ("" if step is None else f"@{step}")  # as a report can show it
        if not (parent / "config.json").is_file():
            missing.append(label)  # moved, deleted, or a path relative to another folder
            continue
        key = parent.resolve()
        if key in seen:
            done = seen[key]
            if done is None or (step is not None and step <= done):
                continue  # already counted this far
            # counted through step `done` on another path; this one needs more of it
            _add_compute(compute, own_compute(parent, after=done, up_to=step))
            seen[key] = step
            counted.append(label)
            continue
        _add_compute(compute, run_compute(parent, up_to=step, _seen=seen))
        counted.append(label)
        if i == 0 and origin is not None:
            compute["init_from"] = label
    if counted:
        compute["builds_on"] = counted
    if missing:
        compute["builds_on_missing"] = missing
        log.warning("%s builds on %s, which is not a run folder from here: its cost is left "
                    "out", run_dir, ", ".join(missing))
    return compute


def knn_baseline(task: TaskContract, items: list[Any], index: Any, k: int = KNN_K) -> dict:
    """The nearest-neighbour vote over the train split: the no-LLM baseline row."""
    t0 = time.perf_counter()
    votes = index.knn_vote_batch([ex.question for ex in items], k)
    scores = [float(label == ex.answer) for (label, _), ex in zip(votes, items, strict=True)]
    mean, lo, hi = mean_ci(scores)
    return {"task": task.name, "program": f"knn-vote k={k}", "model": "no LLM", "n": len(items),
            "score": mean, "ci_low": lo, "ci_high": hi, "calls_per_example": 0.0,
            "answer_tokens_per_example": 0.0, "wall_s": time.perf_counter() - t0}


def result_row(res: EvalResult, task: TaskContract, subject: Subject) -> dict:
    row = res.row()
    if res.program == "none":  # diagnostics describe the bare answer
        row.update(bare_diagnostics(task, res.traces))
    return {**row, **subject_fields(subject)}


def reused_row(row: dict, task: TaskContract, subject: Subject) -> dict:
    """An earlier row (evals/reuse.py) in this compare's form: where it came from, the
    subject's fields, its traces (for `add_paired`), and the bare answer's diagnostics from
    them when it has none."""
    out = {k: v for k, v in row.items()
           if k not in (*SOURCE_FIELDS, "traces", "paired_vs_base", "paired_n")}
    traces = Path(row.get("traces") or row.get("_traces") or "")
    if traces.is_file():
        out["traces"] = str(traces.resolve())
        if row["program"] == "none" and not any(k.endswith("_rate") for k in row):
            out.update(bare_diagnostics(task, read_jsonl(traces)))
    return {**out, **subject_fields(subject), "reused_from": row["_source"]}


def write_row_traces(res: EvalResult, out: Path, position: int, label: str,
                     digest: str | None = None) -> str:
    """Keep an evaluated row's traces under `out`/traces, so that later rows on the same
    items can be paired with it (`add_paired`, evals.paired); returns the absolute path.
    Named by the subject's `position` in this compare and its adapter's `digest` (two seeds
    of one run share a label, and a rerun may list them in another order) and program; an
    earlier compare's file of that name is replaced, not appended to."""
    who = label if digest is None else f"{label}-{digest[:8]}"
    name = "--".join([f"{position:02d}", *(re.sub(r"[^\w.-]+", "_", part)
                                            for part in (who, res.program))])
    path = (out / "traces" / f"{name}.jsonl").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # write_jsonl appends
    write_jsonl(res.traces, path)
    return str(path)


def add_paired(rows: list[dict], task: TaskContract, items: list[Any]) -> None:
    """`paired_vs_base` = [difference, low, high] on every run's row whose traces, and those
    of the base's row with the same program, are at hand: the per-item score difference
    against the base on the items both hold, with its bootstrap interval; `paired_n` those
    items. Two overlapping intervals are not a tie (evals/paired.py shows one that is not):
    this is the column that says whether a run beat the base, with the harness or without."""
    examples = {ex.id: ex for ex in items}

    def these_items(path: Path) -> dict[str, Trace]:  # a file may hold other items too
        return {i: t for i, t in load_traces(path).items() if i in examples}

    base = {r["program"]: Path(r["traces"]) for r in rows
            if r["model"] == "base" and r.get("traces")}
    for r in rows:
        r.pop("paired_vs_base", None)
        r.pop("paired_n", None)
        ref = base.get(r["program"])
        mine = Path(r.get("traces") or "")
        if r["model"] == "base" or ref is None or not (mine.is_file() and ref.is_file()):
            continue
        try:
            ids, scores, base_scores = paired_scores(task, these_items(mine), these_items(ref),
                                                     examples)
        except (OSError, ValueError) as e:  # never lose a finished compare to its extra column
            print(f"warning: no paired difference for {r['model']} / {r['program']}: {e}")
            continue
        if ids:
            r["paired_vs_base"] = list(paired_difference(scores, base_scores))
            r["paired_n"] = len(ids)


def bare_diagnostics(task: TaskContract, traces: list[Trace]) -> dict:
    completions = [(t.final_call().completion if t.final_call() else "") for t in traces]
    return answer_diagnostics(task, completions)


def subject_fields(subject: Subject) -> dict:
    return {"compute": subject.compute,
            "method": subject.config.get("method", "base" if subject.adapter is None else ""),
            "seed": subject.config.get("seed"),
            "harness": subject.config.get("program"),  # the harness a run was distilled from
            "adapter_sha256": adapter_digest(subject.adapter),
            "adapter_path": subject_path(subject)}


def subject_path(subject: Subject) -> str | None:
    """The compared adapter folder, resolved (None: the base): a checkpoint's rows of a
    subject a rerun lists again give way to that rerun's, whatever its weights are now."""
    return str(subject.adapter.resolve()) if subject.adapter else None


def add_lift_capture(rows: list[dict]) -> None:
    """`lift_capture` on every row scored with no harness (trained runs, the kNN vote):
    (score - base) / (base + harness - base), the share of the harness's lift that the row
    keeps without it. The harness is the one the run distilled (else the first compared);
    None where there is no lift to share (no harness row, or a harness no better than base)."""
    base = {r["program"]: r["score"] for r in rows if r["model"] == "base"}
    harnesses = [p for p in base if p != "none"]
    for r in rows:
        if r["model"] == "base":
            r["lift_capture"] = None
            continue
        if r["program"] != "none" and not r["program"].startswith("knn"):
            r["lift_capture"] = None  # with the harness attached: not a capture of its lift
            continue
        harness = r.get("harness") if r.get("harness") in base else \
            (harnesses[0] if harnesses else None)
        lift = base[harness] - base["none"] if harness and "none" in base else 0.0
        r["lift_capture"] = (r["score"] - base["none"]) / lift if lift > 0 else None
        r["lift_of"] = harness


def result_rows(record: dict) -> list[dict]:
    """The machine-readable rows of `docs/results/<task>[-<regime>].json`: one per compared
    (model, program), `model` being base, knn or the run's method name (`run` tells runs of
    one method apart)."""
    out = []
    for r in record["rows"]:
        knn = r["program"].startswith("knn")
        c = r.get("compute") or {}
        out.append({
            "model": "knn" if knn else (r.get("method") or r["model"]),
            "run": None if knn or r["model"] == "base" else r["model"],
            "seed": r.get("seed"),
            "program": "none" if knn else r["program"],
            "score": r["score"], "ci": [r["ci_low"], r["ci_high"]], "n": r["n"],
            "train_examples": c.get("examples"), "train_s": c.get("train_wall_s"),
            "lift_capture": r.get("lift_capture"),
            "paired_vs_base": r.get("paired_vs_base"), "paired_n": r.get("paired_n"),
            **({"knn": r["program"]} if knn else {}),
        })
    return out


def seed_summary(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over runs with the same label and program (seeds)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["program"]), []).append(r["score"])
    return [{"model": m, "program": p, "runs": len(v), "mean": statistics.fmean(v),
             "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            for (m, p), v in groups.items() if len(v) > 1]


def row_label(row: dict, rows: list[dict]) -> str:
    """The row's model label, with its seed where runs of several seeds share the label."""
    seeds = {r.get("seed") for r in rows if r["model"] == row["model"]}
    return f"{row['model']} seed {row['seed']}" if len(seeds) > 1 else row["model"]


def paired_cell(row: dict) -> str:
    """`paired_vs_base` as text, with the items it covers where that is fewer than the row's."""
    diff = row.get("paired_vs_base")
    if not diff:
        return ""
    short = f" (on {row['paired_n']})" if row.get("paired_n", row["n"]) != row["n"] else ""
    return f"{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]{short}"


def markdown_table(rows: list[dict]) -> str:
    diag = [k for k in ("alt_label_rate", "cites_case_rate", "plans_first_rate")
            if any(k in r for r in rows)]
    paired = any("paired_vs_base" in r for r in rows)
    head = ["model", "program", "score [95% CI]", *(["vs base, paired"] if paired else []),
            "lift capture", "n", "answer tok", "calls/ex",
            "wall s", *diag, "train examples", "student tokens", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = r.get("compute") or {}
        lift = r.get("lift_capture")
        cells = [row_label(r, rows), r["program"], fmt_ci(r["score"], r["ci_low"], r["ci_high"]),
                 *([paired_cell(r)] if paired else []),
                 "" if lift is None else f"{lift:.0%}",
                 str(r["n"]), f"{r.get('answer_tokens_per_example', 0):.1f}",
                 f"{r.get('calls_per_example', 0):.2f}", f"{r.get('wall_s', 0):.0f}",
                 *[f"{r[k]:.2f}" if k in r else "" for k in diag],
                 str(c.get("examples", "")), str(c.get("student_tokens", "")),
                 str(c.get("train_wall_s", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rich_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("model", "program", "score [95% CI]", "vs base, paired", "lift capture", "n",
                "answer tok", "calls/ex", "wall s"):
        table.add_column(col, justify="right")
    for r in rows:
        lift = r.get("lift_capture")
        table.add_row(row_label(r, rows), r["program"], fmt_ci(r["score"], r["ci_low"], r["ci_high"]),
                      paired_cell(r), "" if lift is None else f"{lift:.0%}",
                      str(r["n"]), f"{r.get('answer_tokens_per_example', 0):.1f}",
                      f"{r.get('calls_per_example', 0):.2f}", f"{r.get('wall_s', 0):.0f}")
    return table


REPORT_HEAD = ("# Results\n\nGenerated by `python -m evals.compare ... --report` (one section per "
               "task, each with the command that made it; rerunning a task's command replaces "
               "its section only).\n")


def write_report(path: Path, command: str, sections: list[tuple[str, str]],
                 key: str = "results") -> None:
    """Write (or replace) the `key` block of a generated markdown report: the command that
    made it, then each titled section. Blocks of other keys (other tasks) are kept."""
    block = [f"<!-- begin {key} -->", f"## {key}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by:", "",
             f"    {command}", ""]
    for title, text in sections:
        block += [f"### {title}", "", text, ""]
    block.append(f"<!-- end {key} -->")
    body = "\n".join(block)
    old = path.read_text() if path.exists() else REPORT_HEAD
    pattern = re.compile(rf"<!-- begin {re.escape(key)} -->.*?<!-- end {re.escape(key)} -->",
                         re.DOTALL)
    text = pattern.sub(lambda _: body, old) if pattern.search(old) else \
        old.rstrip("\n") + "\n\n" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="banking77")
    p.add_argument("--program", nargs="+", default=["draft_verify"],
                   help="the harness(es) to evaluate beside the bare prompt: built-ins "
                        f"({', '.join(sorted(set(HARNESSES) - {'none'}))}) or your own as "
                        "package.module:Name")
    p.add_argument("--runs", nargs="*", default=[], help="run folders or adapter folders")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--api-base", default=None, help="use this vLLM server (started with "
                   "VLLM_SERVER_DEV_MODE=1 and serving --model) instead of starting one")
    p.add_argument("--bank-size", type=int, default=None,
                   help="precedents: a seeded subset of the train split (default: all of it)")
    p.add_argument("--labeled-per-class", type=int, default=None, metavar="N",
                   help="the label-scarce regime: the harness's precedents and the kNN vote "
                   "use a seeded bank of N labelled train examples per class, the same bank "
                   "as distill.run --labeled-per-class N (evals/split.py)")
    p.add_argument("--labeled", type=int, default=None, metavar="N",
                   help="the same with a bank of N examples in all (tasks without classes)")
    p.add_argument("--split-seed", type=int, default=0, help="the bank's draw (as distill.run)")
    p.add_argument("--limit", type=int, default=300, help="held-out items (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out sample")
    p.add_argument("--harness", type=json.loads, default={}, help="harness options as JSON")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--no-knn", action="store_true", help="skip the nearest-neighbour baseline")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="output folder (default runs/compare-TASK); "
                   "every measured row is checkpointed there, and an interrupted compare run "
                   "again into it measures only what it had not finished")
    p.add_argument("--report", default=None, help="also write this markdown report (the "
                   "task's section of it; other tasks' sections are kept)")
    p.add_argument("--notes", default=None, help="a markdown file of findings to include in "
                   "the report's section, after the tables")
    p.add_argument("--name", default=None,
                   help="the report section, docs/results/NAME.json and the figures' name "
                        "(default: TASK, or TASK-REGIME with a labelled bank): a second study "
                        "of a task under its own name keeps the first one's section")
    p.add_argument("--reuse", nargs="+", default=[], metavar="FILE",
                   help="take rows measured earlier on the same items (task, model, --limit, "
                   "--seed; for harness rows also the bank and --harness) for subjects whose "
                   "weights have not changed since, from an earlier compare.json, a run's own "
                   "final evaluation (RUN/eval.json) or evals.run's results.json (a folder "
                   "holding one will do); the first file given wins. Adding one run to a "
                   "report evaluates only that run; nothing left to evaluate starts no server")
    p.add_argument("--reattach", nargs="*", default=None, metavar="SUBJECT",
                   help="evaluate --program only on these: 'base' and folders given in --runs "
                   "(default: all; the flag alone: none, bare rows only, as for a trained "
                   "model on a second dataset). The others get their bare row only; on GSM8K "
                   "at 200 items the self-consistency harness costs about 50 minutes a model here")
    args = p.parse_args(argv)
    reattach = None if args.reattach is None else \
        {a if a == "base" else str(Path(a).resolve()) for a in args.reattach}
    unknown = (reattach or set()) - {"base"} - {str(Path(r).resolve()) for r in args.runs}
    if unknown:
        p.error(f"--reattach {', '.join(sorted(unknown))}: not 'base' nor one of --runs")
    if args.name is not None and not re.fullmatch(r"[\w.-]+", args.name):
        p.error(f"--name {args.name!r}: letters, digits, '.', '_' and '-' only (it names files)")
    for program in args.program:
        try:
            load_program(program)
        except ProgramSpecError as e:
            p.error(f"--program {e}")
    install_sigterm_handler()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.labeled_per_class is not None and args.labeled is not None:
        p.error("--labeled-per-class and --labeled size the same bank: give one")
    task = get_task(args.task, data_root=args.data_root)
    items = held_out(task.load("test"), args.limit, args.seed)
    subjects = [Subject(label="base")] + [load_subject(r) for r in args.runs]
    reattached = [reattach is None or s in reattach
                  for s in ["base", *(str(Path(r).resolve()) for r in args.runs)]]
    label_task = task.kind != "math"
    split = split_train(task, task.load("train"), per_class=args.labeled_per_class,
                        total=args.labeled, seed=args.split_seed) \
        if args.labeled_per_class or args.labeled else None
    regime = split.regime if split else "all-labels"
    index = None
    # `--reattach` alone runs no harness row: no precedent index to embed for it
    if (any(reattached) and any(map(needs_index, args.program))) or \
            (label_task and not args.no_knn):
        index = task_bank(task, examples=split.bank) if split else \
            task_bank(task, limit=args.bank_size)
    stem = args.name or task.name.replace("/", "_") + (f"-{regime}" if split else "")
    out = Path(args.out or f"runs/compare-{stem}")
    out.mkdir(parents=True, exist_ok=True)
    model_path = resolve(args.model)
    max_tokens = MAX_TOKENS[task.kind]

    protocol = Protocol(task=task.name, task_spec=args.task, model=args.model,
                        limit=args.limit, seed=args.seed, items=len(items), regime=regime,
                        harness=args.harness, bank_size=args.bank_size,
                        split_seed=args.split_seed if split else None)
    bank_note = f", labelled bank {len(split.bank)} ({regime})" if split else ""
    title = f"{task.name}: {len(items)} held-out items, greedy{bank_note}"
    header = {"task": task.name, "model": args.model, "bank_size": args.bank_size,
              "split_seed": args.split_seed if split else None,
              "regime": regime, "stem": stem, "seed": args.seed,
              "harness_options": args.harness, "bank": len(split.bank) if split else None,
              "title": title, "items": len(items)}
    partial = out / PARTIAL
    labels = {s.adapter.resolve(): s.label for s in subjects if s.adapter}
    prior, carried = resumed_rows(partial, protocol, labels)  # first: its rows win
    listed = {subject_path(s) for s in subjects}
    for key, earlier in prior_rows([Path(f) for f in args.reuse], protocol, labels).items():
        prior.setdefault(key, []).extend(earlier)
    plan = []  # (subject, programs, the earlier rows kept for it)
    for subject, harness_too in zip(subjects, reattached, strict=True):
        programs = ("none", *args.program) if harness_too else ("none",)
        kept = {pr: row for pr in programs
                if (row := earlier_row(prior, subject.label, pr, subject.adapter)) is not None}
        plan.append((subject, programs, kept))
    serve = any(len(kept) < len(programs) for _, programs, kept in plan)
    rows: list[dict] = []
    with policy_endpoint(model_path, args.api_base, enable_lora=False,
                         log_path=str(out / "vllm.log")) if serve else nullcontext() as server:
        lm = PolicyClient(server.base_url, server.model_name).dspy_lm(
            server.model_name, temperature=0.0, max_tokens=max_tokens) if serve else None
        try:
            for position, (subject, programs, kept) in enumerate(plan):
                if len(kept) < len(programs):
                    server.reload_weights(merge_adapter(args.model, subject.adapter)
                                          if subject.adapter else model_path)
                for program in programs:
                    if program in kept and kept[program]["_source"] == str(partial):
                        print(f"{subject.label} / {program}: measured before the interruption "
                              f"({partial})")
                        rows.append({**measured_row(kept[program]), **subject_fields(subject)})
                        continue
                    if program in kept:
                        print(f"{subject.label} / {program}: reused from "
                              f"{kept[program]['_source']}")
                        rows.append(reused_row(kept[program], task, subject))
                        continue
                    res = evaluate(task, program, items, lm=lm, model_label=subject.label,
                                   index=index, concurrency=args.concurrency,
                                   harness_options=args.harness if program != "none" else None)
                    row = result_row(res, task, subject)
                    rows.append({**row, "traces": write_row_traces(
                        res, out, position, subject.label, row["adapter_sha256"])})
                    checkpoint(partial, header, rows, carried, listed)
        finally:
            if serve and args.api_base and len(subjects) > 1:
                server.reload_weights(model_path)  # leave a shared server as we found it
    if label_task and not args.no_knn:
        rows.append(knn_baseline(task, items, index))
    add_lift_capture(rows)
    add_paired(rows, task, items)

    Console(width=160).print(rich_table(rows, title))
    summary = seed_summary(rows)
    bars = comparison_bars(rows, out / "compare.png", title)
    runs = curve_runs(subjects)
    curves = training_curves(runs, out / "curves.png", f"{task.name}: training") if runs else None
    command = "python -m evals.compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    record = {"command": command, **header, "rows": rows, "seed_summary": summary,
              "plots": [str(bars)] + ([str(curves)] if curves else [])}
    (out / "compare.json").write_text(json.dumps(record, indent=2, default=str))
    unlisted = not_recorded(carried, rows, listed)
    if unlisted:  # subjects the interrupted compare had and this one did not list
        checkpoint(partial, header, [], unlisted, listed)
        print(f"{partial} keeps {len(unlisted)} rows of subjects this compare did not list: a "
              "compare into this --out that lists them again takes them")
    else:
        partial.unlink(missing_ok=True)
    print(markdown_table(rows))
    if args.report:
        render_report(record, Path(args.report), args.notes)
    print(f"wrote {out / 'compare.json'}, {bars}" + (f", {curves}" if curves else ""))
    return record


def checkpoint(partial: Path, header: dict, rows: list[dict],
               carried: Sequence[dict] = (), listed: Collection[str | None] = ()) -> None:
    """The rows measured so far, after each one: a compare interrupted at any moment (on
    GSM8K at 200 items the harness costs 20-50 minutes a model here) resumes into the same
    --out without evaluating them again. `carried`: an earlier checkpoint's rows, kept where
    this compare does not list their subject (`listed`: the subjects' `subject_path`), so a
    subject left out of a rerun loses nothing. Replaced whole, never half written."""
    measured = [r for r in rows if "reused_from" not in r]
    tmp = partial.with_suffix(".tmp")
    kept = not_recorded(carried, measured, listed)
    tmp.write_text(json.dumps({**header, "rows": measured + kept},
                              indent=2, default=str))
    os.replace(tmp, partial)


def not_recorded(carried: Sequence[dict], rows: list[dict],
                 listed: Collection[str | None]) -> list[dict]:
    """The rows of `carried` of subjects not in `listed` (their `subject_path`) and not
    measured again in `rows` (a checkpoint written before adapter_path was recorded)."""
    done = {(r["model"], r["program"], r.get("adapter_sha256")) for r in rows}
    return [r for r in carried if r.get("adapter_path", "?") not in listed
            and (r["model"], r["program"], r.get("adapter_sha256")) not in done]


def resumed_rows(partial: Path, protocol: Protocol, labels: dict[Path, str]
                 ) -> tuple[dict[tuple[str, str], list[dict]], list[dict]]:
    """The rows an interrupted compare into this --out measured (`checkpoint`), when it had
    the same items and options, by (label, program) and as saved; for other ones, or a file
    that cannot be read, the error names the file and the fix."""
    if not partial.is_file():
        return {}, []
    try:
        saved = json.loads(partial.read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{partial}: cannot read this checkpoint of an interrupted compare "
                         f"({e!r}); delete the file to measure its rows again") from None
    try:
        rows = prior_rows([partial], protocol, labels)
    except SystemExit:
        raise SystemExit(f"{partial}: an interrupted compare on other items or options left "
                         "its rows here; delete the file to start over, or give another "
                         "--out") from None
    print(f"resuming {partial}: {sum(map(len, rows.values()))} rows measured before the "
          "interruption")
    return rows, saved


def measured_row(row: dict) -> dict:
    """A row `checkpoint` saved, as it was when measured in this compare."""
    return {k: v for k, v in row.items() if k not in SOURCE_FIELDS}


def render_report(record: dict, report: Path, notes: str | None = None) -> None:
    """Write the task's section of `report` from a compare record (compare.json): the table,
    the plots (copied beside the report: run folders are not committed), the seed summary
    and the findings in `notes`."""
    figures = report.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    stem = record.get("stem") or record["task"].replace("/", "_")
    results = report.parent / "results" / f"{stem}.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"task": record["task"], "regime": record.get("regime"),
                                   "bank": record.get("bank"), "items": record["items"],
                                   "command": record["command"], "rows": result_rows(record)},
                                  indent=2) + "\n")
    links = []
    for png, kind, alt in zip(record["plots"], ("compare", "curves"), ("comparison", "training"),
                              strict=False):
        shutil.copyfile(png, figures / f"{stem}-{kind}.png")
        links.append(f"![{alt}](figures/{stem}-{kind}.png)")
    sections = [(record["title"], markdown_table(record["rows"])), ("Plots", "\n\n".join(links))]
    if record["seed_summary"]:
        sections.append(("Seeds", "\n".join(
            f"- {s['model']} / {s['program']}: {s['mean']:.3f} ± {s['std']:.3f} over "
            f"{s['runs']} runs" for s in record["seed_summary"])))
    if notes:
        sections.append(("Findings", Path(notes).read_text().strip()))
    write_report(report, record["command"], sections, key=stem)
    print(f"wrote {report} and {results}")


def rerender(argv: list[str] | None = None) -> None:
    """`python -m evals.compare --rerender RUNS/compare-X/compare.json --report R [--notes N]`:
    rewrite a report section from saved results (after editing the findings), serving nothing."""
    p = argparse.ArgumentParser(prog="python -m evals.compare --rerender")
    p.add_argument("--rerender", required=True, help="a compare.json written by evals.compare")
    p.add_argument("--report", required=True)
    p.add_argument("--notes", default=None)
    args = p.parse_args(argv)
    render_report(json.loads(Path(args.rerender).read_text()), Path(args.report), args.notes)


if __name__ == "__main__":
    run_cli(rerender if "--rerender" in sys.argv else main)
