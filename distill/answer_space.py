"""The answer space of a closed-set task, as a token trie: where the teacher may put mass.

A small teacher spreads its next-token mass beyond the task's answers: with five
precedents in context SmolLM2 gives the gold label's first token p ~ 0.43 on
BANKING77 but only ~0.48 to ANY label's first token; the rest goes to " I", " [",
capitalised variants and, further in, to made-up names. Distilled with forward KL,
the student learns that spread and answers " delete_account" or " refund_process".

The answer contract already says an answer is one of the task's labels, so the
teacher's distribution is restricted to the answers' token trie and renormalized
there (a task-given support, like the top-k loss's teacher support):

    space = AnswerSpace.from_texts(tokenizer, task.answer_texts())
    kept, allowed = space.supports(response_ids)   # allowed[t]: ids the teacher may use

Position t predicts response token t from tokens < t. While those tokens follow a
path of the trie, `allowed[t]` is the node's children, plus the line ends (EOS and
bare line breaks) where a complete answer ends. The first token off the
trie is kept (its position's prefix is still on the trie, so the restricted teacher
says which tokens it should have been) and everything after it is cut: after a
made-up prefix, the teacher's preferences only teach how to finish made-up names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    complete: bool = False  # a whole answer ends here


class AnswerSpace:
    def __init__(self, sequences: Sequence[Sequence[int]], end_ids: Sequence[int]) -> None:
        if not sequences:
            raise ValueError("an answer space needs at least one answer")
        self.root = _Node()
        for seq in sequences:
            if not seq:
                raise ValueError("an answer tokenizes to no tokens")
            node = self.root
            for t in seq:
                node = node.children.setdefault(int(t), _Node())
            node.complete = True
        self.end_ids = sorted({int(t) for t in end_ids})
        if not self.end_ids:
            raise ValueError("an answer space needs at least one line-end id")

    @classmethod
    def from_texts(cls, tokenizer: Any, texts: Sequence[str]) -> AnswerSpace:
        """The trie of `texts` as `tokenizer` encodes them (no special tokens); answers end
        with EOS or a bare line break ("\n", "\n\n", "\r\n")."""
        sequences = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        ends = [t for t in range(len(tokenizer)) if _is_line_end(tokenizer.decode([t]))]
        if tokenizer.eos_token_id is not None:
            ends.append(tokenizer.eos_token_id)
        return cls(sequences, ends)

    def allowed(self, node: _Node) -> list[int]:
        ids = sorted(node.children)
        return sorted({*ids, *self.end_ids}) if node.complete else ids

    def supports(self, response_ids: Sequence[int]) -> tuple[int, list[list[int]]]:
        """How many leading response tokens to keep, and each kept position's allowed ids."""
        node: _Node | None = self.root
        allowed: list[list[int]] = []
        for t in response_ids:
            if node is None:  # an earlier token left the trie (or ended the answer)
                break
            allowed.append(self.allowed(node))
            node = node.children.get(int(t))
        return len(allowed), allowed


LINE_BREAKS = ("\n", "\n\n", "\r\n")


def _is_line_end(text: str) -> bool:
    """A bare line break. Not "\n    " and the like (SmolLM2's vocabulary has 129 tokens of
    a newline plus indentation): a label's teacher puts next to no mass on them, and a small
    end set keeps every position's support within one vLLM scoring request (128 ids)."""
    return text in LINE_BREAKS
