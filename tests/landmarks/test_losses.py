"""KD-Loss against hand computations: each region of the main loss and of the assistive weights."""

from __future__ import annotations

import pytest
import torch
from kdtool_landmarks.losses import LandmarksKDLoss, assistive_loss, assistive_weights, main_loss


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_main_loss_inside_band_is_linear() -> None:
    # |G - P| = 0.1 <= |G - T_tol| = 0.3: 3 * 0.1
    assert main_loss(t(0.1), t(0.0), t(-0.3)).item() == pytest.approx(0.3)


def test_main_loss_outside_band_is_quadratic_plus_offset() -> None:
    # |G - P| = 0.5 > |G - T_tol| = 0.2: 0.5^2 + 3 * 0.2 - 0.2^2 = 0.25 + 0.6 - 0.04
    assert main_loss(t(1.5), t(1.0), t(0.8)).item() == pytest.approx(0.81)


def test_main_loss_is_continuous_at_the_switch_and_averages() -> None:
    at = main_loss(t(0.2), t(0.0), t(0.2)).item()
    assert at == pytest.approx(0.6)
    just_outside = main_loss(t(0.2 + 1e-9), t(0.0), t(0.2)).item()
    assert just_outside == pytest.approx(at, abs=1e-8)
    # Mean over coordinates: (3*0.1 + 0.81) / 2
    assert main_loss(t(0.1, 1.5), t(0.0, 1.0), t(-0.3, 0.8)).item() == pytest.approx((0.3 + 0.81) / 2)


def test_main_loss_gradient_is_slope_inside_and_2d_outside() -> None:
    p = t(0.1, 1.5).requires_grad_(True)
    main_loss(p, t(0.0, 1.0), t(-0.3, 0.8)).backward()
    assert p.grad is not None
    assert p.grad.tolist() == pytest.approx([3.0 / 2, 2 * 0.5 / 2])


def test_assistive_weights_per_region() -> None:
    g = t(0.0, 0.0, 0.0, 0.0)
    teacher = t(0.4, -0.4, 0.4, 0.4)  # |T - G| = 0.4 everywhere, band edge at 0.06
    p = t(0.5, -0.2, 0.05, -0.06)  # beyond, between (other side), inside band, exactly at B
    w = assistive_weights(p, g, teacher, alpha=1.9, alpha_minus=-0.45, band=0.15)
    assert w.tolist() == pytest.approx([1.9, -0.45, 0.0, 0.0])


def test_assistive_loss_reflects_teacher_to_prediction_side() -> None:
    g = t(1.0, 1.0, 1.0)
    teacher = t(1.4, 0.6, 1.4)  # |T - G| = 0.4
    p = t(0.5, 1.2, 1.01)  # beyond on the other side, between, inside band
    # T' = G + sign(P - G) * 0.4 -> 0.6, 1.4, 1.4; |T' - P| = 0.1, 0.2, 0.39
    # w = 1.8, -0.4, 0 -> mean(0.18, -0.08, 0) = 0.1 / 3
    got = assistive_loss(p, g, teacher, alpha=1.8, alpha_minus=-0.4)
    assert got.item() == pytest.approx(0.1 / 3)


def test_assistive_gradient_pushes_prediction_towards_ground_truth() -> None:
    g = t(0.0, 0.0)
    teacher = t(0.4, 0.4)
    p = t(0.6, 0.2).requires_grad_(True)  # beyond T' and between T' and B
    assistive_loss(p, g, teacher, alpha=1.9, alpha_minus=-0.45).backward()
    assert p.grad is not None
    # beyond: d/dP 1.9 |0.4 - P| = +1.9 (/2); between: d/dP -0.45 |0.4 - P| = +0.45 (/2)
    assert p.grad.tolist() == pytest.approx([0.95, 0.225])


def test_module_returns_three_terms_and_total_matches_paper() -> None:
    loss = LandmarksKDLoss()
    p, g = t(0.5, -0.2), t(0.0, 0.0)
    tol, tough = t(0.4, 0.4), t(0.3, -0.1)
    out = loss(p.view(1, 1, 2), tol.view(1, 1, 2), target=g.view(1, 1, 2), tough=tough.view(1, 1, 2))
    assert set(out) == {"main", "assist_tough", "assist_tolerant"}
    # main: x: |d| 0.5 > 0.4 -> 0.25 + 1.2 - 0.16 = 1.29; y: 0.2 <= 0.4 -> 0.6
    assert out["main"].item() == pytest.approx((1.29 + 0.6) / 2)
    # tough: x: T'=0.3, P beyond -> 1.9*0.2; y: T'=-0.1, P beyond -> 1.9*0.1
    assert out["assist_tough"].item() == pytest.approx((1.9 * 0.2 + 1.9 * 0.1) / 2)
    # tolerant: x: beyond -> 1.8*0.1; y: T'=-0.4, between -> -0.4*0.2
    assert out["assist_tolerant"].item() == pytest.approx((1.8 * 0.1 - 0.4 * 0.2) / 2)


def test_teachers_receive_no_gradient() -> None:
    p = torch.zeros(2, 3, 2, requires_grad=True)
    tol = torch.full((2, 3, 2), 0.1, requires_grad=True)
    out = LandmarksKDLoss()(p + 0.05, tol, target=torch.zeros(2, 3, 2), teacher_points={"landmarks/tough": tol * 2})
    sum(out.values()).backward()
    assert tol.grad is None
    assert p.grad is not None and p.grad.abs().sum() > 0
