"""Classification datasets: scikit-learn's bundled digits, ImageFolder, CSV/JSONL manifests.

Every dataset returns dicts ``{"image": (C, S, S) float tensor in [0, 1], "label": int,
"index": int}``; normalisation happens in the model wrapper so the exported graph and the
manifest agree on it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from kdtool.data import sample_rng
from kdtool.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_image(path: Path, channels: int, size: int) -> torch.Tensor:
    """An image file as a (C, size, size) float tensor in [0, 1]."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


class _SeededDataset(Dataset[dict[str, Any]]):
    """Augmentation drawn from ``sample_rng(seed, epoch, index)``; the engine sets the epoch."""

    def __init__(self, *, augment: bool, seed: int) -> None:
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ArrayDataset(_SeededDataset):
    """Images already in memory, with optional per-sample seeded shift augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, augment: bool, seed: int) -> None:
        super().__init__(augment=augment, seed=seed)
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images[index]
        if self.augment:
            rng = sample_rng(self.seed, self.epoch, index)
            dy, dx = (int(v) for v in rng.integers(-1, 2, size=2))
            image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))
            image = (image * float(rng.uniform(0.85, 1.15))).clamp(0, 1)
        return {"image": image, "label": int(self.labels[index]), "index": index}


class FileDataset(_SeededDataset):
    """Images read from disk on access (ImageFolder or a manifest)."""

    def __init__(
        self, items: list[tuple[Path, int]], *, channels: int, size: int, augment: bool, seed: int
    ) -> None:
        super().__init__(augment=augment, seed=seed)
        self.items = items
        self.channels = channels
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.items[index]
        image = load_image(path, self.channels, self.size)
        if self.augment:
            rng = sample_rng(self.seed, self.epoch, index)
            if rng.random() < 0.5:
                image = torch.flip(image, dims=(2,))
        return {"image": image, "label": label, "index": index}


def digits_arrays(size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """scikit-learn's 1,797 real handwritten 8x8 digits, upsampled to ``size`` (no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    return images.clamp(0, 1), labels, [str(d) for d in range(10)]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(n * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def image_folder(root: Path, labels: list[str] | None) -> tuple[list[tuple[Path, int]], list[str]]:
    """``root/<class>/<image>``; class order from ``labels`` or sorted folder names."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"image folder {root} has no class sub-folders (expected root/<class>/<image>)")
    classes = labels or folders
    unknown = sorted(set(folders) - set(classes))
    if unknown:
        raise DataError(
            f"image folder {root} has class folders {unknown} that are not in the labels list {classes}"
        )
    items = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((path, label))
    if not items:
        raise DataError(f"image folder {root} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return items, classes


def read_manifest(path: Path, labels: list[str] | None) -> tuple[list[tuple[Path, int]], list[str]]:
    """CSV (``path,label`` header) or JSONL (``{"path": ..., "label": ...}``); paths relative
    to the manifest. Labels may be class names or integer ids."""
    if not path.exists():
        raise DataError(f"manifest not found: {path}")
    rows: list[tuple[int, str, str]] = []
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                rows.append((lineno, str(obj["path"]), str(obj["label"])))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object with 'path' and 'label' ({exc})"
                ) from None
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                raise DataError(
                    f"{path}:1: expected a CSV header with columns 'path' and 'label', got {reader.fieldnames}"
                )
            for lineno, row in enumerate(reader, 2):
                rows.append((lineno, row["path"], row["label"]))
    classes = labels or sorted(
        {r[2] for r in rows}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s)
    )
    items = []
    for lineno, rel, label in rows:
        if label in classes:
            idx = classes.index(label)
        elif label.isdigit() and int(label) < len(classes):
            idx = int(label)
        else:
            raise DataError(f"{path}:{lineno}: label {label!r} is not one of {classes}")
        items.append((path.parent / rel, idx))
    if not items:
        raise DataError(f"manifest {path} lists no images")
    return items, classes
