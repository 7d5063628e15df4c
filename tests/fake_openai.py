"""A scripted fake of vLLM's OpenAI-compatible chat endpoint, for tests.

Runs a ``ThreadingHTTPServer`` on 127.0.0.1 (random free port) in a daemon
thread, records every request body, and answers ``POST .../chat/completions``
from a script: a list of replies consumed in order (the last one repeats), or
a function ``body -> reply``. A reply is ``(status, json_body)``; use
:func:`chat_completion` to build a well-formed 200 body.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, dict[str, Any]]
Script = list[Reply] | Callable[[dict[str, Any]], Reply]


def chat_completion(
    text: str,
    *,
    model: str = "policy",
    prompt_tokens: int = 11,
    completion_tokens: int = 3,
    token_ids: list[int] | None = None,
    prompt_token_ids: list[int] | None = None,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """A chat.completion body shaped like vLLM's (optionally with token ids)."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish_reason,
        "logprobs": None,
    }
    if token_ids is not None:
        choice["token_ids"] = token_ids
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    if prompt_token_ids is not None:
        body["prompt_token_ids"] = prompt_token_ids
    return body


class FakeOpenAIServer:
    """Context manager: ``with FakeOpenAIServer([(200, chat_completion("x"))]) as srv: srv.api_base``."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script if script is not None else [(200, chat_completion("ok"))]
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._served = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            index = self._served
            self._served += 1
        if callable(self.script):
            return self.script(body)
        return self.script[min(index, len(self.script) - 1)]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # /v1/models, for clients that probe it
                self._send(200, {"object": "list", "data": [{"id": "policy", "object": "model"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                body = json.loads(raw or b"{}")
                with server._lock:
                    server.paths.append(self.path)
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                status, payload = server._next_reply(body)
                self._send(status, payload)

        return Handler

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
