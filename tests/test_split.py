"""The label-scarce regime: a seeded, disjoint bank/pool split whose pool carries no answers,
and a training step on pool questions that never reads one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from distill.config import RunConfig, parse_args
from distill.run import training_data
from evals.split import split_train
from scaffold.types import Example, Question
from tests.test_methods import (
    RecordingClient,
    SizedCharTokenizer,
    fake_harness_runner,
    label_task_with_prompt,
)


class ToyTask:
    name, kind = "toy", "classification"

    def __init__(self, train: list[Example]) -> None:
        self.train = train

    def load(self, split: str) -> list[Example]:
        return list(self.train)


def toy_train() -> list[Example]:
    """Three labels with 5, 3 and 12 examples, interleaved as a file might hold them."""
    counts = {"a": 5, "b": 3, "c": 12}
    rows = [label for label, n in counts.items() for _ in range(n)]
    rows = rows[::2] + rows[1::2]
    return [Example(f"toy/train/{i}", f"question {i}", label) for i, label in enumerate(rows)]


def test_per_class_split_is_seeded_disjoint_and_complete():
    train = toy_train()
    split = split_train(ToyTask(train), train, per_class=4, seed=7)
    again = split_train(ToyTask(train), train, per_class=4, seed=7)
    assert [e.id for e in split.bank] == [e.id for e in again.bank]
    assert [q.id for q in split.pool] == [q.id for q in again.pool]
    bank_ids, pool_ids = {e.id for e in split.bank}, {q.id for q in split.pool}
    assert not bank_ids & pool_ids and bank_ids | pool_ids == {e.id for e in train}
    per_label = {label: sum(e.answer == label for e in split.bank) for label in "abc"}
    assert per_label == {"a": 4, "b": 3, "c": 4}  # b has only 3: all of them
    order = [e.id for e in train]
    assert [e.id for e in split.bank] == sorted(bank_ids, key=order.index)  # file order kept
    other = split_train(ToyTask(train), train, per_class=4, seed=8)
    assert {e.id for e in other.bank} != bank_ids
    assert split.regime == "labeled4pc"


def test_total_split_and_bad_sizes():
    train = toy_train()
    split = split_train(ToyTask(train), train, total=6, seed=0)
    assert len(split.bank) == 6 and len(split.pool) == 14 and split.regime == "labeled6"
    with pytest.raises(ValueError, match="exactly one"):
        split_train(ToyTask(train), train, per_class=2, total=2)
    with pytest.raises(ValueError, match="at least one"):
        split_train(ToyTask(train), train, total=0)
    math = ToyTask(train)
    math.kind = "math"
    with pytest.raises(ValueError, match="--labeled N"):
        split_train(math, train, per_class=2)


def test_the_pool_carries_no_answer():
    train = toy_train()
    pool = split_train(ToyTask(train), train, per_class=2).pool
    assert pool and all(isinstance(q, Question) for q in pool)
    with pytest.raises(AttributeError):
        _ = pool[0].answer
    with pytest.raises(AttributeError):
        _ = pool[0].solution


def test_methods_that_read_answers_train_on_the_bank_and_ophsd_on_the_pool():
    train = toy_train()
    task = ToyTask(train)
    cfg = parse_args(["--labeled-per-class", "2", "--method", "ophsd"])
    bank, data = training_data(cfg, task)
    assert len(bank) == 6 and all(isinstance(q, Question) for q in data) and len(data) == 14
    for method in ("gold_sft", "sft", "opsd"):
        cfg = parse_args(["--labeled-per-class", "2", "--method", method])
        bank, data = training_data(cfg, task)
        assert data == bank and all(isinstance(e, Example) for e in data)
    assert training_data(parse_args([]), task) == (train, train)  # all labels: no split


def test_an_ophsd_step_on_pool_questions_never_reads_an_answer(monkeypatch):
    """The whole step (harness, rollouts, grading counters, pairs, gold pairs from the bank)
    runs on Questions, which have no answer attribute: reading one would raise."""
    import distill.loop as loop

    tok, task = SizedCharTokenizer(), label_task_with_prompt()
    pool = [Question(f"p{i}", f"question {i}") for i in range(12)]
    bank = [Example("b0", "a labelled one", "card_arrival")]

    monkeypatch.setattr(loop, "run_program", fake_harness_runner(tok, " card_arrival\n"))
    cfg = RunConfig(method="ophsd", on_policy_fraction=0.5, seed=1, concurrency=4)
    ctx = SimpleNamespace(cfg=cfg, task=task, tokenizer=tok, harness=None,
                          client=RecordingClient(), policy_name="policy", max_new_tokens=24,
                          policy_lm=lambda **kw: None)
    out = loop.collect(ctx, 0, pool, gold=bank)
    assert out.counts["unlabelled"] == 12 and out.counts["harness_correct"] == 0
    assert out.counts["student_correct"] == 0 and out.counts["rollouts"] > 0
    assert out.counts["student_agrees_harness"] == out.counts["rollouts"]
    assert len(out.pairs) == 12 + 1 and out.sft == [False] * 12 + [True]
    assert out.counts["gold_targets"] == 1

    # a method that reads answers cannot run on the pool: the question has none to read
    ctx.cfg = RunConfig(method="gold_sft")
    with pytest.raises(AttributeError):
        loop.collect(ctx, 0, pool)


class ScoringClient:
    def __init__(self) -> None:
        self.requests: list[tuple[list[int], list[int]]] = []

    def next_token_logprobs(self, prompt_ids, token_ids, model=None):
        self.requests.append((list(prompt_ids), list(token_ids)))
        return [-float(t) / 100 for t in token_ids]


def test_the_server_scores_only_positions_with_a_choice():
    from distill.answer_space import AnswerSpace
    from distill.loop import score_teacher_on_server
    from distill.pairs import StepInputs

    space = AnswerSpace([[5, 6], [5, 7], [8]], end_ids=[2])
    out = StepInputs()
    out.add([1], [1, 9, 9], [5, 6, 2], max_len=64, space=space)  # supports [5,8] [6,7] [2]
    out.add([1], [1], [4, 4], max_len=64, sft=True)  # a gold pair: never scored
    client = ScoringClient()
    ctx = SimpleNamespace(client=client, policy_name="policy", cfg=RunConfig(concurrency=2))
    score_teacher_on_server(ctx, out)
    assert sorted(client.requests) == [([1, 9, 9], [5, 8]), ([1, 9, 9, 5], [6, 7])]
    assert out.teacher_logprobs[0] == [[-0.05, -0.08], [-0.06, -0.07], [0.0]]
    assert out.teacher_logprobs[1] is None
    assert out.counts["teacher_requests"] == 2 and out.counts["teacher_scored_positions"] == 3


def train_on_fakes(monkeypatch, tmp_path, cfg: RunConfig, train_set, gold_set=()):
    """distill.run.train with nothing real under it (collect is the caller's fake): returns
    the steps the policy was synced at and the run folder."""
    import distill.run as run_mod
    from distill.checkpoint import RunDir

    synced: list[int] = []
    fake_run = SimpleNamespace(cfg=cfg, task=SimpleNamespace(kind="classification"),
                               teacher_scorer="vllm" if cfg.method == "ophsd" else "trainer",
                               sync=lambda trainer, step: synced.append(step))
    run_dir = RunDir(tmp_path, cfg.to_dict())
    monkeypatch.setattr(run_dir, "save_checkpoint", lambda *a, **k: None)
    monkeypatch.setattr(run_dir, "restore", lambda trainer, rank=0, world_size=1: None)
    run_mod.train(fake_run, SimpleNamespace(step=0, skip_step=lambda: None), run_dir,
                  train_set, gold_set)
    return synced, run_dir


def test_gold_warmup_steps_train_the_bank_first_then_the_pool(monkeypatch, tmp_path):
    """--gold-warmup-steps 2: steps 1-2 take batch_size gold examples and no pool questions;
    then each step takes batch_size pool questions and gold_batch_size gold examples, the
    pool's order untouched by the warm-up."""
    import distill.run as run_mod
    from distill.checkpoint import DataCursor
    from distill.pairs import StepInputs

    seen = []

    def fake_collect(run, step, examples, gold=()):
        seen.append(([q.id for q in examples], [e.id for e in gold]))
        return StepInputs()  # no pairs: the trainer only counts the step

    monkeypatch.setattr(run_mod, "collect", fake_collect)
    train = toy_train()
    split = split_train(ToyTask(train), train, per_class=2)
    cfg = parse_args(["--steps", "4", "--batch-size", "3", "--gold-batch-size", "1",
                      "--gold-warmup-steps", "2", "--checkpoint-every", "100",
                      "--lr-schedule", "constant"])
    synced, _ = train_on_fakes(monkeypatch, tmp_path, cfg, split.pool, split.bank)
    assert [(len(e), len(g)) for e, g in seen] == [(0, 3), (0, 3), (3, 1), (3, 1)]
    # the policy is synced only before a step that reads it: none after gold step 1
    assert synced == [2, 3, 4]
    pool_order, _ = DataCursor().take(len(split.pool), 3, cfg.seed)
    assert seen[2][0] == [split.pool[i].id for i in pool_order]
    bank_ids = {e.id for e in split.bank}
    assert all(set(g) <= bank_ids for _, g in seen)


def test_gold_sft_syncs_the_policy_only_for_evaluations_and_the_end(monkeypatch, tmp_path):
    """gold_sft never reads the served policy while it trains: a sync per step would be
    3 s of 37 spent on nothing; it syncs before each curve evaluation and at the end."""
    import distill.run as run_mod
    from distill.pairs import StepInputs

    monkeypatch.setattr(run_mod, "collect", lambda run, step, examples, gold=(): StepInputs())
    monkeypatch.setattr(run_mod, "curve_point", lambda run: {"eval_score": 0.0})
    train = toy_train()
    cfg = parse_args(["--method", "gold_sft", "--steps", "6", "--batch-size", "2",
                      "--eval-every", "2", "--checkpoint-every", "100",
                      "--lr-schedule", "constant"])
    synced, run_dir = train_on_fakes(monkeypatch, tmp_path, cfg, train)
    assert synced == [2, 4, 6]
    assert [r["step"] for r in run_dir.metrics() if "eval_score" in r] == [2, 4]
