"""scaffold.vllm_engine: the request body built from DSPy's canonical Request, the
HTTP failures mapped onto DSPy's error classes (so DSPy retries what is transient),
and calls through the adapter with no DSPy deprecation warning."""

from __future__ import annotations

import warnings

import dspy
import pytest
from dspy.lm15 import Config, ImagePart, Message, Request
from dspy.utils.exceptions import LMInvalidRequestError, LMUnsupportedFeatureError

from scaffold.adapter import PlainChatAdapter
from scaffold.dspy_lm import make_lm
from scaffold.trace import TraceCollector
from scaffold.vllm_engine import VLLMChatEngine
from tests.fake_openai import FakeOpenAIServer, chat_completion


class Draft(dspy.Signature):
    """Pick the label."""

    query: str = dspy.InputField()
    label: str = dspy.OutputField()


def test_body_puts_the_system_text_first_and_continues_a_prefill():
    engine = VLLMChatEngine("http://h/v1/", extra_body={"return_token_ids": True, "top_k": 5})
    request = Request(
        model="openai/ophsd-step-4",
        system="Be terse.",
        messages=(Message.user("Q: my card"), Message.assistant("Label:")),
        config=Config(max_tokens=8, temperature=0.5, seed=3, stop=("\n",),
                      extensions={"logit_bias": {"7": 1.0}}),
    )
    assert engine.chat_url == "http://h/v1/chat/completions"
    assert engine.body(request) == {
        "model": "ophsd-step-4",
        "messages": [{"role": "system", "content": "Be terse."},
                     {"role": "user", "content": "Q: my card"},
                     {"role": "assistant", "content": "Label:"}],
        "max_tokens": 8, "temperature": 0.5, "seed": 3, "stop": ["\n"],
        "logit_bias": {"7": 1.0}, "return_token_ids": True, "top_k": 5,
        "add_generation_prompt": False, "continue_final_message": True,
    }
    bare = engine.body(Request(model="policy", messages=(Message.user("hi"),)))
    assert bare == {"model": "policy", "messages": [{"role": "user", "content": "hi"}],
                    "return_token_ids": True, "top_k": 5}


def test_what_it_cannot_send_is_refused_not_dropped():
    engine = VLLMChatEngine("http://h/v1")
    schema = {"type": "json_object"}
    with pytest.raises(LMUnsupportedFeatureError, match="response_format"):
        engine.body(Request(model="p", messages=(Message.user("hi"),),
                            config=Config(response_format=schema)))
    image = Message(role="user", parts=(ImagePart(url="http://x/a.png"),))
    with pytest.raises(LMUnsupportedFeatureError, match="ImagePart"):
        engine.body(Request(model="p", messages=(image,)))


def test_rate_limit_is_retried_and_a_bad_request_is_not():
    script = [(429, {"error": {"message": "slow down"}}), (200, chat_completion(" ok"))]
    with FakeOpenAIServer(script) as srv:
        assert make_lm(srv.api_base, "policy", num_retries=2)("hi") == [" ok"]
    assert len(srv.requests) == 2
    with FakeOpenAIServer([(400, {"error": {"message": "max_tokens too large"}})]) as srv:
        with pytest.raises(LMInvalidRequestError, match="max_tokens too large"):
            make_lm(srv.api_base, "policy", num_retries=3)("hi")
    assert len(srv.requests) == 1


def test_n_samples_are_n_requests_and_the_record_adds_them_up():
    replies = [(200, chat_completion(" a", completion_tokens=2, token_ids=[5, 6])),
               (200, chat_completion(" b", completion_tokens=3, token_ids=[7, 8, 9]))]
    with FakeOpenAIServer(replies) as srv:
        lm = make_lm(srv.api_base, "policy", temperature=0.7)
        with TraceCollector().trace("ex", "sample") as tr:
            outputs = lm("hi", n=2)
    assert outputs == [" a", " b"] and len(srv.requests) == 2
    (call,) = tr.calls
    assert (call.completion_tokens, call.completion_token_ids) == (5, [5, 6])


def test_adapter_calls_raise_no_dspy_deprecation_warning():
    with FakeOpenAIServer([(200, chat_completion(" card_arrival"))]) as srv:
        lm = make_lm(srv.api_base, "policy", max_tokens=8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with dspy.context(lm=lm, adapter=PlainChatAdapter()):
                pred = dspy.Predict(Draft)(query="my card")
    assert pred.label == "card_arrival"
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == []
