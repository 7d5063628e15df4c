"""Harness programs on a scripted LM: prompts, gating, fallbacks, traces, the executor."""

import json
import threading
import time

import dspy
import pytest

from evals.tasks import get_task
from harnesses import build_harness
from harnesses.plan_solve import hide_results
from scaffold.embeddings import HashingEmbedder
from scaffold.executor import run_program
from scaffold.precedents import PrecedentIndex
from scaffold.types import Example
from tests.fakes import ScriptedLM, two_plus_three

TRAIN = [("my card has not arrived yet", "card_arrival"),
         ("when will my card arrive", "card_arrival"),
         ("card still not arrived after a week", "card_arrival"),
         ("what is the exchange rate today", "exchange_rate"),
         ("exchange rate for euros", "exchange_rate"),
         ("my top up failed", "top_up_failed"),
         ("top up did not work", "top_up_failed")]


@pytest.fixture
def task(tmp_path, monkeypatch):
    train = tmp_path / "train.csv"
    test = tmp_path / "test.csv"
    train.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in TRAIN))
    test.write_text("text,label\nhas my card arrived,card_arrival\n")
    monkeypatch.chdir(tmp_path)
    return get_task("classification:train.csv,test.csv")


@pytest.fixture
def bank(task):
    train = task.load("train")
    return PrecedentIndex.build([e.id for e in train], [e.question for e in train],
                                [task.label_of(e) for e in train], HashingEmbedder(),
                                progress=False)


def ex(question, answer="card_arrival", id_="t/1"):
    return Example(id=id_, question=question, answer=answer)


def run(program, example, respond, sees_settings=False, temperature=0.0):
    from scaffold.trace import TraceCollector

    lm = ScriptedLM(respond, sees_settings, temperature)
    with dspy.context(lm=lm, adapter=__import__("scaffold.adapter").adapter.PlainChatAdapter()):
        with TraceCollector().trace(example.id, program, {"question": example.question}) as tr:
            pred = program(example=example)
    return pred, tr, lm


def test_bare_is_the_student_prompt(task):
    program = build_harness("none", task)
    example = ex("has my card arrived")
    pred, tr, lm = run(program, example, lambda m: " card_arrival\nmore")
    assert lm.requests == [task.student_messages(example)]
    assert pred.answer == "card_arrival"
    assert tr.step_names() == ["answer"]


def test_draft_agreeing_with_vote_skips_verify(task, bank):
    program = build_harness("draft_verify", task, index=bank, verify="disagree")
    example = ex("my card has not arrived", id_="x")
    pred, tr, lm = run(program, example, lambda m: " card_arrival")
    assert len(lm.requests) == 1 and tr.step_names() == ["draft"]
    draft = lm.requests[0]
    assert draft[-1] == {"role": "assistant", "content": task.answer_prefix}  # answer contract
    user = draft[0]["content"]
    assert "Message: my card has not arrived yet\nLabel: card_arrival" in user
    assert user.rstrip().endswith(task.format_instruction())
    assert pred.answer == "card_arrival" and pred.verified is False


def test_disagreeing_draft_is_verified_with_candidates_by_similarity(task, bank):
    program = build_harness("draft_verify", task, index=bank, verify="disagree")
    example = ex("my card has not arrived", id_="x")

    def respond(messages):
        return " exchange_rate" if "first guess" not in messages[0]["content"] else " card_arrival"

    pred, tr, lm = run(program, example, respond)
    assert tr.step_names() == ["draft", "verify"]
    verify = lm.requests[1][0]["content"]
    assert "A first guess was: exchange_rate" in verify
    lines = [line for line in verify.splitlines() if line[:1].isdigit()]
    labels = [line.split(". ", 1)[1].split(" ")[0] for line in lines]
    assert labels[0] == "card_arrival"  # the most similar candidate comes first
    assert "exchange_rate" in labels and len(set(labels)) == len(labels)
    shown = lines[labels.index("exchange_rate")]  # the draft's label with k_confirm examples
    assert '"what is the exchange rate today"' in shown and '"exchange rate for euros"' in shown
    assert all(line.count('"') == 2 for line in lines if line is not shown)  # one per challenger
    assert pred.answer == "card_arrival" and pred.draft == "exchange_rate"
    assert list(tr.graph().successors("input"))  # data flowed from the input into the steps


def test_self_exclusion_in_draft(task, bank):
    train = task.load("train")
    program = build_harness("draft_verify", task, index=bank, verify="never")
    _, _, lm = run(program, train[0], lambda m: " card_arrival")
    assert f"Message: {train[0].question}\nLabel" not in lm.requests[0][0]["content"]


def test_empty_bank_falls_back_to_bare_prompt(task):
    empty = PrecedentIndex.build([], [], [], HashingEmbedder(), progress=False)
    program = build_harness("draft_verify", task, index=empty)
    example = ex("has my card arrived")
    pred, tr, lm = run(program, example, lambda m: " card_arrival")
    assert lm.requests == [task.student_messages(example)]
    assert [f["kind"] for f in tr.fallbacks] == ["empty_bank"]
    assert tr.answer_fell_back()  # an evaluation counts it: the answer is the bare one


def test_plan_solve_prompts_and_empty_plan(tmp_path, monkeypatch):
    task = two_plus_three(tmp_path, monkeypatch)
    example = task.load("test")[0]
    program = build_harness("plan_solve", task)

    def respond(messages):
        if messages[-1]["content"].startswith("Plan:"):
            return " Add the numbers.\n2. Report."
        return "2+3=5. The answer is \\boxed{5}."

    pred, tr, lm = run(program, example, respond)
    assert tr.step_names() == ["plan", "solve"]
    solve = lm.requests[1]
    bare = task.student_messages(example)
    assert solve[0]["content"].startswith(bare[0]["content"])
    assert "Follow this plan:\n1. Add the numbers.\n2. Report." in solve[0]["content"]
    assert solve[1:] == bare[1:]
    assert pred.answer is not None and task.grade(pred.completion, example) == 1.0
    assert tr.fallbacks == []

    short = build_harness("plan_solve", task, max_plan_chars=12)  # a cut plan is counted
    pred, tr, lm = run(short, example, respond)
    assert pred.plan == "1. Add the n" and [f["kind"] for f in tr.fallbacks] == ["plan_truncated"]

    pred, tr, lm = run(program, example, lambda m: "" if m[-1]["content"].startswith("Plan:")
                       else "The answer is \\boxed{4}.")
    assert "empty_plan" in [f["kind"] for f in tr.fallbacks]
    assert lm.requests[1] == task.student_messages(example)
    assert task.grade(pred.completion, example) == 0.0


def test_executor_keeps_order_isolates_traces_and_survives_failures(task):
    program = build_harness("none", task)
    examples = [ex(f"question number {i}", id_=f"q{i}") for i in range(24)]
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def respond(messages):
        text = messages[0]["content"]
        i = int(text.split("question number ")[1].split()[0])
        with lock:
            attempts[i] = attempts.get(i, 0) + 1
            n = attempts[i]
        time.sleep(0.002 * (i % 5))
        if i == 3:
            raise RuntimeError("server exploded")  # fails every attempt
        if i == 5 and n == 1:
            raise RuntimeError("transient")  # succeeds on retry
        return f" label_{i}"

    results = run_program(program, examples, lm=ScriptedLM(respond), concurrency=8,
                          max_attempts=2, backoff_s=0.0, progress=False)
    assert [r.example.id for r in results] == [e.id for e in examples]
    for i, r in enumerate(results):
        if i == 3:
            assert r.failed and "server exploded" in r.error and r.trace.error
            continue
        assert not r.failed
        assert r.prediction.completion == f" label_{i}"
        assert len(r.trace.calls) == 1 and f"question number {i}" in \
            r.trace.calls[0].messages[0]["content"]
    assert results[5].attempts == 2


def test_executor_stops_the_run_when_the_server_is_unreachable(task):
    """A dead server is not a wrong answer: the run ends with the client's error and the
    queued examples never start (they used to score 0 each and the run exited 0)."""
    from scaffold.errors import PolicyServerUnreachable

    program = build_harness("none", task)
    examples = [ex(f"question number {i}", id_=f"q{i}") for i in range(40)]
    started = []

    def respond(messages):
        i = int(messages[0]["content"].split("question number ")[1].split()[0])
        started.append(i)
        if i == 2:
            raise PolicyServerUnreachable("policy server at http://x unreachable after 4 attempts")
        time.sleep(0.01)
        return " card_arrival"

    with pytest.raises(PolicyServerUnreachable, match="unreachable after 4 attempts"):
        run_program(program, examples, lm=ScriptedLM(respond), concurrency=2, max_attempts=3,
                    backoff_s=0.0, progress=False)
    assert started.count(2) == 1  # not retried by the executor: the client retried already
    assert len(started) < len(examples)


def test_self_consistency_votes(tmp_path, monkeypatch):
    task = two_plus_three(tmp_path, monkeypatch)
    example = task.load("test")[0]
    answers = iter(["\\boxed{5}", "\\boxed{4}", "\\boxed{5}"])

    def respond(messages):
        if messages[-1]["content"].startswith("Plan:"):
            return " add"
        return f"The answer is {next(answers)}."

    program = build_harness("self_consistency", task, n=3)
    pred, tr, lm = run(program, example, respond)
    assert pred.answer == task.parse("\\boxed{5}") and sum(pred.votes.values()) == 3
    assert sorted(tr.step_names()) == ["solver.plan"] * 3 + ["solver.solve"] * 3


def test_self_consistency_over_the_bare_prompt_samples_it_with_distinct_rollouts(
        tmp_path, monkeypatch):
    task = two_plus_three(tmp_path, monkeypatch)
    example = task.load("test")[0]
    answers = iter(["\\boxed{4}", "\\boxed{5}", "\\boxed{5}", "\\boxed{4}", "\\boxed{5}"])
    asked = []

    def respond(messages):
        asked.append(messages)
        return f"The answer is {next(answers)}."

    program = build_harness("self_consistency", task, n=5, solver="none")
    pred, tr, _ = run(program, example, respond)
    assert pred.answer == task.parse("\\boxed{5}") and pred.votes == {
        task.parse("\\boxed{5}"): 3, task.parse("\\boxed{4}"): 2}
    assert pred.completion == "The answer is \\boxed{5}."
    assert tr.step_names() == ["solver.answer"] * 5
    assert all(m == task.student_messages(example) for m in asked)  # the bare prompt itself
    with pytest.raises(ValueError, match="solver='none' takes no plan_solve options: max_plan_chars"):
        build_harness("self_consistency", task, solver="none", max_plan_chars=64)
    with pytest.raises(ValueError, match="'plan_solve' or 'none'"):
        build_harness("self_consistency", task, solver="program_solve")


def test_self_consistency_teaches_with_the_winning_sample(tmp_path, monkeypatch):
    """The teacher sees the request of the sample that won the vote (its plan), not the
    last sample's, in both teacher policies."""
    from distill.teacher import from_trace

    task = two_plus_three(tmp_path, monkeypatch)
    example = task.load("test")[0]
    plans = iter([" count up", " count up", " guess"])  # taken in whatever order samples ask
    lock = threading.Lock()

    def respond(messages):
        if messages[-1]["content"].startswith("Plan:"):
            with lock:
                return next(plans)
        return "The answer is \\boxed{5}." if "count up" in str(messages) else \
            "The answer is \\boxed{6}."

    program = build_harness("self_consistency", task, n=3)
    pred, tr, _ = run(program, example, respond)
    tr.outputs = {"answer": pred.answer, "completion": pred.completion}  # as the executor does
    assert pred.completion == "The answer is \\boxed{5}." and pred.votes == {"5": 2, "6": 1}
    student = task.student_messages(example)
    chosen = from_trace(tr, student, teacher_call=program.teacher_call)
    assert "count up" in str(chosen.messages) and "guess" not in str(chosen.messages)
    # default: the final call, the last one whose completion the program returned
    assert tr.final_call().completion == pred.completion
    assert "count up" in str(from_trace(tr, student).messages)
    replay = from_trace(tr, student, "transcript", teacher_call=program.teacher_call)
    assert replay.messages[-1] == chosen.messages[-1]


def test_self_consistency_over_the_bare_prompt_teaches_with_the_winning_solution(
        tmp_path, monkeypatch):
    """A bare sample's request is the student's prompt (no signal): the teacher sees that
    prompt with the winning solution and the vote count after the question, in both
    teacher policies, and the answer contract holds."""
    from distill.teacher import from_trace

    task = two_plus_three(tmp_path, monkeypatch)
    example = task.load("test")[0]
    answers = iter(["2+3=5. The answer is \\boxed{5}.", "2+3=6. The answer is \\boxed{6}.",
                    "Adding: 5. The answer is \\boxed{5}."])
    lock = threading.Lock()

    def respond(messages):
        with lock:
            return next(answers)

    program = build_harness("self_consistency", task, n=3, solver="none")
    pred, tr, _ = run(program, example, respond)
    tr.outputs = {"answer": pred.answer, "completion": pred.completion}
    student = task.student_messages(example)
    assert from_trace(tr, student).fallback  # the bare request itself: no signal
    chosen = from_trace(tr, student, teacher_call=program.teacher_call)
    assert not chosen.fallback and chosen.messages[:-1] == student[:-1]
    assert chosen.messages[-1]["content"] == (
        f"{student[-1]['content']}\n\n2 of 3 sampled solutions reached the same final answer. "
        f"One of them (use it, do not mention it):\n{pred.completion}")
    assert pred.answer == "5" and "boxed{5}" in pred.completion
    replay = from_trace(tr, student, "transcript", teacher_call=program.teacher_call)
    assert replay.messages == chosen.messages  # a built request stands alone


def test_self_consistency_teacher_sees_the_winning_working_without_its_answer_sentence(
        tmp_path, monkeypatch):
    """teacher_sees="working": the winning solution loses the sentence that states its
    final answer, whether on its own line, in a display, or after working on the same
    line; a solution that is only that sentence, or has none at its end, leaves the
    student's request, a fallback (no signal)."""
    from distill.teacher import from_trace
    from harnesses.self_consistency import without_final_answer

    task = two_plus_three(tmp_path, monkeypatch)
    example = task.load("test")[0]
    student = task.student_messages(example)
    solutions = {
        "Add them:\n2 + 3 = 5\n\nSo the sum is \\(\\boxed{5}\\).": "Add them:\n2 + 3 = 5",
        "2+3=5. The answer is \\boxed{5}.": "2+3=5.",
        "The answer is \\boxed{5}.": "",
    }
    for solution, working in solutions.items():
        assert without_final_answer(solution) == working
        program = build_harness("self_consistency", task, n=2, solver="none",
                                teacher_sees="working")
        pred, tr, _ = run(program, example, lambda messages, s=solution: s)
        tr.outputs = {"answer": pred.answer, "completion": pred.completion}
        chosen = from_trace(tr, student, teacher_call=program.teacher_call)
        if not working:
            assert chosen.fallback
            continue
        assert not chosen.fallback and chosen.messages[:-1] == student[:-1]
        assert chosen.messages[-1]["content"] == (
            f"{student[-1]['content']}\n\n2 of 2 sampled solutions reached the same final "
            f"answer. The working of one of them, without its final answer sentence (use it, "
            f"do not mention it):\n{working}")
    cuts = {
        "So the answer is 5. Hence \\boxed{5}.": "",  # the first statement on the line
        "2+3=5\nSo the final answer is:\n\\[\n\\boxed{5}\n\\]\n": "2+3=5",  # a display
        "2+3=5\r\nThe answer is 5.\r\n": "2+3=5",
        "We see the answer isn't 4.\n2+3=5. The answer is 5.": "We see the answer isn't 4.\n2+3=5.",
        "The answer is 5.\n\nExplanation: 2+3=5": "",  # stated first: no final sentence
        "Step 1: \\boxed{3} apples\nSo she has 5 apples.": "",  # working after a \\boxed
        "2+3=5, no statement\n": "",
    }
    assert {solution: without_final_answer(solution) for solution in cuts} == cuts
    with pytest.raises(ValueError, match="'solution' or 'working', got 'answer'"):
        build_harness("self_consistency", task, solver="none", teacher_sees="answer")
    with pytest.raises(ValueError, match="teacher_sees='working' needs solver='none'"):
        build_harness("self_consistency", task, teacher_sees="working")


def test_draft_verify_prepare_embeds_all_questions_in_one_batch(task, bank):
    calls = []
    inner = bank.embedder

    class Counting:
        dim = inner.dim

        def encode(self, texts, batch_size=64, progress=False):
            calls.append(list(texts))
            return inner.encode(texts, batch_size=batch_size, progress=progress)

    bank.embedder = Counting()
    program = build_harness("draft_verify", task, index=bank, verify="never")
    examples = [ex(f"my card number {i} has not arrived", id_=f"q{i}") for i in range(5)]
    results = run_program(program, examples, lm=ScriptedLM(lambda m: " card_arrival"),
                          concurrency=4, progress=False)
    assert [len(c) for c in calls] == [5]  # one batch; every search hit the cache
    assert all(r.prediction.answer == "card_arrival" for r in results)


def test_draft_prompt_task_puts_precedents_inside_the_bare_prompt(task, bank):
    from harnesses.draft_verify import DraftVerify

    example = ex("has my card arrived")
    bare = task.student_messages(example)[0]["content"]
    head = bare.split("Text:")[0]  # the label listing, before the question
    for mode in ("task", "short"):
        seen = []
        program = DraftVerify(task, bank, verify="never", draft_prompt=mode)
        pred, _, _ = run(program, example, lambda m, seen=seen: seen.append(m) or " card_arrival")
        assert pred.answer == "card_arrival"
        user = next(m["content"] for m in seen[0] if m["role"] == "user")
        assert "card_arrival" in user and "Label: card_arrival" in user  # precedents shown
        if mode == "task":  # the student's own prompt with the evidence block inserted
            assert user.startswith(head) and user.endswith(bare[len(head):])
        else:
            assert not user.startswith(head)
    with pytest.raises(ValueError, match="draft_prompt"):
        DraftVerify(task, bank, draft_prompt="long")


def test_label_answers_stop_at_the_line_end(task, bank):
    """Every step that writes a label asks the engine to stop at the line end (the parser
    reads the first line only); math steps do not."""
    program = build_harness("draft_verify", task, index=bank, verify="always")
    _, trace, lm = run(program, ex("has my card arrived"), lambda m: " card_arrival")
    assert [k.get("stop") for k in lm.request_kwargs] == [["\n"], ["\n"]]
    _, _, lm = run(build_harness("none", task), ex("has my card arrived"),
                   lambda m: " card_arrival")
    assert lm.request_kwargs[0].get("stop") == ["\n"]
    assert get_task("gsm8k").stop is None


def test_hide_results_masks_numbers_the_question_lacks():
    question = "Amber ran 8 miles of 52. Micah ran 3.5 times what Amber ran. Total 1,200?"
    plan = ("1. Amber ran 8 miles.\n2. Micah ran 3.5 * 8 = 28 miles.\n"
            "3. Ahito ran 52 - 8 - 28 = 16 miles, of 1200 or 52.0 (x2).")
    assert hide_results(plan, question) == (
        "1. Amber ran 8 miles.\n2. Micah ran 3.5 * 8 = ? miles.\n"
        "3. Ahito ran 52 - 8 - ? = ? miles, of 1200 or 52.0 (x2).")


def test_plan_solve_hides_plan_results_from_the_solve_step(tmp_path, monkeypatch):
    (tmp_path / "m.jsonl").write_text(
        '{"question": "Tom has 2 bags of 3 apples. How many?", "answer": "6", '
        '"solution": "2 * 3 = 6"}\n')
    monkeypatch.chdir(tmp_path)
    task = get_task("math:m.jsonl,m.jsonl")
    example = task.load("test")[0]
    program = build_harness("plan_solve", task, reference_in_plan=True, hide_plan_results=True)
    _, _, lm = run(program, example, lambda m: " Multiply 2 * 3 = 6.\n2. Answer 6."
                   if m[-1]["content"].startswith("Plan:") else "The answer is \\boxed{6}.")
    assert "2 * 3 = 6" in lm.requests[0][0]["content"]  # the plan step reads the reference
    assert "Follow this plan:\n1. Multiply 2 * 3 = ?.\n2. Answer ?." in lm.requests[1][0]["content"]


def test_default_draft_lists_three_precedents_most_similar_next_to_the_message(task, bank):
    """SmolLM2 copies the label nearest the message (0.743 vs 0.663 first, 770-label bank):
    the default lists k=3 precedents in ascending similarity and does not verify."""
    program = build_harness("draft_verify", task, index=bank)
    example = ex("my card has not arrived", id_="x")
    _, tr, lm = run(program, example, lambda m: " exchange_rate")  # disagrees: still no verify
    assert tr.step_names() == ["draft"]
    shown = [line.removeprefix("Message: ") for line in lm.requests[0][0]["content"].splitlines()
             if line.startswith("Message: ")][:-1]  # the last Message: is the question
    nearest = [p.text for p in bank.search(example.question, 3, exclude_ids=["x"])]
    assert shown == nearest[::-1] and len(shown) == 3
    flipped = build_harness("draft_verify", task, index=bank, order="similar_first")
    _, _, lm = run(flipped, example, lambda m: " card_arrival")
    assert [line.removeprefix("Message: ") for line in lm.requests[0][0]["content"].splitlines()
            if line.startswith("Message: ")][:-1] == nearest


def test_a_users_own_harness_loads_by_module_path(tmp_path, monkeypatch, task):
    """--program package.module:Name reaches a harness in the user's code, in every CLI."""
    import sys

    from harnesses import ProgramSpecError, load_program
    from harnesses import needs_index as program_needs_index

    (tmp_path / "my_harnesses.py").write_text(
        "import dspy\n"
        "from harnesses import Bare\n"
        "class Shout(dspy.Module):\n"
        "    needs_index = True\n"
        "    def __init__(self, task, index=None, **options):\n"
        "        super().__init__()\n"
        "        self.bare = Bare(task)\n"
        "        self.options = options\n"
        "    def forward(self, example):\n"
        "        return self.bare(example=example)\n"
        "def not_a_module(task, index=None, **options):\n"
        "    return 42\n")
    import harnesses

    monkeypatch.setattr(harnesses, "HARNESSES", dict(harnesses.HARNESSES))  # leave no entry
    monkeypatch.setattr(harnesses, "NEEDS_INDEX", set(harnesses.NEEDS_INDEX))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_harnesses", raising=False)
    assert load_program("my_harnesses:Shout") == "my_harnesses:Shout"
    assert program_needs_index("my_harnesses:Shout")
    program = build_harness("my_harnesses:Shout", task, index=object(), loud=True)
    assert program.options == {"loud": True}
    pred, _, _ = run(program, ex("my card has not arrived"), lambda m: " card_arrival")
    assert pred.answer == "card_arrival"
    with pytest.raises(ProgramSpecError, match="returned a int, not a dspy.Module"):
        build_harness("my_harnesses:not_a_module", task)
    with pytest.raises(ProgramSpecError, match="has no class or factory 'Missing'"):
        load_program("my_harnesses:Missing")
    with pytest.raises(ProgramSpecError, match="cannot import 'no_such_module'"):
        load_program("no_such_module:X")


def test_program_solve_runs_the_programs_votes_and_solves_with_the_winner(tmp_path, monkeypatch):
    """Each sampled program runs in the sandbox; the most printed number wins, and the
    final (teacher) request is the bare prompt plus the first winning program and its
    result."""
    task = two_plus_three(tmp_path, monkeypatch)
    example = task.load("test")[0]
    programs = iter(["x = 2 + 3\nprint(x)\n```\nmore text", "print(2 * 3 - 2)```",
                     "print(10 / 2)```"])

    def respond(messages):
        if messages[-1]["content"] == "```python\n":
            return next(programs)
        return "2 + 3 = 5. The answer is \\boxed{5}."

    program = build_harness("program_solve", task, n=3)
    pred, tr, lm = run(program, example, respond)
    assert tr.step_names() == ["write"] * 3 + ["solve"]
    assert pred.votes == {"5": 2, "4": 1} and pred.result == "5"
    assert pred.program == "x = 2 + 3\nprint(x)"  # the first winner, fence and tail cut
    final = lm.requests[-1]
    assert final == task.student_messages(example, evidence=(
        "A Python program written for this problem:\n```python\nx = 2 + 3\nprint(x)\n```\n"
        "It printed: 5"))
    assert pred.answer == task.parse("\\boxed{5}")
    # the OPHSD teacher's context is that request: the student's prompt plus the evidence
    from distill.teacher import from_trace

    tc = from_trace(tr, task.student_messages(example))
    assert tc.messages == final and not tc.fallback
    assert [k.get("temperature") for k in lm.request_kwargs[:3]] == [0.7] * 3
    assert "Problem: What is 2+3?" in lm.requests[0][0]["content"]  # after the worked examples


def test_program_solve_falls_back_to_the_bare_prompt_when_no_program_prints(tmp_path,
                                                                            monkeypatch):
    from harnesses.program_solve import printed_number

    task = two_plus_three(tmp_path, monkeypatch)
    example = task.load("test")[0]

    def respond(messages):
        if messages[-1]["content"] == "```python\n":
            return "import os\nos.system('rm -rf /')\n```"  # refused by the sandbox
        return "The answer is \\boxed{5}."

    pred, tr, lm = run(build_harness("program_solve", task), example, respond)
    assert pred.program is None and tr.step_names() == ["write", "bare"]
    assert [f["kind"] for f in tr.fallbacks] == ["program_failed"]
    assert lm.requests[-1] == task.student_messages(example)
    from distill.teacher import from_trace  # no program: no privileged signal, a skipped pair

    assert from_trace(tr, task.student_messages(example)).fallback
    assert [printed_number(s) for s in ("12.0\n", "a 1,200 b", "3.50", "none")] == \
        ["12", "1200", "3.5", None]
    with pytest.raises(ValueError, match="math tasks"):
        build_harness("program_solve", get_task("classification:train.csv,test.csv"))


def test_annotated_program_turns_calculations_into_steps_that_print_the_answer():
    from harnesses.program_solve import annotated_program

    steps = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
             "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.")
    assert annotated_program(steps, "72") == (
        "# Natalia sold 48/2 = 24 clips in May.\nstep1 = 48/2\n"
        "# Natalia sold 48+24 = 72 clips altogether in April and May.\nstep2 = 48+step1\n"
        "print(step2)")
    assert annotated_program(steps, "71") is None  # it would not print the gold answer
    assert annotated_program("It costs <<open('x')=1>>1.", "1") is None  # not arithmetic
    assert annotated_program("No calculation here.", "3") is None


def gsm8k_with_bank(root, rows: list[dict]):
    """A GSM8K task over `rows` as its train split (and one other test item), its train
    examples and their precedent index."""
    (root / "gsm8k").mkdir()
    (root / "gsm8k" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "gsm8k" / "test.jsonl").write_text(json.dumps(
        {"question": "Bob has 2 pears and buys 2 more. How many pears?", "answer": "#### 4"}))
    task = get_task("gsm8k", data_root=root)
    train = task.load("train")
    return task, train, PrecedentIndex.build([e.id for e in train], [e.question for e in train],
                                             [None] * len(train), HashingEmbedder(),
                                             progress=False)


def test_program_precedents_shows_the_nearest_training_solutions_as_programs(tmp_path):
    """The Program request shows the nearest training problems (never the question itself)
    with their annotated solutions as programs, most similar last; a precedent whose
    solution does not convert is passed over."""
    rows = [{"question": "Ann has 3 apples and buys 4 more. How many apples?",
             "answer": "3+4 = <<3+4=7>>7 apples.\n#### 7"},
            {"question": "Ann has 3 apples and buys 5 more apples. How many apples now?",
             "answer": "Ann has 3+5 = <<3+5=8>>8.\nDoubled: <<8*2=16>>16.\n#### 16"},
            {"question": "Ann has 3 apples and buys 6 more apples. How many apples?",
             "answer": "Nothing to compute.\n#### 9"},
            {"question": "A train goes 60 miles an hour for 2 hours. How far?",
             "answer": "60*2 = <<60*2=120>>120 miles.\n#### 120"}]
    task, train, bank = gsm8k_with_bank(tmp_path, rows)
    # a training question: its own solution must not be shown
    example = next(e for e in train if "buys 4 more" in e.question)

    def respond(messages):
        if messages[-1]["content"] == "```python\n":
            return "print(3 + 4)```"
        return "3 + 4 = 7. The answer is 7."

    program = build_harness("program_precedents", task, index=bank, precedents=2)
    pred, tr, lm = run(program, example, respond)
    prompt = lm.requests[0][0]["content"]
    assert "How many apples?\n```" not in prompt.split("Problem: ")[-2]  # not itself
    assert "buys 6 more" not in prompt  # no program in its solution: passed over
    shown = [block.split("\n")[0] for block in prompt.split("Problem: ")[1:]]
    assert shown[-1] == example.question and len(shown) == 3
    assert "buys 5 more" in shown[1]  # the most similar precedent right before the problem
    assert "step2 = step1*2\nprint(step2)" in prompt
    assert pred.result == "7" and tr.step_names() == ["write", "solve"]
    with pytest.raises(ValueError, match="precedent index"):
        build_harness("program_solve", task, precedents=2)


def test_precedent_solve_shows_the_nearest_solved_problems_before_the_question(tmp_path):
    """One request: the student's prompt with the nearest training problems (never the
    question itself; none without a solution) and their reference solutions as evidence,
    most similar last; that request is the OPHSD teacher's context."""
    rows = [{"question": "Ann has 3 apples and buys 4 more. How many apples?",
             "answer": "3+4 = <<3+4=7>>7 apples.\n#### 7"},
            {"question": "Ann has 3 apples and buys 5 more apples. How many apples now?",
             "answer": "She has 3+5 = <<3+5=8>>8 apples.\n#### 8"},
            {"question": "A train goes 60 miles an hour for 2 hours. How far?",
             "answer": "60*2 = <<60*2=120>>120 miles.\n#### 120"}]
    task, train, bank = gsm8k_with_bank(tmp_path, rows)
    example = next(e for e in train if "buys 4 more" in e.question)

    pred, tr, lm = run(build_harness("precedent_solve", task, index=bank, k=2), example,
                       lambda messages: "3 + 4 = 7. The answer is \\boxed{7}.")
    evidence = ("Solved problems similar to the one below:\n\n"
                "Problem: A train goes 60 miles an hour for 2 hours. How far?\n"
                "Solution: 60*2 = 120 miles.\n\nThe answer is \\boxed{120}.\n\n"
                "Problem: Ann has 3 apples and buys 5 more apples. How many apples now?\n"
                "Solution: She has 3+5 = 8 apples.\n\nThe answer is \\boxed{8}.")
    assert lm.requests == [task.student_messages(example, evidence=evidence)]
    assert pred.answer == task.parse("\\boxed{7}") and tr.step_names() == ["solve"]
    from distill.teacher import from_trace

    tc = from_trace(tr, task.student_messages(example))
    assert tc.messages == lm.requests[0] and not tc.fallback
    with pytest.raises(ValueError, match="precedent index"):
        build_harness("precedent_solve", task)


def test_self_consistency_marks_a_vote_equal_to_the_greedy_answer_as_no_signal(
        tmp_path, monkeypatch):
    """skip_when_greedy_agrees: one more call at temperature 0, apart from the samples; a
    vote equal to its answer is a greedy_agrees fallback (skipped in training), a vote that
    differs teaches, and neither the vote count shown to the teacher nor the student's
    rollouts include the greedy call."""
    from distill.teacher import from_trace

    task = two_plus_three(tmp_path, monkeypatch)
    example = task.load("test")[0]
    student = task.student_messages(example)
    for greedy_reply, agrees in (("\\boxed{5}", True), ("\\boxed{6}", False)):
        samples, lock = iter(["\\boxed{5}", "\\boxed{5}", "\\boxed{7}", "\\boxed{5}"]), \
            threading.Lock()

        def respond(messages, settings, samples=samples, lock=lock, greedy_reply=greedy_reply):
            if settings.get("temperature") == 0.0:
                return f"So {greedy_reply}."
            with lock:
                return f"So {next(samples)}."

        program = build_harness("self_consistency", task, n=4, solver="none", min_votes=3,
                                skip_when_greedy_agrees=True)
        # a harness given a sampling lm still asks for the greedy answer at temperature 0
        pred, tr, lm = run(program, example, respond, sees_settings=True, temperature=1.0)
        tr.outputs = {"answer": pred.answer, "completion": pred.completion}
        assert tr.final_call().completion == pred.completion  # the winner, not the last call
        assert pred.answer == "5" and pred.votes == {"5": 3, "7": 1}
        assert sorted(k["temperature"] for k in lm.request_kwargs) == [0.0, 0.7, 0.7, 0.7, 0.7]
        assert sorted(tr.step_names()) == ["greedy.answer"] + ["solver.answer"] * 4
        assert [f["kind"] for f in tr.fallbacks] == (["greedy_agrees"] if agrees else [])
        assert tr.fell_back() == agrees and not tr.answer_fell_back()  # a screen: answer stands
        tc = from_trace(tr, student, teacher_call=program.teacher_call)
        assert tc.fallback == agrees and (tc.reason == "greedy_agrees") == agrees
        assert "3 of 4 sampled solutions reached the same final answer" in \
            tc.messages[-1]["content"]
        assert [c.step for c in program.student_samples(tr)] == ["solver.answer"] * 4
    plain = build_harness("self_consistency", task, n=2, solver="none")
    _, tr, lm = run(plain, example, lambda m: "So \\boxed{5}.")
    assert len(lm.requests) == 2 and not tr.fallbacks  # off by default: no greedy call

    def greedy_fails(messages, settings):
        if settings.get("temperature") == 0.0:
            raise RuntimeError("context too long")
        return "So \\boxed{5}."

    checked = build_harness("self_consistency", task, n=2, solver="none",
                            skip_when_greedy_agrees=True)
    pred, tr, _ = run(checked, example, greedy_fails, sees_settings=True, temperature=0.7)
    tr.outputs = {"answer": pred.answer, "completion": pred.completion}
    assert pred.answer == "5" and [f["kind"] for f in tr.fallbacks] == ["greedy_failed"]
    assert not tr.answer_fell_back()  # the vote still answers
    assert not from_trace(tr, student, teacher_call=checked.teacher_call).fallback  # teaches


def test_self_consistency_marks_a_vote_under_min_votes_as_no_signal(tmp_path, monkeypatch):
    """A majority below min_votes still answers, but notes a weak_vote fallback, which the
    teacher context marks as no signal (skipped and counted in training); its bare samples
    are the student's rollouts, and plan_solve's are not (they answer a plan's prompt)."""
    from distill.teacher import from_trace

    task = two_plus_three(tmp_path, monkeypatch)
    example = task.load("test")[0]
    student = task.student_messages(example)
    for replies, weak in ((["\\boxed{5}", "\\boxed{6}", "\\boxed{5}", "\\boxed{7}"], True),
                          (["\\boxed{5}", "\\boxed{5}", "\\boxed{5}", "\\boxed{7}"], False)):
        answers, lock = iter(replies), threading.Lock()

        def respond(messages, answers=answers, lock=lock):
            with lock:
                return f"So {next(answers)}."

        program = build_harness("self_consistency", task, n=4, solver="none", min_votes=3)
        pred, tr, _ = run(program, example, respond)
        tr.outputs = {"answer": pred.answer, "completion": pred.completion}
        assert pred.answer == "5"  # the majority answers either way
        assert [f["kind"] for f in tr.fallbacks] == (["weak_vote"] if weak else [])
        assert not tr.answer_fell_back()  # the majority still answers: not an eval fallback
        tc = from_trace(tr, student, teacher_call=program.teacher_call)
        assert tc.fallback == weak and (tc.reason == "weak_vote") == weak
        assert program.student_samples(tr) == tr.calls and len(tr.calls) == 4
    with pytest.raises(ValueError, match="only with solver 'none'"):
        build_harness("self_consistency", task, n=2).student_samples(tr)
    seeded = build_harness("self_consistency", task, n=3, solver="none", seed=10)
    _, _, lm = run(seeded, example, lambda m: "So \\boxed{5}.")
    assert sorted(kw.get("seed") for kw in lm.request_kwargs) == [10, 11, 12]  # resumable
    with pytest.raises(ValueError, match="min_votes must be between 1 and n = 4, got 5"):
        build_harness("self_consistency", task, n=4, solver="none", min_votes=5)
