"""Transcripts: the per-token report against closed forms, the trainer's reports against its
own step metrics, which pairs are kept, the JSON rows, and the run folder's cut on resume."""

from __future__ import annotations

import math

import pytest
import torch

from distill import transcripts
from distill.checkpoint import RunDir
from distill.losses import LossConfig
from distill.pairs import PairSource, StepInputs
from distill.token_report import token_report
from scaffold.trace import LMCall, Trace
from tests.test_given_teacher import pairs_and_supports, teacher_logprobs_on
from tests.test_trainer import make_pairs, make_trainer, tiny_model_dir  # noqa: F401  (fixture)


class CharTokenizer:
    """Token i is the character chr(ord('a') + i % 26)."""

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_token_report_matches_the_closed_form():
    s, p = [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]
    student = torch.log(torch.tensor([s, [0.1, 0.1, 0.8]]))
    teacher = torch.log(torch.tensor([p, [0.1, 0.1, 0.8]]))
    rep = token_report(student, torch.tensor([1, 2]), LossConfig(kind="forward_kl"), teacher)
    reverse = sum(a * math.log(a / b) for a, b in zip(s, p, strict=True))  # KL(S || P)
    forward = sum(b * math.log(b / a) for a, b in zip(s, p, strict=True))  # KL(P || S)
    assert rep.kl == pytest.approx([reverse, 0.0], abs=1e-6)  # what the `kl` metric reports
    assert rep.loss == pytest.approx([forward, 0.0], abs=1e-6)  # what the loss trains on
    assert [(i, round(q, 4)) for i, q in rep.student_top[0]] == [(0, 0.7), (1, 0.2), (2, 0.1)]
    assert [(i, round(q, 4)) for i, q in rep.teacher_top[0]] == [(2, 0.5), (1, 0.3), (0, 0.2)]


def test_token_report_of_a_supervised_pair_is_the_cross_entropy():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    rep = token_report(logits, torch.tensor([2]), LossConfig())
    assert rep.loss == pytest.approx([math.log(4)]) and rep.kl is None and rep.teacher_top is None


def test_token_report_restricts_the_teacher_to_the_support():
    student = torch.zeros(1, 4)
    teacher = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    support = torch.tensor([[False, True, True, False]])
    rep = token_report(student, torch.tensor([1]), LossConfig(kind="forward_kl"), teacher, support)
    assert {i for i, _ in rep.teacher_top[0][:2]} == {1, 2}
    assert rep.teacher_top[0][0][1] == pytest.approx(0.5)
    assert rep.kl == pytest.approx([0.0], abs=1e-6)  # both sides uniform on the support


@pytest.mark.parametrize("given", [False, True])
def test_trainer_reports_average_to_the_steps_kl(tiny_model_dir, given):  # noqa: F811
    """Every pair inspected: the token reports' mean KL is the step's `kl` metric, and each
    report has one entry per response token, from the teacher forward or the given one."""
    pairs, supports = pairs_and_supports()
    trainer = make_trainer(tiny_model_dir, teacher="live", micro_batch_size=3,
                           loss=LossConfig(kind="forward_kl"))
    logprobs = teacher_logprobs_on(trainer, pairs, supports) if given else None
    stats = trainer.train_step(pairs, supports=supports, teacher_logprobs=logprobs,
                               inspect=range(len(pairs)))
    reports = trainer.last_token_reports
    assert sorted(reports) == [0, 1, 2, 3]
    assert [len(reports[i].ids) for i in range(4)] == [len(p.response_ids) for p in pairs]
    assert all(reports[i].ids == pairs[i].response_ids for i in range(4))
    kls = [x for i in range(4) for x in reports[i].kl]
    assert sum(kls) / len(kls) == pytest.approx(stats["kl"], rel=1e-5)
    losses = [x for i in range(4) for x in reports[i].loss]
    assert sum(losses) / len(losses) == pytest.approx(stats["loss"], rel=1e-5)


def test_trainer_reports_only_what_was_asked_and_sft_pairs_carry_no_teacher(
        tiny_model_dir):  # noqa: F811
    trainer = make_trainer(tiny_model_dir)
    pairs = make_pairs()
    stats = trainer.train_step(pairs, sft=[True, False, False, True], inspect=[0, 2])
    assert sorted(trainer.last_token_reports) == [0, 2]
    assert trainer.last_token_reports[0].teacher_top is None
    assert trainer.last_token_reports[2].teacher_top is not None
    trainer.train_step(pairs)
    assert trainer.last_token_reports == {} and math.isfinite(stats["loss"])


def step_inputs() -> StepInputs:
    out = StepInputs()
    trace = Trace(example_id="q1", program="draft_verify", calls=[
        LMCall(step="draft", messages=[{"role": "user", "content": "draft it"}],
               completion="card_arrival", prompt_tokens=3, completion_tokens=1, latency_s=0.1,
               sampling={}, model="m"),
        LMCall(step="verify", messages=[{"role": "user", "content": "x" * 7000}],
               completion="card_arrival", prompt_tokens=3, completion_tokens=1, latency_s=0.1,
               sampling={}, model="m")])
    teacher = [{"role": "user", "content": "precedents... question"}]
    for kind in ("rollout", "rollout", "harness_path", "rollout"):
        out.add([1, 2], [1, 3, 2], [4, 5], 64,
                source=PairSource(kind, "q1", teacher, trace))
    out.add([1, 2], [1, 2], [6], 64, sft=True, source=PairSource("gold", "g1"))
    return out


def test_pick_keeps_one_of_each_kind_first_and_is_bounded():
    out = step_inputs()
    assert transcripts.pick(out, 3) == [0, 2, 4]  # rollout, harness_path, gold
    assert transcripts.pick(out, 4) == [0, 1, 2, 4]
    assert transcripts.pick(out, 0) == []
    assert transcripts.pick(out, 99) == [0, 1, 2, 3, 4]


def test_rows_carry_prompts_teacher_trace_and_tokens():
    out = step_inputs()
    rep = token_report(torch.zeros(2, 8), torch.tensor([4, 5]), LossConfig(), torch.zeros(2, 8))
    gold = token_report(torch.zeros(1, 8), torch.tensor([6]), LossConfig())
    rows = transcripts.rows(7, out, {0: rep, 4: gold}, CharTokenizer())
    first, last = rows
    assert (first["step"], first["pair"], first["kind"], first["example_id"]) == \
        (7, 0, "rollout", "q1")
    assert first["student_prompt"] == "bc" and first["response"] == "ef"
    assert first["teacher_messages"][0]["content"] == "precedents... question"
    calls = first["trace"]["calls"]
    assert [c["step"] for c in calls] == ["draft", "verify"]
    assert calls[1]["messages"][0]["content"].endswith("[1000 more characters]")
    assert [t["text"] for t in first["tokens"]] == ["e", "f"]
    assert first["tokens"][0]["kl"] == pytest.approx(0.0) and len(
        first["tokens"][0]["teacher_top"]) == 3
    assert last["kind"] == "gold" and last["teacher_messages"] is None and \
        last["trace"] is None and last["tokens"][0]["teacher_top"] is None
    assert last["tokens"][0]["loss"] == pytest.approx(math.log(8), abs=1e-4)


def test_transcripts_after_the_checkpoint_are_cut_on_resume(tiny_model_dir, tmp_path):  # noqa: F811
    run = RunDir(tmp_path, {"lr": 1.0})
    trainer = make_trainer(tiny_model_dir)
    for step in (1, 2, 3):
        trainer.train_step(make_pairs())
        run.log_transcripts([{"step": step, "pair": 0}, {"step": step, "pair": 1}])
        if step == 2:
            run.save_checkpoint(2, trainer, {})
    with open(tmp_path / "transcripts.jsonl", "a") as f:
        f.write('{"step": 4, "pa')  # killed mid-append
    resumed = RunDir(tmp_path, {"lr": 1.0})
    resumed.restore(make_trainer(tiny_model_dir))
    assert [(r["step"], r["pair"]) for r in resumed.transcripts()] == \
        [(1, 0), (1, 1), (2, 0), (2, 1)]


def written_run(tmp_path, tiny_model_dir):  # noqa: F811
    """A run folder with two logged steps and their transcripts (one with hostile text)."""
    from distill.view import write

    out = step_inputs()
    out.sources[0] = PairSource("rollout", "q1", [{"role": "user", "content": "<script>x</script>"}],
                                out.sources[0].trace)
    rep = token_report(torch.zeros(2, 8), torch.tensor([4, 5]), LossConfig(), torch.zeros(2, 8))
    gold = token_report(torch.zeros(1, 8), torch.tensor([6]), LossConfig())
    run = RunDir(tmp_path / "run", {"method": "ophsd", "steps": 2})
    for step in (1, 2):
        run.log_metrics({"step": step, "loss": 0.5 / step, "kl": 0.1, "rollouts": 2,
                         "student_correct": 1, "examples": 2})
        run.log_transcripts(transcripts.rows(step, out, {0: rep, 4: gold}, CharTokenizer()))
    return write(tmp_path / "run")


def test_view_writes_one_static_page_with_every_step_and_token(tmp_path):
    from html.parser import HTMLParser

    page = written_run(tmp_path, None).read_text()

    class Count(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags: dict[str, int] = {}
            self.steps = 0
            self.tokens = 0
            self.sources: list[str] = []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.tags[tag] = self.tags.get(tag, 0) + 1
            self.steps += "step" in (a.get("class") or "").split()
            self.tokens += a.get("class") == "tok"
            self.sources += [v for k, v in attrs if k in ("src", "href") and v]

    parsed = Count()
    parsed.feed(page)
    assert parsed.steps == 2 and parsed.tokens == 2 * 3  # 2 steps x (2 + 1 response tokens)
    assert parsed.tags.get("script", 0) == 0 and "&lt;script&gt;x&lt;/script&gt;" in page
    assert all(s.startswith("data:image/png;base64,") for s in parsed.sources) and parsed.sources
    assert "draft it" in page and "verify" in page  # the trace's calls, in order


def test_view_of_a_folder_that_is_no_run_is_one_error_line(tmp_path, capsys):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "distill.view", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "not a run folder" in proc.stderr + proc.stdout
