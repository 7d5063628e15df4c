"""distill.splicing on hand-built ids and on the bundled SmolLM2 tokenizer."""

from __future__ import annotations

import pytest
import torch

from distill.splicing import (
    ContextTooLong,
    RenderMismatch,
    check_alignment,
    check_prompt_render,
    collate,
    gather_response_positions,
    splice,
)

PAD = 0


@pytest.fixture
def pairs():
    return [
        splice([1, 2, 3], [7, 8, 9, 10, 11], [20, 21, 22]),
        splice([4, 5], [12, 13, 14], [23]),
    ]


def test_splice_concatenates_exact_ids(pairs):
    p = pairs[0]
    assert p.student_ids == [1, 2, 3, 20, 21, 22]
    assert p.teacher_ids == [7, 8, 9, 10, 11, 20, 21, 22]
    assert (p.student_prompt_len, p.teacher_prompt_len) == (3, 5)
    assert p.response_ids == [20, 21, 22]


def test_collate_hand_written_tensors(pairs):
    b = collate(pairs, pad_id=PAD)
    # Student: rows of length 6 and 3, width 6; every response ends at the right edge.
    assert b.student_input_ids.tolist() == [[1, 2, 3, 20, 21, 22], [0, 0, 0, 4, 5, 23]]
    assert b.student_attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
    assert b.student_position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 1, 2]]
    # Logits at t predict input t+1: student row 0 positions 2,3,4 predict 20,21,22.
    assert b.student_response_mask.int().tolist() == [[0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 0]]
    # Teacher: rows of length 8 and 4, width 8.
    assert b.teacher_input_ids.tolist() == [
        [7, 8, 9, 10, 11, 20, 21, 22],
        [0, 0, 0, 0, 12, 13, 14, 23],
    ]
    assert b.teacher_attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]
    assert b.teacher_position_ids.tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 0, 0, 0, 0, 1, 2, 3],
    ]
    assert b.teacher_response_mask.int().tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],
    ]
    assert b.response_ids.tolist() == [[20, 21, 22], [23, PAD, PAD]]
    assert b.response_lengths.tolist() == [3, 1]
    assert b.num_response_tokens == 4
    assert b.flat_response_ids().tolist() == [20, 21, 22, 23]
    assert b.student_response_mask.dtype == torch.bool
    assert b.student_input_ids.dtype == torch.long


def test_alignment_invariant_on_both_sides(pairs):
    b = collate(pairs, pad_id=PAD)
    for ids, mask in (
        (b.student_input_ids, b.student_response_mask),
        (b.teacher_input_ids, b.teacher_response_mask),
    ):
        for row, pair in enumerate(pairs):
            positions = mask[row].nonzero().squeeze(-1)
            assert ids[row, positions + 1].tolist() == pair.response_ids
        assert int(mask.sum()) == sum(len(p.response_ids) for p in pairs)


def test_check_alignment_catches_a_shifted_mask(pairs):
    b = collate(pairs, pad_id=PAD)
    b.teacher_response_mask = torch.roll(b.teacher_response_mask, shifts=1, dims=1)
    with pytest.raises(AssertionError, match="teacher"):
        check_alignment(b, pairs)


def test_gather_response_positions_is_row_major_and_aligned(pairs):
    b = collate(pairs, pad_id=PAD)

    # Fake "hidden states" that encode (row, the token the position predicts).
    def hidden(ids: torch.Tensor) -> torch.Tensor:
        nxt = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -1)], dim=1)
        rows = torch.arange(ids.shape[0])[:, None].expand_as(ids)
        return torch.stack([rows, nxt], dim=-1).float()

    s = gather_response_positions(hidden(b.student_input_ids), b.student_response_mask)
    t = gather_response_positions(hidden(b.teacher_input_ids), b.teacher_response_mask)
    expected = [[0, 20], [0, 21], [0, 22], [1, 23]]
    assert s.tolist() == expected
    assert t.tolist() == expected
    with pytest.raises(ValueError):
        gather_response_positions(torch.zeros(2, 5, 3), b.student_response_mask)


def test_context_too_long_names_the_side_and_never_truncates():
    with pytest.raises(ContextTooLong) as err:
        splice([1, 2, 3], [7, 8, 9, 10, 11], [20, 21, 22], max_len=7)
    e = err.value
    assert isinstance(e, ValueError)
    assert (e.side, e.length, e.max_len, e.prompt_len, e.response_len) == ("teacher", 8, 7, 5, 3)
    assert "teacher" in str(e) and "8" in str(e)
    with pytest.raises(ContextTooLong) as err:
        splice([1, 2, 3, 4, 5, 6], [7], [20, 21], max_len=7)
    assert err.value.side == "student"
    ok = splice([1, 2, 3], [7, 8, 9, 10, 11], [20, 21, 22], max_len=8)
    assert len(ok.teacher_ids) == 8


def test_empty_prompt_is_rejected():
    with pytest.raises(ValueError, match="student"):
        splice([], [1], [2])


def test_check_prompt_render():
    check_prompt_render([1, 2, 3], [1, 2, 3])
    with pytest.raises(RenderMismatch) as err:
        check_prompt_render(list(range(20)), list(range(10)) + [99] + list(range(11, 20)))
    e = err.value
    assert isinstance(e, ValueError)
    assert e.position == 10
    assert e.local_window == [6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert e.server_window == [6, 7, 8, 9, 99, 11, 12, 13, 14]
    assert "position 10" in str(e) and "99" in str(e)
    with pytest.raises(RenderMismatch) as err:  # a strict prefix differs at its end
        check_prompt_render([1, 2, 3], [1, 2, 3, 4])
    assert err.value.position == 3 and "3 local vs 4 server" in str(err.value)


@pytest.mark.integration  # converts the bundled SmolLM2 on a fresh machine (never skips)
def test_real_tokenizer_splice(smollm2_path):
    from transformers import AutoTokenizer

    from scaffold.chat import render_ids

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    question = "Classify the banking query: my new card has still not arrived"
    prefill = {"role": "assistant", "content": "Label:"}
    student_prompt = render_ids(tok, [{"role": "user", "content": question}, prefill])
    teacher_msgs = [
        {
            "role": "user",
            "content": question + "\nSimilar solved queries: 'where is my card?' -> card_arrival;"
            " 'card not delivered yet' -> card_arrival.",
        },
        prefill,
    ]
    teacher_prompt = render_ids(tok, teacher_msgs)
    response = tok.encode(" card_arrival<|im_end|>", add_special_tokens=False)
    assert len(teacher_prompt) > len(student_prompt)

    p = splice(student_prompt, teacher_prompt, response, max_len=512)
    s_resp = tok.decode(p.student_ids[p.student_prompt_len :])
    t_resp = tok.decode(p.teacher_ids[p.teacher_prompt_len :])
    assert s_resp == t_resp == " card_arrival<|im_end|>"
    assert tok.decode(p.student_ids[: p.student_prompt_len]).endswith("Label:")

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    other = splice(student_prompt[:-3] + student_prompt[-2:], teacher_prompt, response[:2])
    b = collate([p, other], pad_id=pad)
    for ids, mask in (
        (b.student_input_ids, b.student_response_mask),
        (b.teacher_input_ids, b.teacher_response_mask),
    ):
        predicted = ids[0, mask[0].nonzero().squeeze(-1) + 1].tolist()
        assert tok.decode(predicted) == " card_arrival<|im_end|>"
    check_prompt_render(
        student_prompt, render_ids(tok, [{"role": "user", "content": question}, prefill])
    )
    with pytest.raises(RenderMismatch):
        # Opening a new assistant turn instead of continuing the prefill is caught.
        server = tok.apply_chat_template(
            [{"role": "user", "content": question}, prefill], tokenize=False
        )
        check_prompt_render(student_prompt, tok.encode(server, add_special_tokens=False))


def test_first_line_cuts_after_newline_or_eos():
    from distill.pairs import first_line

    class Tok:
        eos_token_id = 2
        vocab = {5: " card", 6: "_arrival", 7: "\n", 8: "\n\n", 9: " The", 2: "<|im_end|>"}

        def decode(self, ids):
            return "".join(self.vocab[i] for i in ids)

    tok = Tok()
    assert first_line(tok, [5, 6, 8, 9, 9]) == [5, 6, 8]  # the line end stays (teacher judges it)
    assert first_line(tok, [5, 6, 2, 9]) == [5, 6, 2]
    assert first_line(tok, [5, 6]) == [5, 6]
    assert first_line(tok, []) == []
