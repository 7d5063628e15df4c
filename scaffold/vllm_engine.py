"""DSPy's engine for a vLLM OpenAI-compatible server: one httpx POST per request.

    lm = dspy.LM("openai/policy", engine=VLLMChatEngine("http://127.0.0.1:8000/v1"))

`scaffold.dspy_lm.ScaffoldLM` builds one; harnesses never see it. It implements
DSPy's public engine protocol (`complete(Request) -> Response`,
`dspy.clients.engines.base`), which DSPy 3.4 names as the way to extend an LM
(subclassed `forward` and the `update_history` hook are scheduled for removal in 3.5).

Why not LiteLLM, dspy.LM's default engine:

* **Client CPU.** Per request, sent one at a time to the same vLLM server, the
  client spent 6.8 ms of CPU through LiteLLM, 1.9 ms through this engine, and
  1.2 ms for a bare httpx POST; a draft_verify call through the whole executor
  (DSPy, adapter, trace) 8.2 ms before, 4.1 ms now. On a 2-core machine that CPU
  comes out of the vLLM engine beside it.
* **What the reply carries.** vLLM returns the prompt's and the completion's token
  ids (`return_token_ids`), which the exact-token contract needs. The engine reads
  them from the reply and puts them in the call's `CallRecord`; with LiteLLM they
  could only be read back from DSPy's history entry, a private hook.

What it sends: the request's messages (the system text first), its sampling
settings, `extra_body` (default vLLM fields, e.g. `return_token_ids`), and, when the
messages end with an assistant message (Scaffold's prefill convention,
`scaffold.chat`), `add_generation_prompt=false, continue_final_message=true`.
Failures raise DSPy's own error classes, so DSPy's retry loop (`num_retries`, with
backoff) retries what is transient: connection errors, timeouts, 429 and 5xx.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
from dspy.lm15 import Message, Request, Response, TextPart, Usage
from dspy.utils.exceptions import (
    LMInvalidRequestError,
    LMRateLimitError,
    LMServerError,
    LMTimeoutError,
    LMTransportError,
    LMUnsupportedFeatureError,
)

from scaffold.chat import ends_with_prefill, template_kwargs

# Request config fields that map one to one onto the chat completions body.
_CONFIG_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "frequency_penalty",
                  "presence_penalty")
# Config fields vLLM's chat endpoint could take but no harness here uses: refused, not dropped.
_REFUSED_FIELDS = ("response_format", "tool_choice", "reasoning", "logprobs", "probabilities")
_FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_call",
                   "content_filter": "content_filter"}


@dataclass
class CallRecord:
    """What one LM call actually sent and got back (filled when the call completes)."""

    messages: list[dict[str, Any]]
    sampling: dict[str, Any]
    model: str
    started: float = field(default_factory=time.perf_counter)
    done: bool = False
    completions: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_token_ids: list[int] | None = None
    completion_token_ids: list[int] | None = None
    finish_reason: str | None = None
    latency_s: float | None = None

    def add_reply(self, sent: list[dict[str, str]], reply: dict[str, Any]) -> None:
        """Take one reply in. A call with n > 1 is n requests: their texts and
        completion tokens add up; the token ids and finish reason are the first's."""
        choice = (reply.get("choices") or [{}])[0]
        usage = reply.get("usage") or {}
        self.completions.append((choice.get("message") or {}).get("content") or "")
        if not self.done:
            self.messages = [dict(m) for m in sent]
            self.prompt_tokens = usage.get("prompt_tokens")
            self.prompt_token_ids = _int_list(reply.get("prompt_token_ids"))
            self.completion_token_ids = _int_list(choice.get("token_ids"))
            self.finish_reason = choice.get("finish_reason")
            self.completion_tokens = usage.get("completion_tokens")
        elif usage.get("completion_tokens") is not None:
            self.completion_tokens = (self.completion_tokens or 0) + usage["completion_tokens"]
        self.latency_s = time.perf_counter() - self.started
        self.done = True


_ACTIVE_RECORD: ContextVar[CallRecord | None] = ContextVar("scaffold_lm_call_record", default=None)


def active_call_record() -> CallRecord | None:
    """The record of the ScaffoldLM call in progress in this context (for `on_lm_end`)."""
    return _ACTIVE_RECORD.get()


@contextmanager
def recording(record: CallRecord) -> Iterator[CallRecord]:
    """Make `record` the call in progress in this context: the engine fills it."""
    token = _ACTIVE_RECORD.set(record)
    try:
        yield record
    finally:
        _ACTIVE_RECORD.reset(token)


def _int_list(values: Any) -> list[int] | None:
    try:
        return None if values is None else [int(v) for v in values]
    except (TypeError, ValueError):
        return None


def _text(parts: Any, where: str) -> str:
    """The text of a message (or of the system prompt): text parts only."""
    if isinstance(parts, str):
        return parts
    texts = []
    for part in parts:
        if not isinstance(part, TextPart):
            raise LMUnsupportedFeatureError(
                f"VLLMChatEngine sends text only; {where} has a {type(part).__name__}")
        texts.append(part.text)
    return "".join(texts)


def wire_messages(request: Request) -> list[dict[str, str]]:
    """The request's conversation as chat completions messages, system text first."""
    messages = [{"role": "system", "content": _text(request.system, "the system prompt")}] \
        if request.system else []
    for i, message in enumerate(request.messages):
        messages.append({"role": message.role, "content": _text(message.parts, f"message {i}")})
    return messages


class VLLMChatEngine:
    """Sync engine: `dspy.LM(model, engine=VLLMChatEngine(api_base))`. Thread-safe
    (one pooled httpx client). Every reply also goes into the record of the call in
    progress in the caller's context, when there is one (`active_call_record`)."""

    def __init__(self, api_base: str, *, api_key: str = "EMPTY", timeout: float = 300.0,
                 extra_body: dict[str, Any] | None = None, max_connections: int = 64) -> None:
        self.api_base = api_base.rstrip("/")
        self.chat_url = self.api_base + "/chat/completions"
        self.extra_body = dict(extra_body or {})
        self._http = httpx.Client(
            timeout=timeout, headers={"Authorization": f"Bearer {api_key}"},
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections))

    def body(self, request: Request) -> dict[str, Any]:
        """The JSON body for `request` (public for tests and for anyone replaying a call)."""
        config = request.config
        refused = [name for name in _REFUSED_FIELDS if getattr(config, name, None) is not None]
        if refused or request.tools:
            raise LMUnsupportedFeatureError(
                f"VLLMChatEngine does not send {', '.join(refused) or 'tools'}: Scaffold's "
                "harnesses prompt in plain text (scaffold.adapter.PlainChatAdapter)")
        messages = wire_messages(request)
        body: dict[str, Any] = {"model": request.model.removeprefix("openai/"),
                                "messages": messages}
        for name in _CONFIG_FIELDS:
            value = getattr(config, name)
            if value is not None:
                body[name] = value
        if config.stop:
            body["stop"] = list(config.stop)
        body.update(config.extensions or {})
        body.update(self.extra_body)
        if ends_with_prefill(messages):
            body.update(template_kwargs(messages))
        return body

    def complete(self, request: Request) -> Response:
        body = self.body(request)
        reply = self._post(body)
        record = _ACTIVE_RECORD.get()
        if record is not None:
            record.add_reply(body["messages"], reply)
        choice = (reply.get("choices") or [{}])[0]
        usage = reply.get("usage") or {}
        finish = _FINISH_REASONS.get(choice.get("finish_reason") or "stop", "error")
        return Response(
            id=reply.get("id"), model=reply.get("model") or body["model"],
            message=Message.assistant((choice.get("message") or {}).get("content") or ""),
            finish_reason=cast(Any, finish),
            usage=Usage(input_tokens=usage.get("prompt_tokens"),
                        output_tokens=usage.get("completion_tokens")))

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self._http.post(self.chat_url, json=body)
        except httpx.TimeoutException as exc:
            raise LMTimeoutError(f"no reply from {self.chat_url} in time: {exc}") from exc
        except httpx.TransportError as exc:
            raise LMTransportError(f"cannot reach {self.chat_url}: {type(exc).__name__}: {exc}") \
                from exc
        if r.status_code == 429:
            raise LMRateLimitError(f"{self.chat_url} answered 429: {r.text[:300]}", status=429)
        if r.status_code >= 500:
            raise LMServerError(f"{self.chat_url} answered {r.status_code}: {r.text[:300]}",
                                status=r.status_code)
        if r.status_code >= 400:
            raise LMInvalidRequestError(f"{self.chat_url} answered {r.status_code}: "
                                        f"{r.text[:300]}", status=r.status_code)
        return r.json()

    def stream(self, request: Request) -> Any:
        raise LMUnsupportedFeatureError("VLLMChatEngine does not stream")

    def close(self) -> None:
        self._http.close()


class AsyncVLLMChatEngine:
    """Async counterpart (`dspy.LM(..., async_engine=...)`): the sync engine's request
    on a worker thread, which carries the caller's context (the call's record)."""

    def __init__(self, sync: VLLMChatEngine) -> None:
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        return await asyncio.to_thread(self.sync.complete, request)

    def stream(self, request: Request) -> Any:
        raise LMUnsupportedFeatureError("VLLMChatEngine does not stream")

    async def aclose(self) -> None:
        self.sync.close()
