"""Gated convolution, SE, the Proxima locality bias, and the recogniser's interface."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from kdtool_htr.models import (
    FullGatedConv2d,
    HTRJand,
    SelfAttention,
    SqueezeExcitation,
    count_parameters,
    default_pools,
)

REPO = Path(__file__).resolve().parents[2]


def test_full_gated_conv_is_first_half_times_sigmoid_of_second() -> None:
    torch.manual_seed(0)
    gated = FullGatedConv2d(3, 5)
    assert gated.conv.out_channels == 10
    x = torch.randn(2, 3, 8, 12)
    raw = gated.conv(x)
    expected = raw[:, :5] * torch.sigmoid(raw[:, 5:])
    out = gated(x)
    assert out.shape == (2, 5, 8, 12)
    torch.testing.assert_close(out, expected)


def test_squeeze_excitation_rescales_each_channel_by_a_gate_in_0_1() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(8)
    x = torch.rand(2, 8, 4, 6) + 0.1
    out = se(x)
    assert out.shape == x.shape
    ratio = out / x
    # One gate per (sample, channel), constant over space, strictly between 0 and 1.
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    assert (ratio > 0).all() and (ratio < 1).all()


def test_proxima_penalty_grows_with_distance_and_biases_attention_to_neighbours() -> None:
    torch.manual_seed(0)
    proxima = SelfAttention(16, 2, locality=True)
    penalty = proxima.distance_penalty(5, torch.device("cpu"))
    slopes = torch.nn.functional.softplus(proxima.slope)
    torch.testing.assert_close(slopes, torch.tensor([1.0, 0.5]))
    assert penalty.shape == (2, 5, 5)
    torch.testing.assert_close(penalty[0, 1], torch.tensor([1.0, 0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(penalty[1, 4], torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0]))
    # With identical frames the plain branch attends uniformly; Proxima peaks on the diagonal
    # and decays with distance, by exactly exp(-slope * distance).
    x = torch.randn(1, 1, 16).expand(1, 7, 16).contiguous()
    plain = SelfAttention(16, 2, locality=False)
    _, w_plain = plain.attention(x)
    torch.testing.assert_close(w_plain, torch.full_like(w_plain, 1 / 7))
    _, w_prox = proxima.attention(x)
    assert w_prox[0, 0, 3].argmax() == 3
    torch.testing.assert_close(w_prox[0, 0, 3, 2] / w_prox[0, 0, 3, 3], torch.exp(torch.tensor(-1.0)))
    torch.testing.assert_close(w_prox[0, 1, 3, 1] / w_prox[0, 1, 3, 3], torch.exp(torch.tensor(-1.0)))
    # The slope is learned.
    w_prox.sum().backward()
    assert proxima.slope.grad is not None


def test_recogniser_outputs_log_probs_at_a_quarter_of_the_width() -> None:
    torch.manual_seed(0)
    model = HTRJand(num_classes=11, height=32, channels=(4, 8, 8, 12), d_model=16, heads=2).eval()
    for width in (32, 60, 128):
        out = model(torch.rand(3, 1, 32, width))
        assert out.shape == (3, width // 4, 11)
        torch.testing.assert_close(out.exp().sum(-1), torch.ones(3, width // 4))
    assert default_pools(64, 5) == [(2, 2), (2, 2), (2, 1), (2, 1), (2, 1)]
    with pytest.raises(ValueError, match="frame stride"):
        HTRJand(num_classes=5, channels=(4, 4), pools=[(2, 2), (2, 1)])


@pytest.mark.parametrize("recipe", ["htr_jand.yaml", "htr_jand_iam.yaml"])
def test_teacher_has_about_twice_the_students_parameters(recipe: str) -> None:
    data = yaml.safe_load((REPO / "recipes" / recipe).read_text())
    height = data["data"].get("height", 32)
    counts = {
        name: count_parameters(HTRJand(num_classes=80, height=height, **cfg["options"]))
        for name, cfg in data["models"].items()
    }
    assert 1.8 <= counts["teacher"] / counts["student"] <= 2.2
    if recipe == "htr_jand_iam.yaml":  # paper scale: ~1.5M vs ~0.75M
        assert 1.35e6 <= counts["teacher"] <= 1.65e6 and 0.68e6 <= counts["student"] <= 0.82e6
