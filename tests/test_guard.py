"""The collapse guard (distill/guard.py): fires on a scripted collapse, not on a healthy
noisy run, rebuilds itself from the metrics on resume, and --guard-stop ends a real loop
(the tiny Llama) at the last checkpoint no alarmed window read."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distill.checkpoint import ADAPTER_DIR, RunDir  # noqa: E402
from distill.guard import (  # noqa: E402
    CollapseGuard,
    GuardConfig,
    healthy_checkpoint,
    policy_read,
    signals,
)

# Mean tokens per rollout shaped like the GSM8K OPHSD run at lr 5e-5 (docs/notes/gsm8k.md
# gives about 250 through step 8 and 9 at step 11; steps 9, 10 and 12 are filled in).
COLLAPSE = [250, 262, 241, 255, 248, 230, 240, 250, 180, 60, 9, 8]
# A healthy run: the same start, +-30% noise a step, no trend.
HEALTHY = [250, 262, 175, 320, 210, 300, 190, 240, 330, 200, 260, 185]


def rows(lengths: list[float], parsed: list[int] | None = None) -> list[dict]:
    return [{"step": i + 1, "rollouts": 4, "rollout_tokens": 4 * n,
             "student_parsed": 4 if parsed is None else parsed[i]}
            for i, n in enumerate(lengths)]


def alarm_steps(guard: CollapseGuard, metrics: list[dict]) -> list[int]:
    return [row["step"] for row in metrics if guard.observe(row)["guard_alarms"]]


def test_signals_are_read_from_a_metrics_row():
    row = {"rollouts": 4, "rollout_tokens": 100, "student_parsed": 3,
           "student_entropy": 1.5, "eval_answer_tokens": 80.0, "eval_parse_rate": 0.9}
    assert signals(row) == {"rollout_len": 25.0, "parse_rate": 0.75, "student_entropy": 1.5,
                            "eval_len": 80.0, "eval_parse_rate": 0.9}
    # a step with no rollouts (gold_sft) and a NaN entropy says nothing about either
    assert signals({"rollouts": 0, "student_entropy": float("nan"), "loss": 1.0}) == {}


def test_the_gsm8k_collapse_alarms_and_a_noisy_healthy_run_does_not():
    collapse = CollapseGuard(GuardConfig())
    assert alarm_steps(collapse, rows(COLLAPSE)) == [10, 11, 12]
    # its window (steps 9 and 10) read the policies after 8 and 9 updates
    assert collapse.first_alarm_step == 10 and collapse.first_alarm_policy == 8
    assert collapse.alarms() == ["rollout_len"]
    assert collapse.ratios()["rollout_len"] == pytest.approx((9 + 8) / 2 / 256)
    healthy = CollapseGuard(GuardConfig())
    assert alarm_steps(healthy, rows(HEALTHY)) == []
    assert healthy.first_alarm_step is None and healthy.new_warnings() == []


def test_parse_rate_and_entropy_alarm_on_their_own_factors():
    parse = CollapseGuard(GuardConfig())
    assert alarm_steps(parse, rows([250] * 6, parsed=[4, 4, 4, 2, 1, 0])) == [5, 6]
    assert parse.alarms() == ["parse_rate"]
    entropy_rows = [{"step": i + 1, "student_entropy": e}
                    for i, e in enumerate([2.0, 2.2, 1.9, 0.6, 0.3])]
    # off by default: a student learning its labels lowers its entropy too
    assert alarm_steps(CollapseGuard(GuardConfig()), entropy_rows) == []
    assert alarm_steps(CollapseGuard(GuardConfig(entropy_factor=0.25)), entropy_rows) == [5]


def test_a_warning_is_given_once_per_signal_and_the_bar_shows_the_ratio():
    guard = CollapseGuard(GuardConfig())
    for row in rows(COLLAPSE[:10]):
        guard.observe(row)
    lines = guard.new_warnings()
    assert len(lines) == 1 and "rollout_len is at 0.47x" in lines[0]
    assert "--guard-stop" in lines[0]
    assert guard.new_warnings() == []  # said once
    assert guard.postfix() == "rollout_len 0.47x"


def test_a_resumed_guard_replays_the_metrics_to_the_same_state():
    metrics = rows(COLLAPSE)
    live = CollapseGuard(GuardConfig())
    for row in metrics[:9]:
        live.observe(row)
    resumed = CollapseGuard.replay(GuardConfig(), metrics[:9])
    assert resumed.ratios() == live.ratios()
    assert [live.observe(r) for r in metrics[9:]] == [resumed.observe(r) for r in metrics[9:]]


def test_the_healthy_checkpoint_predates_every_policy_an_alarm_read():
    ckpts = [{"step": s, "path": f"checkpoints/step_{s:06d}"} for s in (4, 8, 12)]
    assert healthy_checkpoint(ckpts, first_alarm_policy=8)["step"] == 4  # 8 was read
    assert healthy_checkpoint(ckpts, first_alarm_policy=9)["step"] == 8
    assert healthy_checkpoint(ckpts, first_alarm_policy=4) is None


def test_each_signal_knows_which_policy_it_read():
    # --sync-every 4: steps 9 and 10 both sampled the policy synced after step 8
    assert policy_read("rollout_len", {"policy_step": 8}, step=10) == 8
    assert policy_read("rollout_len", {}, step=10) == 9  # sync every step
    assert policy_read("student_entropy", {"policy_step": 8}, step=10) == 9  # the trainer's
    assert policy_read("eval_len", {"policy_step": 8}, step=12) == 12  # after the step's sync
    # curve points every 4 steps alarm at 16: the window read policies 12 and 16
    guard = CollapseGuard(GuardConfig())
    for step, tokens in ((4, 250), (8, 240), (12, 60), (16, 20)):
        guard.observe({"step": step, "eval_answer_tokens": tokens})
    assert guard.first_alarm_step == 16 and guard.first_alarm_policy == 12


@pytest.mark.parametrize(("flag", "value"), [("--guard-length", "1.5"),
                                             ("--guard-parse", "-0.1"),
                                             ("--guard-window", "0")])
def test_guard_flags_out_of_range_are_refused(flag, value, capsys):
    from distill.config import parse_args

    with pytest.raises(SystemExit):
        parse_args([flag, value])
    assert flag in capsys.readouterr().err


def test_guard_stop_ends_a_real_loop_at_the_last_healthy_checkpoint(tmp_path, monkeypatch):
    """distill.run.train on the tiny Llama with scripted rollout lengths: step 5's rollouts
    (from the policy after 4 updates) collapse, the guard fires at step 6 (window 2), and
    the run ends with step 3's adapter. A rerun ends the same way without training; so does
    a run killed after step 6's checkpoint and before its stop record."""
    import distill.run as run_mod
    from distill.checkpoint import GUARD_STOP_FILE
    from distill.config import RunConfig
    from distill.pairs import StepInputs
    from tests.test_checkpoint import dataset
    from tests.test_trainer import make_trainer, save_tiny_llama
    from tests.test_transcripts import CharTokenizer

    lengths = [200, 200, 190, 190, 20, 10, 10, 10, 10, 10]

    def fake_collect(run, step, examples, gold=()):
        out = StepInputs()
        for pair in examples:
            out.add(pair.student_ids[:pair.student_prompt_len],
                    pair.teacher_ids[:pair.teacher_prompt_len], pair.response_ids, 64)
        out.counts.update(rollouts=2, rollout_tokens=2 * lengths[step], student_parsed=2)
        return out

    monkeypatch.setattr(run_mod, "collect", fake_collect)
    synced: list[int] = []
    cfg = RunConfig(steps=10, batch_size=2, checkpoint_every=1, seed=7, lr=5e-2,
                    lr_schedule="constant", guard_stop=True, transcripts=0, eval_limit=0)
    fake_run = SimpleNamespace(cfg=cfg, task=SimpleNamespace(kind="classification", name="fake"),
                               teacher_scorer="trainer", tokenizer=CharTokenizer(),
                               sync=lambda trainer, step: synced.append(step))
    model = save_tiny_llama(tmp_path / "tiny")
    run_dir = RunDir(tmp_path / "run", cfg.to_dict())
    trainer = make_trainer(model)
    stopped = run_mod.train(fake_run, trainer, run_dir, dataset())
    assert stopped["first_alarm_step"] == 6 and stopped["stopped_at_step"] == 6
    assert stopped["healthy_step"] == 3 and set(stopped["alarms"]) == {"rollout_len"}
    rows = run_dir.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["policy_step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["guard_alarms"] for r in rows] == [0, 0, 0, 0, 0, 1]
    assert synced[-1] == 7  # the healthy adapter is served under a name never used before

    def weights(t) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in t.model.named_parameters() if "lora" in k}

    def checkpoint(step: int) -> dict[str, torch.Tensor]:
        t = make_trainer(model)
        t.load_adapter(run_dir.path / "checkpoints" / f"step_{step:06d}" / ADAPTER_DIR)
        return weights(t)

    three, four = checkpoint(3), checkpoint(4)
    assert all(torch.equal(weights(trainer)[k], three[k]) for k in three)
    assert not all(torch.equal(four[k], three[k]) for k in four)  # step 4 did train
    assert run_mod.completed(run_dir, cfg) is None  # stopped, but no final adapter yet
    trainer.save_adapter(run_dir.path / "final_adapter")
    assert run_mod.completed(run_dir, cfg) == []  # ended: nothing to train or evaluate

    again = make_trainer(model)  # a crash after the stop record: the rerun ends the same way
    rerun = run_mod.train(fake_run, again, RunDir(tmp_path / "run", cfg.to_dict()), dataset())
    assert rerun["healthy_step"] == 3 and again.step == 0
    assert all(torch.equal(weights(again)[k], three[k]) for k in three)

    (run_dir.path / GUARD_STOP_FILE).unlink()  # killed after step 6's checkpoint, before it
    resumed = make_trainer(model)
    record = run_mod.train(fake_run, resumed, RunDir(tmp_path / "run", cfg.to_dict()), dataset())
    assert (record["stopped_at_step"], record["healthy_step"]) == (6, 3)
    assert [r["step"] for r in run_dir.metrics()] == [1, 2, 3, 4, 5, 6]  # no step trained
    assert all(torch.equal(weights(resumed)[k], three[k]) for k in three)
