"""Every registered KD loss against a hand computation of its value and its gradient.

The references below are written in numpy (float64) from the formulas in the methods guide,
independently of the implementations: softmax, the divergences and, where the gradient has a
closed form, that form (for softmax logits z and a loss -sum_i w_i log q_i with w constant,
d/dz_j = -w_j + q_j sum_i w_i). Where it has none (DIST's correlations), the numpy reference is
differentiated by central differences. The inputs are chosen where a wrong clip, temperature
factor or normalisation shows: a sharp teacher and a confidently wrong student.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from kdtool.losses import (
    AlphaDivergence,
    ChannelWiseDistillation,
    CTCPosteriorKD,
    FeatureHint,
    MSELogits,
    SoftTargetKL,
)
from kdtool.plugins import get_plugin_manager


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def numeric_grad(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of a numpy function of ``x``."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (f(up) - f(down)) / (2 * h)
    return grad


def value_and_grad(loss: torch.nn.Module, student: np.ndarray, *rest: object) -> tuple[float, np.ndarray]:
    s = torch.tensor(student, dtype=torch.float32, requires_grad=True)
    args = [torch.tensor(r, dtype=torch.float32) if isinstance(r, np.ndarray) else r for r in rest]
    value = loss(s, *args)
    value.backward()
    assert s.grad is not None
    return float(value.detach()), s.grad.double().numpy()


# A sharp teacher (class 0 at ~0.99991) and a student confidently on class 1 (~0.9987).
SHARP_TEACHER = np.array([[10.0, 0.0, 0.0, 0.0, 0.0]])
WRONG_STUDENT = np.array([[0.0, 8.0, 0.0, 0.0, 0.0]])


# ----------------------------------------------------------------------------- alpha_div


def alpha_reference(p: np.ndarray, q: np.ndarray, alpha: float, clip: float) -> tuple[float, np.ndarray]:
    """(value, surrogate weight w = q * rho) of one AlphaNet branch for one sample."""
    r = p / q
    if alpha == 1.0:  # KL(p || q): never clipped
        return float(np.sum(p * np.log(r))), p.copy()
    if alpha == 0.0:  # KL(q || p): r clipped from above only
        rc = np.minimum(r, clip)
        return float(np.sum(q * -np.log(rc))), q * (np.log(rc) - 1.0)
    ra = np.minimum(r**alpha, clip)
    norm = 1.0 / (alpha * (alpha - 1.0))
    return float(np.sum(q * (ra - 1.0)) * norm), q * (ra / alpha + norm)


def surrogate_grad(q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """d/dz of -sum_i w_i log softmax(z)_i with w held constant."""
    return -w + q * w.sum()


def test_alpha_div_sharp_teacher_confidently_wrong_student_is_unclipped_kl() -> None:
    p, q = softmax(SHARP_TEACHER[0]), softmax(WRONG_STUDENT[0])
    d_minus, _ = alpha_reference(p, q, -1.0, 5.0)
    d_plus, w_plus = alpha_reference(p, q, 1.0, 5.0)
    # The a = -1 branch saturates: (q/p) is clipped at 5, so D_-1 <= (5 - 1) / 2 = 2.
    assert d_minus == pytest.approx(2.0, abs=2e-3)
    assert d_plus > 7.5  # KL(p || q), about 8: the a = +1 branch wins and must not be clipped
    value, grad = value_and_grad(AlphaDivergence(-1.0, 1.0, clip=5.0), WRONG_STUDENT, SHARP_TEACHER)
    assert value == pytest.approx(d_plus, rel=1e-5)
    expected = surrogate_grad(q, w_plus)
    np.testing.assert_allclose(grad[0], expected, atol=1e-5)
    # KL's surrogate gradient is q - p: about -1 on the teacher's class (a clip at 5 gave -0.0017).
    np.testing.assert_allclose(expected, q - p, atol=1e-12)
    assert grad[0, 0] < -0.99
    # ... and it is the true gradient of KL(p || q), checked by differentiating the formula.
    kl = lambda z: float(np.sum(p * (np.log(p) - np.log(softmax(z)))))  # noqa: E731
    np.testing.assert_allclose(grad[0], numeric_grad(kl, WRONG_STUDENT[0]), atol=1e-5)


def test_alpha_div_minus_branch_wins_with_its_clip_binding() -> None:
    # Teacher [0.9, 0.05, 0.05], student [0.5, 0.4, 0.1]: q/p = [0.56, 8, 2], 8 clipped to 5.
    p = np.array([0.9, 0.05, 0.05])
    q = np.array([0.5, 0.4, 0.1])
    d_minus, w_minus = alpha_reference(p, q, -1.0, 5.0)
    d_plus, _ = alpha_reference(p, q, 1.0, 5.0)
    # by hand: D_-1 = (0.5 * 5/9 + 0.4 * 5 + 0.1 * 2 - 1) / 2; D_+1 = sum p log(p/q)
    assert d_minus == pytest.approx((0.5 * 5 / 9 + 2.0 + 0.2 - 1.0) / 2)
    assert d_plus == pytest.approx(0.9 * math.log(1.8) + 0.05 * math.log(0.125) + 0.05 * math.log(0.5))
    assert d_minus > d_plus
    value, grad = value_and_grad(AlphaDivergence(-1.0, 1.0, clip=5.0), np.log(q)[None], np.log(p)[None])
    assert value == pytest.approx(d_minus, rel=1e-5)
    # the clipped class's weight is q * (5 / -1 + 1/2) = 0.4 * -4.5 (a clamp's zero gradient would drop it)
    assert w_minus[1] == pytest.approx(-1.8)
    np.testing.assert_allclose(grad[0], surrogate_grad(q, w_minus), atol=1e-5)


def test_alpha_div_unclipped_gradient_equals_true_gradient_of_the_max() -> None:
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(4, 6)), rng.normal(size=(4, 6)) * 2
    value, grad = value_and_grad(AlphaDivergence(-1.0, 1.0, clip=None), student, teacher)

    def reference(z: np.ndarray) -> float:
        total = 0.0
        for zi, ti in zip(z.reshape(4, 6), teacher, strict=True):
            p, q = softmax(ti), softmax(zi)
            d_minus = np.sum(q * (q / p - 1.0)) / 2.0
            d_plus = np.sum(p * np.log(p / q))
            total += max(d_minus, d_plus)
        return total / 4

    assert value == pytest.approx(reference(student), rel=1e-5)
    np.testing.assert_allclose(grad, numeric_grad(reference, student), atol=1e-5)


def test_alpha_div_zero_branch_clips_the_ratio_from_above_only() -> None:
    # p << q on class 1 (r = 0.01, not clipped from below) and p >> q on class 0 (r = 80, clipped to 5)
    p = np.array([0.8, 0.01, 0.19])
    q = np.array([0.01, 0.98, 0.01])
    value_ref, w = alpha_reference(p, q, 0.0, 5.0)
    hand = -(0.01 * math.log(5.0) + 0.98 * math.log(0.01 / 0.98) + 0.01 * math.log(5.0))
    assert value_ref == pytest.approx(hand)
    value, grad = value_and_grad(AlphaDivergence(0.0, 0.0, clip=5.0), np.log(q)[None], np.log(p)[None])
    assert value == pytest.approx(hand, rel=1e-5)
    np.testing.assert_allclose(grad[0], surrogate_grad(q, w), atol=1e-5)


def test_alpha_div_mask_and_rejects_bad_clip() -> None:
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    mask = torch.tensor([[True, False, True], [False, False, True]])
    loss = AlphaDivergence()
    full = loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), mask)
    kept = [
        loss(torch.tensor(s[i, j : j + 1]), torch.tensor(t[i, j : j + 1]))
        for i, j in [(0, 0), (0, 2), (1, 2)]
    ]
    assert float(full) == pytest.approx(float(sum(kept)) / 3, rel=1e-5)
    with pytest.raises(ValueError, match="clip"):
        AlphaDivergence(clip=0.0)


# ----------------------------------------------------------------------------- kl_t


def test_kl_t_value_and_gradient_by_hand() -> None:
    temperature = 2.0
    student = np.concatenate([WRONG_STUDENT, [[1.0, -1.0, 0.5, 0.0, 2.0]]])
    teacher = np.concatenate([SHARP_TEACHER, [[0.0, 3.0, -2.0, 1.0, 0.0]]])
    p, q = softmax(teacher / temperature), softmax(student / temperature)
    expected = np.mean(np.sum(p * np.log(p / q), -1)) * temperature**2
    # d/dz [T^2 KL(p || softmax(z/T))] / N = T (q - p) / N
    expected_grad = temperature * (q - p) / 2
    value, grad = value_and_grad(SoftTargetKL(temperature), student, teacher)
    assert value == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)


# ----------------------------------------------------------------------------- mse_logits


def test_mse_logits_value_and_gradient_by_hand() -> None:
    student = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    teacher = np.array([[0.0, 1.0, 0.5], [2.0, -1.0, -1.0]])
    diff = student - teacher
    value, grad = value_and_grad(MSELogits(), student, teacher)
    assert value == pytest.approx(np.mean(diff**2))  # (1 + 9 + 0 + 4 + 16 + 0) / 6 = 5
    assert value == pytest.approx(5.0)
    np.testing.assert_allclose(grad, 2 * diff / diff.size, atol=1e-6)


# ----------------------------------------------------------------------------- hint


def test_hint_value_and_gradients_by_hand() -> None:
    hint = FeatureHint(2, 3)
    weight = np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
    bias = np.array([0.1, 0.0, -0.2])
    with torch.no_grad():
        hint.projection.weight.copy_(torch.tensor(weight))
        hint.projection.bias.copy_(torch.tensor(bias))
    rng = np.random.default_rng(2)
    student = rng.normal(size=(2, 2, 2, 2))  # (N, C_s, H, W)
    teacher = rng.normal(size=(2, 3, 2, 2))
    projected = np.einsum("dc,nchw->ndhw", weight, student) + bias[None, :, None, None]
    residual = projected - teacher
    value, grad = value_and_grad(hint, student, teacher)
    assert value == pytest.approx(np.mean(residual**2), rel=1e-5)
    scale = 2.0 / residual.size
    np.testing.assert_allclose(grad, scale * np.einsum("dc,ndhw->nchw", weight, residual), atol=1e-6)
    assert hint.projection.weight.grad is not None and hint.projection.bias.grad is not None
    np.testing.assert_allclose(
        hint.projection.weight.grad.double().numpy(),
        scale * np.einsum("ndhw,nchw->dc", residual, student),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        hint.projection.bias.grad.double().numpy(), scale * residual.sum((0, 2, 3)), atol=1e-6
    )


# ----------------------------------------------------------------------------- cwd


def cwd_reference(student: np.ndarray, teacher: np.ndarray, temperature: float) -> tuple[float, np.ndarray]:
    """Value and gradient of CWD: per (n, c) a softmax over positions, KL(p || q) T^2 / (N C)."""
    n, c = student.shape[:2]
    p = softmax(teacher.reshape(n, c, -1) / temperature)
    q = softmax(student.reshape(n, c, -1) / temperature)
    value = np.sum(p * np.log(p / q)) * temperature**2 / (n * c)
    grad = (temperature * (q - p) / (n * c)).reshape(student.shape)
    return float(value), grad


def test_cwd_value_and_gradient_by_hand() -> None:
    rng = np.random.default_rng(3)
    student = rng.normal(size=(2, 3, 2, 3))
    teacher = rng.normal(size=(2, 3, 2, 3)) * 3
    teacher[0, 0, 0, 0] = 20.0  # a sharp channel map
    expected, expected_grad = cwd_reference(student, teacher, 4.0)
    value, grad = value_and_grad(ChannelWiseDistillation(4.0), student, teacher)
    assert value == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)


def test_segmentation_cwd_and_symmetric_cwd_by_hand() -> None:
    seg = pytest.importorskip("kdtool_segmentation.losses")
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(1, 2, 3, 3)) * 2, rng.normal(size=(1, 2, 3, 3)) * 2
    ab, grad_ab = cwd_reference(a, b, 4.0)
    ba, _ = cwd_reference(b, a, 4.0)
    value, grad = value_and_grad(ChannelWiseDistillation(4.0), a, b)  # segmentation's CWD is the registered one
    assert value == pytest.approx(ab, rel=1e-5)
    np.testing.assert_allclose(grad, grad_ab, atol=1e-6)
    # symmetric, stopped at each target: only the a -> sg(b) direction reaches a, halved
    value, grad = value_and_grad(lambda s, t: seg.symmetric_cwd(s, t, 4.0), a, b)
    assert value == pytest.approx(0.5 * (ab + ba), rel=1e-5)
    np.testing.assert_allclose(grad, 0.5 * grad_ab, atol=1e-6)
    # without the stop, a also receives the gradient of b -> a (a as the target): differentiate by hand
    value, grad = value_and_grad(lambda s, t: seg.symmetric_cwd(s, t, 4.0, stop_gradient=False), a, b)
    reference = lambda x: 0.5 * (cwd_reference(x, b, 4.0)[0] + cwd_reference(b, x, 4.0)[0])  # noqa: E731
    np.testing.assert_allclose(grad, numeric_grad(reference, a), atol=1e-5)


# ----------------------------------------------------------------------------- ctc_kd


def test_ctc_kd_value_and_gradient_by_hand() -> None:
    temperature, blank_weight = 2.0, 0.25
    rng = np.random.default_rng(5)
    student = rng.normal(size=(2, 4, 3))
    teacher = rng.normal(size=(2, 4, 3))
    teacher[0, 1] = [12.0, 0.0, 0.0]  # a confident blank frame: weight 0.25
    teacher[1, 0] = [0.0, 12.0, 0.0]  # a confident label frame: weight 1
    student[1, 0] = [0.0, -4.0, 6.0]  # ... where the student is confidently wrong
    lengths = np.array([3, 4])  # sample 0's last frame is padding
    p, q = softmax(teacher / temperature), softmax(student / temperature)
    kl = np.sum(p * np.log(p / q), -1)
    w = np.ones((2, 4))
    w[0, 1] = blank_weight
    w[0, 3] = 0.0
    expected = np.sum(kl * w) / w.sum() * temperature**2
    expected_grad = temperature * w[..., None] * (q - p) / w.sum()
    loss = CTCPosteriorKD(temperature=temperature, blank=0, blank_threshold=0.9, blank_weight=blank_weight)
    value, grad = value_and_grad(loss, student, teacher, torch.tensor(lengths))
    assert value == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)
    assert np.all(grad[0, 3] == 0)  # padded frames get no gradient


# ----------------------------------------------------------------------------- dist (example plugin)


def test_dist_value_and_gradient_by_hand() -> None:
    dist = pytest.importorskip("kdtool_example.dist")
    tau, beta, gamma = 2.0, 1.0, 2.0

    def reference(z: np.ndarray, t: np.ndarray) -> float:
        ps, pt = softmax(z / tau), softmax(t / tau)

        def mean_corr(x: np.ndarray, y: np.ndarray) -> float:
            x = x - x.mean(1, keepdims=True)
            y = y - y.mean(1, keepdims=True)
            return float(np.mean((x * y).sum(1) / np.sqrt((x**2).sum(1) * (y**2).sum(1))))

        return tau**2 * (beta * (1 - mean_corr(ps, pt)) + gamma * (1 - mean_corr(ps.T, pt.T)))

    student = np.concatenate([WRONG_STUDENT, [[1.0, 0.0, -1.0, 2.0, 0.5], [0.0, 1.0, 1.0, -2.0, 0.0]]])
    teacher = np.concatenate([SHARP_TEACHER, [[2.0, 1.0, 0.0, -1.0, 0.0], [0.5, 3.0, 0.0, 0.0, -1.0]]])
    value, grad = value_and_grad(dist.DIST(beta=beta, gamma=gamma, tau=tau), student, teacher)
    assert value == pytest.approx(reference(student, teacher), rel=1e-5)
    np.testing.assert_allclose(grad, numeric_grad(lambda z: reference(z, teacher), student), atol=1e-5)


def test_every_registered_kd_loss_has_a_hand_computed_test_here() -> None:
    """A new built-in KD loss must get a hand-computed test (add it above, then here)."""
    covered = {
        "ce",
        "mse",
        "kl_t",
        "mse_logits",
        "alpha_div",
        "hint",
        "cwd",
        "ctc_kd",
        "dist",
        "landmarks_kd_loss",
    }
    # ce and mse are plain losses (torch's own); landmarks_kd_loss is tested in tests/landmarks/test_losses.py
    registered = set(get_plugin_manager().registries(strict=False).losses.names())
    assert registered <= covered, f"losses without a hand-computed test: {sorted(registered - covered)}"
