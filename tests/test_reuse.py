"""evals.compare --reuse and --reattach on hand-built files: which earlier rows stand in for
an evaluation (same items, same harness, unchanged weights), and a compare that finds every
row it needs already measured starts no server."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from evals.compare import load_subject
from evals.compare import main as compare
from evals.reuse import Protocol, adapter_digest, earlier_row, prior_rows, unchanged
from scaffold.trace import LMCall, Trace, write_jsonl
from tests.test_compare import make_run, row

TASK = "math:m.jsonl,m.jsonl"
SC = {"n": 8, "solver": "none"}


def protocol(**change) -> Protocol:
    fields = {"task": TASK, "task_spec": TASK, "model": "m", "limit": 5, "seed": 0,
              "items": 5, "regime": "all-labels", "harness": SC}
    return Protocol(**{**fields, **change})


@pytest.fixture
def data(tmp_path, monkeypatch):
    rows = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(5)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")  # --model m: a local folder, never served
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def answers(path: Path, texts: list[str]) -> None:
    write_jsonl([Trace(f"t/{i}", "none", [LMCall("answer", [], t, None, None, 0.0, {}, None)],
                       outputs={}) for i, t in enumerate(texts)], path)


def trained_run(path: Path) -> Path:
    """A finished distill.run folder with its own final evaluation, written after its adapter."""
    run = make_run(path, 0, [1.0, 0.9])
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "task": TASK, "model": "m",
                                                 "program": "self_consistency"}))
    adapter = run / "final_adapter" / "adapter_model.safetensors"
    adapter.write_bytes(b"weights")
    os.utime(adapter, (1, 1))
    (run / "eval.json").write_text(json.dumps({"eval_limit": 5, "eval_seed": 0, "rows": [
        {**row("base", "none", 0.2), "n": 5}, {**row("trained", "none", 0.4), "n": 5}]}))
    # 2 of the trained run's 4 answers lay out numbered steps first
    answers(run / "eval-traces-trained.jsonl",
            ["1. add one\n2. so 2", "The answer is 3.", "Step 1: 4 - 1 = 3\nStep 2: 4", "5"])
    return run


def evals_run_results(folder: Path, **args) -> Path:
    folder.mkdir(parents=True)
    record = {"args": {"task": TASK, "model": "m", "adapter": None, "limit": 5, "seed": 0,
                       "max_tokens": None, "verify": None, "harness": SC, **args},
              "results": [{**row("policy", "none", 0.25), "n": 5},
                          {**row("policy", "self_consistency", 0.45), "n": 5}]}
    (folder / "results.json").write_text(json.dumps(record))
    return folder / "results.json"


def test_an_earlier_compare_is_reused_only_for_unchanged_weights_on_the_same_items(tmp_path):
    old = make_run(tmp_path / "old", 0, [1.0])
    (old / "final_adapter" / "adapter_model.safetensors").write_bytes(b"old")
    record = {"task": "banking77", "regime": "labeled10pc", "items": 300, "seed": 0,
              "harness_options": {}, "title": "t",
              "rows": [row("base", "none", 0.04), row("old", "none", 0.5),
                       row("old", "draft_verify", 0.7), row("no LLM", "knn-vote k=10", 0.75)]}
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(record))
    os.utime(old / "final_adapter" / "adapter_model.safetensors", (1, 1))  # before the compare
    b77 = protocol(task="banking77", task_spec="banking77", limit=300, items=300,
                   regime="labeled10pc", harness={})
    prior = prior_rows([path], b77, {})
    assert set(prior) == {("base", "none"), ("old", "none"), ("old", "draft_verify")}
    assert prior[("old", "none")][0]["_source"] == str(path)
    assert unchanged(None, prior[("base", "none")][0])
    old_adapter = load_subject(old).adapter
    assert unchanged(old_adapter, prior[("old", "none")][0])
    assert ("new", "none") not in prior  # never measured
    (old / "final_adapter" / "adapter_model.safetensors").write_bytes(b"trained on")
    assert not unchanged(old_adapter, prior[("old", "none")][0])
    prior[("old", "none")][0]["adapter_sha256"] = adapter_digest(old_adapter)
    assert unchanged(old_adapter, prior[("old", "none")][0])  # a digest decides when there is one
    with pytest.raises(SystemExit, match="other items"):
        prior_rows([path], protocol(task="banking77", limit=200, items=200,
                                    regime="labeled10pc", harness={}), {})
    path.write_text(json.dumps({**record, "model": "m", "bank_size": None}))  # recorded since
    assert set(prior_rows([path], b77, {})) == set(prior)
    path.write_text(json.dumps({**record, "model": "m", "bank_size": None, "split_seed": 0}))
    assert set(prior_rows([path], dataclasses.replace(b77, split_seed=0), {})) == set(prior)
    for other in ({"model": "another-model"}, {"bank_size": 1000}, {"split_seed": 1}):
        with pytest.raises(SystemExit, match="other items or options"):
            prior_rows([path], dataclasses.replace(b77, **{"split_seed": 0, **other}), {})


def test_a_runs_own_evaluation_and_evals_run_results_are_reused(data):
    run = trained_run(data / "runs" / "r")
    results = evals_run_results(data / "runs" / "sc")
    labels = {(run / "final_adapter").resolve(): "r"}
    # the folders will do; the first file given wins the base's bare row
    prior = prior_rows([results.parent, run], protocol(), labels)
    assert set(prior) == {("base", "none"), ("base", "self_consistency"), ("r", "none")}
    assert earlier_row(prior, "base", "none", None)["score"] == 0.25
    trained = earlier_row(prior, "r", "none", load_subject(run).adapter)
    assert trained["score"] == 0.4
    assert trained["_traces"] == str(run / "eval-traces-trained.jsonl")
    assert earlier_row(prior_rows([run, results], protocol(), labels), "base", "none",
                       None)["score"] == 0.2
    # a run that is not compared gives its base row only
    assert set(prior_rows([run], protocol(), {})) == {("base", "none")}
    # a harness row is reused only with the same harness options and the whole train split
    assert set(prior_rows([results], protocol(harness={"n": 4}), {})) == {("base", "none")}
    assert set(prior_rows([results], protocol(bank_size=100), {})) == {("base", "none")}
    # results of an adapter find the subject of that adapter
    adapter = evals_run_results(data / "runs" / "sc-r", adapter=str(run / "final_adapter"))
    assert set(prior_rows([adapter], protocol(), labels)) == {("r", "none"),
                                                              ("r", "self_consistency")}


def test_two_seeds_of_one_run_share_a_label_and_never_each_others_rows(data):
    """Runs of several seeds (RUN/seed0, RUN/seed1) are one label in a compare: each seed's
    adapter takes only the row that measured it, from its own eval.json or an earlier
    compare that holds both."""
    seeds = [trained_run(data / "runs" / "x" / f"seed{i}") for i in (0, 1)]
    one = seeds[1] / "final_adapter" / "adapter_model.safetensors"
    one.write_bytes(b"seed one's weights")
    os.utime(one, (1, 1))
    record = json.loads((seeds[1] / "eval.json").read_text())
    record["rows"][1]["score"] = 0.6
    (seeds[1] / "eval.json").write_text(json.dumps(record))
    subjects = [load_subject(run) for run in seeds]
    assert {s.label for s in subjects} == {"x"}
    labels = {s.adapter.resolve(): s.label for s in subjects}
    prior = prior_rows(seeds, protocol(), labels)
    assert [earlier_row(prior, "x", "none", s.adapter)["score"] for s in subjects] == [0.4, 0.6]
    # an earlier compare of both seeds: the rows carry their digests
    compare_json = data / "compare.json"
    compare_json.write_text(json.dumps({
        "task": TASK, "regime": "all-labels", "items": 5, "seed": 0, "harness_options": SC,
        "title": "t", "rows": [{**row("x", "none", 0.6), "adapter_sha256": adapter_digest(
            subjects[1].adapter)}, {**row("x", "none", 0.4), "adapter_sha256": adapter_digest(
                subjects[0].adapter)}]}))
    prior = prior_rows([compare_json], protocol(), labels)
    assert [earlier_row(prior, "x", "none", s.adapter)["score"] for s in subjects] == [0.4, 0.6]
    # a seed trained again after its evaluation takes no row
    one.write_bytes(b"trained again")
    assert earlier_row(prior_rows(seeds, protocol(), labels), "x", "none",
                       subjects[1].adapter) is None


def test_reuse_names_the_file_that_does_not_fit(data):
    run = trained_run(data / "runs" / "r")
    with pytest.raises(SystemExit, match=r"--reuse .*r/eval.json: made on other items.*10"):
        prior_rows([run], protocol(limit=10), {})
    results = evals_run_results(data / "runs" / "sc", model="other")
    with pytest.raises(SystemExit, match=r"sc/results.json: made on other items.*'other'"):
        prior_rows([results], protocol(), {})
    (data / "x.json").write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="x.json: not a compare.json"):
        prior_rows([data / "x.json"], protocol(), {})
    with pytest.raises(SystemExit, match="nope.json: cannot read it"):
        prior_rows([data / "nope.json"], protocol(), {})


def no_server(*_args, **_kwargs):
    raise AssertionError("every row was measured already: no server should start")


def test_a_compare_made_of_earlier_rows_starts_no_server(data, monkeypatch):
    monkeypatch.setattr("evals.compare.policy_endpoint", no_server)
    run = trained_run(data / "runs" / "r")
    results = evals_run_results(data / "runs" / "sc")
    record = compare(["--task", TASK, "--model", "m", "--limit", "5", "--program",
                      "self_consistency", "--harness", json.dumps(SC), "--runs", str(run),
                      "--reuse", str(results), str(run / "eval.json"), "--reattach", "base",
                      "--out", "out", "--report", "docs/results.md"])
    got = [(r["model"], r["program"], r["score"]) for r in record["rows"]]
    # the trained run is not reattached: its harness row is neither evaluated nor reported
    assert got == [("base", "none", 0.25), ("base", "self_consistency", 0.45), ("r", "none", 0.4)]
    trained = record["rows"][2]
    assert trained["reused_from"] == str(run / "eval.json")
    assert trained["method"] == "ophsd" and trained["compute"]["steps"] == 2
    assert trained["plans_first_rate"] == 0.5  # from the run's traces
    assert trained["lift_capture"] == pytest.approx((0.4 - 0.25) / (0.45 - 0.25))
    saved = json.loads((data / "docs" / "results" / f"{record['stem']}.json").read_text())
    assert [(r["model"], r["program"]) for r in saved["rows"]] == [
        ("base", "none"), ("base", "self_consistency"), ("ophsd", "none")]
    # the command as a shell reads it back: --harness's JSON stays one quoted argument
    assert f"--harness '{json.dumps(SC)}'" in saved["command"]


def test_reattach_alone_compares_the_bare_rows_only(data, monkeypatch):
    monkeypatch.setattr("evals.compare.policy_endpoint", no_server)
    run = trained_run(data / "runs" / "r")
    results = evals_run_results(data / "runs" / "sc")
    record = compare(["--task", TASK, "--model", "m", "--limit", "5", "--program",
                      "self_consistency", "--harness", json.dumps(SC), "--runs", str(run),
                      "--reuse", str(results), str(run / "eval.json"), "--reattach",
                      "--out", "out"])
    # no harness row is evaluated or reported, though base + harness was there to reuse
    assert [(r["model"], r["program"]) for r in record["rows"]] == [("base", "none"), ("r", "none")]


def test_reattach_names_a_subject_that_is_not_compared(data, monkeypatch, capsys):
    monkeypatch.setattr("evals.compare.policy_endpoint", no_server)
    with pytest.raises(SystemExit) as e:
        compare(["--task", TASK, "--model", "m", "--program", "self_consistency",
                 "--runs", "runs/a", "--reattach", "runs/b"])
    assert e.value.code == 2  # argparse's usage error, before any run folder is read
    err = capsys.readouterr().err
    assert "--reattach" in err and "runs/b: not 'base' nor one of --runs" in err


def test_an_interrupted_compare_resumes_without_measuring_a_row_again(data, monkeypatch):
    """Each measured row is checkpointed under --out; a compare interrupted in its third
    evaluation, run again, measures only the rows it had not finished, and the rows it
    resumes are this compare's own (not "reused"). A checkpoint of other items is refused
    with the file's name and the fix."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from evals.compare import PARTIAL
    from evals.runner import EvalResult

    calls: list[tuple[str, str]] = []
    crash_at = [3]

    def evaluate(task, program, items, *, lm, model_label, **_options):
        calls.append((model_label, program))
        if len(calls) == crash_at[0]:
            raise KeyboardInterrupt  # the user's Ctrl-C, or the machine going away
        traces = [Trace(ex.id, program, [LMCall("answer", [], f"\\boxed{{{ex.answer}}}", None,
                                                 None, 0.0, {}, None)], outputs={})
                  for ex in items]
        score = 0.2 * len(calls)  # tells the rows apart
        return EvalResult(task.name, program, model_label, len(items), score, score, score, 0,
                          0, 0, 1.0, 9.0, 3.0, 0.1, scores=[score] * len(items), traces=traces)

    server = SimpleNamespace(base_url="http://x", model_name="m", reload_weights=lambda p: None)
    monkeypatch.setattr("evals.compare.policy_endpoint", lambda *a, **k: nullcontext(server))
    monkeypatch.setattr("evals.compare.PolicyClient",
                        lambda *a: SimpleNamespace(dspy_lm=lambda *a, **k: None))
    monkeypatch.setattr("evals.compare.merge_adapter", lambda model, adapter: adapter)
    monkeypatch.setattr("evals.compare.evaluate", evaluate)
    run = trained_run(data / "runs" / "r")
    argv = ["--task", TASK, "--model", "m", "--limit", "5", "--program", "self_consistency",
            "--harness", json.dumps(SC), "--runs", str(run), "--out", "out"]
    with pytest.raises(KeyboardInterrupt):
        compare(argv)
    partial = data / "out" / PARTIAL
    saved = json.loads(partial.read_text())
    assert [(r["model"], r["program"]) for r in saved["rows"]] == [
        ("base", "none"), ("base", "self_consistency")]
    assert saved["model"] == "m" and not (data / "out" / "compare.json").exists()

    with pytest.raises(SystemExit, match=f"{PARTIAL}: an interrupted compare on other items"):
        compare([*argv[:5], "4", *argv[6:]])  # --limit 4: other items

    crash_at[0] = 0
    record = compare(argv)
    assert calls[3:] == [("r", "none"), ("r", "self_consistency")]  # only what was missing
    got = [(r["model"], r["program"], r["score"]) for r in record["rows"]]
    assert got == [("base", "none", 0.2), ("base", "self_consistency", 0.4),
                   ("r", "none", pytest.approx(0.8)), ("r", "self_consistency", 1.0)]
    assert not any("reused_from" in r for r in record["rows"])
    assert all(Path(r["traces"]).is_file() for r in record["rows"])
    assert not partial.exists() and record["model"] == "m"

    # Interrupted again, in the trained run's harness row; run again without the trained run:
    # its bare row stays in the checkpoint and a third compare that lists it takes it.
    (data / "out" / "compare.json").unlink()
    calls.clear()
    crash_at[0] = 4
    with pytest.raises(KeyboardInterrupt):
        compare([*argv[:-2], "--out", "out2"])
    crash_at[0] = 0
    base_only = [a for a in argv[:-2] if a not in ("--runs", str(run))]
    record = compare([*base_only, "--out", "out2"])
    assert [(r["model"], r["program"]) for r in record["rows"]] == [
        ("base", "none"), ("base", "self_consistency")]
    kept = json.loads((data / "out2" / PARTIAL).read_text())["rows"]
    assert [(r["model"], r["program"]) for r in kept] == [("r", "none")]
    assert len(calls) == 4  # nothing measured again
    record = compare([*argv[:-2], "--reuse", "out2/compare.json", "--out", "out2"])
    assert calls[4:] == [("r", "self_consistency")]  # the bare row came from the checkpoint
    assert [r["score"] for r in record["rows"]] == pytest.approx([0.2, 0.4, 0.6, 1.0])
    assert ["reused_from" in r for r in record["rows"]] == [True, True, False, False]
    assert not (data / "out2" / PARTIAL).exists()

    # Interrupted after the trained run's bare row, which then trains on: run again, the row
    # is measured again on the new weights and the old one is not carried past the end.
    crash_at[0] = len(calls) + 4
    with pytest.raises(KeyboardInterrupt):
        compare([*argv[:-2], "--out", "out3"])
    assert [r["model"] for r in json.loads((data / "out3" / PARTIAL).read_text())["rows"]] \
        == ["base", "base", "r"]
    (run / "final_adapter" / "adapter_model.safetensors").write_bytes(b"trained on")
    crash_at[0] = 0
    before = len(calls)
    compare([*argv[:-2], "--out", "out3"])
    assert calls[before:] == [("r", "none"), ("r", "self_consistency")]
    assert not (data / "out3" / PARTIAL).exists()

    (data / "out2" / PARTIAL).write_text("{not json")
    with pytest.raises(SystemExit, match=f"{PARTIAL}: cannot read this checkpoint"):
        compare([*argv[:-2], "--out", "out2"])
