"""evals.compare's pieces on hand-made rows, run folders and a hashing-embedder bank; the
internalization diagnostics on hand-written answers; the report plots as real PNG files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from evals.compare import (
    curve_runs,
    knn_baseline,
    load_subject,
    markdown_table,
    row_label,
    run_compute,
    seed_summary,
    write_report,
)
from evals.diagnostics import answer_diagnostics, labels_named, plans_first
from evals.plots import comparison_bars, training_curves
from evals.tasks.base import Example
from scaffold.embeddings import HashingEmbedder
from scaffold.precedents import PrecedentIndex

LABELS = ["card_arrival", "lost_or_stolen_card", "top_up_failed"]


def row(model: str, program: str, score: float, **extra) -> dict:
    return {"model": model, "program": program, "score": score, "ci_low": score - 0.1,
            "ci_high": score + 0.1, "n": 10, "answer_tokens_per_example": 3.0,
            "calls_per_example": 1.0, "wall_s": 2.0, **extra}


def make_run(path: Path, seed: int, losses: list[float]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"method": "ophsd", "seed": seed}))
    with open(path / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(losses, 1):
            f.write(json.dumps({"step": i, "loss": loss, "examples": 4, "rollouts": 4,
                                "student_correct": i, "harness_correct": 3, "tokens": 10,
                                "step_s": 1.5}) + "\n")
        f.write('{"step": 99, "loss"')  # a torn last line is ignored
    (path / "final_adapter").mkdir()
    (path / "final_adapter" / "adapter_config.json").write_text("{}")
    return path


def test_labels_named_and_label_diagnostics():
    task = SimpleNamespace(kind="classification", labels=LABELS)
    assert labels_named("card_arrival, not lost_or_stolen_card", LABELS) == [
        "card_arrival", "lost_or_stolen_card"]
    rates = answer_diagnostics(task, [" card_arrival", " lost_or_stolen_card or card_arrival",
                                      " top_up_failed, like the similar message above",
                                      " nonsense"])
    assert rates == {"alt_label_rate": 0.25, "cites_case_rate": 0.25}
    assert answer_diagnostics(task, []) == {}


def test_plans_first():
    assert plans_first("Plan:\n1. add\n2. multiply\n3 + 4 = 7")
    assert plans_first("First, find the total.\n3 * 4 = 12")
    assert not plans_first("3 * 4 = 12\nStep 2: done")  # computed before any plan
    assert not plans_first("The answer is 12.")
    task = SimpleNamespace(kind="math")
    assert answer_diagnostics(task, ["Step 1: x = 2", "x = 2"]) == {"plans_first_rate": 0.5}


def test_run_subjects_compute_and_seed_summary(tmp_path):
    a = make_run(tmp_path / "ophsd" / "seed0", 0, [1.0, 0.8])
    b = make_run(tmp_path / "ophsd" / "seed1", 1, [1.1, 0.7, 0.6])
    sa, sb = load_subject(a), load_subject(b)
    assert sa.label == sb.label == "ophsd"  # seed folders are named after their parent
    assert sa.adapter == a / "final_adapter"
    assert run_compute(b) == {"steps": 3, "examples": 12, "rollouts": 12, "student_tokens": 30,
                              "train_wall_s": 4.5}
    rows = [row("ophsd", "none", 0.5), row("ophsd", "none", 0.7), row("base", "none", 0.1)]
    (summary,) = seed_summary(rows)
    assert summary["runs"] == 2 and summary["mean"] == pytest.approx(0.6)
    assert summary["std"] == pytest.approx(0.1414, abs=1e-3)
    rows[0]["seed"], rows[1]["seed"] = 0, 1
    assert [row_label(r, rows) for r in rows] == ["ophsd seed 0", "ophsd seed 1", "base"]
    assert "| ophsd seed 1 | none |" in markdown_table(rows)
    ckpt = b / "checkpoints" / "step_000002" / "adapter"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_config.json").write_text("{}")
    early = load_subject(ckpt)
    assert early.label == "seed1@2" and early.compute["steps"] == 2
    assert early.compute["examples"] == 8 and early.config["seed"] == 1
    # one training curve per run, though the run and its checkpoint are both compared
    assert curve_runs([sa, sb, early]) == {"ophsd s0": a, "ophsd s1": b}
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        load_subject(tmp_path)


def test_knn_baseline_scores_the_vote(tmp_path):
    train = [("my card has not arrived", "card_arrival"), ("card still not here", "card_arrival"),
             ("someone stole my card", "lost_or_stolen_card"), ("top up did not work",
                                                              "top_up_failed")]
    index = PrecedentIndex.build([f"t{i}" for i in range(4)], [t for t, _ in train],
                                 [lab for _, lab in train], HashingEmbedder(), progress=False)
    items = [Example("q1", "my card has not arrived yet", "card_arrival"),
             Example("q2", "the top up did not work", "lost_or_stolen_card")]  # wrong on purpose
    task = SimpleNamespace(name="toy")
    got = knn_baseline(task, items, index, k=1)
    assert got["score"] == 0.5 and got["n"] == 2 and got["calls_per_example"] == 0.0


def test_markdown_table_report_and_plots(tmp_path):
    rows = [row("base", "none", 0.04, alt_label_rate=0.0),
            row("ophsd", "draft_verify", 0.8, compute={"examples": 64, "student_tokens": 500,
                                                       "train_wall_s": 30.0})]
    table = markdown_table(rows)
    lines = table.splitlines()
    assert len(lines) == 4 and "alt_label_rate" in lines[0]
    assert "0.800 [0.700, 0.900]" in lines[3] and "| 64 | 500 | 30.0 |" in lines[3]
    report = tmp_path / "docs" / "results.md"
    write_report(report, "python -m evals.compare --x", [("Table", table)])
    text = report.read_text()
    assert "python -m evals.compare --x" in text and "### Table" in text
    write_report(report, "python -m evals.compare --task gsm8k", [("Math", "m")], key="gsm8k")
    write_report(report, "python -m evals.compare --y", [("Table", "t2")])  # same key: replaced
    text = report.read_text()
    assert "--x" not in text and "--y" in text and "--task gsm8k" in text
    assert text.count("<!-- begin results -->") == 1 and text.index("results") < text.index(
        "begin gsm8k")
    bars = comparison_bars(rows, tmp_path / "bars.png", "t")
    run = make_run(tmp_path / "r", 0, [1.0, 0.5, 0.4])
    curves = training_curves({"r": run}, tmp_path / "curves.png", "t")
    for png in (bars, curves):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_each_bar_value_is_written_above_its_error_bar():
    from evals.plots import value_label_heights

    rows = [row("base", "none", 0.3), row("run", "none", 0.5, ci_high=0.9),
            row("odd", "none", 0.4, ci_high=0.35)]  # an interval below its score: the bar's top
    assert value_label_heights(rows) == pytest.approx([0.415, 0.915, 0.415])


def test_rerender_rewrites_the_section_from_saved_results(tmp_path):
    from evals.compare import rerender

    bars = comparison_bars([row("base", "none", 0.04)], tmp_path / "bars.png", "t")
    record = {"command": "python -m evals.compare --task toy", "task": "toy", "title": "toy: 10",
              "items": 10, "rows": [row("base", "none", 0.04)],
              "seed_summary": [{"model": "r", "program": "none", "runs": 3, "mean": 0.5,
                                "std": 0.01}], "plots": [str(bars)]}
    saved = tmp_path / "compare.json"
    saved.write_text(json.dumps(record))
    notes = tmp_path / "notes.md"
    notes.write_text("Distillation wins here.")
    report = tmp_path / "docs" / "results.md"
    rerender(["--rerender", str(saved), "--report", str(report), "--notes", str(notes)])
    text = report.read_text()
    assert "--task toy" in text and "### Findings" in text and "Distillation wins" in text
    assert "0.500 ± 0.010 over 3 runs" in text
    assert (tmp_path / "docs" / "figures" / "toy-compare.png").exists()


def test_lift_capture_and_the_machine_readable_rows(tmp_path):
    """lift capture = (trained - base) / (base + harness - base) on rows without the harness;
    docs/results/<task>-<regime>.json holds one row per (model, program) in the issue's form."""
    from evals.compare import add_lift_capture, render_report

    compute = {"examples": 512, "train_wall_s": 300.0}
    rows = [row("base", "none", 0.05), row("base", "draft_verify", 0.55),
            row("run", "none", 0.45, method="ophsd", harness="draft_verify", seed=0,
                compute=compute),
            row("run", "draft_verify", 0.6, method="ophsd", harness="draft_verify", seed=0,
                compute=compute),
            row("gold", "none", 0.30, method="gold_sft", harness="draft_verify", seed=0),
            row("no LLM", "knn-vote k=10", 0.7)]
    add_lift_capture(rows)
    lifts = {(r["model"], r["program"]): r["lift_capture"] for r in rows}
    assert lifts[("run", "none")] == pytest.approx(0.8)  # (0.45 - 0.05) / (0.55 - 0.05)
    assert lifts[("gold", "none")] == pytest.approx(0.5)
    assert lifts[("no LLM", "knn-vote k=10")] == pytest.approx(1.3)
    assert lifts[("base", "none")] is None and lifts[("run", "draft_verify")] is None
    png = tmp_path / "c.png"
    png.write_bytes(b"png")
    record = {"command": "python -m evals.compare ...", "task": "banking77",
              "regime": "labeled10pc", "stem": "banking77-labeled10pc", "bank": 770,
              "title": "t", "items": 10, "rows": rows, "seed_summary": [], "plots": [str(png)]}
    render_report(record, tmp_path / "results.md")
    saved = json.loads((tmp_path / "results" / "banking77-labeled10pc.json").read_text())
    assert saved["regime"] == "labeled10pc" and saved["bank"] == 770
    by_key = {(r["model"], r["run"], r["program"]): r for r in saved["rows"]}
    trained = by_key[("ophsd", "run", "none")]
    assert trained == {"model": "ophsd", "run": "run", "seed": 0, "program": "none",
                       "score": 0.45, "ci": [0.35, 0.55], "n": 10, "train_examples": 512,
                       "train_s": 300.0, "lift_capture": pytest.approx(0.8),
                       "paired_vs_base": None, "paired_n": None}
    assert by_key[("knn", None, "none")]["knn"] == "knn-vote k=10"
    assert by_key[("base", None, "draft_verify")]["lift_capture"] is None
    assert "<!-- begin banking77-labeled10pc -->" in (tmp_path / "results.md").read_text()


def test_a_run_started_from_another_runs_adapter_reports_both_costs(tmp_path):
    sft = make_run(tmp_path / "sft", 0, [1.0, 0.9])
    ophsd = make_run(tmp_path / "ophsd", 0, [0.5, 0.4, 0.3])
    config = json.loads((ophsd / "config.json").read_text())
    config["init_adapter"] = str(sft / "final_adapter")
    (ophsd / "config.json").write_text(json.dumps(config))
    compute = run_compute(ophsd)
    assert compute["steps"] == 5 and compute["examples"] == 20
    assert compute["train_wall_s"] == pytest.approx(7.5) and compute["init_from"] == str(sft)

    # from a checkpoint's adapter: the first run's cost through that step only
    config["init_adapter"] = str(sft / "checkpoints" / "step_000001" / "adapter")
    (ophsd / "config.json").write_text(json.dumps(config))
    compute = run_compute(ophsd)
    assert compute["steps"] == 4 and compute["examples"] == 16
    assert compute["init_from"] == f"{sft}@1"


def test_a_run_on_recorded_contexts_reports_the_recording_runs_once(tmp_path):
    """--teacher-contexts of two stages, the second started from the first: the replay's
    cost includes both (the harness ran in them), the first counted once; an example
    skipped as a fallback or filtered out is not a trained example."""
    stage1 = make_run(tmp_path / "s1", 0, [1.0, 0.9])
    stage2 = make_run(tmp_path / "s2", 1, [0.8])
    (stage2 / "config.json").write_text(json.dumps(
        {"method": "ophsd", "init_adapter": str(stage1 / "final_adapter")}))
    with open(stage1 / "metrics.jsonl", "a") as f:  # after the torn line: a new step
        f.write("\n" + json.dumps({"step": 3, "examples": 40, "skipped_fallback": 30,
                                   "harness_filtered": 2, "step_s": 10.0}) + "\n")
    replay = make_run(tmp_path / "replay", 0, [0.5])
    (replay / "config.json").write_text(json.dumps(
        {"method": "ophsd", "teacher_contexts": f"{stage1}, {stage2}"}))
    compute = run_compute(replay)
    assert compute["steps"] == 1 + 3 + 1 and compute["examples"] == 4 + (4 + 4 + 10) + 4
    assert compute["train_wall_s"] == pytest.approx(1.5 + 13.0 + 1.5)
    assert compute["builds_on"] == [str(stage1), str(stage2)] and "init_from" not in compute
    assert run_compute(stage2)["init_from"] == str(stage1)
    (replay / "config.json").write_text(json.dumps(
        {"method": "ophsd", "teacher_contexts": f"{stage2},{tmp_path / 'gone'}"}))
    compute = run_compute(replay)  # a recording run no longer there: named, not counted
    assert compute["builds_on"] == [str(stage2)] and compute["steps"] == 1 + 1 + 3
    assert compute["builds_on_missing"] == [str(tmp_path / "gone")]
    with open(replay / "metrics.jsonl", "a") as f:  # a step that records trained_examples
        f.write("\n" + json.dumps({"step": 2, "examples": 16, "trained_examples": 9}) + "\n")
    assert run_compute(replay)["examples"] == (4 + 9) + 4 + (4 + 4 + 10)  # stage 1 via stage 2



def test_a_run_that_is_both_init_and_context_source_counts_its_furthest_step(tmp_path):
    """A run started from another's step-1 checkpoint that also replays all of that run's
    contexts spent all of it: the full run counts once, whichever path meets it first."""
    first = make_run(tmp_path / "first", 0, [1.0, 0.9])
    second = make_run(tmp_path / "second", 0, [0.5])
    (second / "config.json").write_text(json.dumps({
        "method": "ophsd", "init_adapter": str(first / "checkpoints" / "step_000001" / "adapter"),
        "teacher_contexts": str(first)}))
    compute = run_compute(second)
    assert compute["steps"] == 1 + 2 and compute["examples"] == 4 + 4 + 4
    assert compute["train_wall_s"] == pytest.approx(1.5 + 1.5 + 1.5)
    assert compute["builds_on"] == [f"{first}@1", str(first)]
    # the other order (contexts first, then a run that starts from its checkpoint): no more
    third = make_run(tmp_path / "third", 0, [0.4])
    (third / "config.json").write_text(json.dumps({
        "method": "ophsd", "teacher_contexts": f"{first},{second}"}))
    assert run_compute(third)["steps"] == 1 + 2 + 1

def test_adapter_origin_reads_the_run_layout(tmp_path):
    from evals.compare import adapter_origin

    run = make_run(tmp_path / "run", 0, [1.0])
    assert adapter_origin(run / "final_adapter") == (run, None)
    assert adapter_origin(run / "checkpoints" / "step_000150" / "adapter") == (run, 150)
    assert adapter_origin(tmp_path / "elsewhere" / "adapter") is None
    assert adapter_origin(run / "checkpoints" / "latest" / "adapter") is None


def test_held_out_curve_reads_eval_every_points_and_the_final_evaluation(tmp_path):
    from evals.plots import held_out_curve

    run = make_run(tmp_path / "run", 0, [1.0, 0.9, 0.8, 0.7])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()[:4]]
    rows[1]["eval_score"] = 0.4
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert held_out_curve(run) == [(2, 0.4)]
    (run / "eval.json").write_text(json.dumps({"rows": [
        {"model": "base", "score": 0.1}, {"model": "trained", "score": 0.6}]}))
    assert held_out_curve(run) == [(2, 0.4), (4, 0.6)]
    path = training_curves({"r": run}, tmp_path / "curves.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_name_that_is_not_a_file_stem_is_refused_before_any_work(capsys):
    from evals.compare import main

    with pytest.raises(SystemExit):
        main(["--task", "banking77", "--name", "../elsewhere"])
    assert "--name '../elsewhere'" in capsys.readouterr().err


def test_paired_difference_against_the_base_row_of_the_same_program(tmp_path, monkeypatch):
    """Each run's row is paired item by item with the base's row of its program, from the
    rows' traces; a row without traces, or whose program the base lacks, gets none."""
    from evals.compare import add_paired, reused_row
    from evals.tasks import get_task
    from scaffold.trace import LMCall, Trace, write_jsonl

    data = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(4)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    monkeypatch.chdir(tmp_path)
    task = get_task("math:m.jsonl,m.jsonl")
    items = task.load("test")

    def traces(name: str, answers: list[int]) -> str:
        done = [Trace(ex.id, "P", [LMCall("a", [], f"\\boxed{{{x}}}", None, None, 0.0, {}, None)],
                      outputs={"completion": f"\\boxed{{{x}}}"})
                for ex, x in zip(items, answers, strict=True)]
        write_jsonl(done, tmp_path / name)
        return str(tmp_path / name)

    # right answers are 1, 2, 3, 4: base right on items 0, 1; base + harness on 0, 1, 2
    rows = [row("base", "none", 0.5, traces=traces("b.jsonl", [1, 2, 0, 0])),
            row("base", "vote", 0.75, traces=traces("bv.jsonl", [1, 2, 3, 0])),
            row("run", "none", 0.5, traces=traces("r.jsonl", [0, 2, 3, 0])),
            row("run", "vote", 1.0, traces=traces("rv.jsonl", [1, 2, 3, 4])),
            row("run", "other", 0.5, traces=traces("ro.jsonl", [1, 2, 0, 0])),
            row("gold", "none", 0.25)]
    add_paired(rows, task, items)
    by = {(r["model"], r["program"]): r for r in rows}
    # run bare: right on item 2 where the base was not, wrong on item 0 where it was: 0
    assert by[("run", "none")]["paired_vs_base"][0] == pytest.approx(0.0)
    assert by[("run", "none")]["paired_n"] == 4
    low, high = by[("run", "none")]["paired_vs_base"][1:]
    assert low < 0 < high
    # run + vote against base + vote: item 3 alone differs, +1/4
    assert by[("run", "vote")]["paired_vs_base"][0] == pytest.approx(0.25)
    assert "paired_vs_base" not in by[("run", "other")]  # no base row of that program
    assert "paired_vs_base" not in by[("gold", "none")]  # no traces
    assert "paired_vs_base" not in by[("base", "none")]
    table = markdown_table(rows).splitlines()
    assert "vs base, paired" in table[0] and "+0.250 [" in table[5]
    # a reused row keeps its traces (from an earlier compare, or a run's eval traces)
    subject = SimpleNamespace(compute={}, config={}, adapter=None)
    again = reused_row({**rows[2], "_source": "old/compare.json"}, task, subject)
    assert again["traces"] == rows[2]["traces"]
    from_run = reused_row({**row("run", "none", 0.5), "_source": "RUN/eval.json",
                           "_traces": rows[2]["traces"]}, task, subject)
    assert from_run["traces"] == rows[2]["traces"] and "_traces" not in from_run
    # an earlier difference is not carried where it cannot be computed again, nor a lost file
    stale = reused_row({**rows[4], "paired_vs_base": [0.5, 0.1, 0.9], "paired_n": 4,
                        "traces": str(tmp_path / "gone.jsonl"), "_source": "old"}, task, subject)
    assert "traces" not in stale and "paired_vs_base" not in stale
    rows[4]["paired_vs_base"] = [0.5, 0.1, 0.9]
    add_paired(rows, task, items)
    assert "paired_vs_base" not in rows[4]
    # items outside this compare's are left out of the pairing (a file from a larger run)
    extra = Trace("math/test/99", "P", [], outputs={"completion": "\\boxed{1}"})
    write_jsonl([extra], tmp_path / "r.jsonl")  # appends
    add_paired(rows, task, items)
    assert by[("run", "none")]["paired_n"] == 4
    assert by[("run", "none")]["paired_vs_base"][0] == pytest.approx(0.0)


def test_row_traces_are_named_by_position_and_replaced_on_a_rerun(tmp_path):
    from evals.compare import write_row_traces
    from scaffold.trace import Trace, read_jsonl

    def result(ids: list[str]) -> SimpleNamespace:  # the two fields an EvalResult is read for
        return SimpleNamespace(program="none", traces=[Trace(i, "P", [], outputs={}) for i in ids])

    # two seeds of one run share a label: their rows must not share a file
    first = write_row_traces(result(["a", "b"]), tmp_path, 1, "run")
    second = write_row_traces(result(["c"]), tmp_path, 2, "run")
    assert first != second and Path(first).is_absolute()
    assert [t.example_id for t in read_jsonl(Path(first))] == ["a", "b"]
    again = write_row_traces(result(["d"]), tmp_path, 1, "run")  # the next compare, same OUT
    assert again == first and [t.example_id for t in read_jsonl(Path(first))] == ["d"]


def test_relative_paths_in_a_config_resolve_against_the_folder_the_run_started_in(
        tmp_path, monkeypatch):
    """distill.run keeps --out, --init-adapter and --teacher-contexts as typed, relative to
    where it started: a compare run from another folder still finds and counts the runs a
    run builds on (before, it named them missing and left their cost out)."""
    make_run(tmp_path / "repo" / "runs" / "first", 0, [1.0, 0.9])
    second = make_run(tmp_path / "repo" / "runs" / "second", 0, [0.5])
    (second / "config.json").write_text(json.dumps({
        "method": "ophsd", "out": "runs/second", "teacher_contexts": "runs/first",
        "init_adapter": "runs/first/checkpoints/step_000001/adapter"}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    compute = run_compute(Path("../repo/runs/second"))
    assert compute["steps"] == 1 + 2 and "builds_on_missing" not in compute
    assert compute["builds_on"] == ["runs/first@1", "runs/first"]  # as typed, not this host's
    # a run folder moved away from its out path: the paths stay as typed (and are missing)
    moved = tmp_path / "moved"
    (tmp_path / "repo" / "runs" / "second").rename(moved)
    assert run_compute(moved)["builds_on_missing"] == ["runs/first"]
