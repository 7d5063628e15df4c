"""Rows measured earlier on the same held-out items, which `evals.compare --reuse` takes
instead of evaluating again.

Three files hold such rows: an earlier compare (`compare.json`), a training run's own final
evaluation (`RUN/eval.json`, written by distill.run: the run's final adapter and the base on
the bare prompt), and `evals.run`'s `results.json` (the base model, or the adapter it was
given). Why all three: on GSM8K at 200 items a bare evaluation costs 6 minutes and the
self-consistency harness 52 on this CPU, and every trained run has already evaluated itself
bare on the same items; a report that evaluated all of it again would cost hours.

A row is taken only when it was made on the same items (task, --limit, --seed, model) and,
for a harness row, with the same harness options and bank; and only for weights unchanged
since: the adapter's sha256 where the row records one, else an adapter file older than the
file the row came from."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

# The fields of compare's rows that say where a row came from, not what it measured.
SOURCE_FIELDS = ("_written", "_source", "_traces")


@dataclass(frozen=True)
class Protocol:
    """What two evaluations must share for one's rows to stand in for the other's."""

    task: str  # the task's name (evals.tasks), which compare.json records
    task_spec: str  # --task as given, which run configs and evals.run record
    model: str
    limit: int
    seed: int
    items: int
    regime: str  # the bank: "all-labels", or a labelled bank's regime (evals/split.py)
    harness: dict = field(default_factory=dict)
    bank_size: int | None = None  # --bank-size: a seeded subset of the train split
    split_seed: int | None = None  # --split-seed of a labelled bank (None: all labels)


def adapter_digest(adapter: Path | None) -> str | None:
    """sha256 of an adapter's weights (None for the base model)."""
    if adapter is None:
        return None
    return hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()


def unchanged(adapter: Path | None, row: dict) -> bool:
    """Whether the weights at `adapter` (None: the base) are the ones `row` measured."""
    if adapter is None:
        return row.get("adapter_sha256") is None
    if row.get("adapter_sha256"):
        return row["adapter_sha256"] == adapter_digest(adapter)
    return (adapter / "adapter_model.safetensors").stat().st_mtime < row["_written"]


def prior_rows(paths: list[Path], protocol: Protocol,
               labels: dict[Path, str]) -> dict[tuple[str, str], list[dict]]:
    """(subject label, program) -> the earlier rows of it, from each of `paths` (a file, or
    the folder that holds it) in the order given. `labels` maps each compared adapter folder
    (resolved) to its subject label, so a run's or evals.run's rows of that adapter find
    their subject. A label has several rows where runs of several seeds share it:
    `earlier_row` picks the one that measured the subject's weights."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for path in paths:
        for row in read_rows(path, protocol, labels):
            rows.setdefault((row["model"], row["program"]), []).append(row)
    return rows


def earlier_row(prior: dict[tuple[str, str], list[dict]], label: str, program: str,
                adapter: Path | None) -> dict | None:
    """The first earlier row of (label, program) that measured the weights at `adapter`
    (None: the base), or None."""
    return next((r for r in prior.get((label, program), []) if unchanged(adapter, r)), None)


def read_rows(path: Path, protocol: Protocol, labels: dict[Path, str]) -> list[dict]:
    if path.is_dir():
        path = next((path / n for n in ("compare.json", "eval.json", "results.json")
                     if (path / n).is_file()), path / "eval.json")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--reuse {path}: cannot read it ({e})") from None
    if isinstance(record, dict) and "items" in record and "rows" in record:
        rows = compare_rows(path, record, protocol)
    elif isinstance(record, dict) and "eval_limit" in record:
        rows = run_eval_rows(path, record, protocol, labels)
    elif isinstance(record, dict) and "args" in record and "results" in record:
        rows = evals_run_rows(path, record, protocol, labels)
    else:
        raise SystemExit(f"--reuse {path}: not a compare.json, a run's eval.json or an "
                         "evals.run results.json")
    written = path.stat().st_mtime
    return [{**r, "_written": written, "_source": str(path)} for r in rows]


def mismatch(path: Path, made: tuple, wanted: tuple) -> SystemExit:
    return SystemExit(f"--reuse {path}: made on other items (task, model, --limit, --seed: "
                      f"{made}, here {wanted}); evaluate again without it")


def compare_rows(path: Path, record: dict, protocol: Protocol) -> list[dict]:
    """An earlier compare: every LLM row, when it had the same items, bank and harness
    options, and the same --model, --bank-size and --split-seed where it records them (a
    compare.json written before 2026-12-05 does not; its command does)."""
    same = (record["task"], record.get("regime"), record["items"], record.get("seed", 0),
            record.get("harness_options", {}), record.get("model", protocol.model),
            record.get("bank_size", protocol.bank_size),
            record.get("split_seed", protocol.split_seed)) == \
        (protocol.task, protocol.regime, protocol.items, protocol.seed, protocol.harness,
         protocol.model, protocol.bank_size, protocol.split_seed)
    if not same:
        raise SystemExit(f"--reuse {path}: made on other items or options ({record['title']}); "
                         "evaluate again without --reuse")
    return [r for r in record["rows"] if r["model"] != "no LLM"]


def run_eval_rows(path: Path, record: dict, protocol: Protocol,
                  labels: dict[Path, str]) -> list[dict]:
    """distill.run's final evaluation (distill/run.py `final_eval`): the bare prompt on the
    base and on the run's final adapter, traces beside it. The trained row is taken only
    when that adapter is one of the compared subjects."""
    run = path.parent
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--reuse {path}: no readable config.json beside it ({e})") from None
    made = (config.get("task"), config.get("model"), record["eval_limit"], record["eval_seed"])
    wanted = (protocol.task_spec, protocol.model, protocol.limit, protocol.seed)
    if made != wanted:
        raise mismatch(path, made, wanted)
    adapter = (run / "final_adapter").resolve()
    out = []
    for r in record["rows"]:
        label = "base" if r["model"] == "base" else labels.get(adapter)
        if label is not None:
            weights = {} if label == "base" else {"adapter_sha256": measured_digest(adapter, path)}
            out.append({**r, "model": label, **weights,
                        "_traces": str(run / f"eval-traces-{r['model']}.jsonl")})
    return out


def measured_digest(adapter: Path, record: Path) -> str:
    """The digest of the weights `record` measured: the adapter's now where its file is older
    than the record; else a mark no digest equals (trained since). Recorded so that two
    seeds of one run, which share a label, never stand in for each other."""
    if (adapter / "adapter_model.safetensors").stat().st_mtime < record.stat().st_mtime:
        return adapter_digest(adapter)
    return f"changed after {record}"


def evals_run_rows(path: Path, record: dict, protocol: Protocol,
                   labels: dict[Path, str]) -> list[dict]:
    """`python -m evals.run` (one model, several programs): its bare rows, and its harness rows
    made with compare's harness options over the whole train split as the bank."""
    args = record["args"]
    made = (args.get("task"), args.get("model"), args.get("limit"), args.get("seed"))
    wanted = (protocol.task_spec, protocol.model, protocol.limit, protocol.seed)
    if made != wanted:
        raise mismatch(path, made, wanted)
    if args.get("max_tokens") is not None:
        return []  # compare decodes with the task's default budget
    adapter = args.get("adapter")
    label = "base" if adapter is None else labels.get(Path(adapter).resolve())
    if label is None:
        return []
    same_harness = (args.get("harness") or {}) == protocol.harness and \
        args.get("verify") is None and protocol.regime == "all-labels" and \
        protocol.bank_size is None
    weights = {} if adapter is None else \
        {"adapter_sha256": measured_digest(Path(adapter).resolve(), path)}
    return [{**r, "model": label, **weights,
             "_traces": str(path.parent / f"traces-{r['program']}.jsonl")}
            for r in record["results"] if r["program"] == "none" or same_harness]
