"""distill.losses against closed forms and brute-force float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence
from torch.utils._python_dispatch import TorchDispatchMode

from distill.losses import (
    LOSSES,
    LossConfig,
    chunked_distill_loss,
    per_token_divergence,
    sampled_token_kl_estimate,
    token_mean,
)

N, V = 6, 9


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    return student, teacher


def explicit_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row by an explicit loop over the vocabulary."""
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    out = torch.zeros(p.shape[0], dtype=torch.float64)
    for i in range(p.shape[0]):
        for v in range(p.shape[1]):
            out[i] += p[i, v] * math.log(p[i, v] / q[i, v])
    return out


def explicit_jsd(s_logits: torch.Tensor, t_logits: torch.Tensor, beta: float) -> torch.Tensor:
    s, t = s_logits.softmax(-1), t_logits.softmax(-1)
    m = beta * t + (1 - beta) * s
    out = torch.zeros(s.shape[0], dtype=torch.float64)
    for i in range(s.shape[0]):
        for v in range(s.shape[1]):
            out[i] += beta * t[i, v] * math.log(t[i, v] / m[i, v])
            out[i] += (1 - beta) * s[i, v] * math.log(s[i, v] / m[i, v])
    return out


def div(student, teacher, **kw):
    return per_token_divergence(student, teacher, LossConfig(**kw))


# ---------------------------------------------------------------- closed forms


def test_reverse_and_forward_kl_match_references(logits):
    s, t = logits
    reverse = div(s, t, kind="reverse_kl")
    forward = div(s, t, kind="forward_kl")
    torch.testing.assert_close(reverse, kl_divergence(Categorical(logits=s), Categorical(logits=t)))
    torch.testing.assert_close(reverse, explicit_kl(s, t))
    torch.testing.assert_close(forward, explicit_kl(t, s))
    assert not torch.allclose(reverse, forward)  # the two directions really differ here


def test_jsd_half_matches_formula_is_symmetric_and_bounded(logits):
    s, t = logits
    jsd = div(s, t, kind="jsd", beta=0.5)
    torch.testing.assert_close(jsd, explicit_jsd(s, t, 0.5))
    torch.testing.assert_close(jsd, div(t, s, kind="jsd", beta=0.5))
    assert (jsd > 0).all() and (jsd <= math.log(2)).all()


@pytest.mark.parametrize("beta", [0.1, 0.3, 0.9])
def test_jsd_general_beta_matches_formula_and_swap_identity(logits, beta):
    s, t = logits
    jsd = div(s, t, kind="jsd", beta=beta)
    torch.testing.assert_close(jsd, explicit_jsd(s, t, beta))
    torch.testing.assert_close(jsd, div(t, s, kind="jsd", beta=1 - beta))


def test_jsd_limits(logits):
    s, t = logits
    forward, reverse = explicit_kl(t, s), explicit_kl(s, t)
    # Endpoints are defined as the KL divergences (TRL's convention).
    torch.testing.assert_close(div(s, t, kind="jsd", beta=0.0), forward)
    torch.testing.assert_close(div(s, t, kind="jsd", beta=1.0), reverse)
    # ...because they are the limits of the normalized formula.
    eps = 1e-5
    torch.testing.assert_close(div(s, t, kind="jsd", beta=eps) / eps, forward, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(
        div(s, t, kind="jsd", beta=1 - eps) / eps, reverse, rtol=1e-3, atol=1e-4
    )
    # The raw formula itself vanishes at both ends.
    assert div(s, t, kind="jsd", beta=eps).abs().max() < 1e-3


def _kinds_cfgs():
    for kind in LOSSES:
        if kind == "topk_reverse_kl":
            yield LossConfig(kind=kind, top_k=3)
            yield LossConfig(kind=kind, top_k=3, tail_bucket=True)
        else:
            yield LossConfig(kind=kind)


@pytest.mark.parametrize("cfg", list(_kinds_cfgs()), ids=lambda c: f"{c.kind}-{c.tail_bucket}")
def test_zero_when_teacher_equals_student(logits, cfg):
    s, _ = logits
    ids = torch.arange(N) % V
    out = per_token_divergence(s, s.clone(), cfg, sampled_ids=ids)
    torch.testing.assert_close(out, torch.zeros(N, dtype=torch.float64))


@pytest.mark.parametrize("cfg", list(_kinds_cfgs()), ids=lambda c: f"{c.kind}-{c.tail_bucket}")
def test_no_gradient_reaches_the_teacher(logits, cfg):
    s, t = logits
    s, t = s.clone().requires_grad_(), t.clone().requires_grad_()
    ids = torch.arange(N) % V
    per_token_divergence(s, t, cfg, sampled_ids=ids).sum().backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


# ---------------------------------------------------------------- top-k


def test_topk_with_full_support_equals_reverse_kl(logits):
    s, t = logits
    full = div(s, t, kind="reverse_kl")
    torch.testing.assert_close(div(s, t, kind="topk_reverse_kl", top_k=V), full)
    torch.testing.assert_close(div(s, t, kind="topk_reverse_kl", top_k=V, tail_bucket=True), full)


def test_topk_hand_computed_v4():
    teacher = torch.tensor([[0.05, 0.5, 0.15, 0.3]], dtype=torch.float64).log()
    student = torch.tensor([[0.1, 0.2, 0.6, 0.1]], dtype=torch.float64).log()
    # Teacher's top-2 support is tokens {1, 3}; the student's mode (token 2) is outside it.
    s_top, t_top = [0.2 / 0.3, 0.1 / 0.3], [0.5 / 0.8, 0.3 / 0.8]
    renorm = sum(p * math.log(p / q) for p, q in zip(s_top, t_top, strict=True))
    s_tail, t_tail = [0.2, 0.1, 0.7], [0.5, 0.3, 0.2]
    tail = sum(p * math.log(p / q) for p, q in zip(s_tail, t_tail, strict=True))
    got = div(student, teacher, kind="topk_reverse_kl", top_k=2)
    got_tail = div(student, teacher, kind="topk_reverse_kl", top_k=2, tail_bucket=True)
    torch.testing.assert_close(got, torch.tensor([renorm], dtype=torch.float64))
    torch.testing.assert_close(got_tail, torch.tensor([tail], dtype=torch.float64))


# ---------------------------------------------------------------- temperature, clip


@pytest.mark.parametrize("cfg", list(_kinds_cfgs()), ids=lambda c: f"{c.kind}-{c.tail_bucket}")
def test_temperature_divides_both_logits(logits, cfg):
    s, t = logits
    ids = torch.arange(N) % V
    hot = LossConfig(**{**cfg.__dict__, "temperature": 2.5})
    torch.testing.assert_close(
        per_token_divergence(s, t, hot, sampled_ids=ids),
        per_token_divergence(s / 2.5, t / 2.5, cfg, sampled_ids=ids),
    )
    if cfg.kind == "reverse_kl":
        torch.testing.assert_close(per_token_divergence(s, t, hot), explicit_kl(s / 2.5, t / 2.5))


def test_clip_clamps_values_and_stops_gradients(logits):
    s, t = logits
    raw = div(s, t, kind="reverse_kl")
    clip = float(raw.median())
    s = s.clone().requires_grad_()
    clipped = per_token_divergence(s, t, LossConfig(kind="reverse_kl", clip=clip))
    torch.testing.assert_close(clipped.detach(), raw.clamp(max=clip))
    clipped.sum().backward()
    over = raw > clip
    assert over.any() and (~over).any()
    assert (s.grad[over] == 0).all()
    assert (s.grad[~over].abs().sum(-1) > 0).all()


def test_clip_bounds_the_sampled_token_advantage(logits):
    s, t = logits
    ids = torch.arange(N) % V
    est = sampled_token_kl_estimate(s, t, ids)
    clip = float(est.abs().median())
    logp_s = s.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
    expected = est.clamp(-clip, clip) * logp_s  # -advantage * logp_s, advantage = -est
    got = per_token_divergence(s, t, LossConfig(kind="sampled_token", clip=clip), sampled_ids=ids)
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- sampled token


def test_sampled_token_gradient_is_the_policy_gradient_expression():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(1, 5, generator=g, dtype=torch.float64)
    t = torch.randn(1, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([3])
    q_logprob = torch.tensor([-1.7], dtype=torch.float64)
    p_s, p_t = s.softmax(-1)[0], t.softmax(-1)[0]
    advantage = math.log(p_t[3] / p_s[3])
    score = -p_s.clone()
    score[3] += 1  # d log p_s(y) / d logits = onehot(y) - p_s
    for sampling_logprobs, ratio in ((None, 1.0), (q_logprob, float(p_s[3]) / math.exp(-1.7))):
        logits = s.clone().requires_grad_()
        loss = per_token_divergence(
            logits, t, LossConfig(kind="sampled_token"), y, sampling_logprobs
        )
        torch.testing.assert_close(
            loss.detach(),
            torch.tensor([-advantage * ratio * math.log(p_s[3])], dtype=torch.float64),
        )
        loss.sum().backward()
        torch.testing.assert_close(logits.grad[0], -advantage * ratio * score)


def test_sampled_token_is_unbiased_for_reverse_kl_by_enumeration(logits):
    s, t = logits
    cfg = LossConfig(kind="sampled_token")
    p_s = s.softmax(-1)
    q = torch.softmax(torch.randn(N, V, dtype=torch.float64), -1)  # another sampling policy
    exact_kl = explicit_kl(s, t)
    s_req = s.clone().requires_grad_()
    exact_grad = torch.autograd.grad(div(s_req, t, kind="reverse_kl").sum(), s_req)[0]

    expected_estimate = torch.zeros(N, dtype=torch.float64)
    on_policy_grad = torch.zeros_like(s)
    off_policy_grad = torch.zeros_like(s)
    for v in range(V):
        y = torch.full((N,), v)
        expected_estimate += p_s[:, v] * sampled_token_kl_estimate(s, t, y)
        s_req = s.clone().requires_grad_()
        (per_token_divergence(s_req, t, cfg, y) * p_s[:, v]).sum().backward()
        on_policy_grad += s_req.grad
        s_req = s.clone().requires_grad_()
        loss = per_token_divergence(s_req, t, cfg, y, sampling_logprobs=q[:, v].log())
        (loss * q[:, v]).sum().backward()
        off_policy_grad += s_req.grad
    torch.testing.assert_close(expected_estimate, exact_kl)
    torch.testing.assert_close(on_policy_grad, exact_grad)
    torch.testing.assert_close(off_policy_grad, exact_grad)


def test_sampled_token_requires_ids(logits):
    s, t = logits
    with pytest.raises(ValueError, match="sampled_ids"):
        div(s, t, kind="sampled_token")


def test_config_validation():
    with pytest.raises(ValueError):
        LossConfig(kind="nope")
    with pytest.raises(ValueError):
        LossConfig(kind="topk_reverse_kl")
    with pytest.raises(ValueError):
        LossConfig(beta=1.5)


# ---------------------------------------------------------------- token mean


def test_token_mean_over_micro_batches_equals_mean_of_concatenation():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 7, generator=g), torch.rand(3, 4, generator=g)
    mask_a = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]])
    mask_b = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]])
    total = int(mask_a.sum() + mask_b.sum())
    flat = torch.cat([a[mask_a.bool()], b[mask_b.bool()]])
    accumulated = token_mean(a, mask_a, total) + token_mean(b, mask_b, total)
    torch.testing.assert_close(accumulated, flat.mean())
    # The per-micro-batch average (what the global mean avoids) differs here.
    per_batch = (token_mean(a, mask_a) + token_mean(b, mask_b)) / 2
    assert not torch.isclose(per_batch, flat.mean())
    torch.testing.assert_close(token_mean(a, mask_a), a[mask_a.bool()].mean())
    assert token_mean(a, torch.zeros_like(mask_a)) == 0


# ---------------------------------------------------------------- chunked


H = 5


def _hidden(n: int = 7, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    s_h = torch.randn(n, H, generator=g, dtype=torch.float64)
    t_h = torch.randn(n, H, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64)
    bias = torch.randn(V, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (n,), generator=g)
    sampling = torch.randn(n, generator=g, dtype=torch.float64) - 2
    weights = torch.rand(n, generator=g, dtype=torch.float64)
    return s_h, t_h, w, bias, ids, sampling, weights


CHUNK_CFGS = [
    LossConfig(kind="reverse_kl", temperature=1.3),
    LossConfig(kind="forward_kl"),
    LossConfig(kind="jsd", beta=0.3),
    LossConfig(kind="topk_reverse_kl", top_k=4, tail_bucket=True),
    LossConfig(kind="sampled_token"),
    LossConfig(kind="reverse_kl", clip=0.5),
]


@pytest.mark.parametrize("chunk", [1, 3, 7, 12])
@pytest.mark.parametrize("base", CHUNK_CFGS, ids=lambda c: c.kind)
def test_chunked_equals_unchunked(base, chunk):
    s_h, t_h, w, bias, ids, sampling, weights = _hidden()
    cfg = LossConfig(**{**base.__dict__, "chunk_size": chunk})

    def reference():
        s_h_, w_, b_ = (x.clone().requires_grad_() for x in (s_h, w, bias))
        s_logits = s_h_ @ w_.T + b_
        t_logits = t_h @ w.T + bias
        loss = (per_token_divergence(s_logits, t_logits, cfg, ids, sampling) * weights).sum()
        loss.backward()
        kl = explicit_kl(s_logits.detach() / cfg.temperature, t_logits / cfg.temperature).sum()
        s_logp = torch.log_softmax(s_logits.detach() / cfg.temperature, dim=-1)
        entropy = -(s_logp.exp() * s_logp).sum()  # the collapse guard's student entropy
        return loss.detach(), s_h_.grad, w_.grad, b_.grad, kl, entropy

    ref_loss, ref_gs, ref_gw, ref_gb, ref_kl, ref_entropy = reference()
    s_h_, w_, b_ = (x.clone().requires_grad_() for x in (s_h, w, bias))
    t_h_ = t_h.clone().requires_grad_()
    loss, stats = chunked_distill_loss(s_h_, t_h_, w_, cfg, b_, ids, sampling, weights)
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(s_h_.grad, ref_gs, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(w_.grad, ref_gw, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(b_.grad, ref_gb, atol=1e-10, rtol=1e-10)
    assert t_h_.grad is None
    assert stats["tokens"] == 7
    assert stats["kl_sum"] == pytest.approx(float(ref_kl), rel=1e-9)
    assert stats["student_entropy_sum"] == pytest.approx(float(ref_entropy), rel=1e-9)
    assert stats["loss_sum"] == pytest.approx(float(ref_loss), rel=1e-9)
    assert stats["weight_sum"] == pytest.approx(float(weights.sum()))
    assert "sampled_kl_sum" in stats


def test_chunked_upcasts_bf16_to_float32():
    s_h, t_h, w, *_ = _hidden()
    s16, t16, w16 = (x.to(torch.bfloat16) for x in (s_h, t_h, w))
    w16.requires_grad_()
    loss, stats = chunked_distill_loss(s16, t16, w16, LossConfig(chunk_size=2))
    assert loss.dtype == torch.float32
    ref = div(s16.float() @ w16.detach().float().T, t16.float() @ w16.detach().float().T).sum()
    torch.testing.assert_close(loss.detach(), ref)
    loss.backward()
    assert w16.grad is not None and w16.grad.dtype == torch.bfloat16
    assert "sampled_kl_sum" not in stats


def test_chunked_anchor_adds_the_weighted_kl_to_the_base():
    """With the base's hidden states, each position's term gains a_i x KL(S_i || B_i) (by an
    explicit loop over the vocabulary), clipped or not, and the gradient is the sum's."""
    s_h, t_h, w, bias, *_ = _hidden()
    base_h = torch.randn(s_h.shape, generator=torch.Generator().manual_seed(9),
                         dtype=torch.float64)
    weights = torch.linspace(0.0, 1.0, 7, dtype=torch.float64)  # 0: a skipped first token
    anchor_w = torch.full((7,), 0.7, dtype=torch.float64)
    cfg = LossConfig(kind="jsd", clip=0.3, chunk_size=3)
    s_ = s_h.clone().requires_grad_()
    loss, stats = chunked_distill_loss(s_, t_h, w, cfg, bias, weights=weights,
                                       anchor_hidden=base_h, anchor_weights=anchor_w)
    loss.backward()
    student = s_h @ w.T + bias
    anchor = explicit_kl(student, base_h @ w.T + bias)
    expected = (per_token_divergence(student, t_h @ w.T + bias, cfg) * weights).sum() \
        + (0.7 * anchor).sum()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-10, rtol=1e-10)
    assert stats["anchor_sum"] == pytest.approx(float((0.7 * anchor).sum()), rel=1e-9)
    r_ = s_h.clone().requires_grad_()
    logits = r_ @ w.T + bias
    ref = (per_token_divergence(logits, t_h @ w.T + bias, cfg) * weights).sum() + 0.7 * (
        logits.softmax(-1) * (logits.log_softmax(-1) - (base_h @ w.T + bias).log_softmax(-1))
    ).sum()
    ref.backward()
    torch.testing.assert_close(s_.grad, r_.grad, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="together"):
        chunked_distill_loss(s_h, t_h, w, cfg, anchor_hidden=base_h)


def test_chunked_without_grad_runs_plainly():
    s_h, t_h, w, *_ = _hidden()
    with torch.no_grad():
        loss, _ = chunked_distill_loss(s_h, t_h, w, LossConfig(chunk_size=3))
    torch.testing.assert_close(loss, div(s_h @ w.T, t_h @ w.T).sum())


class _RecordShapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def _memory_probe(chunk: int | None) -> tuple[int, list[tuple[int, ...]]]:
    """(largest tensor any op creates in forward+backward, shapes saved for backward).

    ``chunk=None`` probes the plain unchunked computation, to show the probe sees it.
    """
    n, h, v = 16, 3, 50  # N*V = 800; chunk*V = 100 for chunk 2; V*H = 150
    g = torch.Generator().manual_seed(4)
    s_h = torch.randn(n, h, generator=g, requires_grad=True)
    t_h = torch.randn(n, h, generator=g)
    w = torch.randn(v, h, generator=g, requires_grad=True)
    saved: list[tuple[int, ...]] = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with _RecordShapes() as mode:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if chunk is None:
                loss = div(s_h @ w.T, t_h @ w.T).sum()
            else:
                loss, _ = chunked_distill_loss(s_h, t_h, w, LossConfig(chunk_size=chunk))
        loss.backward()
    return mode.max_numel, saved


def test_chunked_never_materializes_all_positions_by_vocab():
    v, n_v = 50, 16 * 50
    largest, saved = _memory_probe(chunk=2)
    assert largest <= 150  # max(chunk*V, V*H): no [N, V] tensor in forward or backward
    # Only the chunk inputs (hidden rows, a reference to the head) are kept for
    # backward; no logits or probabilities: they are recomputed per chunk.
    assert saved and all(shape[-1] != v for shape in saved)
    largest_full, saved_full = _memory_probe(chunk=None)  # the probe does see [N, V] tensors
    assert largest_full >= n_v
    assert (16, v) in saved_full


# ---------------------------------------------------------------- answer support


def _support(seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(N, V, generator=g) < 0.4
    mask[:, 0] = True  # every position allows something
    return mask


def test_forward_kl_under_a_support_is_cross_entropy_to_the_renormalized_teacher(logits):
    """KL(P' || S), P' = the teacher renormalized on the support, by an explicit loop."""
    student, teacher = logits
    support = _support()
    got = per_token_divergence(student, teacher, LossConfig(kind="forward_kl"), support=support)
    s = student.log_softmax(-1)
    for i in range(N):
        allowed = support[i].nonzero().flatten().tolist()
        z = sum(math.exp(teacher[i, v]) for v in allowed)
        expected = sum(math.exp(teacher[i, v]) / z * (teacher[i, v] - math.log(z) - s[i, v])
                       for v in allowed)
        assert float(got[i]) == pytest.approx(float(expected), rel=1e-9)


def test_reverse_kl_under_a_support_renormalizes_both_sides(logits):
    student, teacher = logits
    support = _support()
    got = per_token_divergence(student, teacher, LossConfig(kind="reverse_kl", temperature=0.7),
                               support=support)
    for i in range(N):
        allowed = support[i].nonzero().flatten()
        ref = explicit_kl(student[i, allowed][None] / 0.7, teacher[i, allowed][None] / 0.7)
        assert float(got[i]) == pytest.approx(float(ref[0]), rel=1e-9)


def test_a_full_support_changes_nothing_and_gradients_stay_finite(logits):
    student, teacher = logits
    full = torch.ones(N, V, dtype=torch.bool)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        cfg = LossConfig(kind=kind)
        torch.testing.assert_close(per_token_divergence(student, teacher, cfg, support=full),
                                   per_token_divergence(student, teacher, cfg))
        s = student.clone().requires_grad_()
        per_token_divergence(s, teacher, cfg, support=_support()).sum().backward()
        assert torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="no answer support"):
        per_token_divergence(student, teacher, LossConfig(kind="sampled_token"),
                             sampled_ids=torch.zeros(N, dtype=torch.long), support=full)
    with pytest.raises(ValueError, match="at least one allowed"):
        per_token_divergence(student, teacher, LossConfig(kind="forward_kl"),
                             support=torch.zeros(N, V, dtype=torch.bool))


def test_chunked_loss_slices_the_support_with_the_positions():
    s_h, t_h, w, bias, ids, sampling, weights = _hidden()
    support = torch.rand(s_h.shape[0], w.shape[0], generator=torch.Generator().manual_seed(1)) < .5
    support[:, 0] = True
    cfg = LossConfig(kind="forward_kl", chunk_size=3)
    ref = (per_token_divergence(s_h @ w.T + bias, t_h @ w.T + bias, cfg, support=support)
           * weights).sum()
    loss, _ = chunked_distill_loss(s_h, t_h, w, cfg, bias, ids, sampling, weights,
                                   support=support)
    torch.testing.assert_close(loss, ref, atol=1e-10, rtol=1e-10)


def test_agreed_weight_scales_only_the_positions_whose_teacher_argmax_is_the_sampled_token():
    """agreed_weight w: a position where the teacher's most likely token is the student's
    sampled one contributes w x its divergence, every other position its full divergence;
    the anchor term is not reweighted; w = 1 is the plain loss."""
    s_h, t_h, w, bias, *_ = _hidden()
    teacher = t_h @ w.T + bias
    argmax = teacher.argmax(-1)
    other = (argmax + 1) % w.shape[0]
    sampled = torch.where(torch.arange(7) % 2 == 0, argmax, other)  # even positions agree
    weights = torch.linspace(0.5, 1.0, 7, dtype=torch.float64)
    base_h = torch.randn(s_h.shape, generator=torch.Generator().manual_seed(3),
                         dtype=torch.float64)
    anchor_w = torch.full((7,), 0.4, dtype=torch.float64)
    student = s_h @ w.T + bias
    per_token = per_token_divergence(student, teacher, LossConfig(kind="reverse_kl"))
    factor = torch.where(torch.arange(7) % 2 == 0, 0.25, 1.0).to(torch.float64)
    anchor = (0.4 * explicit_kl(student, base_h @ w.T + bias)).sum()
    for agreed_weight, expected in ((0.25, (per_token * weights * factor).sum() + anchor),
                                    (1.0, (per_token * weights).sum() + anchor)):
        cfg = LossConfig(kind="reverse_kl", chunk_size=3, agreed_weight=agreed_weight)
        loss, _ = chunked_distill_loss(s_h, t_h, w, cfg, bias, sampled, weights=weights,
                                       anchor_hidden=base_h, anchor_weights=anchor_w)
        torch.testing.assert_close(loss, expected, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="agreed_weight"):
        LossConfig(agreed_weight=-0.1)
