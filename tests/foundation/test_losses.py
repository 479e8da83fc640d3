"""Each built-in loss against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdtool.losses import (
    AlphaDivergence,
    ChannelWiseDistillation,
    CTCPosteriorKD,
    FeatureHint,
    MSELogits,
    SoftTargetKL,
)
from kdtool.plugins import get_plugin_manager


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), -1)


def test_soft_target_kl_matches_formula() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    temperature = 3.0
    p = _probs(t / temperature)
    q = _probs(s / temperature)
    expected = (p * (p.log() - q.log())).sum(-1).mean() * temperature**2
    got = SoftTargetKL(temperature)(s, t)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_soft_target_kl_mask_ignores_positions() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    kl = SoftTargetKL(1.0)
    full = torch.stack([kl(s[i, j], t[i, j]) for i in range(2) for j in range(4) if mask[i, j]]).mean()
    assert kl(s, t, mask).item() == pytest.approx(full.item(), rel=1e-5)


def _alpha_div(p: torch.Tensor, q: torch.Tensor, alpha: float) -> torch.Tensor:
    return (q * ((p / q) ** alpha - 1)).sum(-1) / (alpha * (alpha - 1))


def test_alpha_divergence_limits_equal_kl() -> None:
    torch.manual_seed(2)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    p, q = _probs(t), _probs(s)
    kl_pq = (p * (p / q).log()).sum(-1)
    kl_qp = (q * (q / p).log()).sum(-1)
    # alpha -> 1 is KL(p||q), alpha -> 0 is KL(q||p): the branches equal the formula's limits
    assert _alpha_div(p, q, 1 + 1e-6).mean().item() == pytest.approx(kl_pq.mean().item(), rel=1e-4)
    only_kl = AlphaDivergence(alpha_minus=1.0, alpha_plus=1.0, clip=None)
    assert only_kl(s, t).item() == pytest.approx(kl_pq.mean().item(), rel=1e-5)
    only_rkl = AlphaDivergence(alpha_minus=0.0, alpha_plus=0.0, clip=None)
    assert only_rkl(s, t).item() == pytest.approx(kl_qp.mean().item(), rel=1e-5)


def test_alpha_divergence_is_per_sample_max_and_gradient_matches_autograd() -> None:
    torch.manual_seed(3)
    s = torch.randn(8, 4, requires_grad=True)
    t = torch.randn(8, 4)
    loss = AlphaDivergence(-1.0, 1.0, clip=None)
    value = loss(s, t)
    p = _probs(t)
    q = _probs(s.detach())
    d_minus = _alpha_div(p, q, -1.0)
    d_plus = (p * (p / q).log()).sum(-1)
    assert value.item() == pytest.approx(torch.maximum(d_minus, d_plus).mean().item(), rel=1e-5)
    value.backward()
    # Unclipped, the surrogate's gradient equals the true divergence's gradient.
    s2 = s.detach().clone().double().requires_grad_(True)
    q2 = torch.softmax(s2, -1)
    direct = torch.where(
        d_minus > d_plus, (q2 * ((p / q2) ** -1 - 1)).sum(-1) / 2.0, (p * (p.log() - q2.log())).sum(-1)
    ).mean()
    direct.backward()
    assert torch.allclose(s.grad.double(), s2.grad, atol=1e-5)


def test_alpha_divergence_clip_keeps_gradient() -> None:
    s = torch.tensor([[8.0, -8.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-8.0, 8.0, 0.0]])
    value = AlphaDivergence(-1.0, 1.0, clip=5.0)(s, t)
    value.backward()
    assert math.isfinite(value.item())
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_mse_logits() -> None:
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    assert MSELogits()(s, t).item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)


def test_cwd_matches_direct_computation() -> None:
    torch.manual_seed(4)
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    temperature = 4.0
    total = 0.0
    for n in range(2):
        for c in range(3):
            p = _probs(t[n, c].flatten() / temperature)
            q = _probs(s[n, c].flatten() / temperature)
            total += float((p * (p.log() - q.log())).sum())
    expected = total * temperature**2 / (2 * 3)
    assert ChannelWiseDistillation(temperature)(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_ctc_kd_masks_padding_and_downweights_blank_frames() -> None:
    torch.manual_seed(5)
    s = torch.randn(2, 6, 5)
    t = torch.randn(2, 6, 5)
    t[0, 0] = torch.tensor([20.0, 0, 0, 0, 0])  # a confident blank frame
    loss = CTCPosteriorKD(temperature=2.0, blank=0, blank_threshold=0.9, blank_weight=0.25)
    lengths = torch.tensor([4, 6])
    value = loss(s, t, lengths)
    # direct: per-frame KL with weights; padded frames (sample 0, frames 4-5) excluded
    p = _probs(t / 2.0)
    q = _probs(s / 2.0)
    kl = (p * (p.log() - q.log())).sum(-1)
    w = torch.ones(2, 6, dtype=torch.float64)
    w[0, 0] = 0.25
    w[0, 4:] = 0
    expected = (kl * w).sum() / w.sum() * 4.0
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # changing padded frames must not change the loss
    s2 = s.clone()
    s2[0, 4:] = 100.0
    assert loss(s2, t, lengths).item() == pytest.approx(value.item(), rel=1e-6)


def test_feature_hint_projection_is_trainable() -> None:
    torch.manual_seed(6)
    hint = FeatureHint(3, 5)
    s, t = torch.randn(4, 3, 2, 2), torch.randn(4, 5, 2, 2)
    value = hint(s, t)
    value.backward()
    assert hint.projection.weight.grad is not None
    projected = torch.einsum("nchw,dc->ndhw", s, hint.projection.weight) + hint.projection.bias.view(
        1, -1, 1, 1
    )
    assert value.item() == pytest.approx(F.mse_loss(projected, t).item(), rel=1e-5)


def test_builtin_losses_are_registered() -> None:
    losses = get_plugin_manager().registries(strict=False).losses
    for name in ("kl_t", "alpha_div", "mse_logits", "hint", "cwd", "ctc_kd", "ce"):
        assert name in losses
        assert losses.owner(name) == "kdtool"
