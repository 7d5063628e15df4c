"""Test doubles shared by unit tests (never used by users)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

import dspy
import pytest
from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events
from dspy.utils.exceptions import LMError

from scaffold.errors import PolicyServerUnreachable
from scaffold.types import TaskContract


class ScriptedEngine:
    """A DSPy engine (`complete(Request) -> Response`, DSPy's public extension point since
    3.4) whose reply is `respond(messages)`: deterministic, thread-safe, and it records
    every request as OpenAI-style messages plus its sampling settings. With
    `sees_settings`, `respond(messages, settings)` also gets the request's settings
    (temperature, seed, ...)."""

    def __init__(self, respond: Callable[..., str], sees_settings: bool = False):
        self.respond = respond
        self.sees_settings = sees_settings
        self.requests: list[list[dict]] = []
        self.request_kwargs: list[dict] = []
        self._lock = threading.Lock()

    def complete(self, request: Request) -> Response:
        messages = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else \
                "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        messages += [{"role": m.role, "content": m.text or ""} for m in request.messages]
        settings = {k: list(v) if isinstance(v, tuple) else v  # as an OpenAI body has them
                    for k, v in dataclasses.asdict(request.config).items()
                    if v is not None and k != "extensions"}
        with self._lock:
            self.requests.append(messages)
            self.request_kwargs.append(settings)
        text = self.respond(messages, settings) if self.sees_settings else self.respond(messages)
        usage = Usage(input_tokens=sum(len(m["content"].split()) for m in messages),
                      output_tokens=len(text.split()), total_tokens=0)
        return Response(id=None, model="scripted", message=Message.assistant([TextPart(text)]),
                        finish_reason="stop", usage=usage)

    def stream(self, request: Request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


class ScriptedLM(dspy.LM):
    """A dspy LM whose completion is `respond(messages)`, through `ScriptedEngine`."""

    def __init__(self, respond: Callable[..., str], sees_settings: bool = False,
                 temperature: float = 0.0):
        self.scripted = ScriptedEngine(respond, sees_settings)
        super().__init__("scripted", engine=self.scripted, cache=False, temperature=temperature,
                         max_tokens=64)

    def __call__(self, *args, **kwargs):
        """A `PolicyServerUnreachable` raised by `respond` comes out as itself, as it does
        from `ScaffoldLM` (DSPy wraps an engine's errors in LMError)."""
        try:
            return super().__call__(*args, **kwargs)
        except LMError as exc:
            if isinstance(exc.__cause__, PolicyServerUnreachable):
                raise exc.__cause__ from exc
            raise

    @property
    def requests(self) -> list[list[dict]]:
        return self.scripted.requests

    @property
    def request_kwargs(self) -> list[dict]:
        return self.scripted.request_kwargs


def two_plus_three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TaskContract:
    """A one-problem math task given as user data ("What is 2+3?", answer 5), both splits."""
    from evals.tasks import get_task

    (tmp_path / "m.jsonl").write_text('{"question": "What is 2+3?", "answer": "5"}\n')
    monkeypatch.chdir(tmp_path)
    return get_task("math:m.jsonl,m.jsonl")
