"""Methods beyond ophsd: gold_sft targets, ssopd group selection and weights, config rules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from distill.config import RunConfig, parse_args, resolve_loss
from distill.methods import (
    METHODS,
    Collected,
    PairSource,
    add_harness_path,
    group_advantages,
    ssopd_weight,
)
from distill.pairs import StepInputs, gold_target_ids
from distill.run import resolve_sync
from distill.teacher import with_worked_answer
from evals.tasks.base import Example

EOS = 1


class CharTokenizer:
    """One id per character (ord + 10); EOS = 1; a chat template of '<role>content' turns."""

    eos_token_id = EOS

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) + 10 for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i - 10) for i in ids if i != EOS)

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False,
                            continue_final_message=False, **_):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return self.encode(text) if tokenize else text


class LabelTask:
    kind, answer_prefix = "classification", "Label:"

    def reference_text(self, ex: Example) -> str:
        return f"Label: {ex.answer}"

    def grade(self, completion: str, ex: Example) -> float:
        return float(completion.strip().split("\n")[0].strip() == ex.answer)

    def parse(self, completion: str) -> str | None:
        first = completion.strip().split("\n")[0].strip()
        return first if first in ("card_arrival", "lost_card") else None


def completion(text: str, finish_reason: str = "stop") -> SimpleNamespace:
    tok = CharTokenizer()
    ids = tok.encode(text)
    return SimpleNamespace(text=text, token_ids=ids, logprobs=[-0.5] * len(ids),
                           finish_reason=finish_reason)


def test_gold_target_follows_the_prefill_and_ends_with_eos():
    tok, ex = CharTokenizer(), Example("e1", "my card?", "card_arrival")
    ids = gold_target_ids(tok, LabelTask(), ex)
    assert tok.decode(ids) == " card_arrival" and ids[-1] == EOS


@pytest.mark.parametrize(("correct", "total", "weight"),
                         [(0, 4, 0.0), (4, 4, 0.0), (2, 4, 1.0), (1, 4, 0.75), (3, 4, 0.75)])
def test_ssopd_weight_closed_form(correct, total, weight):
    assert ssopd_weight(correct, total) == pytest.approx(weight)


def test_ssopd_distils_shortest_correct_into_longest_wrong():
    tok, task = CharTokenizer(), LabelTask()
    ex = Example("e1", "where is my card", "card_arrival")
    student = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Label:"}]
    student_ids = tok.apply_chat_template(student)
    ctx = SimpleNamespace(tokenizer=tok, task=task, cfg=RunConfig(max_len=4096))
    group = [completion(" card_arrival\nbecause it is late"), completion(" card_arrival"),
             completion(" lost_card"), completion(" card_payment_wrong_amount")]
    out = StepInputs()
    METHODS["ssopd"].add_pairs(ctx, out, Collected(ex, student, student_ids, True,
                                                   rollouts=group))
    assert out.counts["rollouts"] == 4 and out.counts["student_correct"] == 2
    # what the collapse guard reads: every rollout's tokens and whether it parses
    assert out.counts["rollout_tokens"] == sum(len(c.token_ids) for c in group)
    assert out.counts["student_parsed"] == 3  # card_payment_wrong_amount is not a label here
    assert out.counts["ssopd_mixed"] == 1 and out.weights == [pytest.approx(1.0)]
    pair = out.pairs[0]
    assert tok.decode(pair.response_ids) == " card_payment_wrong_amount"  # the longest wrong one
    teacher_text = tok.decode(pair.teacher_ids[: pair.teacher_prompt_len])
    assert "A correct answer" in teacher_text and "card_arrival" in teacher_text
    assert "because" not in teacher_text  # the shortest correct rollout, first line only
    assert teacher_text.endswith("<assistant>Label:")  # the prefill stays last
    assert pair.student_ids[: pair.student_prompt_len] == student_ids


def test_ssopd_group_without_contrast_adds_no_pair():
    tok, task = CharTokenizer(), LabelTask()
    ex = Example("e1", "q", "a")
    ctx = SimpleNamespace(tokenizer=tok, task=task, cfg=RunConfig())
    out = StepInputs()
    student = [{"role": "user", "content": "Q"}]
    METHODS["ssopd"].add_pairs(ctx, out, Collected(
        ex, student, tok.apply_chat_template(student), True,
        rollouts=[completion(" b"), completion(" c")]))
    assert out.pairs == [] and out.counts["rollouts"] == 2 and out.counts["ssopd_mixed"] == 0


def test_worked_answer_context_keeps_student_prompt_as_prefix():
    student = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Label:"}]
    tc = with_worked_answer(student, "x")
    assert tc.messages[0]["content"].startswith("Q\n\n") and tc.messages[-1] == student[-1]
    assert student[0]["content"] == "Q"  # not mutated


def test_loss_and_sync_resolution():
    assert resolve_loss("auto", "classification") == "forward_kl"
    assert resolve_loss("auto", "math") == "reverse_kl"
    assert resolve_loss("jsd", "classification") == "jsd"
    with pytest.raises(ValueError, match="unknown loss"):
        resolve_loss("l2", "math")
    assert resolve_sync("lora", None) == "lora"
    assert resolve_sync("auto", "http://x:8000/v1") == "lora"  # external servers: no reload
    with pytest.raises(ValueError):
        resolve_sync("both", None)


def test_ssopd_needs_a_group():
    with pytest.raises(SystemExit):
        parse_args(["--method", "ssopd", "--rollouts", "1"])
    assert parse_args(["--method", "ssopd", "--rollouts", "4"]).rollouts == 4
    assert parse_args(["--method", "gold_sft"]).method == "gold_sft"


def test_step_inputs_add_counts_a_too_long_context_and_never_cuts():
    out = StepInputs()
    assert out.add([1, 2], [1, 2, 3], [7, 8], max_len=5, weight=0.5, logprobs=[-1.0, -2.0])
    assert not out.add([1, 2], [1, 2, 3, 4], [7, 8], max_len=5)  # teacher side: 6 > 5
    assert out.counts["skipped_too_long"] == 1 and len(out.pairs) == 1
    assert out.pairs[0].teacher_ids == [1, 2, 3, 7, 8] and out.weights == [0.5]
    assert out.sampling_logprobs == [[-1.0, -2.0]]


def test_on_policy_fraction_is_seeded_and_harness_paths_use_the_exact_ids():
    from distill.methods import on_policy_example

    cfg = RunConfig(on_policy_fraction=0.25, seed=3)
    picks = [on_policy_example(cfg, 5, i) for i in range(400)]
    assert picks == [on_policy_example(cfg, 5, i) for i in range(400)]  # resumable
    assert 0.18 < sum(picks) / 400 < 0.32
    assert all(on_policy_example(RunConfig(on_policy_fraction=1.0), 0, i) for i in range(20))

    tok, task = CharTokenizer(), LabelTask()
    task.parse = lambda text: text.strip().split("\n")[0] or None
    ctx = SimpleNamespace(tokenizer=tok, task=task, cfg=RunConfig())
    ids = tok.encode(" card_arrival\nmore")
    final = SimpleNamespace(completion=" card_arrival\nmore", completion_token_ids=ids)
    trace = SimpleNamespace(final_call=lambda: final)
    out = StepInputs()
    add_harness_path(ctx, out, [1, 2], [1, 2, 3], trace, 1.0, PairSource("harness_path"))
    assert tok.decode(out.pairs[0].response_ids) == " card_arrival\n"  # first line, exact ids
    assert out.pairs[0].teacher_ids[:3] == [1, 2, 3] and out.counts["harness_paths"] == 1
    final.completion_token_ids = None  # no recorded ids: never re-tokenized, skipped
    add_harness_path(ctx, out, [1, 2], [1, 2, 3], trace, 1.0, PairSource("harness_path"))
    assert out.counts["harness_paths_skipped"] == 1 and len(out.pairs) == 1


class RecordingClient:
    """A policy client that answers every prompt with " card_arrival\\n" and records requests."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def complete(self, prompt_ids, **kw):
        self.requests.append({"prompt": list(prompt_ids), **kw})
        ids = CharTokenizer().encode(" card_arrival\n")
        return [SimpleNamespace(text=" card_arrival\n", token_ids=ids, logprobs=[-0.1] * len(ids),
                                finish_reason="stop")
                for _ in range(kw.get("n", 1))]


class SizedCharTokenizer(CharTokenizer):
    def __len__(self) -> int:
        return 140

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i - 10) for i in ids if i >= 10)


def label_task_with_prompt() -> LabelTask:
    task = LabelTask()
    task.name = "toy"
    task.parse = lambda text: text.strip().split("\n")[0] or None
    task.student_messages = lambda ex: [{"role": "user", "content": ex.question},
                                        {"role": "assistant", "content": "Label:"}]
    return task


def test_line_end_ids_are_the_tokens_first_line_stops_at():
    from distill.pairs import first_line, line_end_ids

    tok = SizedCharTokenizer()
    assert line_end_ids(tok) == [ord("\n") + 10]
    ids = tok.encode(" a_b\nc")
    assert first_line(tok, ids) == ids[: ids.index(line_end_ids(tok)[0]) + 1]


def test_collect_samples_only_the_examples_it_trains_on_policy(monkeypatch):
    """ophsd with a 1/4 on-policy share asks the server for rollouts of those examples only,
    stopping label answers at the line end; the others train on the harness's own answer."""
    import distill.loop as loop
    from distill.methods import sample_seed

    tok, task = SizedCharTokenizer(), label_task_with_prompt()
    examples = [Example(f"e{i}", f"question {i}", "card_arrival") for i in range(40)]

    monkeypatch.setattr(loop, "run_program", fake_harness_runner(tok, " card_arrival\nmore"))
    cfg = RunConfig(method="ophsd", on_policy_fraction=0.25, seed=1, concurrency=4)
    client = RecordingClient()
    ctx = SimpleNamespace(cfg=cfg, task=task, tokenizer=tok, harness=None, client=client,
                          policy_name="policy", max_new_tokens=24,
                          policy_lm=lambda **kw: None)
    out = loop.collect(ctx, 3, examples)
    chosen = {i for i in range(40) if METHODS["ophsd"].on_policy(cfg, 3, i)}
    assert 0 < len(chosen) < 40
    assert len(client.requests) == len(chosen) == out.counts["rollouts"]
    assert all(r["stop_token_ids"] == [ord("\n") + 10] for r in client.requests)
    assert out.counts["harness_paths"] == 40 - len(chosen) and len(out.pairs) == 40
    assert {r["seed"] for r in client.requests} == {sample_seed(1, 3, i) for i in chosen}


def test_a_prompt_with_no_room_for_an_answer_is_skipped_before_any_request(monkeypatch):
    """Over --max-len with max_new_tokens the server would refuse its rollout (a 400 that
    crashed the step, and the resume drew the same batch): a counted skip instead."""
    import distill.loop as loop

    tok, task = SizedCharTokenizer(), label_task_with_prompt()
    examples = [Example("short", "q", "card_arrival"), Example("long", "q" * 300, "card_arrival")]
    ran = []
    runner = fake_harness_runner(tok, " card_arrival")
    monkeypatch.setattr(loop, "run_program", lambda program, items, **kw: ran.extend(
        ex.id for ex in items) or runner(program, items, **kw))
    client = RecordingClient()
    ctx = SimpleNamespace(cfg=RunConfig(method="ophsd", on_policy_fraction=1.0, max_len=200),
                          task=task, tokenizer=tok, harness=None, client=client,
                          policy_name="policy", max_new_tokens=24, policy_lm=lambda **kw: None)
    out = loop.collect(ctx, 0, examples)
    assert out.counts["skipped_too_long"] == 1 and out.counts["examples"] == 2
    assert ran == ["short"] and len(client.requests) == 1
    assert all(len(r["prompt"]) < 200 for r in client.requests)
    ran.clear()  # an example trained on the harness's answer is sent no rollout: it reaches
    ctx.cfg = RunConfig(method="ophsd", on_policy_fraction=0.0, max_len=400)  # the harness
    out = loop.collect(ctx, 0, examples)
    assert ran == ["short", "long"] and len(client.requests) == 1
    assert out.counts["skipped_too_long"] == 0 and len(out.pairs) == 2


def test_collect_opsd_samples_every_example_and_math_has_no_line_stop():
    import distill.loop as loop

    tok, task = SizedCharTokenizer(), label_task_with_prompt()
    task.kind = "math"
    task.reference_text = lambda ex: "42"
    examples = [Example(f"e{i}", f"q{i}", "42") for i in range(5)]
    client = RecordingClient()
    ctx = SimpleNamespace(cfg=RunConfig(method="opsd", concurrency=2), task=task, tokenizer=tok,
                          client=client, policy_name="policy", max_new_tokens=64)
    out = loop.collect(ctx, 0, examples)
    assert len(client.requests) == 5 and all(r["stop_token_ids"] is None for r in client.requests)
    assert len(out.pairs) == 5


def test_answer_space_resolution():
    from distill.config import resolve_answer_space

    assert resolve_answer_space("auto", "forward_kl", has_answers=True)
    assert not resolve_answer_space("auto", "reverse_kl", has_answers=False)  # math
    assert not resolve_answer_space("auto", "sampled_token", has_answers=True)
    assert not resolve_answer_space("off", "forward_kl", has_answers=True)
    with pytest.raises(ValueError, match="closed answer set"):
        resolve_answer_space("on", "reverse_kl", has_answers=False)
    with pytest.raises(ValueError, match="sampled_token"):
        resolve_answer_space("on", "sampled_token", has_answers=True)
    with pytest.raises(ValueError, match="auto, on or off"):
        resolve_answer_space("yes", "forward_kl", has_answers=True)


def test_step_inputs_cut_a_response_that_leaves_the_answer_space():
    from distill.answer_space import AnswerSpace

    space = AnswerSpace([[5, 6], [5, 7], [8]], end_ids=[2])
    out = StepInputs()
    assert out.add([1], [1, 9], [5, 6, 2], max_len=64, logprobs=[-1.0, -2.0, -3.0], space=space)
    assert out.supports[-1] == [[5, 8], [6, 7], [2]] and out.counts["off_answer_space"] == 0
    assert out.add([1], [1, 9], [5, 4, 4, 2], max_len=64, logprobs=[-1.0] * 4, space=space)
    assert out.pairs[-1].response_ids == [5, 4] and out.sampling_logprobs[-1] == [-1.0, -1.0]
    assert out.supports[-1] == [[5, 8], [6, 7]]
    assert out.counts["off_answer_space"] == 1 and out.counts["answer_space_cut_tokens"] == 2
    out.add([1], [1, 9], [3], max_len=64)  # no space: no support
    assert out.supports[-1] is None


def test_a_teacher_that_reads_the_reference_only_scores_the_students_own_rollouts(capsys):
    """Its answers were written after reading the reference: never a training target."""
    from distill.config import parse_args

    leaky = ["--program", "plan_solve", "--task", "gsm8k", "--harness",
             '{"reference_in_plan": true}']
    for extra in ([], ["--method", "sft", "--on-policy-fraction", "1"]):
        with pytest.raises(SystemExit):
            parse_args([*leaky, *extra])
        assert "reference_in_plan" in capsys.readouterr().err
    assert parse_args([*leaky, "--on-policy-fraction", "1"]).on_policy_fraction == 1.0
    assert parse_args(["--config", "configs/gsm8k_qwen.yaml"]).harness == {"reference_in_plan": True}


def fake_harness_runner(tok, completion: str):
    """A stand-in for `scaffold.executor.run_program`: each item's harness makes one Draft
    call whose request ends in the "Label:" prefill and whose completion is `completion`."""
    from scaffold.executor import ExampleResult
    from scaffold.trace import LMCall, Trace

    def run_program(program, items, **kw):
        out = []
        for item in items:
            request = [{"role": "user", "content": f"precedents...\n{item.question}"},
                       {"role": "assistant", "content": "Label:"}]
            call = LMCall("Draft", request, completion, 5, 5, 0.0, {}, "policy",
                          completion_token_ids=tok.encode(completion))
            out.append(ExampleResult(item, SimpleNamespace(completion=" card_arrival"),
                                     Trace(item.id, "draft_verify", calls=[call])))
        return out

    return run_program


def test_each_method_says_what_it_runs_samples_and_reads():
    flags = {name: (m.runs_harness, m.samples, m.reads_answers, m.has_teacher, m.reads_policy)
             for name, m in METHODS.items()}
    assert flags == {
        "ophsd": (True, True, False, True, True),
        "opsd": (False, True, True, True, True),
        "ssopd": (False, True, True, True, True),
        "sft": (True, False, True, False, True),
        "gold_sft": (False, False, True, False, False),
        "vote_rl": (True, False, False, False, True),
        "gold_rl": (False, True, True, False, True),
    }


def test_a_new_method_is_one_new_object(monkeypatch):
    """A method added to METHODS is accepted by the CLI and driven by the loop: it is asked
    for the pairs of each example, after the rollouts it asked for."""
    import distill.loop as loop
    from distill.methods import Method, add_target

    class Echo(Method):
        name = "echo"
        samples = reads_answers = True
        has_teacher = False

        def add_pairs(self, ctx, out, item):  # train on the student's own first rollout
            add_target(ctx, out, item.student_ids, list(item.rollouts[0].token_ids),
                       PairSource("echo", item.example.id))

    monkeypatch.setitem(METHODS, "echo", Echo())
    cfg = parse_args(["--method", "echo"])
    tok, task = SizedCharTokenizer(), label_task_with_prompt()
    client = RecordingClient()
    ctx = SimpleNamespace(cfg=cfg, task=task, tokenizer=tok, client=client,
                          policy_name="policy", max_new_tokens=24)
    out = loop.collect(ctx, 0, [Example("e0", "q", "card_arrival")])
    assert len(client.requests) == 1 and out.sft == [True]
    assert [s.kind for s in out.sources] == ["echo"]
    assert tok.decode(out.pairs[0].response_ids) == " card_arrival\n"


def test_harness_filter_gold_teaches_the_gold_answer_where_the_harness_is_wrong(monkeypatch,
                                                                                  capsys):
    """--harness-filter gold: an example the harness gets wrong trains its gold answer (a
    counted sft pair, no teacher); one it gets right is distilled as before."""
    import distill.methods as methods

    tok, task = CharTokenizer(), LabelTask()
    distilled = []
    monkeypatch.setattr(methods, "_distill", lambda ctx, out, item, tc, harness_path:
                        distilled.append(item.example.id))
    monkeypatch.setattr(methods.teacher_ctx, "from_trace", lambda *a: None)
    ctx = SimpleNamespace(tokenizer=tok, task=task, cfg=RunConfig(harness_filter="gold"),
                          harness=None)

    def item(example_id: str, harness_says: str) -> Collected:
        final = SimpleNamespace(completion=f" {harness_says}\n")
        trace = SimpleNamespace(final_call=lambda: final, error=None)
        return Collected(Example(example_id, "my card?", "card_arrival"), [], [5, 6],
                         on_policy=False, trace=trace)

    out = StepInputs()
    METHODS["ophsd"].add_pairs(ctx, out, item("wrong", "lost_card"))
    METHODS["ophsd"].add_pairs(ctx, out, item("right", "card_arrival"))
    assert distilled == ["right"] and out.counts["harness_filtered"] == 1
    assert out.sft == [True] and out.sources[0].kind == "gold"
    assert tok.decode(out.pairs[0].response_ids) == " card_arrival"
    off = SimpleNamespace(tokenizer=tok, task=task, cfg=RunConfig(), harness=None)
    METHODS["ophsd"].add_pairs(off, out, item("wrong", "lost_card"))  # default: no filter
    assert distilled == ["right", "wrong"]

    for bad in (["--method", "gold_sft"], ["--labeled-per-class", "10"]):
        with pytest.raises(SystemExit):
            parse_args(["--harness-filter", "gold", *bad])
        assert "--harness-filter gold" in capsys.readouterr().err
    assert parse_args(["--harness-filter", "gold"]).harness_filter == "gold"


def test_harness_rollouts_are_its_samples_of_the_student_prompt_less_the_shown_one(monkeypatch):
    """--harness-rollouts: no new rollout is requested; each example's rollouts are the
    harness's samples whose prompt ids are the student's exact ids, less the one sample the
    teacher is shown; a sample rendered from another prompt is a counted skip."""
    import distill.loop as loop
    from scaffold.chat import render_ids
    from scaffold.executor import ExampleResult
    from scaffold.trace import LMCall, Trace

    tok, task = SizedCharTokenizer(), label_task_with_prompt()
    task.kind = "math"
    examples = [Example(f"e{i}", f"q{i}", "5") for i in range(3)]
    texts = ["5\n", "4\n", "5.\n", "6\n"]  # the first is the one returned (and shown)

    def run_program(program, items, **kw):
        results = []
        for item in items:
            prompt = render_ids(tok, task.student_messages(item))
            calls = [LMCall("solver.answer", task.student_messages(item), t, 5, 2, 0.0, {},
                            "policy", prompt_token_ids=prompt if k < 3 else prompt[1:],
                            completion_token_ids=tok.encode(t)) for k, t in enumerate(texts)]
            results.append(ExampleResult(item, SimpleNamespace(completion=texts[0]), Trace(
                item.id, "self_consistency", calls=calls, outputs={"completion": texts[0]})))
        return results

    def teacher_call(trace):
        call = trace.calls[0]
        shown = [{"role": "user", "content": call.messages[0]["content"] + "\n\nshown: 5"},
                 call.messages[-1]]
        return LMCall("solver.answer", shown, call.completion, 5, 2, 0.0, {}, "policy")

    monkeypatch.setattr(loop, "run_program", run_program)
    client = RecordingClient()
    harness = SimpleNamespace(student_samples=lambda trace: list(trace.calls),
                              teacher_call=teacher_call)
    ctx = SimpleNamespace(cfg=RunConfig(method="ophsd", on_policy_fraction=1.0,
                                                   harness_rollouts=True), task=task,
                          tokenizer=tok, harness=harness, client=client, policy_name="policy",
                          max_new_tokens=24, policy_lm=lambda **kw: None)
    out = loop.collect(ctx, 0, examples)
    assert client.requests == []  # nothing sampled beside the harness
    assert [tok.decode(p.response_ids) for p in out.pairs] == ["4\n", "5.\n"] * 3
    assert out.counts["harness_rollouts_skipped"] == 3 and out.counts["rollouts"] == 6
    shown = render_ids(tok, teacher_call(Trace("e0", "sc", calls=[LMCall(
        "s", task.student_messages(examples[0]), "5\n", 5, 2, 0.0, {}, "policy")])).messages)
    assert out.pairs[0].teacher_ids[:len(shown)] == shown
    student = render_ids(tok, task.student_messages(examples[0]))
    assert out.pairs[0].student_ids[:len(student)] == student
    # sft: each sample that grades correct is a target, the returned one included
    ctx.cfg = RunConfig(method="sft", harness_rollouts=True)
    out = loop.collect(ctx, 0, examples)
    assert [tok.decode(p.response_ids) for p in out.pairs] == ["5\n"] * 3
    assert all(out.sft) and out.counts["rollouts"] == 9 and out.counts["student_correct"] == 3
    assert client.requests == []
    # vote_rl: every sample, the returned one included (no teacher sees it), weighted by its
    # advantage against the harness's answer
    task.parse = lambda text: text.strip().rstrip(".") or None
    ctx.cfg = RunConfig(method="vote_rl", harness_rollouts=True)
    out = loop.collect(ctx, 0, examples)
    assert [tok.decode(p.response_ids) for p in out.pairs] == ["5\n", "4\n", "5.\n"] * 3
    assert out.weights == pytest.approx([1 / 3, -2 / 3, 1 / 3] * 3) and all(out.sft)
    assert client.requests == []


@pytest.mark.parametrize("argv", [["--method", "opsd"], ["--on-policy-fraction", "0.5"],
                                  ["--method", "gold_sft"],
                                  ["--rollouts", "4"], ["--loss", "sampled_token"]])
def test_harness_rollouts_refuse_what_they_cannot_serve(argv, capsys):
    allowed = ["--harness-rollouts", "--on-policy-fraction", "1"]
    assert parse_args(allowed).harness_rollouts
    assert parse_args(["--harness-rollouts", "--method", "sft"]).method == "sft"
    with pytest.raises(SystemExit):
        parse_args([*allowed, *argv])  # the later flag wins
    assert "--harness-rollouts" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--anchor-kl", "-0.5"], ["--anchor-kl", "1", "--method", "sft"],
                                  ["--anchor-kl", "1", "--method", "gold_sft"]])
def test_anchor_kl_refuses_what_it_cannot_weigh(argv, capsys):
    assert parse_args(["--anchor-kl", "1"]).anchor_kl == 1.0
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "--anchor-kl" in capsys.readouterr().err


def test_harness_rollouts_need_a_harness_that_names_its_student_samples(tmp_path, monkeypatch):
    """Checked before any server starts: a harness without student_samples, or one whose
    options sample no student prompt (self_consistency over plan_solve), is one clear error."""
    from distill.run import check_student_samples
    from harnesses import build_harness
    from scaffold.errors import ScaffoldError
    from tests.fakes import two_plus_three

    task = two_plus_three(tmp_path, monkeypatch)
    check_student_samples(build_harness("self_consistency", task, solver="none"), "sc")
    with pytest.raises(ScaffoldError, match="--harness-rollouts: self_consistency samples the "
                                            "student's prompt only with solver 'none'"):
        check_student_samples(build_harness("self_consistency", task), "self_consistency")
    with pytest.raises(ScaffoldError, match="'plan_solve' does not say which of its calls"):
        check_student_samples(build_harness("plan_solve", task), "plan_solve")


@pytest.mark.parametrize(("rewards", "advantages"), [
    ([1, 1, 0, 0], [0.5, 0.5, -0.5, -0.5]),
    ([1, 0, 0, 0], [0.75, -0.25, -0.25, -0.25]),
    ([1, 1], [0.0, 0.0]),  # a group that agrees: no signal
    ([0, 0], [0.0, 0.0]),
])
def test_group_advantages_closed_form(rewards, advantages):
    assert group_advantages(rewards) == pytest.approx(advantages)


def test_vote_rl_weights_each_harness_sample_by_its_advantage_and_reads_no_gold():
    """vote_rl: each of the harness's samples is a cross-entropy pair on its own ids after
    the bare prompt, weighted by reward - mean reward (reward: its answer is the harness's);
    an unlabelled pool question trains (nothing grades it); a weak vote trains nothing."""
    from scaffold.trace import Trace
    from scaffold.types import Question

    tok, task = CharTokenizer(), LabelTask()
    question = Question("q1", "where is my card")
    student = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Label:"}]
    student_ids = tok.apply_chat_template(student)
    ctx = SimpleNamespace(tokenizer=tok, task=task, cfg=RunConfig(max_len=4096))
    group = [completion(" card_arrival"), completion(" lost_card"),
             completion(" card_arrival\nsure"), completion(" no_idea", finish_reason="length")]
    item = Collected(question, student, student_ids, True, trace=Trace("q1", "sc"),
                     harness_answer="card_arrival", rollouts=group)
    out = StepInputs()
    METHODS["vote_rl"].add_pairs(ctx, out, item)
    assert [tok.decode(p.response_ids) for p in out.pairs] == [
        " card_arrival", " lost_card", " card_arrival\nsure", " no_idea"]
    assert out.weights == pytest.approx([0.5, -0.5, 0.5, -0.5]) and all(out.sft)
    assert all(p.student_ids[: p.student_prompt_len] == student_ids for p in out.pairs)
    assert out.counts["rewarded"] == 2 and out.counts["penalized"] == 2
    assert out.counts["rollouts"] == 4 and out.counts["student_parsed"] == 3
    assert out.counts["rollouts_cut"] == 1  # the one that ran into max_new_tokens
    assert out.counts["student_correct"] == 0  # a pool question is never graded

    weak = Trace("q1", "sc", fallbacks=[{"kind": "weak_vote", "screening": True}])
    out = StepInputs()
    METHODS["vote_rl"].add_pairs(ctx, out, Collected(
        question, student, student_ids, True, trace=weak, harness_answer="card_arrival",
        rollouts=group))
    assert out.pairs == [] and out.counts["skipped_fallback"] == 1
    assert out.counts["rollouts"] == 4  # still watched by the collapse guard


def test_vote_rl_needs_the_harness_samples(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--method", "vote_rl"])
    assert "--harness-rollouts" in capsys.readouterr().err
    assert parse_args(["--method", "vote_rl", "--harness-rollouts"]).method == "vote_rl"
    with pytest.raises(SystemExit):
        parse_args(["--method", "vote_rl", "--harness-rollouts", "--anchor-kl", "1"])


def test_gold_rl_rewards_the_rollouts_that_grade_correct():
    tok, task = CharTokenizer(), LabelTask()
    ex = Example("e1", "where is my card", "card_arrival")
    student = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Label:"}]
    ctx = SimpleNamespace(tokenizer=tok, task=task, cfg=RunConfig(max_len=4096))
    group = [completion(" card_arrival"), completion(" lost_card"), completion(" lost_card"),
             completion(" lost_card")]
    out = StepInputs()
    METHODS["gold_rl"].add_pairs(ctx, out, Collected(ex, student, tok.apply_chat_template(student),
                                                     True, rollouts=group))
    assert out.weights == pytest.approx([0.75, -0.25, -0.25, -0.25]) and all(out.sft)
    assert out.counts["student_correct"] == 1 and out.counts["rewarded"] == 1
    with pytest.raises(SystemExit):
        parse_args(["--method", "gold_rl"])  # one rollout: no group to compare
    assert parse_args(["--method", "gold_rl", "--rollouts", "8"]).rollouts == 8
