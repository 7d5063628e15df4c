"""Exact-token splicing of student and teacher sequences.

The student sees ``bare prompt + response`` and the teacher sees ``teacher
context + the SAME response token ids`` (the ids the engine sampled, never
re-tokenized text). Both are left-padded so that every response ends at the
right edge, and a *response mask* marks the positions whose logits predict a
response token. Gathering hidden states at the mask gives student and teacher
``[N, H]`` matrices whose row ``i`` predicts the same token.

Position and mask convention, for one row with prompt length ``P``, response
length ``R`` (``L = P + R``) and ``pad = T - L`` left-padding columns::

    column t       : 0 .. pad-1 | pad   ...  pad+P-2   pad+P-1   pad+P  ...  T-2      T-1
    input_ids      : PAD .. PAD | p_0   ...  p_{P-2}   p_{P-1}   r_0    ...  r_{R-2}  r_{R-1}
    attention_mask : 0   .. 0   | 1     ...  1         1         1      ...  1        1
    position_ids   : 0   .. 0   | 0     ...  P-2       P-1       P      ...  L-2      L-1
    logits[t] ->   :            |                      r_0       r_1    ...  r_{R-1}  (unused)
    response_mask  : 0   .. 0   | 0     ...  0         1         1      ...  1        0

i.e. ``response_mask[t] = 1`` for ``t`` in ``[T-R-1, T-2]`` (the unpadded
positions ``P-1 .. L-2``) and ``input_ids[t+1]`` is the response token that
``logits[t]`` predicts. The last column's logits predict past the response
and are not used. ``position_ids = cumsum(attention_mask) - 1`` clamped at 0,
so left padding does not shift RoPE positions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from scaffold.errors import ScaffoldError


class ContextTooLong(ScaffoldError, ValueError):
    """A spliced sequence exceeds the length limit; Scaffold never truncates it."""

    def __init__(self, side: str, length: int, max_len: int, prompt_len: int, response_len: int):
        self.side = side
        self.length = length
        self.max_len = max_len
        self.prompt_len = prompt_len
        self.response_len = response_len
        super().__init__(
            f"{side} sequence has {length} tokens (prompt {prompt_len} + response "
            f"{response_len}) > max_len {max_len}; refusing to truncate"
        )


class RenderMismatch(ValueError):
    """The local chat-template render differs from the server's prompt ids."""

    def __init__(
        self, position: int, local_window: list[int], server_window: list[int], message: str
    ):
        self.position = position
        self.local_window = local_window
        self.server_window = server_window
        super().__init__(message)


@dataclass
class SplicedPair:
    """One example: the same response ids after the student's and the teacher's prompt."""

    student_ids: list[int]
    teacher_ids: list[int]
    student_prompt_len: int
    teacher_prompt_len: int
    response_ids: list[int]


def splice(
    student_prompt_ids: list[int],
    teacher_prompt_ids: list[int],
    response_ids: list[int],
    max_len: int | None = None,
) -> SplicedPair:
    """Concatenate each prompt with the exact response ids; raise rather than truncate."""
    for side, prompt in (("student", student_prompt_ids), ("teacher", teacher_prompt_ids)):
        if not prompt:
            raise ValueError(f"{side} prompt is empty: its last position must predict the response")
        if max_len is not None and len(prompt) + len(response_ids) > max_len:
            raise ContextTooLong(
                side, len(prompt) + len(response_ids), max_len, len(prompt), len(response_ids)
            )
    response = [int(t) for t in response_ids]
    return SplicedPair(
        student_ids=[int(t) for t in student_prompt_ids] + response,
        teacher_ids=[int(t) for t in teacher_prompt_ids] + response,
        student_prompt_len=len(student_prompt_ids),
        teacher_prompt_len=len(teacher_prompt_ids),
        response_ids=response,
    )


@dataclass
class Batch:
    """Tensors for one micro-batch (see the module docstring for the layout)."""

    student_input_ids: Tensor  # long [B, Ts], left-padded
    student_attention_mask: Tensor  # long [B, Ts]
    student_response_mask: Tensor  # bool [B, Ts]: logits here predict a response token
    student_position_ids: Tensor  # long [B, Ts]
    teacher_input_ids: Tensor  # long [B, Tt]
    teacher_attention_mask: Tensor  # long [B, Tt]
    teacher_response_mask: Tensor  # bool [B, Tt]
    teacher_position_ids: Tensor  # long [B, Tt]
    response_ids: Tensor  # long [B, R], right-padded with pad_id
    response_lengths: Tensor  # long [B]

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_lengths.sum())

    def response_token_mask(self) -> Tensor:
        """bool ``[B, R]``: real (unpadded) entries of ``response_ids``."""
        cols = torch.arange(self.response_ids.shape[1], device=self.response_ids.device)
        return cols.unsqueeze(0) < self.response_lengths.unsqueeze(1)

    def flat_response_ids(self) -> Tensor:
        """``[N]`` response ids in the row-major order of :func:`gather_response_positions`."""
        return self.response_ids[self.response_token_mask()]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def padded_width(longest: int, multiple: int | None) -> int:
    """`longest` rounded up to a multiple of `multiple` (None or 1: unchanged)."""
    if not multiple or multiple <= 1:
        return longest
    return -(-longest // multiple) * multiple


def _left_pad(
    rows: list[list[int]], prompt_lens: list[int], pad_id: int, multiple: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    width = padded_width(max(len(r) for r in rows), multiple)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (row, prompt_len) in enumerate(zip(rows, prompt_lens, strict=True)):
        pad = width - len(row)
        ids[b, pad:] = torch.tensor(row, dtype=torch.long)
        attention[b, pad:] = 1
        response_mask[b, pad + prompt_len - 1 : width - 1] = True
    position_ids = (attention.cumsum(-1) - 1).clamp_min(0)
    return ids, attention, response_mask, position_ids


def collate(pairs: list[SplicedPair], pad_id: int, pad_to_multiple_of: int | None = None
            ) -> Batch:
    """Left-pad a list of spliced pairs into one :class:`Batch` and check the alignment;
    `pad_to_multiple_of`: round each side's width up to a multiple of it."""
    if not pairs:
        raise ValueError("collate needs at least one pair")
    s_ids, s_att, s_mask, s_pos = _left_pad(
        [p.student_ids for p in pairs], [p.student_prompt_len for p in pairs], pad_id,
        pad_to_multiple_of,
    )
    t_ids, t_att, t_mask, t_pos = _left_pad(
        [p.teacher_ids for p in pairs], [p.teacher_prompt_len for p in pairs], pad_id,
        pad_to_multiple_of,
    )
    lengths = torch.tensor([len(p.response_ids) for p in pairs], dtype=torch.long)
    response = torch.full((len(pairs), int(lengths.max())), pad_id, dtype=torch.long)
    for b, p in enumerate(pairs):
        response[b, : len(p.response_ids)] = torch.tensor(p.response_ids, dtype=torch.long)
    batch = Batch(s_ids, s_att, s_mask, s_pos, t_ids, t_att, t_mask, t_pos, response, lengths)
    check_alignment(batch, pairs)
    return batch


def shared_prefix_len(rows: list[list[int]], prompt_lens: list[int]) -> int:
    """Length of the longest common prefix of `rows`, capped so that every row keeps at least
    its last prompt position (the one whose logits predict the first response token)."""
    cap = min(prompt_lens) - 1
    first = rows[0]
    n = 0
    while n < cap and all(r[n] == first[n] for r in rows[1:]):
        n += 1
    return n


def pad_suffixes(
    rows: list[list[int]], prompt_lens: list[int], prefix_len: int, pad_id: int,
    pad_to_multiple_of: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Right-pad what follows a shared prefix of `prefix_len` tokens.

    Returns ``(ids, attention_mask, response_mask, position_ids)`` for the suffixes, each
    ``[B, S]`` (suffix columns only: the prefix is attended by every row, unmasked);
    positions continue from ``prefix_len``. Right padding is safe here: attention is
    causal, so padding after a row's last token changes nothing before it.
    `pad_to_multiple_of`: round ``S`` up to a multiple of it.
    """
    width = padded_width(max(len(r) for r in rows) - prefix_len, pad_to_multiple_of)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (row, prompt_len) in enumerate(zip(rows, prompt_lens, strict=True)):
        suffix = row[prefix_len:]
        ids[b, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        attention[b, : len(suffix)] = 1
        response_mask[b, prompt_len - 1 - prefix_len : len(suffix) - 1] = True
    position_ids = (prefix_len + torch.arange(width)).unsqueeze(0).expand(len(rows), -1)
    return ids, attention, response_mask, position_ids


def _predicted_tokens(input_ids: Tensor, response_mask: Tensor) -> Tensor:
    """The tokens that the masked positions' logits predict (``input_ids[t + 1]``)."""
    shifted = torch.zeros_like(response_mask)
    shifted[:, 1:] = response_mask[:, :-1]
    return input_ids[shifted]


def check_alignment(batch: Batch, pairs: list[SplicedPair]) -> None:
    """Assert that both sides predict exactly the response tokens, in order, row by row."""
    for b, pair in enumerate(pairs):
        expected = torch.tensor(pair.response_ids, dtype=torch.long)
        for side, ids, mask in (
            ("student", batch.student_input_ids, batch.student_response_mask),
            ("teacher", batch.teacher_input_ids, batch.teacher_response_mask),
        ):
            got = _predicted_tokens(ids[b : b + 1], mask[b : b + 1])
            if not torch.equal(got, expected):
                raise AssertionError(
                    f"row {b}: {side} masked positions predict {got.tolist()}, "
                    f"expected response {expected.tolist()}"
                )
    if not torch.equal(
        batch.flat_response_ids(),
        _predicted_tokens(batch.student_input_ids, batch.student_response_mask),
    ):
        raise AssertionError("response_ids are not in the row-major order of the response mask")


def gather_response_positions(hidden: Tensor, response_mask: Tensor) -> Tensor:
    """``[B, T, H]`` -> ``[N, H]``: rows at the response mask, row-major (batch, then time).

    The student's and teacher's matrices are aligned row by row because both
    masks mark each row's response positions in the same order.
    """
    if hidden.shape[:2] != response_mask.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} does not match mask {tuple(response_mask.shape)}"
        )
    return hidden[response_mask.bool()]


def check_prompt_render(local_ids: list[int], server_ids: list[int], window: int = 4) -> None:
    """Raise :class:`RenderMismatch` unless the local render equals the server's prompt ids.

    The message names the first differing position and shows ``window`` ids on
    either side of it for both renders.
    """
    local, server = [int(t) for t in local_ids], [int(t) for t in server_ids]
    if local == server:
        return
    pos = next(
        (i for i, (a, b) in enumerate(zip(local, server, strict=False)) if a != b),
        min(len(local), len(server)),
    )
    lo, hi = max(0, pos - window), pos + window + 1
    local_window, server_window = local[lo:hi], server[lo:hi]
    message = (
        f"local prompt render differs from the server's at position {pos} "
        f"(lengths {len(local)} local vs {len(server)} server); "
        f"ids[{lo}:{hi}] local={local_window} server={server_window}"
    )
    raise RenderMismatch(pos, local_window, server_window, message)
