"""Landmark data: 300W/iBUG ``.pts`` files, WFLW annotation lists, plain manifests, synthetic faces.

Every source is turned into :class:`Record` s (an image, its points in the image's continuous
pixel coordinates, optionally a face box). :class:`LandmarksDataset` crops the face (from the
box or from the points' bounding box, with a margin, made square), augments it (flip with the
layout's left/right permutation, rotation, scale, shift, colour) with *one* affine transform
applied to both image and points, so they always agree, and returns points in the normalised
frame ``u = (W/2 - x) / W`` the networks regress (see ``losses.py``).

Coordinate conventions: inside kdtool an image spans [0, W] and pixel ``i`` has its centre at
``i + 0.5``. 300W ``.pts`` files are 1-based (Matlab: first pixel centre at 1), so 0.5 is
subtracted; WFLW lists and manifests are 0-based pixel centres, so 0.5 is added.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from kdtool.data import sample_rng
from kdtool.errors import DataError
from kdtool_landmarks.layouts import Layout

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


# --------------------------------------------------------------------------- coordinates


def to_frame(points_px: np.ndarray | torch.Tensor, size: int) -> Any:
    """Crop pixels -> the normalised frame ``(W/2 - x) / W`` (same formula for y with H)."""
    return (size / 2 - points_px) / size


def from_frame(points_frame: np.ndarray | torch.Tensor, size: int) -> Any:
    """The normalised frame -> crop pixels (inverse of :func:`to_frame`)."""
    return size / 2 - points_frame * size


# --------------------------------------------------------------------------- records


@dataclass
class Record:
    """One annotated face. ``image`` is a path or an (H, W, 3) uint8 array."""

    image: Path | np.ndarray
    points: np.ndarray  # (N, 2) float32, continuous pixel coordinates of the image
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    group: str = ""  # e.g. the 300W sub-set (helen/testset, ibug) for per-group NME

    def load_image(self) -> Image.Image:
        if isinstance(self.image, np.ndarray):
            return Image.fromarray(self.image, "RGB")
        return load_rgb(self.image)


def load_rgb(path: Path) -> Image.Image:
    """Open an image file as RGB, with a clear error for a missing or corrupt file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read image ({exc})", hint="the file is corrupt or not an image"
        ) from None


def parse_pts(path: Path) -> np.ndarray:
    """A 300W/iBUG ``.pts`` file -> (N, 2) points (still 1-based, as written).

    Format: ``version: 1``, ``n_points: 68``, ``{``, one ``x y`` line per point, ``}``.
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    n_points: int | None = None
    points: list[tuple[float, float]] = []
    inside = closed = False
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if not inside:
            if line.startswith("version"):
                continue
            if line.startswith("n_points"):
                m = re.fullmatch(r"n_points\s*:\s*(\d+)", line)
                if m is None:
                    raise DataError(
                        f"{path}:{lineno}: malformed header {line!r}; expected 'n_points: <count>'"
                    )
                n_points = int(m.group(1))
                continue
            if line == "{":
                inside = True
                continue
            raise DataError(
                f"{path}:{lineno}: unexpected {line!r} before '{{' (expected version, n_points, '{{')"
            )
        if line == "}":
            closed = True
            break
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            points.append((float(parts[0]), float(parts[1])))
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected two numbers 'x y', got {line!r}") from None
    if n_points is None:
        raise DataError(f"{path}: missing 'n_points: <count>' header")
    if not inside or not closed:
        raise DataError(f"{path}: the point list must be enclosed in '{{' and '}}'")
    if len(points) != n_points:
        raise DataError(f"{path}: header says n_points: {n_points} but the file lists {len(points)} points")
    if not np.all(np.isfinite(points)):
        raise DataError(f"{path}: non-finite coordinates")
    return np.asarray(points, dtype=np.float32)


def load_300w(root: Path, dirs: Sequence[str]) -> list[Record]:
    """300W / iBUG layout: ``.pts`` files beside their images under ``root/<dir>`` (searched
    recursively), e.g. dirs ``[afw, helen/trainset, lfpw/trainset]``."""
    records: list[Record] = []
    for d in dirs:
        base = root / d
        if not base.is_dir():
            raise DataError(
                f"300W directory not found: {base}", hint="check data.root and data.train / data.val"
            )
        pts_files = sorted(base.rglob("*.pts"))
        if not pts_files:
            raise DataError(f"{base}: no .pts files found")
        for pts in pts_files:
            image = next((pts.with_suffix(ext) for ext in IMAGE_EXTS if pts.with_suffix(ext).is_file()), None)
            if image is None:
                raise DataError(f"{pts}: no image beside it (looked for {', '.join(IMAGE_EXTS[:5])})")
            records.append(Record(image, parse_pts(pts) - 0.5, None, d))
    return records


def load_wflw(annotations: Path, images: Path) -> list[Record]:
    """A WFLW list (``list_98pt_rect_attr_*.txt``): per line 196 coordinates, the box
    ``x_min y_min x_max y_max``, 6 attribute flags and the image path relative to ``images``."""
    try:
        lines = annotations.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{annotations}: cannot read WFLW annotation list ({exc})") from None
    records = []
    for lineno, raw in enumerate(lines, start=1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 196 + 4 + 6 + 1:
            raise DataError(
                f"{annotations}:{lineno}: expected 207 fields (196 coordinates, 4 box, 6 attributes, path), got {len(parts)}"
            )
        try:
            values = np.asarray([float(v) for v in parts[:200]], dtype=np.float32)
            [int(v) for v in parts[200:206]]
        except ValueError:
            raise DataError(
                f"{annotations}:{lineno}: non-numeric coordinate, box or attribute field"
            ) from None
        box = tuple(float(v) for v in values[196:200])
        records.append(Record(images / parts[206], values[:196].reshape(98, 2) + 0.5, box, "wflw"))  # type: ignore[arg-type]
    if not records:
        raise DataError(f"{annotations}: no annotations")
    return records


def load_manifest(path: Path) -> list[Record]:
    """A plain manifest: per line ``image_path x1 y1 x2 y2 ...`` (whitespace or commas;
    ``#`` comments), paths relative to the manifest's folder, 0-based pixel coordinates."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read manifest ({exc})") from None
    records: list[Record] = []
    count: int | None = None
    for lineno, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p for p in re.split(r"[,\s]+", line) if p]
        coords = parts[1:]
        if len(coords) < 2 or len(coords) % 2:
            raise DataError(
                f"{path}:{lineno}: expected 'image x1 y1 x2 y2 ...' with an even number of coordinates"
            )
        try:
            pts = np.asarray([float(v) for v in coords], dtype=np.float32).reshape(-1, 2)
        except ValueError:
            raise DataError(f"{path}:{lineno}: non-numeric coordinate") from None
        if count is not None and len(pts) != count:
            raise DataError(f"{path}:{lineno}: {len(pts)} points, earlier lines have {count}")
        count = len(pts)
        records.append(Record(path.parent / parts[0], pts + 0.5, None, "manifest"))
    if not records:
        raise DataError(f"{path}: empty manifest")
    return records


# --------------------------------------------------------------------------- geometry


def crop_square(record: Record, source: str, margin: float) -> tuple[float, float, float]:
    """The face crop as (centre x, centre y, side): the box (or the points' bounding box)
    made square on its longer side and enlarged by ``margin`` on each side."""
    if source == "box" and record.box is not None:
        x0, y0, x1, y1 = record.box
    elif source == "full" and isinstance(record.image, np.ndarray):
        h, w = record.image.shape[:2]
        return w / 2, h / 2, float(max(w, h))
    else:
        x0, y0 = record.points.min(axis=0)
        x1, y1 = record.points.max(axis=0)
    side = max(x1 - x0, y1 - y0, 1.0) * (1 + 2 * margin)
    return (x0 + x1) / 2, (y0 + y1) / 2, side


def crop_matrix(cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """3x3 affine taking the square (cx, cy, side) of the image onto [0, size]^2."""
    s = size / side
    return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy], [0, 0, 1]], dtype=np.float64)


def augment_matrix(
    size: int, *, flip: bool, angle_deg: float, scale: float, shift: tuple[float, float]
) -> np.ndarray:
    """3x3 affine acting on crop pixels: flip, rotate and scale about the centre, then shift."""
    c = size / 2
    a = math.radians(angle_deg)
    rot = (
        np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        * np.array([scale, scale, 1])[:, None]
    )
    rot[2] = (0, 0, 1)
    to_c = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]], dtype=np.float64)
    back = np.array([[1, 0, c + shift[0] * size], [0, 1, c + shift[1] * size], [0, 0, 1]], dtype=np.float64)
    mirror = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
    return back @ rot @ mirror @ to_c


def apply_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (points @ matrix[:2, :2].T + matrix[:2, 2]).astype(np.float32)


def warp_image(img: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """Resample ``img`` so that output = matrix @ input (continuous coordinates)."""
    inv = np.linalg.inv(matrix)
    coeffs = (inv[0, 0], inv[0, 1], inv[0, 2], inv[1, 0], inv[1, 1], inv[1, 2])
    return img.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def flip_points(points: np.ndarray, perm: Sequence[int]) -> np.ndarray:
    """Re-index mirrored points so point ``i`` is again the subject's point ``i``."""
    return points[np.asarray(perm)]


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    flip: float = 0.5
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.05
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25


class LandmarksDataset(Dataset[dict[str, Any]]):
    """Face crops with points in the normalised frame; ``soft`` holds the ASM soft landmarks
    (same transform as the points) when set with :meth:`set_soft`, else a copy of the points."""

    def __init__(
        self,
        records: list[Record],
        *,
        layout: Layout,
        size: int,
        crop_source: str,
        margin: float,
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentConfig | None,
        seed: int,
    ) -> None:
        self.records = records
        self.layout = layout
        self.size = size
        self.crop_source = crop_source
        self.margin = margin
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = augment if augment is not None and augment.enabled else None
        if self.augment is not None and self.augment.flip > 0 and layout.flip_perm is None:
            raise DataError(
                f"flip augmentation needs a known layout; {layout.name} has none (set data.augment.flip: 0)"
            )
        self.seed = seed
        self.epoch = 0
        self.soft: np.ndarray | None = None  # (M, N, 2) in the un-augmented crop frame

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_soft(self, soft_frame: np.ndarray) -> None:
        if soft_frame.shape != (len(self), self.layout.num_points, 2):
            raise ValueError(
                f"soft landmarks have shape {soft_frame.shape}, expected {(len(self), self.layout.num_points, 2)}"
            )
        self.soft = soft_frame.astype(np.float32)

    def crop_of(self, index: int) -> np.ndarray:
        rec = self.records[index]
        return crop_matrix(*crop_square(rec, self.crop_source, self.margin), self.size)

    def shapes(self) -> np.ndarray:
        """(M, N, 2) un-augmented points in the normalised frame, without loading images."""
        return np.stack(
            [to_frame(apply_points(self.crop_of(i), r.points), self.size) for i, r in enumerate(self.records)]
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        crop = self.crop_of(index)
        points = apply_points(crop, rec.points)
        soft = from_frame(self.soft[index], self.size) if self.soft is not None else points.copy()
        colour = None
        if self.augment is not None:
            aug = self.augment
            rng = sample_rng(self.seed, self.epoch, index)
            flip = bool(rng.random() < aug.flip)
            m = augment_matrix(
                self.size,
                flip=flip,
                angle_deg=float(rng.uniform(-aug.rotation_deg, aug.rotation_deg)),
                scale=float(rng.uniform(*aug.scale)),
                shift=(float(rng.uniform(-aug.shift, aug.shift)), float(rng.uniform(-aug.shift, aug.shift))),
            )
            crop = m @ crop
            points, soft = apply_points(m, points), apply_points(m, soft)
            if flip:
                assert self.layout.flip_perm is not None
                points, soft = (
                    flip_points(points, self.layout.flip_perm),
                    flip_points(soft, self.layout.flip_perm),
                )
            colour = (
                1 + rng.uniform(-aug.brightness, aug.brightness),
                1 + rng.uniform(-aug.contrast, aug.contrast),
                1 + rng.uniform(-aug.saturation, aug.saturation),
            )
        img = rec.load_image()
        if not (np.allclose(crop, np.eye(3)) and img.size == (self.size, self.size)):
            img = warp_image(img, crop, self.size)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        if colour is not None:
            x = _jitter(x, *colour)
        x = (x - self.mean) / self.std
        return {
            "index": index,
            "image": x,
            "points": torch.from_numpy(to_frame(points, self.size).astype(np.float32)),
            "soft": torch.from_numpy(to_frame(soft, self.size).astype(np.float32)),
        }


def _jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """Colour jitter on a (3, H, W) image in [0, 1]."""
    x = x * brightness
    mean = x.mean()
    x = (x - mean) * contrast + mean
    grey = x.mean(dim=0, keepdim=True)
    x = (x - grey) * saturation + grey
    return x.clamp(0.0, 1.0)
