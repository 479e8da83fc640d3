"""The example plugin's own tests: kdtool's conformance kit, and DIST against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kdtool_example.dist import DIST
from kdtool_example.pt2 import Pt2Exporter

from kdtool.testing import check_exporter, check_loss, check_plugin, check_target


def test_plugin_is_listed_with_its_registrations() -> None:
    report = check_plugin("example")
    assert any("dist" in line and "pt2" in line for line in report.passed)


def test_dist_passes_the_kit() -> None:
    check_loss("dist")
    check_loss(DIST, options={"beta": 2.0, "gamma": 0.5, "tau": 4.0})


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_dist_matches_a_hand_computation() -> None:
    s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]])
    t = torch.tensor([[1.0, 1.5, -0.5], [0.2, -1.0, 2.0]])
    tau, beta, gamma = 2.0, 1.5, 0.5
    ps = torch.softmax(s / tau, 1).numpy()
    pt = torch.softmax(t / tau, 1).numpy()
    inter = 1 - np.mean([_pearson(ps[i], pt[i]) for i in range(2)])
    intra = 1 - np.mean([_pearson(ps[:, c], pt[:, c]) for c in range(3)])
    expected = tau**2 * (beta * inter + gamma * intra)
    assert float(DIST(beta, gamma, tau)(s, t)) == pytest.approx(expected, rel=1e-5)
    # equal logits: perfectly correlated, zero loss; a scaled teacher keeps the inter-class term low
    assert float(DIST()(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_pt2_exporter_passes_the_kit() -> None:
    report = check_exporter(Pt2Exporter)
    assert any("matches PyTorch" in line for line in report.passed)


def test_pt2_target_profile() -> None:
    check_target("pt2-cpu")
