"""The collapse guard: watch what a run's policy writes, warn when it falls, optionally stop.

Both GSM8K OPHSD runs collapsed to "The answer is N." (docs/notes/gsm8k.md): the student's
rollouts kept about 250 tokens per answer through step 8, then fell to 9 at step 11, and
nothing warned until the final evaluation (0.28 -> 0.02). The metrics already held the
signal. The guard reads each step's metrics row and compares a few signals with their value
at the start of the run:

- `rollout_len`: mean tokens per student rollout (the on-policy methods);
- `parse_rate`: the share of rollouts whose answer parses;
- `student_entropy`: the student's mean per-token entropy on the distilled tokens (nats);
- `eval_len`, `eval_parse_rate`: the same two on the held-out curve points (`--eval-every`),
  which is how the methods that never sample (sft, gold_sft) are watched.

A signal's start is the mean of its first `window` values, its current value the mean of
its last `window`; it alarms when current < factor x start. An alarm is shown in the
progress bar, logged once as a warning, and written to the metrics row (`guard_<signal>`: the
ratio; `guard_alarms`: how many signals alarm). With `stop`, the loop ends the run at the
last checkpoint older than every policy the first alarmed window read (`policy_read`,
`healthy_checkpoint`; used by `distill.run.train`).

The state is a pure function of the metrics rows, so a resumed run rebuilds it by replaying
them (`CollapseGuard.replay`) and alarms exactly where the uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SIGNALS = ("rollout_len", "parse_rate", "student_entropy", "eval_len", "eval_parse_rate")


@dataclass(frozen=True)
class GuardConfig:
    """Per-signal factors (0 turns a signal off); see distill.config for the defaults' why."""

    length_factor: float = 0.5  # rollout_len and eval_len
    parse_factor: float = 0.5  # parse_rate and eval_parse_rate
    entropy_factor: float = 0.0  # student_entropy (off by default: see distill.config)
    window: int = 2  # values averaged for a signal's start and for its current value
    stop: bool = False

    def factor(self, signal: str) -> float:
        if signal.endswith("len"):
            return self.length_factor
        if signal.endswith("parse_rate"):
            return self.parse_factor
        return self.entropy_factor


def signals(row: Mapping[str, object]) -> dict[str, float]:
    """The guarded signals a metrics row carries (a signal the row cannot say is absent)."""
    out: dict[str, float] = {}
    rollouts = _number(row.get("rollouts"))
    if rollouts:
        if (tokens := _number(row.get("rollout_tokens"))) is not None:
            out["rollout_len"] = tokens / rollouts
        if (parsed := _number(row.get("student_parsed"))) is not None:
            out["parse_rate"] = parsed / rollouts
    for signal, key in (("student_entropy", "student_entropy"), ("eval_len", "eval_answer_tokens"),
                        ("eval_parse_rate", "eval_parse_rate")):
        if (value := _number(row.get(key))) is not None:
            out[signal] = value
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class CollapseGuard:
    cfg: GuardConfig = field(default_factory=GuardConfig)
    # per signal, (value, the policy step that produced it: updates behind those weights)
    history: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    first_alarm_step: int | None = None  # the step whose row first alarmed
    # the oldest policy the first alarmed window read: the run's last healthy policy is older
    first_alarm_policy: int | None = None
    warned: set[str] = field(default_factory=set)

    @classmethod
    def replay(cls, cfg: GuardConfig, rows: Iterable[Mapping[str, object]]) -> CollapseGuard:
        """The guard as it stood after these metrics rows (a resumed run's rows so far)."""
        guard = cls(cfg)
        for row in rows:
            guard.observe(row)
        return guard

    def ratios(self) -> dict[str, float]:
        """Each signal's current value over its start, once both are known."""
        out = {}
        n = self.cfg.window
        for signal, entries in self.history.items():
            if len(entries) < n + 1:
                continue  # the start is still being measured
            start = sum(v for v, _ in entries[:n]) / n
            recent = entries[-n:]
            if start > 0:
                out[signal] = sum(v for v, _ in recent) / len(recent) / start
        return out

    def observe(self, row: Mapping[str, object]) -> dict[str, float]:
        """Take one step's metrics row; returns the metrics to add to it (`guard_*`)."""
        step = int(row["step"])  # type: ignore[arg-type]  # every metrics row has its step
        for signal, value in signals(row).items():
            self.history.setdefault(signal, []).append((value, policy_read(signal, row, step)))
        ratios = self.ratios()
        alarms = self.alarms(ratios)
        if alarms and self.first_alarm_step is None:
            self.first_alarm_step = step
            self.first_alarm_policy = min(p for s in alarms
                                          for _, p in self.history[s][-self.cfg.window:])
        return {**{f"guard_{s}": r for s, r in ratios.items()}, "guard_alarms": len(alarms)}

    def alarms(self, ratios: Mapping[str, float] | None = None) -> list[str]:
        """The signals below their factor now."""
        ratios = self.ratios() if ratios is None else ratios
        return [s for s in SIGNALS if s in ratios and ratios[s] < self.cfg.factor(s)]

    def new_warnings(self) -> list[str]:
        """One line per signal that alarms now and has not been reported yet."""
        ratios, lines = self.ratios(), []
        for signal in self.alarms(ratios):
            if signal not in self.warned:
                self.warned.add(signal)
                lines.append(f"collapse guard: {signal} is at {ratios[signal]:.2f}x its start "
                             f"(below {self.cfg.factor(signal)}); "
                             + ("stopping at the last checkpoint before it" if self.cfg.stop
                                else "--guard-stop ends a run at its last healthy checkpoint"))
        return lines

    def postfix(self) -> str:
        """A short progress-bar field, e.g. "rollout_len 0.12x" ("" when healthy)."""
        ratios = self.ratios()
        return " ".join(f"{s} {ratios[s]:.2f}x" for s in self.alarms(ratios))


def policy_read(signal: str, row: Mapping[str, object], step: int) -> int:
    """The policy (as the number of updates behind it) that produced a signal's value in the
    row of loop step `step` (1-based): the curve points evaluate the policy synced after the
    step; the trainer's entropy is that of the weights before the step's update; rollouts
    come from the policy the server held (`policy_step`, which the loop records; with
    --sync-every 1 that is step - 1)."""
    if signal.startswith("eval_"):
        return step
    if signal == "student_entropy":
        return step - 1
    served = row.get("policy_step")
    return int(served) if isinstance(served, int) else step - 1


def healthy_checkpoint(checkpoints: Iterable[Mapping[str, object]],
                       first_alarm_policy: int) -> Mapping[str, object] | None:
    """The last checkpoint older than every policy the first alarmed window read, or None."""
    before = [c for c in checkpoints
              if isinstance(c.get("step"), int) and int(c["step"]) < first_alarm_policy]  # type: ignore[arg-type]
    return before[-1] if before else None
