"""Segmentation metrics (confusion matrix, mIoU, per-class IoU, pixel accuracy) and overlays.

Void pixels (255) are ignored. mIoU averages the IoU of the classes that occur in the truth
or the prediction of the evaluated set (a class absent from both has no defined IoU), as the
usual VOC and Cityscapes evaluation code does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

VOID = 255


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = VOID
) -> torch.Tensor:
    """(C, C) int64 counts, rows = truth, columns = prediction; ``ignore_index`` pixels skipped."""
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    valid = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    idx = target[valid] * num_classes + pred[valid]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """``miou``, ``pixel_acc`` and ``iou/<class>`` (NaN where a class never occurs) from a
    confusion matrix."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = union > 0
    total = conf.sum()
    out = {
        "miou": float(iou[present].mean()) if bool(present.any()) else 0.0,
        "pixel_acc": float(tp.sum() / total) if total > 0 else 0.0,
    }
    for name, value in zip(class_names, iou.tolist(), strict=True):
        out[f"iou/{name}"] = value
    return out


def colourise(
    mask: np.ndarray, palette: Sequence[Sequence[int]], void_colour: Sequence[int] = (224, 224, 192)
) -> np.ndarray:
    """uint8 (H, W, 3) colours of a class-id mask; void pixels get ``void_colour``."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    lut[VOID] = void_colour
    return lut[mask.astype(np.uint8)]


def denormalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float (3, H, W) normalised -> uint8 (H, W, 3)."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    x = (image.float().cpu() * s + m).clamp(0, 1).mul(255).round().byte()
    return x.permute(1, 2, 0).numpy()


def overlay_grid(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    palette: Sequence[Sequence[int]],
    path: Path,
    gap: int = 2,
) -> Path:
    """Write a PNG with one row per sample: image | truth | prediction | prediction blended
    over the image."""
    tiles = []
    for image, truth, pred in rows:
        pred_rgb = colourise(pred, palette)
        blend = (0.5 * image.astype(np.float32) + 0.5 * pred_rgb.astype(np.float32)).astype(np.uint8)
        parts = [image, colourise(truth, palette), pred_rgb, blend]
        h = image.shape[0]
        sep = np.full((h, gap, 3), 255, dtype=np.uint8)
        row = np.concatenate([p for part in parts for p in (part, sep)][:-1], axis=1)
        tiles.append(row)
        tiles.append(np.full((gap, row.shape[1], 3), 255, dtype=np.uint8))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles[:-1], axis=0)).save(path)
    return path


def save_mask_png(mask: np.ndarray, palette: Sequence[Sequence[int]], path: Path) -> Path:
    """A palette PNG whose pixel values are the class ids (VOC's annotation format)."""
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [0] * 768
    for i, colour in enumerate(list(palette)[:256]):
        flat[3 * i : 3 * i + 3] = list(colour)
    flat[3 * VOID : 3 * VOID + 3] = [224, 224, 192]
    im.putpalette(flat)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path
