"""PlainChatAdapter rendering/parsing on DummyLM, and ScaffoldLM against a scripted fake server."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Literal

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from scaffold.adapter import PlainChatAdapter
from scaffold.dspy_lm import PolicyServerUnreachable, ScaffoldLM, make_lm
from scaffold.trace import TraceCollector
from tests.fake_openai import FakeOpenAIServer, chat_completion


class Draft(dspy.Signature):
    """Classify the banking query into one intent label."""

    query: str = dspy.InputField()
    label: str = dspy.OutputField(desc="the intent, single line")


class Verify(dspy.Signature):
    """Check the draft label against the options and give the final label."""

    query: str = dspy.InputField()
    draft: str = dspy.InputField()
    options: list[str] = dspy.InputField()
    label: str = dspy.OutputField(desc="single line")
    confidence: str = dspy.OutputField(desc="single line")


OPTIONS = ["card_arrival", "lost_or_stolen_card"]


class DraftVerify(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict(Draft)
        self.verify = dspy.Predict(Verify)

    def forward(self, query: str) -> dspy.Prediction:
        draft = self.draft(query=query)
        return self.verify(query=query, draft=draft.label, options=OPTIONS)


class RawText:
    """Makes DummyLM return its scripted strings verbatim (as a model's raw completion)."""

    def format_field_with_value(self, fields_with_values: dict, role: str | None = None) -> str:
        return next(iter(fields_with_values.values()))


def raw_lm(*completions: str) -> DummyLM:
    return DummyLM([{"text": c} for c in completions], adapter=RawText())


# -- rendering ---------------------------------------------------------------


def test_two_step_messages_are_rendered_exactly_with_prefill():
    lm = raw_lm("  card_arrival\nblah", " card_arrival\nConfidence: high")
    with dspy.context(lm=lm, adapter=PlainChatAdapter()):
        with TraceCollector().trace("ex", DraftVerify(), {"query": "my card has not arrived"}) as tr:
            pred = DraftVerify()(query="my card has not arrived")
    assert [c.messages for c in tr.calls] == [
        [
            {
                "role": "user",
                "content": "Classify the banking query into one intent label.\n\n"
                "Query: my card has not arrived",
            },
            {"role": "assistant", "content": "Label:"},
        ],
        [
            {
                "role": "user",
                "content": "Check the draft label against the options and give the final label.\n\n"
                "Query: my card has not arrived\n"
                "Draft: card_arrival\n"
                "Options:\n1. card_arrival\n2. lost_or_stolen_card",
            },
            {"role": "assistant", "content": "Label:"},
        ],
    ]
    assert (pred.label, pred.confidence) == ("card_arrival", "high")


def test_instructions_in_system_and_default_instructions_skipped():
    adapter = PlainChatAdapter(instructions_in_system=True)
    assert adapter.format(Draft, [], {"query": "q1"}) == [
        {"role": "system", "content": "Classify the banking query into one intent label."},
        {"role": "user", "content": "Query: q1"},
        {"role": "assistant", "content": "Label:"},
    ]
    # a string signature has DSPy's generic instructions: left out; prefixes from names
    plain = dspy.Signature("question, card_number -> final_answer")
    assert PlainChatAdapter().format(plain, [], {"question": "why?", "card_number": 7}) == [
        {"role": "user", "content": "Question: why?\nCard Number: 7"},
        {"role": "assistant", "content": "Final Answer:"},
    ]
    assert PlainChatAdapter(prefill=False).format(plain, [], {"question": "why?"}) == [
        {"role": "user", "content": "Question: why?"},
    ]


def test_a_declared_prefix_still_labels_its_field():
    """Labels come from names (above); a harness written against older DSPy may declare
    `prefix=`, which DSPy 3.4 warns about (caught here, so the test log stays clean) and
    still stores: the adapter honours it."""
    with pytest.warns(DeprecationWarning, match="'prefix' argument"):
        class Legacy(dspy.Signature):
            card_query: str = dspy.InputField(prefix="Q:")
            label: str = dspy.OutputField(prefix="Intent:")

    assert PlainChatAdapter().format(Legacy, [], {"card_query": "lost card"}) == [
        {"role": "user", "content": "Q: lost card"},
        {"role": "assistant", "content": "Intent:"},
    ]
    assert PlainChatAdapter().parse(Legacy, " lost_card") == {"label": "lost_card"}


def test_demos_become_previous_turns_and_none_inputs_are_skipped():
    demos = [dspy.Example(query="where is my card", label="card_arrival")]
    msgs = PlainChatAdapter().format(Draft, demos, {"query": "I lost it"})
    assert msgs == [
        {
            "role": "user",
            "content": "Classify the banking query into one intent label.\n\nQuery: where is my card",
        },
        {"role": "assistant", "content": "Label: card_arrival"},
        {"role": "user", "content": "Query: I lost it"},
        {"role": "assistant", "content": "Label:"},
    ]
    msgs = PlainChatAdapter().format(
        Verify, [], {"query": "q", "draft": None, "options": []}
    )
    assert msgs[0]["content"].endswith("Query: q\nOptions: (none)")


class Exact(dspy.Signature):
    """Unused: render_messages takes over."""

    query: str = dspy.InputField()
    label: str = dspy.OutputField()

    @classmethod
    def render_messages(cls, inputs: dict) -> list[dict]:
        return [{"role": "user", "content": f"Q={inputs['query']}"}, {"role": "assistant", "content": "A="}]

    @staticmethod
    def parse_completion(text: str) -> dict:
        return {"label": text.strip().upper()}


def test_signature_escape_hatches_are_used_verbatim():
    lm = raw_lm(" yes ")
    with dspy.context(lm=lm, adapter=PlainChatAdapter()):
        pred = dspy.Predict(Exact)(query="x")
    assert lm.history[-1]["messages"] == [
        {"role": "user", "content": "Q=x"},
        {"role": "assistant", "content": "A="},
    ]
    assert pred.label == "YES"


# -- parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("  card_arrival\nblah", "card_arrival"),
        ("\n\n **card_arrival** \n", "card_arrival"),
        (" Label: card_arrival", "card_arrival"),  # the model repeated the prefill
        ("\n**Label:** card_arrival", "card_arrival"),
        ("card_arrival.", "card_arrival."),
    ],
)
def test_single_line_field_parsing(completion, expected):
    adapter = PlainChatAdapter()
    assert adapter.parse(Draft, completion) == {"label": expected}
    assert adapter.parse_failures == 0


def test_multiline_field_keeps_lines_and_label_without_colon_is_a_value():
    sig = dspy.Signature("question -> answer")
    adapter = PlainChatAdapter()
    assert adapter.parse(sig, " 3 + 4 = 7\nSo 7.\n") == {"answer": "3 + 4 = 7\nSo 7."}
    assert adapter.parse(sig, " Answer is 7") == {"answer": "Answer is 7"}


@pytest.mark.parametrize(
    "completion",
    [
        " card_arrival\nConfidence: high",
        " **card_arrival**\n**Confidence:** high",
        " card_arrival\n\n## confidence\nhigh",  # heading, value on the next line
        " card_arrival\n- CONFIDENCE high",  # bullet, upper case, no colon
        "Label: card_arrival\nconfidence: high\nextra chatter",
    ],
)
def test_multi_field_lenient_parsing(completion):
    adapter = PlainChatAdapter()
    assert adapter.parse(Verify, completion) == {"label": "card_arrival", "confidence": "high"}
    assert adapter.parse_failures == 0


def test_missing_field_is_empty_and_counted():
    adapter = PlainChatAdapter()
    assert adapter.parse(Verify, " card_arrival\nI am not sure") == {
        "label": "card_arrival",
        "confidence": "",
    }
    assert adapter.parse(Verify, "") == {"label": "", "confidence": ""}
    assert adapter.parse_failures == 2


class Typed(dspy.Signature):
    """Count."""

    text: str = dspy.InputField()
    count: int = dspy.OutputField()
    kind: Literal["a", "b"] = dspy.OutputField()


def test_typed_fields_convert_or_count_a_failure():
    adapter = PlainChatAdapter()
    assert adapter.parse(Typed, " 42\nKind: b") == {"count": 42, "kind": "b"}
    assert adapter.parse_failures == 0
    out = adapter.parse(Typed, " lots\nKind: z")
    assert out == {"count": "lots", "kind": "z"}
    assert adapter.parse_failures == 2


def test_garbage_never_raises_and_failures_reach_the_trace():
    adapter = PlainChatAdapter()
    lm = raw_lm("", "\n\n", " card_arrival\nConfidence: low")
    with dspy.context(lm=lm, adapter=adapter):
        with TraceCollector().trace("ex", "draft_verify") as tr:
            first = dspy.Predict(Draft)(query="q")
            second = dspy.Predict(Verify)(query="q", draft=first.label, options=OPTIONS)
            third = dspy.Predict(Verify)(query="q", draft="x", options=OPTIONS)
    assert first.label == "" and second.label == "" and second.confidence == ""
    assert (third.label, third.confidence) == ("card_arrival", "low")
    assert adapter.parse_failures == 2
    assert [c.parse_ok for c in tr.calls] == [False, False, True]
    assert [f["kind"] for f in tr.fallbacks] == ["parse_failure", "parse_failure"]
    assert [f["call_index"] for f in tr.fallbacks] == [0, 1]
    assert [f["step"] for f in tr.fallbacks] == ["Draft", "Verify"]  # the Predict running
    assert tr.parse_failures == 2


def test_dummy_lm_can_script_field_values_through_the_plain_adapter():
    adapter = PlainChatAdapter()
    lm = DummyLM([{"label": "card_arrival", "confidence": "high"}], adapter=adapter)
    with dspy.context(lm=lm, adapter=adapter):
        pred = dspy.Predict(Verify)(query="q", draft="d", options=OPTIONS)
    assert (pred.label, pred.confidence) == ("card_arrival", "high")


# -- ScaffoldLM against a fake OpenAI-compatible server ----------------------


def test_prefill_switches_are_sent_only_for_a_prefill():
    with FakeOpenAIServer([(200, chat_completion(" card_arrival"))]) as srv:
        lm = make_lm(srv.api_base, "policy", max_tokens=8, seed=3)
        assert isinstance(lm, ScaffoldLM)
        with dspy.context(lm=lm, adapter=PlainChatAdapter()):
            pred = dspy.Predict(Draft)(query="my card")
        lm("hello")  # a prompt: one user message, as DSPy renders it
    with_prefill, without = srv.requests
    assert srv.paths == ["/v1/chat/completions"] * 2
    assert pred.label == "card_arrival"
    assert with_prefill["model"] == "policy"
    assert with_prefill["messages"][-1] == {"role": "assistant", "content": "Label:"}
    assert with_prefill["add_generation_prompt"] is False
    assert with_prefill["continue_final_message"] is True
    assert (with_prefill["max_tokens"], with_prefill["temperature"], with_prefill["seed"]) == (8, 0.0, 3)
    assert "add_generation_prompt" not in without and "continue_final_message" not in without
    assert with_prefill["return_token_ids"] is True and without["return_token_ids"] is True


def test_usage_token_ids_and_sampling_land_in_the_trace():
    reply = chat_completion(
        " card_arrival", prompt_tokens=21, completion_tokens=4,
        token_ids=[7, 8, 9, 10], prompt_token_ids=list(range(21)),
    )
    with FakeOpenAIServer([(200, reply)]) as srv:
        lm = make_lm(srv.api_base, "adapter-3", temperature=0.5, max_tokens=16, seed=11)
        with dspy.context(lm=lm, adapter=PlainChatAdapter()):
            with TraceCollector().trace("ex", "draft") as tr:
                dspy.Predict(Draft)(query="my card")
    (call,) = tr.calls
    assert srv.requests[0]["model"] == "adapter-3"
    assert call.model == "adapter-3"
    assert call.messages == srv.requests[0]["messages"]
    assert call.completion == " card_arrival"
    assert (call.prompt_tokens, call.completion_tokens) == (21, 4)
    assert call.completion_token_ids == [7, 8, 9, 10]
    assert call.prompt_token_ids == list(range(21))
    assert call.finish_reason == "stop"
    assert call.sampling == {"temperature": 0.5, "max_tokens": 16, "seed": 11, "n": 1}
    assert call.latency_s > 0


def test_server_error_is_retried():
    script = [(500, {"error": {"message": "engine hiccup"}}), (200, chat_completion(" ok"))]
    with FakeOpenAIServer(script) as srv:
        lm = make_lm(srv.api_base, "policy", num_retries=2)
        assert lm("hi") == [" ok"]
    assert len(srv.requests) == 2


def test_unreachable_server_gives_a_clear_error_quickly():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lm = make_lm(f"http://127.0.0.1:{port}/v1", "policy", num_retries=1, timeout=5)
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as info:
        lm("hi")
    assert isinstance(info.value, PolicyServerUnreachable)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in str(info.value)
    assert time.perf_counter() - start < 20


def test_async_calls_history_off_and_adapter_switch_keep_the_record():
    reply = chat_completion(" card_arrival", prompt_tokens=9, completion_tokens=2)
    with FakeOpenAIServer([(200, reply)]) as srv:
        lm = make_lm(srv.api_base, "policy")
        adapter_lm = lm.for_model("ophsd-step-10")
        assert (lm.served_model, adapter_lm.served_model) == ("policy", "ophsd-step-10")

        async def run_async():
            with TraceCollector().trace("a", "async") as tr:
                await dspy.Predict(Draft).acall(query="q")
            return tr

        with dspy.context(lm=adapter_lm, adapter=PlainChatAdapter()):
            tr_async = asyncio.run(run_async())
        with dspy.context(lm=lm, adapter=PlainChatAdapter(), disable_history=True):
            with TraceCollector().trace("b", "no-history") as tr_quiet:
                dspy.Predict(Draft)(query="q")
    assert [r["model"] for r in srv.requests] == ["ophsd-step-10", "policy"]
    assert all(r["continue_final_message"] is True for r in srv.requests)
    assert tr_async.calls[0].model == "ophsd-step-10"
    assert (tr_async.calls[0].prompt_tokens, tr_quiet.calls[0].prompt_tokens) == (9, 9)
    assert lm.history == []  # history disabled: the record was still filled


def test_chain_of_thought_prefills_reasoning_and_parses_the_label():
    lm = raw_lm(" the card is late\nLabel: card_arrival")
    with dspy.context(lm=lm, adapter=PlainChatAdapter()):
        pred = dspy.ChainOfThought(Draft)(query="q")
    assert lm.history[-1]["messages"][-1] == {"role": "assistant", "content": "Reasoning:"}
    assert (pred.reasoning, pred.label) == ("the card is late", "card_arrival")
