"""Segmentation data: Pascal VOC, Cityscapes, a plain manifest, and the embedded synthetic scenes.

Every source yields (image uint8 HxWx3, mask uint8 HxW) pairs with class ids 0..C-1 and void
255. :class:`SegmentationDataset` turns them into training items with a joint image/mask
augmentation (random scale, pad, random crop, horizontal flip; bilinear for the image,
nearest for the mask) drawn from :func:`kdtool.data.sample_rng`, so a resumed run sees the
same crops. Layouts:

- VOC: ``ROOT/JPEGImages/<id>.jpg``, ``ROOT/SegmentationClass/<id>.png`` (palette PNGs whose
  indices are the class ids), ``ROOT/ImageSets/Segmentation/<split>.txt``.
- Cityscapes: ``ROOT/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and
  ``ROOT/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``; label ids are mapped to the 19
  train ids (everything else is void).
- Manifest: a text file, one ``image_path<TAB>mask_path`` per line (a comma or spaces also
  separate); relative paths are relative to the manifest's folder; ``#`` starts a comment.
  Masks are palette or grey-level PNGs holding class ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from kdtool.data import sample_rng
from kdtool.errors import DataError

from .synth import SHAPE_CLASSES, SYNTH_PALETTE, generate_scene

VOID = 255

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
# Cityscapes labelIds (0..33) -> train ids; all others are void.
CITYSCAPES_LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map (bit-interleaved class ids)."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def _cityscapes_lut() -> np.ndarray:
    lut = np.full(256, VOID, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


# --------------------------------------------------------------------------- file loading


def load_image(path: Path) -> np.ndarray:
    """An RGB image as uint8 (H, W, 3); a missing or unreadable file is a DataError."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def load_index_mask(path: Path, palette: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
    """A class-id mask as uint8 (H, W): palette PNGs give their indices, grey PNGs their
    values; an RGB mask is mapped back through ``palette`` (unknown colours are void)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L"):
                return np.asarray(im, dtype=np.uint8).copy()
            if im.mode in ("I", "I;16"):
                arr = np.asarray(im)
                if arr.max(initial=0) > 255:
                    raise DataError(
                        f"mask {path} has values above 255; expected class ids 0..254 and void 255"
                    )
                return arr.astype(np.uint8)
            if im.mode in ("RGB", "RGBA") and palette is not None:
                rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
                key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
                out = np.full(key.shape, VOID, dtype=np.uint8)
                for idx, (r, g, b) in enumerate(palette):
                    out[key == ((r << 16) | (g << 8) | b)] = idx
                return out
            raise DataError(
                f"mask {path} has image mode {im.mode!r}; expected a palette (P) or grey (L) PNG of class ids"
            )
    except FileNotFoundError:
        raise DataError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from None


@dataclass(frozen=True)
class Pair:
    """One annotated image on disk."""

    image: Path
    mask: Path


def voc_pairs(root: Path, split: str) -> list[Pair]:
    """Image/mask pairs of a VOC split listed in ``ImageSets/Segmentation/<split>.txt``."""
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(
            f"VOC split list not found: {listing}",
            hint="data.root must hold JPEGImages, SegmentationClass and ImageSets",
        )
    pairs = []
    for lineno, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if len(name.split()) != 1:
            raise DataError(f"{listing}:{lineno}: expected one image id per line, got {line!r}")
        pairs.append(Pair(root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png"))
    if not pairs:
        raise DataError(f"VOC split list {listing} is empty")
    return pairs


def cityscapes_pairs(root: Path, split: str) -> list[Pair]:
    """``leftImg8bit/<split>/*/*_leftImg8bit.png`` with their ``gtFine`` labelIds masks."""
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DataError(
            f"Cityscapes image folder not found: {image_dir}",
            hint="data.root must hold leftImg8bit and gtFine",
        )
    pairs = []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        mask = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not mask.is_file():
            raise DataError(f"Cityscapes annotation not found for {image}: expected {mask}")
        pairs.append(Pair(image, mask))
    if not pairs:
        raise DataError(f"no *_leftImg8bit.png images under {image_dir}/<city>/")
    return pairs


def manifest_pairs(path: Path) -> list[Pair]:
    """Pairs listed in a manifest file (see the module docstring for the format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"manifest not found: {path}") from None
    pairs = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        sep = "\t" if "\t" in line else ("," if "," in line else None)
        fields = [f.strip() for f in line.split(sep)] if sep else line.split()
        if len(fields) != 2 or not all(fields):
            raise DataError(f"{path}:{lineno}: expected 'image_path<TAB>mask_path', got {raw!r}")
        image, mask = (Path(f) if Path(f).is_absolute() else path.parent / f for f in fields)
        pairs.append(Pair(image, mask))
    if not pairs:
        raise DataError(f"manifest {path} lists no images")
    return pairs


# --------------------------------------------------------------------------- augmentation


def _resize(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    im = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    mk = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
    return np.array(im), np.array(mk)


def joint_augment(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    pad_value: Sequence[int] = (0, 0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale, pad (image ``pad_value``, mask void), random ``crop_size`` crop and
    horizontal flip, applied identically to both; bilinear for the image, nearest for the
    mask so no new class ids appear. Returns uint8 arrays (crop, crop, 3) and (crop, crop)."""
    lo, hi = scale_range
    scale = float(rng.uniform(lo, hi)) if hi > lo else lo
    h, w = mask.shape
    if scale != 1.0:
        image, mask = _resize(image, mask, max(1, round(h * scale)), max(1, round(w * scale)))
        h, w = mask.shape
    ph, pw = max(crop_size - h, 0), max(crop_size - w, 0)
    if ph or pw:
        padded = np.empty((h + ph, w + pw, 3), dtype=np.uint8)
        padded[:] = np.asarray(pad_value, dtype=np.uint8)
        padded[:h, :w] = image
        padded_mask = np.full((h + ph, w + pw), VOID, dtype=np.uint8)
        padded_mask[:h, :w] = mask
        image, mask = padded, padded_mask
        h, w = mask.shape
    top = int(rng.integers(0, h - crop_size + 1))
    left = int(rng.integers(0, w - crop_size + 1))
    image = image[top : top + crop_size, left : left + crop_size]
    mask = mask[top : top + crop_size, left : left + crop_size]
    if flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


# --------------------------------------------------------------------------- dataset

SampleSource = Callable[[int], tuple[np.ndarray, np.ndarray]]


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W): ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


class SegmentationDataset(Dataset[dict[str, Any]]):
    """Items ``{"index", "image" (3, H, W) float, "mask" (H, W) int64}``.

    ``train=True`` applies :func:`joint_augment` with a generator from
    ``sample_rng(seed, epoch, index)``; otherwise images keep their size, optionally shrunk so
    the longer side is at most ``max_size``.
    """

    def __init__(
        self,
        load: SampleSource,
        length: int,
        *,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        seed: int,
        crop_size: int,
        scale_range: tuple[float, float] = (1.0, 1.0),
        flip: bool = False,
        max_size: int | None = None,
        describe: Callable[[int], str] | None = None,
    ) -> None:
        self._load = load
        self._length = length
        self.num_classes = num_classes
        self.mean = list(mean)
        self.std = list(std)
        self.train = train
        self.seed = seed
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.flip = flip
        self.max_size = max_size
        self._describe = describe or (lambda i: f"sample {i}")
        self.epoch = 0
        self._pad = tuple(int(round(m * 255)) for m in self.mean)  # pads to 0 after normalising

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed (image, mask) of a sample, with class ids checked."""
        image, mask = self._load(index)
        bad = (mask >= self.num_classes) & (mask != VOID)
        if bad.any():
            values = sorted({int(v) for v in np.unique(mask[bad])})[:8]
            raise DataError(
                f"{self._describe(index)}: mask has class ids {values} outside 0..{self.num_classes - 1} (void is {VOID})"
            )
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.raw(index)
        if self.train:
            rng = sample_rng(self.seed, self.epoch, index)
            image, mask = joint_augment(
                image,
                mask,
                rng,
                crop_size=self.crop_size,
                scale_range=self.scale_range,
                flip=self.flip,
                pad_value=self._pad,
            )
        elif self.max_size is not None and max(mask.shape) > self.max_size:
            h, w = mask.shape
            f = self.max_size / max(h, w)
            image, mask = _resize(image, mask, max(1, round(h * f)), max(1, round(w * f)))
        return {
            "index": index,
            "image": normalise(image, self.mean, self.std),
            "mask": torch.from_numpy(mask.astype(np.int64)),
        }


def pair_loader(
    pairs: list[Pair],
    *,
    mask_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    palette: Any = None,
) -> SampleSource:
    """Loads pair ``i`` from disk; a mask whose size differs from its image is a DataError."""

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        pair = pairs[i]
        image = load_image(pair.image)
        mask = load_index_mask(pair.mask, palette)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"mask {pair.mask} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {pair.image} is "
                f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size"
            )
        if mask_transform is not None:
            mask = mask_transform(mask)
        return image, mask

    return load


def cityscapes_mask_transform(mask: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds -> 19 train ids (others void)."""
    return _CITYSCAPES_LUT[mask]


_CITYSCAPES_LUT = _cityscapes_lut()


@dataclass
class SyntheticScenes:
    """The embedded scenes of a split, generated once from the seed and kept in memory."""

    images: np.ndarray
    masks: np.ndarray

    @classmethod
    def generate(cls, seed: int, count: int, size: int, *, offset: int = 0, **kwargs: Any) -> SyntheticScenes:
        scenes = [generate_scene(seed, offset + i, size, **kwargs) for i in range(count)]
        return cls(np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes]))

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], self.masks[i]


__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "SHAPE_CLASSES",
    "SYNTH_PALETTE",
    "VOC_CLASSES",
    "Pair",
    "SegmentationDataset",
    "SyntheticScenes",
    "cityscapes_pairs",
    "joint_augment",
    "load_image",
    "load_index_mask",
    "manifest_pairs",
    "pair_loader",
    "voc_pairs",
    "voc_palette",
]
