"""Harness traces: every LM call a program makes for one example, in order.

    collector = TraceCollector()
    with dspy.context(lm=make_lm(...), adapter=PlainChatAdapter()):
        with collector.trace("ex-17", program, inputs) as tr:
            program(**inputs)
    tr.final_call().messages        # the final step's exact request (teacher context)

`TraceCollector` is a `dspy` callback. `trace()` opens a trace for one example
and registers the collector for the block (`dspy.context(callbacks=[...])`),
so no global configuration is needed; a collector already registered with
`dspy.configure(callbacks=[collector])` works too. Each LM call made inside the
block (from any `dspy.Predict` in the program) is appended with its step name:
the predictor's attribute path in the program (`program.named_predictors()`,
e.g. "draft.predict", "verify"), else the signature's name.

Concurrency: the active trace is stored in DSPy's context-scoped settings, so
traces of examples run at the same time never mix, and `dspy.Parallel` workers
inherit it. A plain `ThreadPoolExecutor` worker starts with an empty context:
submit with `submit(executor, fn, ...)` (or wrap with `bind_context(fn)`), which
runs `fn` under a copy of the caller's context (so it also sees `dspy.context`
overrides such as `lm` and `adapter`), and open the trace inside `fn`.

The fallbacks list holds `note_fallback(...)` entries (empty bank, parse
failure, empty plan): the "no signal, no step" contract needs them counted.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import dspy
import networkx as nx
from dspy.utils.callback import BaseCallback

from scaffold.dspy_lm import active_call_record

_SETTINGS_KEY = "scaffold_trace"  # the active _TraceState, in dspy's context-scoped settings
_CAPTURE: contextvars.ContextVar[list[LMCall] | None] = contextvars.ContextVar(
    "scaffold_trace_capture", default=None
)
_T = TypeVar("_T")
# Guards trace mutation from worker threads of one example (dspy.Parallel); cheap, rarely contended.
_LOCK = threading.Lock()
# The dspy.Predict modules running in this context, innermost last, as (call_id, module):
# kept from the collector's own on_module_start/end events rather than read from DSPy's
# internal caller stack.
_PREDICTS: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar(
    "scaffold_running_predicts", default=())


@dataclass
class LMCall:
    """One LM call: the exact request and what came back."""

    step: str
    messages: list[dict]
    completion: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    sampling: dict
    model: str | None
    parse_ok: bool = True
    error: str | None = None
    prompt_token_ids: list[int] | None = None
    completion_token_ids: list[int] | None = None
    finish_reason: str | None = None
    alternatives: list[str] = field(default_factory=list)  # choices 1..n-1 when n > 1
    parsed: dict | None = None  # the adapter's parsed output fields (first choice)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMCall:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Trace:
    """All LM calls of one program run on one example, plus its fallbacks and result."""

    example_id: str
    program: str
    calls: list[LMCall] = field(default_factory=list)
    fallbacks: list[dict] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    error: str | None = None
    started_at: float = 0.0  # unix time
    wall_s: float = 0.0

    def final_call(self) -> LMCall | None:
        """The call whose completion the program returned (the last such), else the last
        call: a harness whose calls run in parallel (self_consistency's samples, its greedy
        check) may log the winner before others."""
        if not self.calls:
            return None
        chosen = self.outputs.get("completion") if isinstance(self.outputs, dict) else None
        return next((c for c in reversed(self.calls) if chosen and c.completion == chosen),
                    self.calls[-1])

    def step_names(self) -> list[str]:
        return [c.step for c in self.calls]

    @property
    def parse_failures(self) -> int:
        return sum(1 for c in self.calls if not c.parse_ok)

    def fell_back(self) -> bool:
        """Whether any fallback (including a parse failure) was noted."""
        return bool(self.fallbacks)

    def answer_fell_back(self) -> bool:
        """Whether a fallback that degraded the harness's answer was noted (what evals count
        as fallbacks): a screening mark (`note_fallback(..., screening=True)`, a training
        filter such as self_consistency's weak_vote) leaves the answer as it was."""
        return any(not f.get("screening") for f in self.fallbacks)

    def graph(self, min_chars: int = 3) -> nx.DiGraph:
        """Data flow: "input" -> calls -> "output".

        Nodes: "input", one per call ("<index>:<step>", attrs step, index, kind="call"),
        "output". Edges: input -> call when an input value (or a list input's item)
        appears in the call's messages; call A -> later call B when A's stripped
        completion or one of its parsed field values (at least `min_chars` long)
        appears in B's messages; last call -> output (input -> output when there
        are no calls).
        """
        g = nx.DiGraph()
        g.add_node("input", kind="input")
        nodes = [f"{i}:{c.step}" for i, c in enumerate(self.calls)]
        for i, (node, call) in enumerate(zip(nodes, self.calls, strict=True)):
            g.add_node(node, kind="call", step=call.step, index=i)
        g.add_node("output", kind="output")
        texts = [_messages_text(c.messages) for c in self.calls]
        needles = [s for s in _strings(self.inputs) if len(s.strip()) >= min_chars]
        for node, text in zip(nodes, texts, strict=True):
            if any(s.strip() in text for s in needles):
                g.add_edge("input", node)
        for a, call in enumerate(self.calls):
            produced = [call.completion, *_strings(call.parsed or {})]
            produced = [s.strip() for s in produced if len(s.strip()) >= min_chars]
            for b in range(a + 1, len(self.calls)):
                if any(s in texts[b] for s in produced):
                    g.add_edge(nodes[a], nodes[b])
        g.add_edge(nodes[-1] if nodes else "input", "output")
        return g

    def to_dict(self) -> dict[str, Any]:
        return {
            "example_id": self.example_id,
            "program": self.program,
            "calls": [c.to_dict() for c in self.calls],
            "fallbacks": _jsonable(self.fallbacks),
            "inputs": _jsonable(self.inputs),
            "outputs": _jsonable(self.outputs),
            "error": self.error,
            "started_at": self.started_at,
            "wall_s": self.wall_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        return cls(
            example_id=str(data["example_id"]),
            program=str(data["program"]),
            calls=[LMCall.from_dict(c) for c in data.get("calls", [])],
            fallbacks=list(data.get("fallbacks", [])),
            inputs=dict(data.get("inputs", {})),
            outputs=dict(data.get("outputs", {})),
            error=data.get("error"),
            started_at=float(data.get("started_at", 0.0)),
            wall_s=float(data.get("wall_s", 0.0)),
        )


def _jsonable(value: Any) -> Any:
    """JSON-safe copy: dicts/lists/scalars kept, pydantic models dumped, the rest str()."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump())
    if hasattr(value, "toDict"):
        return _jsonable(value.toDict())
    return str(value)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple, set)):
        return [s for v in value for s in _strings(v)]
    return [] if value is None else [str(value)]


def _messages_text(messages: list[dict]) -> str:
    return "\n".join(str(m.get("content") or "") for m in messages)


# -- active trace state ------------------------------------------------------


@dataclass
class _TraceState:
    trace: Trace
    owner: TraceCollector
    names: dict[int, str]  # id(predictor) -> attribute path in the program
    program: Any
    pending: dict[str, tuple[LMCall, float]] = field(default_factory=dict)
    top_call_id: str | None = None


def _state() -> _TraceState | None:
    return dspy.settings.get(_SETTINGS_KEY)


def current_trace() -> Trace | None:
    """The trace open in this context, or None."""
    state = _state()
    return state.trace if state is not None else None


def _signature_name(signature: Any) -> str:
    name = getattr(signature, "__name__", None)
    if name and name != "StringSignature":
        return name
    return str(getattr(signature, "signature", None) or name or "predict")


def _current_step(state: _TraceState | None) -> str | None:
    """Step name of the innermost dspy.Predict now running (None outside any)."""
    running = _PREDICTS.get()
    if not running:
        return None
    module = running[-1][1]
    if state is not None and id(module) in state.names:
        return state.names[id(module)]
    return _signature_name(module.signature)


def note_fallback(kind: str, detail: str = "", *, screening: bool = False,
                  **extra: Any) -> None:
    """Record that the harness fell back (empty bank, parse failure, empty plan...).

    No-op outside a trace. The entry gets the current step name when called inside a
    predictor, and any `extra` JSON-able fields. `screening=True` marks a note of a
    training screen that leaves the harness's answer as it was: an evaluation does not
    count it as a fallback (whether training skips the example is the kind's business:
    distill.teacher's NO_SIGNAL_FALLBACKS).
    """
    state = _state()
    if state is None:
        return
    entry = {"kind": kind, "detail": detail, "step": _current_step(state), **_jsonable(extra)}
    if screening:
        entry["screening"] = True
    with _LOCK:
        state.trace.fallbacks.append(entry)


@contextmanager
def capture_lm_calls() -> Iterator[list[LMCall]]:
    """Collect the LMCall objects recorded inside the block (for the adapter's parse step)."""
    captured: list[LMCall] = []
    token = _CAPTURE.set(captured)
    try:
        yield captured
    finally:
        _CAPTURE.reset(token)


def record_parse_failure(detail: str, completion: str = "") -> None:
    """Mark the LM call being parsed (innermost `capture_lm_calls`) as a parse failure.

    Also notes a "parse_failure" fallback. No-op outside a trace.
    """
    state = _state()
    if state is None:
        return
    captured = _CAPTURE.get()
    call = captured[-1] if captured else None
    extra: dict[str, Any] = {"completion": completion}
    if call is not None:
        call.parse_ok = False
        with _LOCK:
            extra["call_index"] = next(
                (i for i, c in enumerate(state.trace.calls) if c is call), None
            )
    note_fallback("parse_failure", detail, **extra)


def record_parsed(values: dict[str, Any]) -> None:
    """Attach the adapter's parsed fields to the LM call being parsed (no-op outside a trace)."""
    captured = _CAPTURE.get()
    if captured and _state() is not None:
        captured[-1].parsed = _jsonable(values)


# -- the collector -----------------------------------------------------------


def _first_text(outputs: Any) -> tuple[str, list[str]]:
    texts: list[str] = []
    for out in outputs or []:
        if isinstance(out, dict):
            texts.append(str(out.get("text") or ""))
        else:
            texts.append("" if out is None else str(out))
    return (texts[0] if texts else ""), texts[1:]


class TraceCollector(BaseCallback):
    """dspy callback that appends each LM call to the trace open in its context."""

    @contextmanager
    def trace(
        self, example_id: str, program: str | dspy.Module, inputs: dict | None = None
    ) -> Iterator[Trace]:
        """Open a trace for one example; LM calls inside the block are recorded into it.

        On an exception the trace's `error` is set and the exception propagates.
        """
        if isinstance(program, dspy.Module):
            names = {id(p): name for name, p in program.named_predictors()}
            label = type(program).__name__
        else:
            names, label = {}, str(program)
        tr = Trace(
            example_id=str(example_id),
            program=label,
            inputs=_jsonable(dict(inputs or {})),
            started_at=time.time(),
        )
        state = _TraceState(trace=tr, owner=self, names=names, program=program)
        callbacks = list(dspy.settings.get("callbacks") or [])
        overrides: dict[str, Any] = {_SETTINGS_KEY: state}
        if self not in callbacks:
            overrides["callbacks"] = [*callbacks, self]
        t0 = time.perf_counter()
        try:
            with dspy.context(**overrides):
                yield tr
        except BaseException as exc:
            tr.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            tr.wall_s = time.perf_counter() - t0

    def run(
        self, example_id: str, program: dspy.Module, inputs: dict, **call_kwargs: Any
    ) -> tuple[Trace, Any]:
        """Run `program(**inputs)` under a trace; never raises for program errors.

        Returns (trace, prediction or None); a failure is in `trace.error`.
        """
        pred = None
        try:
            with self.trace(example_id, program, inputs) as tr:
                pred = program(**inputs, **call_kwargs)
        except Exception:
            pass  # recorded in tr.error by trace()
        return tr, pred

    def _mine(self) -> _TraceState | None:
        state = _state()
        return state if state is not None and state.owner is self else None

    # module events: capture the program's own outputs
    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        state = self._mine()
        if state is None:
            return
        if isinstance(instance, dspy.Predict):
            _PREDICTS.set((*_PREDICTS.get(), (call_id, instance)))
        if state.top_call_id is not None:
            return
        # the program itself; when the trace was opened with a name, the first module run
        if instance is state.program or not isinstance(state.program, dspy.Module):
            state.top_call_id = call_id

    def on_module_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        running = _PREDICTS.get()
        if running and running[-1][0] == call_id:
            _PREDICTS.set(running[:-1])
        state = self._mine()
        if state is None or call_id != state.top_call_id or outputs is None:
            return
        if hasattr(outputs, "toDict"):
            outputs = outputs.toDict()
        state.trace.outputs = _jsonable(outputs if isinstance(outputs, dict) else {"output": outputs})

    # LM events: one LMCall per call, appended at start (call order), filled at end
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        state = self._mine()
        if state is None or call_id in state.pending:
            return
        messages = inputs.get("messages")
        if messages is None:
            prompt = inputs.get("prompt")
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        call_kwargs = inputs.get("kwargs") or {}
        sampling = {
            k: v
            for k, v in {**(getattr(instance, "kwargs", None) or {}), **call_kwargs}.items()
            if not k.startswith("api_") and k not in ("extra_body", "timeout", "cache") and v is not None
        }
        call = LMCall(
            step=_current_step(state) or "lm",
            messages=[dict(m) for m in messages],
            completion="",
            prompt_tokens=None,
            completion_tokens=None,
            latency_s=0.0,
            sampling=_jsonable(sampling),
            model=getattr(instance, "served_model", None) or getattr(instance, "model", None),
        )
        with _LOCK:
            state.trace.calls.append(call)
            state.pending[call_id] = (call, time.perf_counter())
        captured = _CAPTURE.get()
        if captured is not None:
            captured.append(call)

    def on_lm_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        state = self._mine()
        if state is None:
            return
        with _LOCK:
            pending = state.pending.pop(call_id, None)
        if pending is None:
            return
        call, t0 = pending
        call.latency_s = time.perf_counter() - t0
        call.completion, call.alternatives = _first_text(outputs)
        if exception is not None:
            call.error = f"{type(exception).__name__}: {exception}"
        record = active_call_record()
        if record is not None and record.done:  # a ScaffoldLM call: exact request and usage
            call.messages = [dict(m) for m in record.messages]
            call.sampling = _jsonable(record.sampling)
            call.model = record.model
            call.prompt_tokens = record.prompt_tokens
            call.completion_tokens = record.completion_tokens
            call.prompt_token_ids = record.prompt_token_ids
            call.completion_token_ids = record.completion_token_ids
            call.finish_reason = record.finish_reason
            if record.latency_s is not None:
                call.latency_s = record.latency_s


# -- threads -----------------------------------------------------------------


def submit(executor: Executor, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
    """`executor.submit(fn, ...)` run under a copy of the caller's context (dspy settings, trace)."""
    return executor.submit(contextvars.copy_context().run, fn, *args, **kwargs)


def bind_context(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Wrap `fn` to run under (a fresh copy of) the context captured now; for `executor.map`."""
    ctx = contextvars.copy_context()

    def bound(*args: Any, **kwargs: Any) -> _T:
        return ctx.copy().run(fn, *args, **kwargs)

    return bound


def run_in_context(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Run `fn` under a copy of the current context (its context changes do not leak back)."""
    return contextvars.copy_context().run(fn, *args, **kwargs)


# -- JSONL -------------------------------------------------------------------

_WRITE_LOCK = threading.Lock()


def write_jsonl(traces: Iterable[Trace], path: str | Path) -> None:
    """Append traces to a JSONL file, one per line (safe across threads and processes)."""
    lines = "".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in traces)
    if not lines:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _WRITE_LOCK, open(path, "a", encoding="utf-8") as f:
        lock = _file_lock(f)
        with lock:
            f.write(lines)
            f.flush()


def _file_lock(f: Any) -> Any:
    try:
        import fcntl
    except ImportError:  # not POSIX: the thread lock is all we have
        return nullcontext()

    @contextmanager
    def locked() -> Iterator[None]:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    return locked()


def read_jsonl(path: str | Path) -> list[Trace]:
    with open(path, encoding="utf-8") as f:
        return [Trace.from_dict(json.loads(line)) for line in f if line.strip()]
