"""Unit tests of the segmentation (LAD) plugin: noising, losses, models, augmentation, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kdtool_segmentation.datasets import joint_augment
from kdtool_segmentation.losses import symmetric_cwd
from kdtool_segmentation.metrics import confusion_matrix, scores
from kdtool_segmentation.models import deeplabv3_r18, pspnet_r18, slice_stem_to_rgb
from kdtool_segmentation.noise import fixed_class_values, student_stage_label_channel, teacher_label_channel
from kdtool_segmentation.synth import generate_scene

from kdtool.losses import ChannelWiseDistillation


def channel_wise_distillation(s: torch.Tensor, t: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Segmentation's CWD is the registered ``cwd`` (one implementation)."""
    return ChannelWiseDistillation(temperature)(s, t)


# --------------------------------------------------------------------------- label noising


def test_fixed_mapping_is_vocs_for_21_classes_and_void_is_the_next_step() -> None:
    values = fixed_class_values(21)
    expected = [(k - 11) / 10 for k in range(21)]
    assert torch.allclose(values[:21], torch.tensor(expected))
    assert values[21].item() == pytest.approx(1.0)  # void under "extra_class"
    # Any class count: evenly spaced by 2 / (C - 1), last class at (C - 3) / (C - 1), void at 1.
    v6 = fixed_class_values(6)
    assert torch.allclose(v6[1:] - v6[:-1], torch.full((6,), 2 / 5))
    assert v6[5].item() == pytest.approx(3 / 5) and v6[6].item() == pytest.approx(1.0)


def _two_region_labels(n: int = 64, size: int = 32) -> torch.Tensor:
    labels = torch.zeros((n, size, size), dtype=torch.long)
    labels[:, :, size // 2 :] = 3
    labels[:, :4, :] = 255
    return labels


def test_teacher_noising_statistics() -> None:
    labels = _two_region_labels()
    g = torch.Generator().manual_seed(0)
    ch = teacher_label_channel(labels, 5, generator=g, pixel_std=0.03, scale=100.0)
    assert ch.shape == (64, 1, 32, 32)
    ch = ch[:, 0]
    class0 = ch[:, 4:, :16].reshape(64, -1)
    class3 = ch[:, 4:, 16:].reshape(64, -1)
    void = ch[:, :4, :].reshape(64, -1)
    # Within a region the value is one draw plus pixel noise of std 0.03 x 100 = 3.
    assert class0.std(dim=1).mean().item() == pytest.approx(3.0, rel=0.1)
    # Region values are per-image N(0, 1) x 100 draws: mean ~0, std ~100, redrawn per image.
    per_image = torch.cat([class0.mean(1), class3.mean(1), void.mean(1)])
    assert abs(per_image.mean().item()) < 30
    assert per_image.std().item() == pytest.approx(100, rel=0.25)
    # Void is its own region (extra_class): not equal to either class value.
    assert (void.mean(1) - class0.mean(1)).abs().min().item() > 0.0
    # "zero": void carries 0 plus pixel noise.
    zero = teacher_label_channel(labels, 5, generator=g, void="zero")[:, 0, :4, :]
    assert abs(zero.mean().item()) < 0.5 and zero.std().item() == pytest.approx(3.0, rel=0.1)


def test_student_stage_noising_uses_the_fixed_mapping() -> None:
    labels = _two_region_labels(n=16)
    g = torch.Generator().manual_seed(1)
    ch = student_stage_label_channel(labels, 5, generator=g, pixel_std=0.02, scale=100.0)[:, 0]
    table = fixed_class_values(5) * 100
    assert ch[:, 4:, :16].mean().item() == pytest.approx(table[0].item(), abs=0.2)
    assert ch[:, 4:, 16:].mean().item() == pytest.approx(table[3].item(), abs=0.2)
    assert ch[:, :4].mean().item() == pytest.approx(100.0, abs=0.2)  # void -> k = C -> 1.0 x 100
    assert (ch[:, 4:, :16] - table[0]).std().item() == pytest.approx(2.0, rel=0.1)  # 0.02 x 100
    exact = student_stage_label_channel(labels, 5, pixel_std=0.0)[:, 0]
    assert torch.equal(exact[:, 4:, 16:], torch.full_like(exact[:, 4:, 16:], table[3].item()))


def test_noising_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="outside"):
        teacher_label_channel(torch.full((1, 4, 4), 7), 5)


# --------------------------------------------------------------------------- losses


def _direct_cwd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    n, c = s.shape[:2]
    total = 0.0
    for i in range(n):
        for j in range(c):
            ps = [math.exp(v / temperature) for v in s[i, j].flatten().tolist()]
            pt = [math.exp(v / temperature) for v in t[i, j].flatten().tolist()]
            zs, zt = sum(ps), sum(pt)
            total += sum((b / zt) * math.log((b / zt) / (a / zs)) for a, b in zip(ps, pt, strict=True))
    return total * temperature**2 / (n * c)


def test_cwd_matches_a_direct_computation_and_the_core_loss() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 5, generator=g) * 3
    t = torch.randn(2, 3, 4, 5, generator=g) * 3
    value = channel_wise_distillation(s, t, 4.0).item()
    assert value == pytest.approx(_direct_cwd(s, t, 4.0), rel=1e-5)
    assert channel_wise_distillation(s, t, 1.0).item() == pytest.approx(_direct_cwd(s, t, 1.0), rel=1e-5)
    assert channel_wise_distillation(s, s, 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_symmetric_cwd_is_symmetric_and_stops_the_gradient_at_each_target() -> None:
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(2, 3, 4, 4, generator=g) * 2).requires_grad_()
    b = (torch.randn(2, 3, 4, 4, generator=g) * 2).requires_grad_()
    ab, ba = symmetric_cwd(a, b), symmetric_cwd(b, a)
    assert ab.item() == pytest.approx(ba.item(), rel=1e-6)
    expected = 0.5 * (_direct_cwd(a.detach(), b.detach(), 4.0) + _direct_cwd(b.detach(), a.detach(), 4.0))
    assert ab.item() == pytest.approx(expected, rel=1e-5)
    # With stop_gradient, a's gradient comes only from the direction where a is the prediction.
    (grad_a,) = torch.autograd.grad(symmetric_cwd(a, b), a)
    (one_way,) = torch.autograd.grad(0.5 * channel_wise_distillation(a, b.detach()), a)
    assert torch.allclose(grad_a, one_way, atol=1e-7)
    (full,) = torch.autograd.grad(symmetric_cwd(a, b, stop_gradient=False), a)
    assert not torch.allclose(full, one_way, atol=1e-6)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("factory", [deeplabv3_r18, pspnet_r18])
def test_stem_slice_keeps_outputs_equal(factory) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = factory(6, width=8, head_channels=16).eval()
    x = torch.randn(2, 3, 48, 40)
    four = torch.cat([x, torch.zeros(2, 1, 48, 40)], dim=1)
    sliced = slice_stem_to_rgb(model)
    assert sliced.in_channels == 3 and model.in_channels == 4
    with torch.no_grad():
        ref = model(four)["out"]
        out = sliced(x)["out"]
    assert out.shape == (2, 6, 48, 40)
    assert torch.allclose(out, ref, atol=1e-5)
    # A non-zero 4th channel does change the 4-channel model (the slice is not a no-op).
    with torch.no_grad():
        assert not torch.allclose(model(torch.cat([x, torch.ones(2, 1, 48, 40)], 1))["out"], ref)


def test_model_outputs_and_aux_head() -> None:
    model = deeplabv3_r18(5, width=8, head_channels=16, aspp_rates=[1, 2, 3])
    out = model(torch.randn(2, 4, 32, 32))
    assert set(out) == {"out", "out_lowres", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 5, 32, 32)
    assert out["out_lowres"].shape == (2, 5, 4, 4)  # output stride 8
    model.eval()
    assert "aux" not in model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="in_channels=4"):
        deeplabv3_r18(5, in_channels=3, label_assisted=True)


# --------------------------------------------------------------------------- augmentation


def test_joint_augmentation_keeps_image_and_mask_aligned() -> None:
    image, mask = generate_scene(3, 0, 64, void_width=0)
    # Encode the class in the image, so alignment can be read back after augmenting.
    coded = np.repeat((mask.astype(np.uint8) * 40)[..., None], 3, axis=2)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        out_img, out_mask = joint_augment(coded, mask, rng, crop_size=48, scale_range=(0.6, 1.6), flip=True)
        assert out_img.shape == (48, 48, 3) and out_mask.shape == (48, 48)
        assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {255}  # nearest: no new ids
        # Away from boundaries (3x3 neighbourhood uniform) the coded colour equals the class.
        m = out_mask.astype(int)
        core = np.ones_like(m, dtype=bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                core &= np.roll(np.roll(m, dy, 0), dx, 1) == m
        core[[0, -1], :] = False
        core[:, [0, -1]] = False
        core &= m != 255
        assert core.sum() > 100
        # (A thin part that nearest sampling skips can blend into a few pixels when shrinking.)
        mismatch = np.abs(out_img[..., 0].astype(int) - m * 40)[core] > 2
        assert mismatch.mean() < 0.005
        # The same generator state gives the same crop.
        again = joint_augment(
            coded, mask, np.random.default_rng(seed), crop_size=48, scale_range=(0.6, 1.6), flip=True
        )
        assert np.array_equal(again[1], out_mask)


def test_augmentation_pads_small_images_with_void() -> None:
    image = np.full((10, 12, 3), 200, np.uint8)
    mask = np.ones((10, 12), np.uint8)
    out_img, out_mask = joint_augment(
        image, mask, np.random.default_rng(0), crop_size=16, scale_range=(1.0, 1.0), flip=False
    )
    assert out_mask.shape == (16, 16) and (out_mask == 255).sum() == 16 * 16 - 120
    assert (out_img[out_mask == 255] == 0).all()


# --------------------------------------------------------------------------- metrics


def test_miou_against_a_hand_computation_ignores_void() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    s = scores(conf, ["a", "b", "c"])
    iou = [1 / 3, 2 / 3, 1 / 2]  # tp / (row + col - tp)
    assert s["miou"] == pytest.approx(sum(iou) / 3)
    assert s["pixel_acc"] == pytest.approx(4 / 6)
    assert s["iou/b"] == pytest.approx(2 / 3)
    # A class absent from truth and prediction is left out of the mean.
    s4 = scores(confusion_matrix(pred, target, 4), ["a", "b", "c", "d"])
    assert s4["miou"] == pytest.approx(sum(iou) / 3) and math.isnan(s4["iou/d"])


def test_synthetic_scenes_are_deterministic_and_have_void_borders() -> None:
    a = generate_scene(0, 5, 48)
    b = generate_scene(0, 5, 48)
    c = generate_scene(1, 5, 48)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (48, 48, 3) and a[0].dtype == np.uint8
    assert 255 in a[1] and set(np.unique(a[1])) <= set(range(6)) | {255}
