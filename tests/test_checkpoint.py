"""RunDir durability and resume equivalence (with the tiny Llama from test_trainer)."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distill.checkpoint import (  # noqa: E402
    DataCursor,
    RunConfigMismatch,
    RunDir,
    epoch_order,
    read_run,
    read_trained,
)
from distill.splicing import splice  # noqa: E402
from tests.test_trainer import make_trainer, save_tiny_llama  # noqa: E402
from tests.test_transcripts import CharTokenizer  # noqa: E402

SEED = 7
BATCH = 2


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


# ---------------------------------------------------------------------------- data order


def test_epoch_order_is_a_seeded_permutation():
    order = epoch_order(10, seed=3, epoch=0)
    assert sorted(order) == list(range(10))
    assert order == epoch_order(10, seed=3, epoch=0)
    assert order != epoch_order(10, seed=3, epoch=1)
    assert order != epoch_order(10, seed=4, epoch=0)


def test_cursor_walks_epochs_in_order_and_resumes_mid_epoch():
    n = 5
    expected = epoch_order(n, SEED, 0) + epoch_order(n, SEED, 1) + epoch_order(n, SEED, 2)
    cursor, seen = DataCursor(), []
    for _ in range(6):
        idx, cursor = cursor.take(n, 2, SEED)
        seen += idx
        # a cursor that went through JSON continues identically
        cursor = DataCursor.from_dict(json.loads(json.dumps(cursor.to_dict())))
    assert seen == expected[:12]
    assert cursor == DataCursor(epoch=2, index=2)


# ---------------------------------------------------------------------------- config


def test_config_mismatch_is_a_clear_error(tmp_path):
    RunDir(tmp_path / "run", {"method": "ophsd", "lr": 1e-4, "steps": 10})
    with pytest.raises(RunConfigMismatch, match=r"lr.*new --out"):
        RunDir(tmp_path / "run", {"method": "ophsd", "lr": 2e-4, "steps": 10})
    with pytest.raises(RunConfigMismatch, match="teacher"):
        RunDir(tmp_path / "run", {"method": "ophsd", "lr": 1e-4, "steps": 10, "teacher": "ema"})
    with pytest.raises(RunConfigMismatch, match="resume=False"):
        RunDir(tmp_path / "run", {"method": "ophsd", "lr": 1e-4, "steps": 10}, resume=False)


def test_resumable_keys_may_change_and_are_recorded(tmp_path):
    RunDir(tmp_path / "run", {"lr": 1e-4, "betas": (0.9, 0.99), "steps": 10})
    run = RunDir(tmp_path / "run", {"lr": 1e-4, "betas": [0.9, 0.99], "steps": 20})
    assert json.loads((run.path / "config.json").read_text())["steps"] == 20


# ---------------------------------------------------------------------------- jsonl files


def test_metrics_roundtrip_and_torn_line_is_cut_on_open(tmp_path):
    run = RunDir(tmp_path, {"a": 1})
    run.log_metrics({"step": 1, "loss": 0.5})
    run.log_metrics({"step": 2, "loss": 0.25})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # killed mid-append
    assert [r["step"] for r in run.metrics()] == [1, 2]
    run = RunDir(tmp_path, {"a": 1})
    run.log_metrics({"step": 3, "loss": 0.125})
    assert [r["step"] for r in run.metrics()] == [1, 2, 3]


def test_a_corrupt_line_in_the_middle_is_an_error(tmp_path):
    run = RunDir(tmp_path, {"a": 1})
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        run.metrics()


# ---------------------------------------------------------------------------- resume


def dataset() -> list:
    """Six pairs (3 steps per epoch at BATCH=2), teacher context longer than the student's."""
    return [
        splice([1 + i, 2 + i, 3], [1 + i, 40 + i, 41, 2 + i, 3], [9 + i, 10, 11 + 2 * i])
        for i in range(6)
    ]


def run_until(run: RunDir, trainer, stop: int, data: list) -> None:
    """The run loop, as distill.run drives it: restore, then step/log/checkpoint."""
    extra = run.restore(trainer)
    cursor = DataCursor.from_dict(extra["cursor"]) if extra else DataCursor()
    while trainer.step < stop:
        idx, cursor = cursor.take(len(data), BATCH, SEED)
        metrics = trainer.train_step([data[i] for i in idx])
        run.log_metrics(
            {"step": trainer.step, "idx": idx, **{k: metrics[k] for k in ("loss", "kl", "grad_norm")}}
        )
        run.save_checkpoint(trainer.step, trainer, {"cursor": cursor.to_dict()})


def fresh_trainer(model_dir):
    # dropout consumes the torch RNG, so the resume must restore it; EMA state must resume too
    return make_trainer(model_dir, teacher="ema", ema_decay=0.5, lora_dropout=0.1)


CONFIG = {"teacher": "ema", "steps": 4}


def assert_same_state(a, b) -> None:
    for kind in ("default", "ema"):
        sa, sb = a.adapter_state(kind), b.adapter_state(kind)
        assert sa.keys() == sb.keys()
        for name in sa:
            assert torch.equal(sa[name], sb[name]), (kind, name)


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir, tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("straight"), CONFIG)
    trainer = fresh_trainer(tiny_model_dir)
    run_until(run, trainer, 4, dataset())
    return run, trainer


def test_resume_after_kill_is_identical_to_a_straight_run(tiny_model_dir, straight_run, tmp_path):
    straight, straight_trainer = straight_run
    assert [r["step"] for r in straight.metrics()] == [1, 2, 3, 4]

    trainer = fresh_trainer(tiny_model_dir)
    run_until(RunDir(tmp_path, CONFIG), trainer, 2, dataset())
    del trainer  # killed

    resumed = fresh_trainer(tiny_model_dir)
    run = RunDir(tmp_path, {**CONFIG, "steps": 4})
    run_until(run, resumed, 4, dataset())
    assert resumed.step == 4
    assert_same_state(resumed, straight_trainer)
    assert run.metrics() == straight.metrics()
    assert [c["step"] for c in run.checkpoints()] == [1, 2, 3, 4]


def test_resume_with_torn_commit_and_logged_but_uncommitted_step(
    tiny_model_dir, straight_run, tmp_path
):
    straight, straight_trainer = straight_run
    trainer = fresh_trainer(tiny_model_dir)
    run = RunDir(tmp_path, CONFIG)
    run_until(run, trainer, 3, dataset())
    # kill during the commit of step 3: its folder is complete, its metrics row is logged,
    # but the checkpoints.jsonl append was cut mid-line
    path = tmp_path / "checkpoints.jsonl"
    text = path.read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    path.write_text(text[: last_start + 10])
    assert [r["step"] for r in run.metrics()] == [1, 2, 3]
    del trainer

    run = RunDir(tmp_path, CONFIG)
    assert run.latest_checkpoint()["step"] == 2
    resumed = fresh_trainer(tiny_model_dir)
    extra = run.restore(resumed)
    assert resumed.step == 2 and extra["cursor"] == {"epoch": 0, "index": 4}
    assert [r["step"] for r in run.metrics()] == [1, 2]  # step 3 will be redone, not repeated

    run_until(run, resumed, 4, dataset())
    assert_same_state(resumed, straight_trainer)
    assert run.metrics() == straight.metrics()
    assert [c["step"] for c in run.checkpoints()] == [1, 2, 3, 4]


def test_latest_checkpoint_skips_listed_but_incomplete_folders(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir)
    run = RunDir(tmp_path, {"a": 1})
    assert run.latest_checkpoint() is None and run.restore(trainer) is None
    run.save_checkpoint(1, trainer, {"cursor": DataCursor(0, 2).to_dict()})
    second = run.save_checkpoint(2, trainer, {"cursor": DataCursor(0, 4).to_dict()})
    (second / "state.pt").unlink()
    latest = run.latest_checkpoint()
    assert latest["step"] == 1 and latest["cursor"] == {"epoch": 0, "index": 2}
    assert latest["path"] == "checkpoints/step_000001"
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))


def test_keep_last_prunes_old_checkpoint_folders(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir)
    run = RunDir(tmp_path, {"a": 1}, keep_last=2)
    for step in (1, 2, 3):
        run.save_checkpoint(step, trainer, {})
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert folders == ["step_000002", "step_000003"]
    assert run.latest_checkpoint()["step"] == 3


def test_reserved_extra_keys_are_refused(tiny_model_dir, tmp_path):
    run = RunDir(tmp_path, {"a": 1})
    with pytest.raises(ValueError, match="reserved"):
        run.save_checkpoint(1, make_trainer(tiny_model_dir), {"step": 5})


def test_a_finished_run_rerun_returns_its_saved_evaluation(tiny_model_dir, tmp_path):
    from distill.config import RunConfig
    from distill.run import completed

    cfg = RunConfig(steps=2, eval_limit=4, eval_seed=0, out=str(tmp_path))
    trainer = make_trainer(tiny_model_dir)
    run = RunDir(tmp_path, {"a": 1})
    run.save_checkpoint(1, trainer, {"loop_step": 1})
    assert completed(run, cfg) is None  # steps remain
    run.save_checkpoint(2, trainer, {"loop_step": 2})
    assert completed(run, cfg) is None  # no final adapter yet (killed before the save)
    trainer.save_adapter(tmp_path / "final_adapter")
    assert completed(run, cfg) is None  # trained but never evaluated
    row = {"task": "t", "program": "none", "model": "trained", "n": 4, "score": 0.5,
           "ci_low": 0.0, "ci_high": 1.0, "parse_failures": 0, "failed": 0, "fallbacks": 0,
           "calls_per_example": 1.0, "tokens_per_example": 9.0,
           "answer_tokens_per_example": 2.0, "wall_s": 1.0}
    (tmp_path / "eval.json").write_text(json.dumps({"eval_limit": 4, "eval_seed": 0,
                                                    "rows": [row]}))
    assert [r.score for r in completed(run, cfg)] == [0.5]
    assert completed(run, replace(cfg, eval_limit=8)) is None  # other items: evaluate again
    assert completed(run, replace(cfg, eval_limit=0)) == []  # done, nothing to evaluate
    assert completed(run, replace(cfg, steps=3)) is None  # extended: train on


def test_a_step_without_pairs_keeps_the_run_resumable(tiny_model_dir, tmp_path, monkeypatch):
    """distill.run.train after a step that yields no training pairs (no signal, no step):
    the trainer's step counter still moves with the loop, so the checkpoint after it
    restores (it used to fail with 'state step 2 != listed step 3')."""
    from types import SimpleNamespace

    import distill.run as run_mod
    from distill.config import RunConfig
    from distill.pairs import StepInputs

    data = dataset()

    def fake_collect(run, step, examples, gold=()):
        out = StepInputs()
        if step != 1:  # the second step finds nothing to train on
            for pair in examples:
                out.add(pair.student_ids[:pair.student_prompt_len],
                        pair.teacher_ids[:pair.teacher_prompt_len], pair.response_ids, 64)
        return out

    monkeypatch.setattr(run_mod, "collect", fake_collect)
    synced = []
    cfg = RunConfig(steps=3, batch_size=BATCH, checkpoint_every=1, seed=SEED, lr_schedule="constant")
    fake_run = SimpleNamespace(cfg=cfg, task=SimpleNamespace(kind="classification", name="fake"),
                               teacher_scorer="trainer", tokenizer=CharTokenizer(),
                               sync=lambda trainer, step: synced.append(step))
    run_dir = RunDir(tmp_path, cfg.to_dict())
    run_mod.train(fake_run, make_trainer(tiny_model_dir), run_dir, data)
    rows = run_dir.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1].get("skipped_no_pairs") == 1
    # every pair of a step of BATCH is in the transcript (--transcripts 4), none of step 2
    assert [r["step"] for r in run_dir.transcripts()] == [1] * BATCH + [3] * BATCH
    resumed = make_trainer(tiny_model_dir)
    fake_run.cfg = RunConfig(**{**cfg.to_dict(), "steps": 4})
    run_mod.train(fake_run, resumed, RunDir(tmp_path, fake_run.cfg.to_dict()), data)
    assert resumed.step == 4 and [r["step"] for r in run_dir.metrics()] == [1, 2, 3, 4]
    assert [r["step"] for r in run_dir.transcripts()] == [1] * BATCH + [3] * BATCH + [4] * BATCH
    # trained.jsonl (distill.export's input) holds every pair of every trained step once
    trained = read_trained(read_run(tmp_path))
    assert [(r["step"], r["pair"]) for r in trained] == \
        [(s, i) for s in (1, 3, 4) for i in range(BATCH)]


def test_a_config_key_added_later_resumes_at_its_default(tmp_path):
    RunDir(tmp_path / "run", {"lr": 1e-4, "steps": 10})  # made before "warmup" existed
    RunDir(tmp_path / "run", {"lr": 1e-4, "steps": 10, "warmup": 0}, defaults={"warmup": 0})
    with pytest.raises(RunConfigMismatch, match="warmup"):
        RunDir(tmp_path / "run", {"lr": 1e-4, "steps": 10, "warmup": 3}, defaults={"warmup": 0})


# ---------------------------------------------------------------------------- one owner, safe loads


def test_a_run_folder_held_by_a_live_process_is_refused_until_it_dies(tmp_path):
    """Two runs writing one folder interleave checkpoints: the second is refused with the
    holder's PID, and the lock goes with its holder, SIGKILL included."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from distill.checkpoint import RunDirBusy

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from distill.checkpoint import RunDir; "
         f"RunDir({str(tmp_path)!r}, {{'a': 1}}); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=f"in use by PID {holder.pid}"):
            RunDir(tmp_path, {"a": 1})
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert RunDir(tmp_path, {"a": 1}).config == {"a": 1}


def test_a_killed_runs_unfinished_checkpoint_folder_is_removed_on_reopen(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp_step_000003.abc"
    (stale / "adapter").mkdir(parents=True)
    RunDir(tmp_path, {"a": 1})
    assert not stale.exists()


def test_checkpoint_paths_outside_the_run_folder_are_refused(tiny_model_dir, tmp_path):
    run = RunDir(tmp_path / "run", {"a": 1})
    run.save_checkpoint(1, make_trainer(tiny_model_dir), {})
    rows = (tmp_path / "run" / "checkpoints.jsonl").read_text().replace(
        '"checkpoints/step_000001"', '"../elsewhere"')
    (tmp_path / "run" / "checkpoints.jsonl").write_text(rows)
    with pytest.raises(ValueError, match="outside the run folder"):
        run.restore(make_trainer(tiny_model_dir))


def test_resume_state_loads_without_unpickling_code(tiny_model_dir, tmp_path):
    """state.pt loads with weights_only=True: a pickled callable in it is refused."""
    import pickle

    trainer = make_trainer(tiny_model_dir)
    run = RunDir(tmp_path, {"a": 1})
    folder = run.save_checkpoint(trainer.step, trainer, {})
    assert run.restore(make_trainer(tiny_model_dir)) == {}  # numpy RNG state is allowed
    state = torch.load(folder / "state.pt", weights_only=False)
    state["payload"] = os.system  # what a foreign folder could carry
    torch.save(state, folder / "state.pt")
    with pytest.raises(pickle.UnpicklingError):
        run.restore(make_trainer(tiny_model_dir))
