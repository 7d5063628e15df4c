"""What one step trains on: the pairs, where each came from, and the token helpers that cut
a sampled completion down to the answer it trains.

`StepInputs` is filled by `distill.loop.collect` through the method objects
(`distill.methods`) and read by the trainer (`DistillTrainer.train_step`) and the
transcripts (`distill.transcripts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distill.answer_space import AnswerSpace
from distill.splicing import ContextTooLong, SplicedPair, splice
from scaffold.types import Example, TaskContract

if TYPE_CHECKING:  # annotations only: the step's inputs import without DSPy (a bare GPU box)
    from scaffold.trace import Trace


@dataclass(frozen=True)
class PairSource:
    """Where a training pair came from, for its transcript (distill.transcripts)."""

    kind: str  # rollout | harness_path | harness_answer | harness_sample | gold | ssopd
    example_id: str = ""
    teacher_messages: list[dict] | None = None  # None: a supervised pair (no teacher)
    trace: Trace | None = None  # the harness run behind its teacher context, if any
    student_messages: list[dict] | None = None  # the bare prompt its student ids render
    # the harness's final answer where no trace holds it (a recorded context, distill/replay)
    harness_completion: str | None = None


@dataclass
class StepInputs:
    pairs: list[SplicedPair] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    sampling_logprobs: list[list[float]] = field(default_factory=list)
    supports: list[list[list[int]] | None] = field(default_factory=list)
    # per pair: the teacher's log-probabilities on its support, scored by the vLLM server
    # (None: the trainer runs the teacher forward itself)
    teacher_logprobs: list[list[list[float]] | None] = field(default_factory=list)
    teacher_ids: list[list[int]] = field(default_factory=list)  # per pair: its teacher prompt
    # per pair: cross-entropy on its response, no teacher (vote_rl, gold_rl: weighted by the
    # advantage)
    sft: list[bool] = field(default_factory=list)
    sources: list[PairSource] = field(default_factory=list)  # per pair: for its transcript
    counts: dict = field(default_factory=lambda: {
        "examples": 0, "rollouts": 0, "rollout_tokens": 0, "fallback": 0, "skipped_fallback": 0,
        "skipped_too_long": 0, "harness_failed": 0, "harness_correct": 0,
        "student_correct": 0, "student_parsed": 0, "sft_targets": 0, "ssopd_mixed": 0,
        "harness_paths": 0, "harness_paths_skipped": 0, "off_answer_space": 0,
        "answer_space_cut_tokens": 0, "unlabelled": 0, "student_agrees_harness": 0,
        "gold_targets": 0, "teacher_scored_positions": 0, "teacher_requests": 0,
        "harness_filtered": 0, "harness_rollouts_skipped": 0, "contexts_recorded": 0,
        # vote_rl's and gold_rl's samples by the sign of their advantage; rollouts that ran
        # into max_new_tokens
        "rewarded": 0, "penalized": 0, "rollouts_cut": 0})
    times: dict = field(default_factory=dict)

    def add(self, student_ids: list[int], teacher_ids: list[int], response: list[int],
            max_len: int, weight: float = 1.0, logprobs: list[float] | None = None,
            space: AnswerSpace | None = None, sft: bool = False,
            source: PairSource | None = None) -> bool:
        """Splice and keep one pair; a context over `max_len` is a counted skip, never cut.
        With an answer `space` the teacher is restricted to it, and a response that leaves
        it is cut after its first token off it (counted; see distill.answer_space)."""
        support = None
        if space is not None:
            kept, support = space.supports(response)
            if kept < len(response):
                self.counts["off_answer_space"] += 1
                self.counts["answer_space_cut_tokens"] += len(response) - kept
                response = response[:kept]
                logprobs = None if logprobs is None else logprobs[:kept]
        try:
            pair = splice(student_ids, teacher_ids, response, max_len=max_len)
        except ContextTooLong:
            self.counts["skipped_too_long"] += 1
            return False
        self.pairs.append(pair)
        self.weights.append(weight)
        self.sampling_logprobs.append(list(logprobs) if logprobs is not None else [])
        self.supports.append(support)
        self.teacher_logprobs.append(None)
        self.teacher_ids.append(list(teacher_ids))
        self.sft.append(sft)
        self.sources.append(source or PairSource("gold" if sft else "rollout"))
        return True


def answer_ids(tokenizer: Any, task: TaskContract, completion: Any) -> tuple[list[int], list[float]]:
    """The sampled ids (and their logprobs) that make up the answer: all of them for math,
    the first line for one-line label answers (see `first_line`)."""
    ids, logprobs = list(completion.token_ids), list(completion.logprobs or [])
    if task.kind != "math":
        ids = first_line(tokenizer, ids)
        logprobs = logprobs[: len(ids)]
    return ids, logprobs


def first_line(tokenizer: Any, ids: list[int]) -> list[int]:
    """The ids up to and including the first token that ends the line (newline or EOS).

    A label answer is one line. Training on a small model's ramblings after it
    teaches the student whatever the teacher expects there (e.g. quoting the
    message), and those tokens outnumber the answer's; the teacher's verdict on
    the line end itself (EOS vs newline) stays in.
    """
    for k, t in enumerate(ids):
        if t == tokenizer.eos_token_id or "\n" in tokenizer.decode([t]):
            return ids[: k + 1]
    return ids


def line_end_ids(tokenizer: Any) -> list[int]:
    """Every vocabulary id whose text contains a newline: sampling that stops on them (and
    on EOS) yields exactly the ids `first_line` keeps, without decoding the rest."""
    cached = getattr(tokenizer, "_scaffold_line_end_ids", None)
    if cached is None:
        vocab = len(tokenizer)
        cached = [t for t in range(vocab) if "\n" in tokenizer.decode([t])]
        try:
            tokenizer._scaffold_line_end_ids = cached
        except AttributeError:  # a tokenizer that takes no new attributes: recompute next time
            pass
    return cached


def gold_target_ids(tokenizer: Any, task: TaskContract, example: Example) -> list[int]:
    """The gold answer as the completion after the bare prompt's prefill, ending in EOS:
    " card_arrival<eos>" after "Label:"; the reference solution for math."""
    text = task.reference_text(example)
    prefix = task.answer_prefix or ""
    if prefix and text.startswith(prefix):
        text = " " + text[len(prefix):].lstrip()
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [*ids, tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else ids
