"""Trace collection: step names and order, data-flow graph, fallbacks, JSONL, thread isolation."""

from __future__ import annotations

import random
import re
import time
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest
from dspy.lm15 import Message, Response, TextPart, Usage
from dspy.utils.dummies import DummyLM

from scaffold.adapter import PlainChatAdapter
from scaffold.dspy_lm import make_lm
from scaffold.trace import (
    Trace,
    TraceCollector,
    bind_context,
    current_trace,
    note_fallback,
    read_jsonl,
    submit,
    write_jsonl,
)
from tests.fake_openai import FakeOpenAIServer, chat_completion


class Draft(dspy.Signature):
    """Give the intent label."""

    query: str = dspy.InputField()
    label: str = dspy.OutputField(desc="single line")


class Verify(dspy.Signature):
    """Confirm or fix the draft label."""

    query: str = dspy.InputField()
    draft: str = dspy.InputField()
    precedents: list[str] = dspy.InputField()
    label: str = dspy.OutputField(desc="single line")


class Retrieve(dspy.Module):
    """A nested module, to check attribute-path step names."""

    def __init__(self) -> None:
        super().__init__()
        self.check = dspy.Predict(Verify)


class DraftVerify(dspy.Module):
    def __init__(self, bank: list[str] | None = None) -> None:
        super().__init__()
        self.draft = dspy.Predict(Draft)
        self.verifier = Retrieve()
        self.bank = bank or []

    def forward(self, query: str) -> dspy.Prediction:
        draft = self.draft(query=query)
        if not self.bank:
            note_fallback("empty_bank", "no precedents retrieved", k=0)
        return self.verifier.check(query=query, draft=draft.label, precedents=self.bank)


class RawText:
    def format_field_with_value(self, fields_with_values: dict, role: str | None = None) -> str:
        return next(iter(fields_with_values.values()))


def run_two_steps(bank: list[str] | None = None) -> Trace:
    lm = DummyLM([{"t": " card_arrival"}, {"t": " lost_card\nbecause"}], adapter=RawText())
    program = DraftVerify(bank)
    with dspy.context(lm=lm, adapter=PlainChatAdapter()):
        with TraceCollector().trace("ex-1", program, {"query": "where is my card"}) as tr:
            program(query="where is my card")
    return tr


def test_steps_are_recorded_in_order_with_attribute_path_names():
    tr = run_two_steps(["my card is late -> card_arrival"])
    assert tr.step_names() == ["draft", "verifier.check"]
    assert [c.completion for c in tr.calls] == [" card_arrival", " lost_card\nbecause"]
    assert tr.calls[1].parsed == {"label": "lost_card"}
    assert tr.final_call() is tr.calls[1]
    assert "Draft: card_arrival" in tr.final_call().messages[0]["content"]
    assert tr.outputs == {"label": "lost_card"}
    assert tr.example_id == "ex-1" and tr.program == "DraftVerify" and tr.error is None
    assert tr.fallbacks == [] and tr.wall_s > 0


def test_graph_follows_the_data():
    tr = run_two_steps(["x"])
    g = tr.graph()
    assert set(g.nodes) == {"input", "0:draft", "1:verifier.check", "output"}
    assert set(g.edges) == {
        ("input", "0:draft"),
        ("input", "1:verifier.check"),
        ("0:draft", "1:verifier.check"),
        ("1:verifier.check", "output"),
    }
    assert g.nodes["1:verifier.check"] == {"kind": "call", "step": "verifier.check", "index": 1}


def test_graph_has_no_edge_when_an_output_is_not_used():
    tr = Trace(example_id="e", program="p", inputs={"q": "what is 2+2"})
    from scaffold.trace import LMCall

    def call(step: str, content: str, completion: str) -> LMCall:
        return LMCall(step, [{"role": "user", "content": content}], completion, None, None, 0.0, {}, None)

    tr.calls = [call("a", "what is 2+2", " four"), call("b", "unrelated", " ok")]
    assert set(tr.graph().edges) == {("input", "0:a"), ("1:b", "output")}
    assert set(Trace("e", "p").graph().edges) == {("input", "output")}


def test_fallback_notes_and_no_op_outside_a_trace():
    note_fallback("empty_bank")  # no trace: nothing happens, nothing raised
    assert current_trace() is None
    tr = run_two_steps(bank=None)
    assert tr.fallbacks == [
        {"kind": "empty_bank", "detail": "no precedents retrieved", "step": None, "k": 0}
    ]
    assert tr.fell_back()


def test_program_error_is_recorded_and_propagates():
    class Broken(dspy.Module):
        def forward(self, query: str) -> None:
            raise RuntimeError("boom")

    collector = TraceCollector()
    with pytest.raises(RuntimeError):
        with collector.trace("e", Broken(), {"query": "q"}) as tr:
            Broken()(query="q")
    assert tr.error == "RuntimeError: boom"
    tr2, pred = collector.run("e2", Broken(), {"query": "q"})
    assert pred is None and tr2.error == "RuntimeError: boom"


def test_jsonl_round_trip_and_append(tmp_path):
    a = run_two_steps(["p1", "p2"])
    b = run_two_steps()
    path = tmp_path / "traces" / "t.jsonl"
    write_jsonl([a], path)
    write_jsonl([b], path)
    back = read_jsonl(path)
    assert back == [a, b]
    assert back[1].fallbacks[0]["kind"] == "empty_bank"
    assert set(back[0].graph().edges) == set(a.graph().edges)


# -- isolation under concurrency ---------------------------------------------


class EchoEngine:
    """A fake LM backend: sleeps a few ms, answers with the query it was asked about."""

    def complete(self, request):  # dspy.lm15 engine protocol
        user = next(m.text for m in reversed(request.messages) if m.role == "user")
        query = re.search(r"Query: (.*)", user).group(1)
        time.sleep(random.uniform(0.001, 0.008))
        return Response(
            id=None,
            model="echo",
            message=Message.assistant([TextPart(f" label-for-{query}")]),
            finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1, total_tokens=2),
        )


def _run_example(collector: TraceCollector, program: DraftVerify, i: int) -> Trace:
    with collector.trace(f"ex-{i}", program, {"query": f"q{i}"}) as tr:
        program(query=f"q{i}")
    return tr


def _assert_isolated(traces: list[Trace]) -> None:
    assert len(traces) == 16
    for i, tr in enumerate(traces):
        assert tr.example_id == f"ex-{i}"
        assert tr.step_names() == ["draft", "verifier.check"]
        for call in tr.calls:
            assert f"Query: q{i}\n" in call.messages[0]["content"] + "\n"
            assert call.completion == f" label-for-q{i}"
            others = [j for j in range(16) if j != i]
            assert not any(f"q{j}\n" in call.messages[0]["content"] + "\n" for j in others)
        assert tr.outputs == {"label": f"label-for-q{i}"}


def test_concurrent_traces_never_mix():
    lm = dspy.LM("fake/echo", engine=EchoEngine(), cache=False)
    collector = TraceCollector()
    program = DraftVerify(["p"])
    with dspy.context(lm=lm, adapter=PlainChatAdapter()):
        with ThreadPoolExecutor(8) as pool:
            futures = [submit(pool, _run_example, collector, program, i) for i in range(16)]
            traces = [f.result() for f in futures]
            mapped = list(pool.map(bind_context(lambda i: _run_example(collector, program, i)), range(16)))
    _assert_isolated(traces)
    _assert_isolated(mapped)


def test_concurrent_scaffold_lm_records_stay_with_their_call():
    """Token counts come from per-call records: each trace gets its own call's usage."""

    def reply(body: dict) -> tuple[int, dict]:
        user = body["messages"][0]["content"]
        i = int(re.search(r"Query: q(\d+)", user).group(1))
        time.sleep(random.uniform(0.001, 0.008))
        return 200, chat_completion(f" label-for-q{i}", prompt_tokens=100 + i, completion_tokens=i)

    collector = TraceCollector()
    program = DraftVerify(["p"])
    with FakeOpenAIServer(reply) as srv:
        lm = make_lm(srv.api_base, "policy")
        with dspy.context(lm=lm, adapter=PlainChatAdapter()):
            with ThreadPoolExecutor(8) as pool:
                futures = [submit(pool, _run_example, collector, program, i) for i in range(16)]
                traces = [f.result() for f in futures]
    _assert_isolated(traces)
    for i, tr in enumerate(traces):
        assert [(c.prompt_tokens, c.completion_tokens) for c in tr.calls] == [(100 + i, i)] * 2
