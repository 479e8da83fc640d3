"""The baseline's plain losses (L2, L1, smooth-L1, Wing) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from kdtool_landmarks.losses import plain_loss, wing_loss
from kdtool_landmarks.task import StageOptions


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def value_and_grad(
    name: str, pred: torch.Tensor, target: torch.Tensor, **options: float
) -> tuple[float, list[float]]:
    p = pred.clone().requires_grad_(True)
    value = plain_loss(name, p, target, **options)
    value.backward()
    assert p.grad is not None
    return float(value.detach()), p.grad.tolist()


def test_wing_value_and_gradient_by_hand() -> None:
    w, eps = 0.15, 0.03
    # errors 0.01 (log part), -0.3 (linear part)
    value, grad = value_and_grad("wing", t(0.01, -0.3), t(0.0, 0.0), wing_width=w, wing_curvature=eps)
    c = w - w * math.log(1 + w / eps)
    assert value == pytest.approx((w * math.log(1 + 0.01 / eps) + (0.3 - c)) / 2)
    # d/dP: w / (eps + |d|) * sign(d) inside, sign(d) outside; halved by the mean
    assert grad == pytest.approx([w / (eps + 0.01) / 2, -1.0 / 2])


def test_wing_pieces_meet_at_the_width() -> None:
    w, eps = 0.15, 0.03
    below = wing_loss(t(w - 1e-9), t(0.0), w, eps).item()
    above = wing_loss(t(w + 1e-9), t(0.0), w, eps).item()
    assert below == pytest.approx(above, abs=1e-8)
    with pytest.raises(ValueError, match="wing"):
        wing_loss(t(0.1), t(0.0), 0.0, eps)


def test_smooth_l1_l1_l2_by_hand() -> None:
    pred, target = t(0.005, 0.5), t(0.0, 0.0)
    # smooth-L1, beta 0.01: 0.5 d^2 / beta below beta, |d| - beta / 2 above
    value, grad = value_and_grad("smooth_l1", pred, target, smooth_l1_beta=0.01)
    assert value == pytest.approx((0.5 * 0.005**2 / 0.01 + (0.5 - 0.005)) / 2)
    assert grad == pytest.approx([0.005 / 0.01 / 2, 1.0 / 2])
    value, grad = value_and_grad("l1", t(0.2, -0.1), t(0.0, 0.0))
    assert value == pytest.approx(0.15) and grad == pytest.approx([0.5, -0.5])
    value, grad = value_and_grad("l2", t(0.2, -0.1), t(0.0, 0.0))
    assert value == pytest.approx((0.04 + 0.01) / 2) and grad == pytest.approx([0.2, -0.1])


def test_stage_options_accept_the_four_losses_and_reject_others() -> None:
    for name in ("l2", "l1", "smooth_l1", "wing"):
        assert StageOptions.model_validate({"loss": name}).loss == name
    with pytest.raises(ValueError):
        StageOptions.model_validate({"loss": "huber"})
    with pytest.raises(ValueError):
        StageOptions.model_validate({"loss": "wing", "wing_width": 0.0})
    with pytest.raises(ValueError, match="unknown plain landmark loss"):
        plain_loss("huber", t(0.0), t(0.0))
