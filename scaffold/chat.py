"""Chat messages and their exact token rendering.

Convention used everywhere in Scaffold: a prompt is a list of OpenAI-style
messages; when the last message has role "assistant" it is a *prefill* that
the model continues (e.g. "Label:"), which small instruct models need to
answer in the task's format. The server is then asked to continue the final
message instead of opening a new assistant turn, and the local render does the
same, so that both give the same token ids.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, str]
Messages = list[Message]


def ends_with_prefill(messages: Messages) -> bool:
    return bool(messages) and messages[-1].get("role") == "assistant"


def template_kwargs(messages: Messages) -> dict[str, bool]:
    """The chat-template switches for these messages (local render and vLLM alike)."""
    prefill = ends_with_prefill(messages)
    return {"add_generation_prompt": not prefill, "continue_final_message": prefill}


def render_ids(tokenizer: Any, messages: Messages) -> list[int]:
    """Token ids of the prompt exactly as vLLM's chat endpoint renders it."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, **template_kwargs(messages))
    if hasattr(out, "keys") and "input_ids" in out:  # transformers 5 may return a BatchEncoding
        out = out["input_ids"]
    return [int(t) for t in out]


def render_text(tokenizer: Any, messages: Messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **template_kwargs(messages))
