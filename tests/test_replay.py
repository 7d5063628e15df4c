"""--teacher-contexts (distill/replay.py): recorded teacher contexts trained on again, with no
harness run; --harness-filter drop."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from distill.config import RunConfig, parse_args
from distill.methods import METHODS, Collected
from distill.pairs import StepInputs
from distill.replay import RecordedContexts, check_prompts, read_contexts
from evals.tasks.base import Example
from scaffold.chat import render_ids
from scaffold.errors import ScaffoldError
from tests.test_methods import RecordingClient, SizedCharTokenizer, label_task_with_prompt

TRAIN = [Example(f"e{i}", f"q{i}", "card_arrival") for i in range(1, 6)]


def student(q: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": "Label:"}]


def teacher(q: str, shown: str) -> list[dict]:
    return [{"role": "user", "content": f"{q}\n\n{shown}"},
            {"role": "assistant", "content": "Label:"}]


def row(ex_id: str, kind: str = "rollout", shown: str = "card_arrival",
        harness: str | None = None, task: str = "toy", step: int = 1) -> dict:
    q = "q" + ex_id[1:]
    r = {"step": step, "kind": kind, "example_id": ex_id, "task": task,
         "student_messages": student(q),
         "teacher_messages": None if kind == "gold" else teacher(q, shown)}
    if harness is not None:
        r["harness_completion"] = harness
    return r


def run_folder(path: Path, rows: list[dict], **config) -> str:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(
        {"method": "ophsd", "program": "self_consistency", **config}))
    (path / "trained.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_first_context_of_each_example_and_every_row_left_out_counted(tmp_path):
    """Runs are read in order and the first context of an example wins; a row of another
    kind is not a context; drop leaves out each row whose harness answer grades wrong
    (a later right row of the example is kept), read from harness_completion where recorded
    and from the teacher's extra text where not (an older row)."""
    task = label_task_with_prompt()
    a = run_folder(tmp_path / "a", [
        row("e1", shown="card_arrival first", harness=" card_arrival\n"),
        row("e1", shown="card_arrival again", harness=" card_arrival\n", step=2),
        row("e2", shown="lost_card", harness=" lost_card\n"),
        row("e3", kind="gold"),
        row("e9", harness=" card_arrival\n"),  # not in the train split
    ])
    b = run_folder(tmp_path / "b", [
        row("e1", shown="card_arrival later", harness=" card_arrival\n"),
        row("e5", shown="card_arrival"),  # an older row: no harness_completion
        row("e4", shown="lost_card"),  # an older row, wrong
        row("e2", shown="card_arrival", harness=" card_arrival\n"),  # right this time
        {**row("e3", harness=" card_arrival\n"), "weight": 0.0},  # a no-signal fallback
    ])
    kept = read_contexts([a, b], task, TRAIN, drop_wrong=True)
    assert sorted(kept.by_id) == ["e1", "e2", "e5"]
    assert kept.by_id["e2"].origin == f"{b}/trained.jsonl step 1"  # a's was wrong
    assert kept.by_id["e1"].teacher_messages == teacher("q1", "card_arrival first")
    assert kept.by_id["e1"].harness_answer == "card_arrival"
    assert kept.by_id["e1"].origin == f"{a}/trained.jsonl step 1"
    assert kept.counts == {"rows": 9, "duplicates": 2, "no_signal": 1, "dropped_wrong": 2,
                           "unknown_example": 1}
    assert len(kept.by_id) + sum(v for k, v in kept.counts.items() if k != "rows") == 9
    every = read_contexts([a, b], task, TRAIN)
    assert sorted(every.by_id) == ["e1", "e2", "e4", "e5"]
    assert every.by_id["e2"].origin == f"{a}/trained.jsonl step 1"
    again = RecordedContexts.from_record(json.loads(json.dumps(every.to_record())))
    assert again.by_id == every.by_id and again.counts == every.counts
    assert every.by_id["e4"].harness_answer == "lost_card" and not every.by_id["e4"].harness_right
    assert every.by_id["e5"].harness_right


def test_a_run_that_cannot_give_contexts_is_named_with_the_flag(tmp_path):
    task = label_task_with_prompt()
    cases = {
        str(tmp_path / "missing"): "is not a run folder",
        run_folder(tmp_path / "empty", []): "recorded no trained pairs",
        run_folder(tmp_path / "other", [row("e1", task="gsm8k")]): "trained on gsm8k, not toy",
        run_folder(tmp_path / "gold", [row("e1", kind="gold")]): "no rollout under a harness",
        run_folder(tmp_path / "wrong", [row("e2", harness=" lost_card\n")]):
            "no context is left to train on (rows dropped as wrong: 1;",
        run_folder(tmp_path / "opsd", [row("e1")], method="opsd"): "is a opsd run",
        # an older row of a harness whose extra text states no answer: nothing to grade
        run_folder(tmp_path / "dv", [row("e1")], program="draft_verify"):
            "did not record its harness's answers",
        run_folder(tmp_path / "working", [row("e1")], harness={"teacher_sees": "working"}):
            "did not record its harness's answers",
    }
    for path, message in cases.items():
        with pytest.raises(ScaffoldError) as e:
            read_contexts([path], task, TRAIN, drop_wrong=True)
        assert str(e.value).startswith("--teacher-contexts") and message in str(e.value)


def replay_ctx(tmp_path: Path, rows: list[dict]) -> SimpleNamespace:
    task = label_task_with_prompt()
    contexts = read_contexts([run_folder(tmp_path / "run", rows)], task, TRAIN)
    return SimpleNamespace(cfg=RunConfig(method="ophsd", on_policy_fraction=1.0), task=task,
                           tokenizer=SizedCharTokenizer(), harness=None,
                           client=RecordingClient(), policy_name="policy", max_new_tokens=24,
                           contexts=contexts)


def test_collect_runs_no_harness_and_scores_fresh_rollouts_under_the_recorded_context(
        tmp_path, monkeypatch):
    import distill.loop as loop

    monkeypatch.setattr(loop, "run_program", lambda *a, **kw: pytest.fail("harness ran"))
    ctx = replay_ctx(tmp_path, [row("e1", shown="card_arrival"), row("e2", shown="lost_card")])
    out = loop.collect(ctx, 0, [TRAIN[0], TRAIN[1]])
    assert len(ctx.client.requests) == 2 and out.counts["contexts_recorded"] == 2
    assert out.counts["harness_correct"] == 1  # e2's recorded answer is wrong
    assert out.teacher_ids == [render_ids(ctx.tokenizer, teacher("q1", "card_arrival")),
                               render_ids(ctx.tokenizer, teacher("q2", "lost_card"))]
    assert [s.kind for s in out.sources] == ["rollout", "rollout"]
    assert out.counts["student_agrees_harness"] == 1  # the rollouts say card_arrival


def test_a_recorded_context_for_another_student_prompt_is_refused(tmp_path):
    import distill.loop as loop

    ctx = replay_ctx(tmp_path, [row("e1")])
    check_prompts(ctx.contexts, ctx.task, TRAIN)  # the prompts it recorded: accepted
    ctx.task.student_messages = lambda ex: [{"role": "user", "content": f"Q: {ex.question}"},
                                            {"role": "assistant", "content": "Label:"}]
    with pytest.raises(ScaffoldError, match="another student prompt"):
        check_prompts(ctx.contexts, ctx.task, TRAIN)  # before any server starts
    with pytest.raises(ScaffoldError, match="another student prompt"):
        loop.collect(ctx, 0, [TRAIN[0]])


def test_a_resume_trains_on_the_contexts_its_first_start_chose(tmp_path):
    """The recording run grows after the first start (it was extended): the resume still
    trains on the first start's contexts, kept in the run folder."""
    from distill.checkpoint import RunDir
    from distill.run import replayed_contexts

    task = label_task_with_prompt()
    recording = run_folder(tmp_path / "rec", [row("e1", harness=" card_arrival\n")])
    cfg = RunConfig(method="ophsd", on_policy_fraction=1.0, teacher_contexts=recording)
    run_dir = RunDir(tmp_path / "out", {"teacher_contexts": recording})
    contexts, train = replayed_contexts(cfg, task, TRAIN, run_dir, main=True)
    assert [ex.id for ex in train] == ["e1"]
    with open(Path(recording) / "trained.jsonl", "a") as f:
        f.write(json.dumps(row("e2", harness=" card_arrival\n")) + "\n")
    again, train = replayed_contexts(cfg, task, TRAIN, run_dir, main=True)
    assert [ex.id for ex in train] == ["e1"] and again.by_id == contexts.by_id
    fresh = RunDir(tmp_path / "fresh", {"teacher_contexts": recording})
    assert [ex.id for ex in replayed_contexts(cfg, task, TRAIN, fresh, main=True)[1]] == \
        ["e1", "e2"]


def test_harness_filter_drop_trains_nothing_where_the_live_harness_is_wrong(monkeypatch):
    import distill.methods as methods

    distilled = []
    monkeypatch.setattr(methods, "_distill", lambda ctx, out, item, tc, harness_path:
                        distilled.append(item.example.id))
    monkeypatch.setattr(methods.teacher_ctx, "from_trace", lambda *a: None)
    ctx = SimpleNamespace(tokenizer=SizedCharTokenizer(), task=label_task_with_prompt(),
                          cfg=RunConfig(harness_filter="drop"), harness=None)

    def item(ex: Example, says: str) -> Collected:
        final = SimpleNamespace(completion=f" {says}\n")
        return Collected(ex, [], [5, 6], on_policy=True,
                         trace=SimpleNamespace(final_call=lambda: final, error=None))

    out = StepInputs()
    METHODS["ophsd"].add_pairs(ctx, out, item(TRAIN[0], "lost_card"))
    METHODS["ophsd"].add_pairs(ctx, out, item(TRAIN[1], "card_arrival"))
    assert distilled == ["e2"] and out.counts["harness_filtered"] == 1 and out.pairs == []


def test_the_flags_that_cannot_go_with_recorded_contexts(capsys):
    ok = ["--teacher-contexts", "runs/a,runs/b", "--on-policy-fraction", "1"]
    assert parse_args([*ok, "--harness-filter", "drop"]).teacher_contexts == "runs/a,runs/b"
    for bad, says in ((["--method", "opsd"], "needs --method ophsd"),
                      (["--on-policy-fraction", "0.5"], "needs --method ophsd"),
                      (["--harness-rollouts"], "needs --method ophsd"),
                      (["--harness-filter", "gold"], "use --harness-filter drop")):
        with pytest.raises(SystemExit):
            parse_args([*ok, *bad])
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--harness-filter", "drop", "--labeled", "10"])
    assert "--harness-filter drop checks the harness" in capsys.readouterr().err


def test_a_yaml_list_of_runs_is_the_comma_separated_flag(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("teacher_contexts: [runs/a, runs/b]\non_policy_fraction: 1.0\n")
    assert parse_args(["--config", str(config)]).teacher_contexts == "runs/a,runs/b"


def test_trained_rows_record_the_harness_answer_that_replay_grades():
    from distill.export import record_rows
    from distill.pairs import PairSource
    from scaffold.trace import LMCall, Trace

    tok = SizedCharTokenizer()
    call = LMCall("Draft", student("q1"), " lost_card\n", 5, 5, 0.0, {}, "policy")
    out = StepInputs()
    out.add(tok.encode("<user>q1"), tok.encode("<user>q1 more"), tok.encode(" a\n"), 200,
            source=PairSource("rollout", "e1", teacher("q1", "x"), Trace("e1", "p", calls=[call]),
                              student("q1")))
    out.add(tok.encode("<user>q2"), tok.encode("<user>q2 more"), tok.encode(" b\n"), 200,
            source=PairSource("rollout", "e2", teacher("q2", "x"), None, student("q2")))
    out.add(tok.encode("<user>q3"), tok.encode("<user>q3 more"), tok.encode(" c\n"), 200,
            source=PairSource("rollout", "e3", teacher("q3", "x"), None, student("q3"),
                              harness_completion=" card_arrival\n"))  # a replayed context
    rows = record_rows(1, out, tok, label_task_with_prompt())
    assert [r["harness_completion"] for r in rows] == [" lost_card\n", None, " card_arrival\n"]
