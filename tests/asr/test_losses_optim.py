"""RNN-T KD on the collapsed lattice, alpha-divergence, ScaledAdam and Eden against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from kdtool_asr.losses import collapsed_log_probs, lattice_kd, lattice_mask, rnnt_loss
from kdtool_asr.optim import ScaledAdam, eden_factor, scaled_adam

from kdtool.losses import AlphaDivergence


def test_collapsed_distribution_by_hand() -> None:
    logits = torch.log(torch.tensor([0.5, 0.2, 0.2, 0.1]))[None, None, None, :].expand(1, 1, 2, 4).clone()
    targets = torch.tensor([[2]])
    out = collapsed_log_probs(logits, targets, blank=0).exp()
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.5, 0.2, 0.3]), atol=1e-6)  # label 2
    assert torch.allclose(out[0, 0, 0].sum(), torch.tensor(1.0), atol=1e-6)  # u = U is masked in KD


def test_lattice_mask() -> None:
    m = lattice_mask(torch.tensor([2, 3]), torch.tensor([1, 2]), 3, 3)
    assert m[0].tolist() == [[True, False, False], [True, False, False], [False, False, False]]
    assert m[1, :, :2].all() and not m[1, :, 2].any()


def _alpha_div(p: torch.Tensor, q: torch.Tensor, a: float) -> torch.Tensor:
    if a == 1.0:
        return (p * (p / q).log()).sum(-1)
    return (q * ((p / q) ** a - 1)).sum(-1) / (a * (a - 1))


def test_lattice_kd_equals_direct_alpha_divergence() -> None:
    torch.manual_seed(0)
    student = torch.randn(2, 3, 3, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 3, 5)
    targets = torch.tensor([[1, 3], [2, 4]])
    t_len, u_len = torch.tensor([3, 2]), torch.tensor([2, 1])
    value = lattice_kd(AlphaDivergence(clip=None), student, teacher, targets, t_len, u_len, blank=0)
    p = collapsed_log_probs(teacher, targets, 0).exp()
    q = collapsed_log_probs(student.detach(), targets, 0).exp()
    per_node = torch.maximum(_alpha_div(p, q, -1.0), _alpha_div(p, q, 1.0))
    mask = lattice_mask(t_len, u_len, 3, 3)
    expected = per_node[mask].mean()
    assert torch.allclose(value, expected, atol=1e-5)
    value.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    # padded nodes get no gradient: frame 2 of utterance 1 and label rows past U
    assert student.grad[1, 2].abs().sum() == 0 and student.grad[0, :, 2].abs().sum() == 0


def test_rnnt_loss_single_path_by_hand() -> None:
    # T = 1, U = 1: the only path emits label 1 then blank: -log p(1 | t0,u0) - log p(blank | t0,u1)
    logits = torch.randn(1, 1, 2, 3)
    logp = logits.log_softmax(-1)
    expected = -(logp[0, 0, 0, 1] + logp[0, 0, 1, 0])
    got = rnnt_loss(logits, torch.tensor([[1]]), torch.tensor([1]), torch.tensor([1]), blank=0)
    assert torch.allclose(got, expected, atol=1e-5)


def test_scaled_adam_first_step_by_hand() -> None:
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 2.0]]))
    s = torch.nn.Parameter(torch.tensor([0.3]))  # one element: plain Adam
    opt = ScaledAdam(
        [{"params": [w, s]}], lr=0.1, betas=(0.9, 0.98), eps=1e-8, scalar_lr_scale=0.1, clipping_scale=None
    )
    g = torch.tensor([[0.1, 0.2], [-0.3, 0.4]])
    w.grad, s.grad = g.clone(), torch.tensor([0.5])
    w0 = w.detach().clone()
    opt.step()
    # t = 1: sqrt(v / (1 - beta2)) = |g|, so the Adam direction is sign(g)
    rms = w0.pow(2).mean().sqrt()
    step_dir = -0.1 * rms * g / (g.abs() + 1e-8)
    sg = (w0 * g).sum()
    scale_step = -0.1 * 0.1 * sg / (sg.abs() + 1e-8)
    expected = w0 + (1 - 0.9) * (step_dir + scale_step * w0)
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    assert torch.allclose(s.detach(), torch.tensor([0.3 - 0.1 * 0.1 * 0.1 * 0.5 / 0.5]), atol=1e-6)


def test_scaled_adam_clips_to_twice_the_median() -> None:
    w = torch.nn.Parameter(torch.ones(4))
    opt = ScaledAdam([w], lr=0.01, clipping_scale=2.0)
    for norm in (1.0, 1.0, 1.0):
        w.grad = torch.full((4,), norm / 2)  # ||g * rms|| = norm (rms = 1)
        assert opt.clip_factor() == 1.0
    w.grad = torch.full((4,), 10 / 2)  # norm 10, median of [1, 1, 1, 10] = 1 -> threshold 2
    assert opt.clip_factor() == pytest.approx(0.2)
    state = opt.state_dict()
    assert "norm_history" in state["state"][0]


def test_scaled_adam_keeps_rms_in_range_and_learns() -> None:
    torch.manual_seed(0)
    target = torch.randn(8, 8)
    w = torch.nn.Parameter(torch.zeros(8, 8) + 0.01)
    opt = ScaledAdam([w], lr=0.05)
    first = None
    for _ in range(200):
        loss = ((w - target) ** 2).mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * first


def test_factory_puts_ssm_scalars_in_an_adam_group() -> None:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))
    opt = scaled_adam(
        [{"params": [a, b], "param_names": ["blocks.0.log_dt", "blocks.0.out.weight"]}], lr=0.03
    )
    assert [g["scalar"] for g in opt.param_groups] == [False, True]
    assert opt.param_groups[1]["params"][0] is a


def test_eden_by_hand() -> None:
    f = eden_factor(600, steps_per_epoch=100, lr_batches=300, lr_epochs=3, warmup_batches=50)
    expected = ((600**2 + 300**2) / 300**2) ** -0.25 * ((6**2 + 9) / 9) ** -0.25
    assert f == pytest.approx(expected)
    assert eden_factor(
        0, steps_per_epoch=100, lr_batches=300, lr_epochs=3, warmup_batches=50
    ) == pytest.approx(0.5)
    assert eden_factor(
        25, steps_per_epoch=100, lr_batches=300, lr_epochs=3, warmup_batches=50
    ) == pytest.approx(0.75 * ((625 + 90000) / 90000) ** -0.25 * ((0.0625 + 9) / 9) ** -0.25)
    assert not math.isnan(f)


def _toy_bias_run(make_opt: object, steps: int = 100) -> float:
    """Fit y = W x + b* with b initialised at zero; return how far b moved."""
    torch.manual_seed(0)
    w_true, b_true = torch.randn(4, 6) * 0.3, torch.full((4,), 0.5)
    w = torch.nn.Parameter(torch.randn(4, 6) * 0.3)
    b = torch.nn.Parameter(torch.zeros(4))
    opt = make_opt([w, b])  # type: ignore[operator]
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 6, generator=gen)
        loss = ((x @ w.T + b - (x @ w_true.T + b_true)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(b.detach().abs().mean())


def test_scaled_adam_trains_zero_initialised_bias_like_adam() -> None:
    # plain Adam at the scalar learning rate (lr * scalar_lr_scale) is the reference
    adam = _toy_bias_run(lambda ps: torch.optim.Adam(ps, lr=0.03 * 0.1, betas=(0.9, 0.98)))
    scaled = _toy_bias_run(lambda ps: ScaledAdam(ps, lr=0.03))
    icefall_rule = _toy_bias_run(lambda ps: ScaledAdam(ps, lr=0.03, vector_min_rms=0.0))
    assert adam > 0.1  # the toy problem does move a bias under Adam
    assert 0.5 * adam < scaled < 2.0 * adam
    # without the vector floor the update is scaled by RMS 1e-5: the bias stays at zero
    assert icefall_rule < 0.01 * adam
