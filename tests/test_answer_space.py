"""The answer-space trie: allowed next tokens along a response, and where it is cut."""

from __future__ import annotations

import pytest

from distill.answer_space import AnswerSpace

EOS, NL, NL2, DOT_NL = 1, 2, 3, 4  # EOS, "\n", "\n\n", ".\n"


class WordTokenizer:
    """Hand-built vocabulary: words and label pieces, a few newline tokens."""

    eos_token_id = EOS
    vocab = ["<pad>", "<eos>", "\n", "\n\n", ".\n", " card", "_arrival", "_payment", " lost",
             "_phone", " Lost", " delete", "_account", " card_arrival"]

    def __len__(self) -> int:
        return len(self.vocab)

    def decode(self, ids, skip_special_tokens=False):
        return "".join("" if i == EOS else self.vocab[i] for i in ids)

    def encode(self, text, add_special_tokens=False):
        out, rest = [], text  # greedy longest match, except the merged " card_arrival" token
        while rest:
            best = max((i for i, v in enumerate(self.vocab) if i > 4 and i != 13
                        and rest.startswith(v)), key=lambda i: len(self.vocab[i]))
            out.append(best)
            rest = rest[len(self.vocab[best]):]
        return out


@pytest.fixture
def space() -> AnswerSpace:
    return AnswerSpace.from_texts(WordTokenizer(), [" card_arrival", " card_payment",
                                                    " lost_phone", " card"])


def test_line_ends_are_eos_and_bare_line_breaks(space):
    assert space.end_ids == [EOS, NL, NL2]  # ".\n" carries text: not an answer's end


def test_a_valid_answer_keeps_every_position_with_the_trie_children(space):
    # " card" "_arrival" "\n": root -> " card" (complete: " card" is an answer too) -> ...
    kept, allowed = space.supports([5, 6, NL])
    assert kept == 3
    assert allowed[0] == [5, 8]  # " card", " lost"
    assert allowed[1] == [EOS, NL, NL2, 6, 7]  # after " card": end here, or go on
    assert allowed[2] == [EOS, NL, NL2]  # after " card_arrival": only a line end


def test_a_made_up_answer_is_cut_after_its_first_token_off_the_trie(space):
    # " delete" "_account" "\n": position 0 says which first tokens it should have used
    kept, allowed = space.supports([11, 12, NL])
    assert kept == 1 and allowed == [[5, 8]]
    kept, allowed = space.supports([8, 12, NL])  # " lost" then a wrong piece
    assert kept == 2 and allowed == [[5, 8], [9]]


def test_a_capitalised_variant_and_text_after_the_end_are_cut(space):
    assert space.supports([10, 9, NL])[0] == 1  # " Lost": off the trie at once
    assert space.supports([8, 9, NL, 5])[0] == 3  # nothing after the line end


def test_rejects_empty_spaces():
    with pytest.raises(ValueError, match="at least one answer"):
        AnswerSpace([], [EOS])
    with pytest.raises(ValueError, match="line-end"):
        AnswerSpace([[5]], [])
