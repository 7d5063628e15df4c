"""A `dspy.LM` for the policy served by vLLM's OpenAI-compatible server.

    lm = make_lm("http://127.0.0.1:8000/v1", "policy")
    with dspy.context(lm=lm, adapter=PlainChatAdapter()):
        program(question=...)

What it adds to `dspy.LM`:

* **Prefill.** When the messages end with an assistant message (Scaffold's
  prefill convention, see `scaffold.chat`), the request carries vLLM's
  `add_generation_prompt=false, continue_final_message=true` so the model
  continues that message; otherwise nothing extra is sent.
* **Exact per-call data.** Each call's messages, completion, token counts (and
  the engine's token ids when the server returns them: `return_token_ids`),
  latency and sampling settings are put in a `CallRecord` scoped to that call
  by a context variable, so a trace collector reads the record of *its* call
  even with many calls in flight on threads (never `lm.history[-1]`). The
  record is readable from `dspy` callbacks' `on_lm_end` via
  `active_call_record()`.
* **Clear failures.** Transient errors (connection, 5xx, 429, timeouts) are
  retried by DSPy with exponential backoff (1 s, 2 s, 4 s, ... per attempt,
  `num_retries` times); if the server still cannot be reached the error is a
  `PolicyServerUnreachable` (a `ConnectionError`) naming the URL and model.

The backend is LiteLLM's OpenAI route (`engine="litellm"`): it forwards
`extra_body` fields verbatim and keeps vLLM's extra response fields.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch in litellm

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import dspy
import httpx
from dspy.dsp.utils.settings import settings as dspy_settings
from dspy.utils.exceptions import LMError

from scaffold.chat import ends_with_prefill, template_kwargs
from scaffold.errors import PolicyServerUnreachable

# Request keys that are connection settings or transport switches, not sampling.
_NON_SAMPLING_KEYS = frozenset(
    {
        "api_key", "api_base", "base_url", "headers", "extra_headers", "timeout", "api_version",
        "organization", "project", "extra_query", "custom_llm_provider", "extra_body", "cache",
    }
)
# extra_body switches that change the transport/rendering, not the sampling.
_TRANSPORT_BODY_KEYS = frozenset({"add_generation_prompt", "continue_final_message", "return_token_ids"})


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


_ACTIVE_RECORD: ContextVar[CallRecord | None] = ContextVar("scaffold_lm_call_record", default=None)


def active_call_record() -> CallRecord | None:
    """The record of the ScaffoldLM call in progress in this context (for `on_lm_end`)."""
    return _ACTIVE_RECORD.get()


def _value(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _int_list(values: Any) -> list[int] | None:
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        return None


def _fill_record(record: CallRecord, entry: dict[str, Any]) -> None:
    """Copy usage, texts and token ids out of a DSPy history entry (a LiteLLM ModelResponse)."""
    response = entry.get("response")
    usage = entry.get("usage") or {}
    record.prompt_tokens = usage.get("prompt_tokens")
    record.completion_tokens = usage.get("completion_tokens")
    choices = _value(response, "choices") or []
    texts: list[str] = []
    for choice in choices:
        message = _value(choice, "message")
        texts.append(_value(message, "content") or "")
    if not texts:  # non-LiteLLM response shapes: fall back to DSPy's parsed outputs
        for out in entry.get("outputs") or []:
            texts.append(out.get("text") or "" if isinstance(out, dict) else str(out or ""))
    record.completions = texts
    if choices:
        first = choices[0]
        record.finish_reason = _value(first, "finish_reason")
        ids = _value(first, "token_ids")
        if ids is None:
            ids = _value(_value(first, "provider_specific_fields"), "token_ids")
        record.completion_token_ids = _int_list(ids)
    record.prompt_token_ids = _int_list(_value(response, "prompt_token_ids"))
    record.latency_s = time.perf_counter() - record.started
    record.done = True


def _connection_failure(exc: BaseException) -> BaseException | None:
    """The connection-level cause (refused, reset, DNS, timeout) in an exception chain, if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (ConnectionError, httpx.TransportError)):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


class ScaffoldLM(dspy.LM):
    """`dspy.LM` over a vLLM OpenAI-compatible server; see the module docstring.

    Thread-safe: per-call state lives in a context variable, never on the instance.
    """

    def __init__(self, model: str, **kwargs: Any) -> None:
        kwargs.setdefault("engine", "litellm")
        super().__init__(model, **kwargs)

    @property
    def served_model(self) -> str:
        """The model name the server sees (LiteLLM strips the "openai/" routing prefix)."""
        return self.model.removeprefix("openai/")

    def for_model(self, served_model: str) -> ScaffoldLM:
        """A copy that calls another served model, e.g. the LoRA adapter just loaded."""
        return self.copy(model=f"openai/{served_model}")

    @property
    def chat_url(self) -> str:
        base = str(self.kwargs.get("api_base") or self.kwargs.get("base_url") or "")
        return base.rstrip("/") + "/chat/completions"

    def _request_kwargs(self, messages: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Merge the prefill switches into this call's extra_body (LM defaults < call < switches)."""
        body = {**(self.kwargs.get("extra_body") or {}), **(kwargs.get("extra_body") or {})}
        if isinstance(messages, list) and ends_with_prefill(messages):
            body.update(template_kwargs(messages))
        else:
            body.pop("add_generation_prompt", None)
            body.pop("continue_final_message", None)
        out = dict(kwargs)
        if body:
            out["extra_body"] = body
        return out

    def _sampling(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        merged = {**self.kwargs, **kwargs}
        sampling = {k: v for k, v in merged.items() if k not in _NON_SAMPLING_KEYS and v is not None}
        extra = merged.get("extra_body") or {}
        sampling.update({k: v for k, v in extra.items() if k not in _TRANSPORT_BODY_KEYS})
        sampling.setdefault("n", 1)
        return sampling

    def _begin(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> CallRecord:
        if messages is None:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return CallRecord(
            messages=[dict(m) for m in messages],
            sampling=self._sampling(kwargs),
            model=self.served_model,
        )

    def _unreachable(self, exc: BaseException) -> PolicyServerUnreachable | None:
        cause = _connection_failure(exc)
        if cause is None:
            return None
        what = "timed out waiting for" if isinstance(cause, (TimeoutError, httpx.TimeoutException)) else "cannot reach"
        return PolicyServerUnreachable(
            f"{what} the policy server at {self.chat_url} (model {self.served_model!r}, "
            f"{self.num_retries} retries): {type(cause).__name__}: {cause}"
        )

    @contextmanager
    def _call_scope(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> Iterator[None]:
        """Open this call's record; turn a connection failure into PolicyServerUnreachable."""
        token = _ACTIVE_RECORD.set(self._begin(prompt, messages, kwargs))
        # The record is filled from DSPy's history entry: keep entries coming even when
        # history is disabled (update_history then does not store them).
        quiet = (
            dspy.context(disable_history=False, _scaffold_history_off=True)
            if dspy_settings.disable_history
            else nullcontext()
        )
        try:
            with quiet:
                yield
        except LMError as exc:
            unreachable = self._unreachable(exc)
            if unreachable is not None:
                raise unreachable from exc
            raise
        finally:
            _ACTIVE_RECORD.reset(token)

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        kwargs = self._request_kwargs(messages if messages is not None else prompt, kwargs)
        with self._call_scope(prompt, messages, kwargs):
            return super().__call__(prompt, messages=messages, **kwargs)

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        kwargs = self._request_kwargs(messages if messages is not None else prompt, kwargs)
        with self._call_scope(prompt, messages, kwargs):
            return await super().acall(prompt, messages=messages, **kwargs)

    def update_history(self, entry: dict[str, Any]) -> None:
        record = _ACTIVE_RECORD.get()
        if record is not None and not record.done:
            _fill_record(record, entry)
        if not dspy_settings.get("_scaffold_history_off", False):
            super().update_history(entry)


def make_lm(
    api_base: str,
    model: str,
    *,
    temperature: float = 0.0,
    max_tokens: int = 256,
    api_key: str = "EMPTY",
    cache: bool = False,
    num_retries: int = 3,
    timeout: float = 300.0,
    return_token_ids: bool = True,
    **kwargs: Any,
) -> ScaffoldLM:
    """A ScaffoldLM for `model` (served name or LoRA adapter name) at `api_base` (…/v1).

    Extra keyword arguments are default request parameters (seed, top_p, stop, n,
    extra_body={...} for vLLM sampling extras such as top_k or min_p).
    `return_token_ids` asks vLLM for the prompt and completion token ids.
    """
    extra_body = dict(kwargs.pop("extra_body", None) or {})
    if return_token_ids:
        extra_body.setdefault("return_token_ids", True)
    if extra_body:
        kwargs["extra_body"] = extra_body
    return ScaffoldLM(
        f"openai/{model}",
        api_base=api_base.rstrip("/"),
        api_key=api_key,
        temperature=temperature,
        max_tokens=max_tokens,
        cache=cache,
        num_retries=num_retries,
        timeout=timeout,
        **kwargs,
    )
