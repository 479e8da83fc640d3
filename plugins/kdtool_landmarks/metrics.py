"""Landmark metrics and figures: NME, failure rate, AUC, the CED curve, a sheet of predictions.

- NME of an image: mean point-to-point error divided by the inter-ocular distance (outer eye
  corners of the ground truth, the 300W convention) or, as an option, by the ground-truth
  box size ``sqrt(w h)``. Reported in percent, like the paper (300W full: 4.06).
- FR@t: share of images (percent) with NME > t (t = 0.1).
- AUC@t: area under the cumulative error distribution (CED) from 0 to t, divided by t (0..1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kdtool_landmarks.layouts import Layout


def normaliser(gt: np.ndarray, layout: Layout, norm: str) -> np.ndarray:
    """(M,) normalising distance per image for (M, N, 2) ground truth."""
    if norm == "inter_ocular" and layout.eye_corners is not None:
        a, b = layout.eye_corners
        d = np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)
    elif norm in ("box", "inter_ocular"):
        wh = gt.max(axis=1) - gt.min(axis=1)
        d = np.sqrt(wh[:, 0] * wh[:, 1])
    else:
        raise ValueError(f"unknown NME normalisation {norm!r}; expected inter_ocular or box")
    return np.maximum(d, 1e-6)


def nme_per_image(pred: np.ndarray, gt: np.ndarray, layout: Layout, norm: str = "inter_ocular") -> np.ndarray:
    """(M,) NME as a fraction (not percent) for (M, N, 2) predictions and ground truth."""
    err = np.linalg.norm(pred - gt, axis=-1).mean(axis=1)
    return err / normaliser(gt, layout, norm)


def ced(nme: np.ndarray, threshold: float = 0.1, steps: int = 1001) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative error distribution: thresholds and the share of images at or below each."""
    xs = np.linspace(0.0, threshold, steps)
    return xs, (nme[None, :] <= xs[:, None]).mean(axis=1)


def summarise(nme: np.ndarray, threshold: float = 0.1) -> dict[str, float]:
    xs, ys = ced(nme, threshold)
    tag = f"{threshold:g}"
    return {
        "nme": float(nme.mean() * 100),
        f"fr@{tag}": float((nme > threshold).mean() * 100),
        f"auc@{tag}": float(np.trapezoid(ys, xs) / threshold),
    }


def plot_ced(
    curves: dict[str, np.ndarray], path: Path, threshold: float = 0.1, norm: str = "inter_ocular"
) -> Path:
    """A CED plot with one curve per model (legend: name, NME, AUC)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=110)
    for name, nme in curves.items():
        xs, ys = ced(nme, threshold)
        s = summarise(nme, threshold)
        ax.plot(xs * 100, ys, label=f"{name}: NME {s['nme']:.2f}%, AUC {s[f'auc@{threshold:g}']:.3f}")
    ax.set_xlabel(f"NME ({norm.replace('_', '-')}, %)")
    ax.set_ylabel("fraction of images")
    ax.set_xlim(0, threshold * 100)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Cumulative error distribution")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_sheet(
    images: list[np.ndarray],
    preds: np.ndarray,
    gts: np.ndarray,
    path: Path,
    *,
    cols: int = 6,
    cell: int = 160,
) -> Path:
    """A grid of images with ground truth (green) and predictions (red), upscaled to ``cell``."""
    rows = max(1, -(-len(images) // cols))
    sheet = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        tile = Image.fromarray(img).resize((cell, cell), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(tile)
        sx, sy = cell / w, cell / h
        r = max(1.0, cell / 100)
        for pts, colour in ((gts[i], (0, 220, 0)), (preds[i], (255, 30, 30))):
            for x, y in pts:
                draw.ellipse([x * sx - r, y * sy - r, x * sx + r, y * sy + r], fill=colour)
        sheet.paste(tile, ((i % cols) * cell, (i // cols) * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def draw_points(img: Image.Image, points: np.ndarray, path: Path) -> Path:
    """``img`` with (N, 2) points (continuous pixel coordinates) drawn in red."""
    canvas = img.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    r = max(1.0, max(canvas.size) / 150)
    for x, y in points:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 30, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
