"""A `dspy.LM` for the policy served by vLLM's OpenAI-compatible server.

    lm = make_lm("http://127.0.0.1:8000/v1", "policy")
    with dspy.context(lm=lm, adapter=PlainChatAdapter()):
        program(question=...)

What it adds to `dspy.LM`:

* **Its own engine.** Requests go through `scaffold.vllm_engine.VLLMChatEngine`
  (DSPy's public engine protocol) as one httpx POST each, not through LiteLLM;
  the engine module says why, with the measurement.
* **Prefill.** When the messages end with an assistant message (Scaffold's
  prefill convention, see `scaffold.chat`), the request carries vLLM's
  `add_generation_prompt=false, continue_final_message=true` so the model
  continues that message; otherwise nothing extra is sent.
* **Exact per-call data.** Each call's messages as sent, completion, token counts
  (and the engine's token ids when the server returns them: `return_token_ids`),
  latency and sampling settings are put in a `CallRecord` scoped to that call
  by a context variable, so a trace collector reads the record of *its* call
  even with many calls in flight on threads (never `lm.history[-1]`). The
  record is readable from `dspy` callbacks' `on_lm_end` via
  `active_call_record()`.
* **Clear failures.** Transient errors (connection, 5xx, 429, timeouts) are
  retried by DSPy with exponential backoff (1 s, 2 s, 4 s, ... per attempt,
  `num_retries` times); if the server still cannot be reached the error is a
  `PolicyServerUnreachable` (a `ConnectionError`) naming the URL and model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dspy
import httpx
from dspy.utils.exceptions import LMError

from scaffold.errors import PolicyServerUnreachable
from scaffold.vllm_engine import (
    AsyncVLLMChatEngine,
    CallRecord,
    VLLMChatEngine,
    active_call_record,
    recording,
)

__all__ = ["CallRecord", "ScaffoldLM", "active_call_record", "make_lm"]

# Request keys that are not sampling.
_NON_SAMPLING_KEYS = frozenset({"cache"})
# extra_body fields that change the transport/rendering, not the sampling.
_TRANSPORT_BODY_KEYS = frozenset({"add_generation_prompt", "continue_final_message", "return_token_ids"})


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
    Copies (`copy`, `for_model`) share the engine and its connection pool.
    """

    def __init__(self, model: str, *, engine: VLLMChatEngine, **kwargs: Any) -> None:
        super().__init__(model, engine=engine, async_engine=AsyncVLLMChatEngine(engine), **kwargs)
        self.vllm_engine = engine

    @property
    def served_model(self) -> str:
        """The model name the server sees (the engine drops the "openai/" prefix)."""
        return self.model.removeprefix("openai/")

    def for_model(self, served_model: str) -> ScaffoldLM:
        """A copy that calls another served model, e.g. the LoRA adapter just loaded."""
        return self.copy(model=f"openai/{served_model}")

    @property
    def chat_url(self) -> str:
        return self.vllm_engine.chat_url

    def _sampling(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        merged = {**self.kwargs, **kwargs}
        sampling = {k: v for k, v in merged.items() if k not in _NON_SAMPLING_KEYS and v is not None}
        sampling.update({k: v for k, v in self.vllm_engine.extra_body.items()
                         if k not in _TRANSPORT_BODY_KEYS})
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
        """Open this call's record (the engine fills it); turn a connection failure into
        PolicyServerUnreachable."""
        try:
            with recording(self._begin(prompt, messages, kwargs)):
                yield
        except LMError as exc:
            unreachable = self._unreachable(exc)
            if unreachable is not None:
                raise unreachable from exc
            raise

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        with self._call_scope(prompt, messages, kwargs):
            return super().__call__(prompt, messages=messages, **kwargs)

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        with self._call_scope(prompt, messages, kwargs):
            return await super().acall(prompt, messages=messages, **kwargs)


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
    engine = VLLMChatEngine(api_base, api_key=api_key, timeout=timeout, extra_body=extra_body)
    return ScaffoldLM(
        f"openai/{model}",
        engine=engine,
        temperature=temperature,
        max_tokens=max_tokens,
        cache=cache,
        num_retries=num_retries,
        **kwargs,
    )
