"""Test doubles shared by unit tests (never used by users)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace

import dspy


class ScriptedLM(dspy.BaseLM):
    """A dspy LM whose completion is `respond(messages)`: deterministic, thread-safe."""

    def __init__(self, respond: Callable[[list[dict]], str]):
        super().__init__(model="scripted", model_type="chat", temperature=0.0, max_tokens=64,
                         cache=False)
        self.respond = respond
        self.requests: list[list[dict]] = []
        self.request_kwargs: list[dict] = []
        self._lock = threading.Lock()

    def forward(self, prompt=None, messages=None, **kwargs):
        with self._lock:
            self.requests.append(messages)
            self.request_kwargs.append(kwargs)
        text = self.respond(messages)
        message = SimpleNamespace(content=text, role="assistant", tool_calls=None)
        choice = SimpleNamespace(message=message, finish_reason="stop", index=0, logprobs=None)
        usage = {"prompt_tokens": sum(len(m["content"].split()) for m in messages),
                 "completion_tokens": len(text.split()), "total_tokens": 0}
        return SimpleNamespace(choices=[choice], usage=usage, model="scripted")
