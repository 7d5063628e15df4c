"""`PlainChatAdapter`: DSPy signatures as plain chat a small instruct model follows.

Small models (SmolLM2-135M) ignore DSPy's `[[ ## field ## ]]` markers; they
answer in format when the assistant turn is *prefilled* with the answer's
label. So a signature renders as:

    user:      <instructions>                  (omitted when DSPy's generic default)
               (blank line)
               <Input prefix> <value>          (each input field, declared order)
               <List prefix>                   (a list input: numbered lines)
               1. <item>
    assistant: <first output prefix>           (the prefill, e.g. "Label:")

A field's label is its name title-cased with a colon ("card_label" -> "Card
Label:"): name fields for the label the model should read. A `prefix=` declared
on the field still wins, for harnesses written against older DSPy (DSPy 3.4
warns that it is deprecated, stores it, and its own adapters ignore it). Few-shot
demos become earlier user/assistant turns; the instructions open the first user turn
(or a system message with `instructions_in_system=True`). Inputs that are None
are left out.

Parsing is lenient and never raises: the completion is what followed the
prefill. One output field: the stripped completion (a repeated label is
dropped). Several: the leading text is the first field; later fields are found
on lines "<label> value" (case-insensitive, markdown `**`/`#`/bullets allowed,
colon optional). A field is cut at its first line break when it is
*single-line*: its `desc` says "single line"/"single_line"/"one line", or its
type is not `str` (int, float, bool, Literal, Enum); not through
`json_schema_extra`, which DSPy's InputField/OutputField replace. A missing or
empty field gives "" and counts as a parse failure (`adapter.parse_failures`, and in the active trace:
`LMCall.parse_ok=False` plus a "parse_failure" fallback note).

Escape hatches on a signature class (harness authors who need exact control):
`render_messages(inputs: dict) -> list[dict]` (a classmethod/staticmethod) is
used verbatim instead of the rendering above (demos are not rendered then),
and `parse_completion(text: str) -> dict` instead of the parsing above.
Signature transforms that build a new class (`prepend`, ChainOfThought) do not
carry these methods over.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import threading
from typing import Any, Literal, get_origin

import dspy
from dspy.adapters.utils import parse_value
from dspy.signatures.signature import infer_prefix
from dspy.utils.exceptions import AdapterParseError

from scaffold.trace import capture_lm_calls, record_parse_failure, record_parsed

logger = logging.getLogger(__name__)

_SINGLE_LINE_DESC = re.compile(r"single[ _-]line|one line", re.IGNORECASE)
_MARKUP = r"[\s>#*_`~\-]*"  # markdown that may wrap a label: headings, bullets, bold


def field_prefix(name: str, field: Any) -> str:
    """The field's prefix ("Label:"): declared `prefix=`, else the title-cased name + ":"."""
    extra = getattr(field, "json_schema_extra", None) or {}
    prefix = extra.get("prefix")
    return str(prefix) if prefix else infer_prefix(name) + ":"


def _labels(name: str, field: Any) -> list[str]:
    """Spellings a model may use for a field's label (prefix without colon, name)."""
    labels = {field_prefix(name, field).strip().rstrip(":").strip(), infer_prefix(name), name}
    return sorted((label for label in labels if label), key=len, reverse=True)


def _label_pattern(labels: list[str]) -> str:
    parts = [r"[\s_]+".join(re.escape(w) for w in re.split(r"[\s_]+", label)) for label in labels]
    return "(?:" + "|".join(parts) + ")"


def _header_regex(name: str, field: Any, *, strict: bool = False) -> re.Pattern[str]:
    """A line that starts a field: optional markup, the label, markup/colon, the value.

    `strict` requires the colon (used for a label repeated right after the prefill,
    where "Answer is 42" must stay a value).
    """
    sep = "[:：]" if strict else "[:：\\-–]?"
    return re.compile(
        rf"^{_MARKUP}{_label_pattern(_labels(name, field))}(?![\w])[*_`]*\s*{sep}[*_`]*\s*(?P<rest>.*)$",
        re.IGNORECASE,
    )


def is_single_line(field: Any) -> bool:
    extra = getattr(field, "json_schema_extra", None) or {}
    if _SINGLE_LINE_DESC.search(str(extra.get("desc") or "")):
        return True
    annotation = getattr(field, "annotation", str)
    if annotation in (int, float, bool) or get_origin(annotation) is Literal:
        return True
    return isinstance(annotation, type) and issubclass(annotation, enum.Enum)


# DSPy's generic instructions for a signature without a docstring (also kept, stale,
# by signatures extended with extra fields, e.g. ChainOfThought's reasoning).
_DEFAULT_INSTRUCTIONS = re.compile(r"Given the fields (`\w+`(, )?)+, produce the fields (`\w+`(, )?)+\.")


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "toDict"):
        return obj.toDict()
    return dict(obj)


def render_value(value: Any) -> str:
    """Scalar -> text; a list -> numbered lines; dicts/models -> JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            return "(none)"
        return "\n".join(f"{i}. {render_value(item)}" for i, item in enumerate(value, start=1))
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _clean_inline(value: str) -> str:
    """Strip whitespace and wrapping markdown (**x**, `x`) from a one-line value."""
    value = value.strip()
    stripped = value.strip("*`").strip()
    return stripped if stripped else value


class PlainChatAdapter(dspy.Adapter):
    """Render signatures as plain chat with an assistant prefill; parse leniently, never raise."""

    def __init__(
        self,
        *,
        instructions_in_system: bool = False,
        prefill: bool = True,
        skip_default_instructions: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.instructions_in_system = instructions_in_system
        self.prefill = prefill
        self.skip_default_instructions = skip_default_instructions
        self._lock = threading.Lock()
        self._parse_failures = 0

    # -- bookkeeping ------------------------------------------------------
    @property
    def parse_failures(self) -> int:
        """Completions (or fields) that did not parse, over this adapter's life."""
        return self._parse_failures

    def _failed(self, detail: str, completion: str) -> None:
        with self._lock:
            self._parse_failures += 1
        logger.debug("parse failure: %s (completion %r)", detail, completion[:200])
        record_parse_failure(detail, completion)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> PlainChatAdapter:
        import copy

        new = copy.copy(self)
        new._lock = threading.Lock()
        return new

    # -- rendering --------------------------------------------------------
    def instructions(self, signature: type[dspy.Signature]) -> str:
        text = (signature.instructions or "").strip()
        if self.skip_default_instructions and _DEFAULT_INSTRUCTIONS.fullmatch(text):
            return ""
        return text

    def format_user_message_content(
        self,
        signature: type[dspy.Signature],
        inputs: dict[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        lines = []
        for name, field in signature.input_fields.items():
            if name not in inputs or inputs[name] is None:
                continue
            value = inputs[name]
            label = field_prefix(name, field)
            text = render_value(value)
            if isinstance(value, (list, tuple)) and value:
                lines.append(f"{label}\n{text}")
            else:
                lines.append(f"{label} {text}")
        body = "\n".join(lines)
        return "\n\n".join(part for part in (prefix.strip(), body, suffix.strip()) if part)

    def format_assistant_message_content(
        self,
        signature: type[dspy.Signature],
        outputs: dict[str, Any],
        missing_field_message: str | None = None,
    ) -> str:
        lines = []
        for name, field in signature.output_fields.items():
            if name in outputs and outputs[name] is not None:
                lines.append(f"{field_prefix(name, field)} {render_value(outputs[name])}")
        return "\n".join(lines)

    def prefill_text(self, signature: type[dspy.Signature]) -> str | None:
        """The assistant prefill: the first output field's prefix (None when disabled)."""
        if not self.prefill or not signature.output_fields:
            return None
        name, field = next(iter(signature.output_fields.items()))
        return field_prefix(name, field)

    def format(
        self,
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        hook = getattr(signature, "render_messages", None)
        if callable(hook):
            if demos:
                logger.warning("%s.render_messages: demos are not rendered", signature.__name__)
            return [dict(m) for m in hook(dict(inputs))]
        messages: list[dict[str, Any]] = []
        instructions = self.instructions(signature)
        pending_instructions = ""
        if instructions and self.instructions_in_system:
            messages.append({"role": "system", "content": instructions})
        elif instructions:
            pending_instructions = instructions
        for demo in demos:
            demo = _as_dict(demo)
            if not any(k in demo for k in signature.output_fields):
                continue
            user = self.format_user_message_content(signature, demo, prefix=pending_instructions)
            pending_instructions = ""
            messages.append({"role": "user", "content": user})
            messages.append(
                {"role": "assistant", "content": self.format_assistant_message_content(signature, demo)}
            )
        user = self.format_user_message_content(signature, inputs, prefix=pending_instructions)
        messages.append({"role": "user", "content": user})
        prefill = self.prefill_text(signature)
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
        return messages

    def format_field_with_value(self, fields_with_values: dict[Any, Any], role: str = "user") -> str:
        """A completion as the model would continue the prefill (lets DummyLM script answers)."""
        parts = []
        for i, (field, value) in enumerate(fields_with_values.items()):
            text = render_value(value)
            parts.append(f" {text}" if i == 0 else f"{infer_prefix(field.name)}: {text}")
        return "\n".join(parts)

    # -- calling ----------------------------------------------------------
    # Through DSPy's public adapter entry points only: the base pipeline (format, call,
    # parse) runs unchanged, and what differs is done around it.
    def __call__(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any, demos: list, inputs: dict) -> list:
        with capture_lm_calls():
            try:
                values = super().__call__(lm, lm_kwargs, signature, demos, inputs)
            except AdapterParseError:
                values = [self._empty_reply(signature)]
            return self._finish(signature, values)

    async def acall(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any, demos: list, inputs: dict) -> list:
        with capture_lm_calls():
            try:
                values = await super().acall(lm, lm_kwargs, signature, demos, inputs)
            except AdapterParseError:
                values = [self._empty_reply(signature)]
            return self._finish(signature, values)

    def _empty_reply(self, signature: Any) -> dict[str, Any]:
        """DSPy's adapter raises on an empty completion (the only AdapterParseError here:
        `parse` never raises); a harness step gets empty fields and a counted failure."""
        return self.parse(signature, "")

    @staticmethod
    def _finish(signature: Any, values: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Missing fields are "" (never None); the first choice's fields go on the trace."""
        for value in values:
            for name in signature.output_fields:
                if value.get(name) is None:
                    value[name] = ""
        if values:
            record_parsed({k: v for k, v in values[0].items() if k != "logprobs"})
        return values

    # -- parsing ----------------------------------------------------------
    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        completion = completion or ""
        hook = getattr(signature, "parse_completion", None)
        if callable(hook):
            try:
                values = dict(hook(completion))
            except Exception as exc:  # a harness parser must not take the run down either
                values = {}
                self._failed(f"{signature.__name__}.parse_completion raised {exc!r}", completion)
            missing = [n for n in signature.output_fields if values.get(n) in (None, "")]
            for name in missing:
                values[name] = ""
            if missing and values:
                self._failed(f"missing fields {missing}", completion)
            return values
        raw = self._split_fields(signature, completion)
        values: dict[str, Any] = {}
        missing = []
        for name, field in signature.output_fields.items():
            text = raw.get(name, "").strip()
            if is_single_line(field):
                text = _clean_inline(text.split("\n", 1)[0]) if text else ""
            if not text:
                missing.append(name)
                values[name] = ""
                continue
            values[name] = self._convert(name, field, text, completion)
        if missing:
            self._failed(f"missing fields {missing}", completion)
        return values

    def _convert(self, name: str, field: Any, text: str, completion: str) -> Any:
        annotation = getattr(field, "annotation", str)
        if annotation is str:
            return text
        try:
            return parse_value(text, annotation)
        except Exception as exc:
            self._failed(f"field {name!r}: {text!r} is not a {annotation}: {exc}", completion)
            return text

    def _split_fields(self, signature: type[dspy.Signature], completion: str) -> dict[str, str]:
        """Assign completion lines to output fields by their labels (see the module docstring)."""
        fields = list(signature.output_fields.items())
        if not fields:
            return {}
        first = fields[0][0]
        # Later fields may omit the colon; the first field's label (repeated after the
        # prefill) must have one. One output field: only checked before any text.
        headers = [(name, _header_regex(name, field)) for name, field in fields[1:]]
        first_header = [(first, _header_regex(first, fields[0][1], strict=True))]
        chunks: dict[str, list[str]] = {}
        current: str | None = first
        started = False  # a non-blank line has been read
        for line in completion.split("\n"):
            match = None
            candidates = (first_header if not started or headers else []) + headers
            started = started or bool(line.strip())
            for name, regex in candidates:
                m = regex.match(line)
                if m:
                    match = (name, m.group("rest"))
                    break
            if match is not None:
                name, rest = match
                if name in chunks and "".join(chunks[name]).strip():
                    current = None  # a repeated label: keep the first occurrence
                    continue
                current = name
                chunks[name] = [rest]
            elif current is not None:
                chunks.setdefault(current, []).append(line)
        return {name: "\n".join(lines) for name, lines in chunks.items()}
