"""Client for the policy server: a `dspy.LM` for harnesses, and raw completions
that return the engine's sampled token ids and logprobs (for exact-token
distillation: the student's response is scored as the engine sampled it, never
re-tokenized).

    client = PolicyClient(server.base_url, server.model_name)
    lm = client.dspy_lm()                                     # for harnesses
    outs = client.complete(prompt_ids, n=4, temperature=1.0)  # token ids + logprobs
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from scaffold.chat import Messages, template_kwargs
from scaffold.errors import PolicyServerUnreachable

PolicyUnavailable = PolicyServerUnreachable  # the name this module used first
MAX_LOGPROB_TOKEN_IDS = 128  # vLLM's cap on logprob_token_ids per request (vllm.sampling_params)


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    logprobs: list[float] | None  # the engine's logprob of each sampled token
    finish_reason: str | None


@dataclass
class ChatResult:
    prompt_token_ids: list[int] | None  # as the server rendered the messages
    completions: list[Completion]
    prompt_tokens: int
    completion_tokens: int


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return False


class PolicyClient:
    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY",
                 timeout: float = 600.0, max_attempts: int = 4, max_connections: int = 64):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.max_attempts = max_attempts
        self._http = httpx.Client(
            timeout=timeout,
            headers={"Authorization": f"Bearer {api_key}"},
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
        )

    def close(self) -> None:
        self._http.close()

    # -- DSPy -------------------------------------------------------------
    def dspy_lm(self, model: str | None = None, **kwargs: Any):
        """A dspy.LM bound to this server (model: the served name or an adapter name)."""
        from scaffold.dspy_lm import make_lm

        return make_lm(self.base_url, model or self.model, api_key=self.api_key, **kwargs)

    # -- raw HTTP ---------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        url = f"{self.base_url}{path}"

        @retry(stop=stop_after_attempt(self.max_attempts),
               wait=wait_exponential(multiplier=0.5, max=8), retry=retry_if_exception(_retryable),
               reraise=True)
        def send() -> dict:
            r = self._http.post(url, json=body)
            r.raise_for_status()
            return r.json()

        try:
            return send()
        except httpx.TransportError as e:
            raise PolicyServerUnreachable(
                f"policy server at {self.base_url} unreachable after {self.max_attempts} "
                f"attempts ({type(e).__name__}: {e}). Is it running? (--api-base, or let "
                "Scaffold start one)"
            ) from e
        except httpx.HTTPStatusError as e:
            raise RuntimeError(
                f"{url} answered {e.response.status_code}: {e.response.text[:500]}"
            ) from e

    def models(self) -> list[str]:
        r = self._http.get(f"{self.base_url}/models")
        r.raise_for_status()
        return [m["id"] for m in r.json()["data"]]

    # -- completions with token ids ---------------------------------------
    def complete(self, prompt_ids: Sequence[int], *, model: str | None = None, n: int = 1,
                 max_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None, stop: list[str] | None = None,
                 stop_token_ids: Sequence[int] | None = None,
                 logprobs: bool = True) -> list[Completion]:
        """Sample from exact prompt token ids; returns the sampled ids and their logprobs.
        `stop_token_ids` (vLLM's extension) end a sample after that token, which is kept."""
        body: dict[str, Any] = {
            "model": model or self.model, "prompt": list(map(int, prompt_ids)), "n": n,
            "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
            "return_token_ids": True, "skip_special_tokens": False,
        }
        if logprobs:
            body["logprobs"] = 0
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = stop
        if stop_token_ids:
            body["stop_token_ids"] = list(map(int, stop_token_ids))
        data = self._post("/completions", body)
        out = []
        for ch in sorted(data["choices"], key=lambda c: c["index"]):
            lp = ch.get("logprobs") or {}
            out.append(Completion(
                token_ids=[int(t) for t in ch["token_ids"]], text=ch["text"],
                logprobs=lp.get("token_logprobs"), finish_reason=ch.get("finish_reason"),
            ))
        return out

    def next_token_logprobs(self, prompt_ids: Sequence[int], token_ids: Sequence[int], *,
                            model: str | None = None) -> list[float]:
        """The served model's log-probabilities of `token_ids` as the next token after
        `prompt_ids` (full-vocabulary log-softmax, before any temperature: vLLM's raw
        logprobs). Requests of max_tokens=1 with vLLM's `logprob_token_ids` (at most 128 ids
        each); a prompt whose head the server has just computed (the harness's own request)
        is a prefix-cache hit, so only its tail is computed again."""
        if not token_ids:
            raise ValueError("next_token_logprobs needs at least one token id")
        scores: dict[int, float] = {}
        ids = [int(t) for t in token_ids]
        for start in range(0, len(ids), MAX_LOGPROB_TOKEN_IDS):
            data = self._post("/completions", {
                "model": model or self.model, "prompt": list(map(int, prompt_ids)),
                "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                "logprob_token_ids": ids[start:start + MAX_LOGPROB_TOKEN_IDS],
                "return_tokens_as_token_ids": True})
            top = (data["choices"][0].get("logprobs") or {}).get("top_logprobs") or [None]
            scores.update({int(k.removeprefix("token_id:")): float(v)
                           for k, v in (top[0] or {}).items()})
        missing = [t for t in ids if t not in scores]
        if missing:
            raise RuntimeError(f"{self.base_url} returned no logprob for token ids {missing[:5]} "
                               "(its vLLM has no logprob_token_ids: it needs vLLM >= 0.32)")
        return [scores[t] for t in ids]

    def complete_many(self, prompts: Sequence[Sequence[int]], *, concurrency: int = 16,
                      **kwargs: Any) -> list[list[Completion]]:
        """`complete` over many prompts with `concurrency` requests in flight (order kept)."""
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(lambda p: self.complete(p, **kwargs), prompts))

    def chat(self, messages: Messages, *, model: str | None = None, n: int = 1,
             max_tokens: int = 256, temperature: float = 0.0, seed: int | None = None,
             logprobs: bool = False) -> ChatResult:
        """Chat completion (prefill-aware) with the server's prompt ids and sampled ids."""
        body: dict[str, Any] = {
            "model": model or self.model, "messages": messages, "n": n,
            "max_tokens": max_tokens, "temperature": temperature,
            "return_token_ids": True, **template_kwargs(messages),
        }
        if logprobs:
            body["logprobs"] = True
        if seed is not None:
            body["seed"] = seed
        data = self._post("/chat/completions", body)
        comps = []
        for ch in sorted(data["choices"], key=lambda c: c["index"]):
            lp = ch.get("logprobs") or {}
            comps.append(Completion(
                token_ids=[int(t) for t in (ch.get("token_ids") or [])],
                text=ch["message"].get("content") or "",
                logprobs=[t["logprob"] for t in lp.get("content") or []] or None,
                finish_reason=ch.get("finish_reason"),
            ))
        usage = data.get("usage") or {}
        return ChatResult(prompt_token_ids=data.get("prompt_token_ids"), completions=comps,
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0))

    def check_render(self, tokenizer: Any, messages: Messages, model: str | None = None) -> None:
        """Raise if the local chat-template render differs from the server's prompt ids."""
        from scaffold.chat import render_ids

        local = render_ids(tokenizer, messages)
        server = self.chat(messages, model=model, max_tokens=1).prompt_token_ids
        if server is None:
            raise RuntimeError("server did not return prompt_token_ids (needs vLLM >= 0.10)")
        if local != server:
            i = next((k for k, (a, b) in enumerate(zip(local, server, strict=False)) if a != b),
                     min(len(local), len(server)))
            raise RuntimeError(
                f"local chat-template render differs from the server's at token {i}: "
                f"local {local[max(0, i - 3):i + 5]} vs server {server[max(0, i - 3):i + 5]} "
                f"(lengths {len(local)} vs {len(server)}). Use the same tokenizer folder for both."
            )
