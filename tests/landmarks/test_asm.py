"""Active shape model: PCA soft landmarks keep the requested variance and clip coefficients."""

from __future__ import annotations

import numpy as np
import pytest
from kdtool_landmarks.asm import fit_shape_model, soft_landmarks


def _shapes(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapes = mean + 2 strong modes + tiny isotropic noise, in (M, 5, 2)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=10)
    modes = np.linalg.qr(rng.normal(size=(10, 2)))[0]
    b = rng.normal(size=(n, 2)) * np.array([3.0, 1.0])
    clean = mean + b @ modes.T
    noisy = clean + rng.normal(scale=0.01, size=clean.shape)
    return noisy.reshape(n, 5, 2), clean.reshape(n, 5, 2), modes


def test_keeps_smallest_number_of_components_reaching_the_variance() -> None:
    noisy, _, modes = _shapes()
    model = fit_shape_model(noisy, variance=0.97)
    # Mode variances ~9 and ~1 (90% / 10%): 97% needs both, and no more.
    assert model.num_components == 2
    assert model.explained >= 0.97
    assert fit_shape_model(noisy, variance=0.85).num_components == 1
    # The subspace found is the true one.
    proj = modes.T @ model.components
    assert np.abs(np.linalg.svd(proj)[1]).min() > 0.999


def test_soft_landmarks_remove_off_model_noise() -> None:
    noisy, clean, _ = _shapes()
    soft, model = soft_landmarks(noisy, variance=0.97, clip=3.0)
    assert soft.shape == noisy.shape

    # 2 of 10 dimensions kept: about 2/10 of the isotropic noise power survives.
    # (Median over shapes: the few beyond 3 sqrt(lambda) are clipped on purpose.)
    def err(x: np.ndarray) -> float:
        return float(np.median(((x - clean) ** 2).mean(axis=(1, 2))))

    assert err(soft) < 0.35 * err(noisy)


def test_coefficients_are_clipped_to_three_sqrt_lambda() -> None:
    noisy, _, _ = _shapes()
    model = fit_shape_model(noisy, variance=0.97, clip=3.0)
    outlier = model.mean + 20 * np.sqrt(model.eigenvalues[0]) * model.components[:, 0]
    rebuilt = model.reconstruct(outlier.reshape(1, 5, 2))
    b = model.coefficients(rebuilt)[0]
    assert b[0] == pytest.approx(3 * np.sqrt(model.eigenvalues[0]), rel=1e-5)
    # A shape inside the bounds comes back unchanged (it lies in the subspace).
    inside = model.mean + 1.0 * np.sqrt(model.eigenvalues[1]) * model.components[:, 1]
    np.testing.assert_allclose(model.reconstruct(inside.reshape(1, 5, 2)).ravel(), inside, atol=1e-5)


def test_procrustes_alignment_round_trips_pose() -> None:
    noisy, _, _ = _shapes(100)
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    posed = noisy @ rot.T * 1.5 + 2.0
    soft, _ = soft_landmarks(posed, variance=1.0, clip=100.0, align="procrustes")
    np.testing.assert_allclose(soft, posed, atol=1e-4)


def test_bad_variance_is_rejected() -> None:
    with pytest.raises(ValueError, match="variance"):
        fit_shape_model(np.zeros((3, 2, 2)), variance=1.5)
