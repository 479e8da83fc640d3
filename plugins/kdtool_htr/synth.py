"""Synthetic handwriting lines (part of the HTR-JAND method), all generated locally.

Three generators, each returning ``(image, text)`` with ``image`` a uint8 array, ink high
(255) on a zero background, any width:

- :func:`corpus_lines`: text lines drawn from a corpus (contiguous word windows), the input
  of the renderers below.
- :class:`DigitLineComposer`: real handwriting. scikit-learn ships 1,797 handwritten 8x8
  digits (``load_digits``, installed with the package, nothing downloaded); digit strings are
  composed from them with random size, spacing, baseline jitter and word gaps.
- :class:`FontLineRenderer`: text rendered with handwriting-style fonts (Dancing Script,
  Kristi, Breip; SIL Open Font License, committed under ``fonts/`` with their licenses)
  and distorted (shear, rotation, elastic warp, stroke width), so no two lines look alike.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

FONT_DIR = Path(__file__).parent / "fonts"
CORPUS_PATH = Path(__file__).parent / "corpus.txt"
# Fonts shipped with the plugin (OFL). Missing files are skipped; if none is left, PIL's
# built-in font is used with strong distortion.
DEFAULT_FONTS = ("DancingScript-Regular.otf", "Kristi.ttf", "Breip.ttf")
# Relative point size per font so that the x-height is about the same.
_FONT_SCALE = {"DancingScript-Regular.otf": 1.0, "Kristi.ttf": 1.35, "Breip.ttf": 1.0}


def load_corpus(path: Path | None = None) -> list[str]:
    """Words of the corpus (the bundled English text unless ``path`` is given)."""
    text = (path or CORPUS_PATH).read_text(encoding="utf-8")
    return text.split()


def corpus_lines(
    words: list[str], rng: np.random.Generator, *, min_chars: int, max_chars: int
) -> Iterator[str]:
    """Endless contiguous word windows of the corpus, ``min_chars``..``max_chars`` long.

    A window starts at a random word and grows while the line stays under a length drawn
    uniformly from the range, so short and long lines are equally common (the curriculum
    needs both)."""
    if not words:
        raise ValueError("the corpus has no words")
    while True:
        target = int(rng.integers(min_chars, max_chars + 1))
        start = int(rng.integers(0, len(words)))
        line = words[start][:max_chars]
        pos = start + 1
        while pos < len(words) and len(line) + 1 + len(words[pos]) <= target:
            line = f"{line} {words[pos]}"
            pos += 1
        yield line


# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


class DigitLineComposer:
    """Compose lines of real handwritten digits (scikit-learn's ``load_digits``).

    ``split`` picks a disjoint pool of digit images (every fifth image is held out for
    ``"val"``), so validation lines are written with digit samples never seen in training.
    """

    def __init__(self, split: str, *, height: int = 32) -> None:
        images, labels = _digits()
        held_out = np.arange(len(images)) % 5 == 0
        keep = held_out if split == "val" else ~held_out
        self.images = images[keep]
        self.labels = labels[keep]
        self.by_digit = {d: np.flatnonzero(self.labels == d) for d in range(10)}
        self.height = height

    def text(self, rng: np.random.Generator, *, min_chars: int, max_chars: int) -> str:
        """A digit string with occasional single spaces (never leading, trailing or doubled)."""
        n = int(rng.integers(min_chars, max_chars + 1))
        chars: list[str] = []
        for i in range(n):
            if 0 < i < n - 1 and chars[-1] != " " and rng.random() < 0.15:
                chars.append(" ")
            else:
                chars.append(str(int(rng.integers(0, 10))))
        return "".join(chars).strip()

    def render(self, text: str, rng: np.random.Generator) -> np.ndarray:
        """The line image of ``text`` (digits and spaces), ``height`` pixels high."""
        h = self.height
        glyph_h = int(rng.integers(int(h * 0.6), int(h * 0.85) + 1))
        pieces: list[tuple[int, int, np.ndarray]] = []  # (x, y, glyph)
        x = int(rng.integers(1, 5))
        for ch in text:
            if ch == " ":
                x += int(rng.integers(glyph_h // 3, glyph_h // 2 + 2))
                continue
            pool = self.by_digit[int(ch)]
            src = self.images[pool[int(rng.integers(0, len(pool)))]]
            gh = max(6, int(glyph_h * rng.uniform(0.9, 1.1)))
            gw = max(4, int(gh * rng.uniform(0.55, 0.85)))
            glyph = np.asarray(Image.fromarray(src).resize((gw, gh), Image.Resampling.BILINEAR))
            y = int(np.clip((h - gh) // 2 + rng.integers(-2, 3), 0, h - gh))
            pieces.append((x, y, glyph))
            x += gw + int(rng.integers(-2, 3))
        width = x + int(rng.integers(1, 5))
        canvas = np.zeros((h, max(width, 8)), dtype=np.uint8)
        for gx, gy, glyph in pieces:
            gx = max(0, gx)
            region = canvas[gy : gy + glyph.shape[0], gx : gx + glyph.shape[1]]
            np.maximum(region, glyph[: region.shape[0], : region.shape[1]], out=region)
        return canvas


# --------------------------------------------------------------------------- fonts


class FontLineRenderer:
    """Render text with handwriting-style fonts, then distort it.

    Distortions (all drawn from ``rng``): point size, stroke width, horizontal shear (slant),
    small rotation, an elastic warp and a random ink intensity. The result is cropped to the
    ink with a small margin; height normalisation happens in the dataset.
    """

    def __init__(self, fonts: list[str] | None = None, *, size: int = 40) -> None:
        names = list(fonts) if fonts else list(DEFAULT_FONTS)
        self.paths = [
            p for p in (Path(n) if Path(n).is_absolute() else FONT_DIR / n for n in names) if p.exists()
        ]
        self.size = size
        self.fallback = not self.paths

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a handful of (font, size) pairs per renderer
    def _font(self, index: int, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        if self.fallback:
            return ImageFont.load_default(size=size)
        path = self.paths[index]
        return ImageFont.truetype(str(path), int(size * _FONT_SCALE.get(path.name, 1.0)))

    def render(self, text: str, rng: np.random.Generator) -> np.ndarray:
        index = int(rng.integers(0, max(1, len(self.paths))))
        size = int(self.size * rng.uniform(0.85, 1.15))
        font = self._font(index, size)
        stroke = int(rng.random() < 0.3)
        left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
        pad = size // 2
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        img = Image.new("L", (max(w, 8), max(h, 8)), 0)
        ink = int(rng.integers(170, 256))
        ImageDraw.Draw(img).text(
            (pad - left, pad - top), text, fill=ink, font=font, stroke_width=stroke, stroke_fill=ink
        )
        shear = rng.uniform(-0.35, 0.35) if not self.fallback else rng.uniform(-0.5, 0.5)
        img = img.transform(
            img.size,
            Image.Transform.AFFINE,
            (1.0, shear, -shear * img.size[1] / 2, 0.0, 1.0, 0.0),
            resample=Image.Resampling.BILINEAR,
        )
        img = img.rotate(float(rng.uniform(-2.0, 2.0)), resample=Image.Resampling.BILINEAR, expand=False)
        arr = np.asarray(img, dtype=np.float32)
        arr = elastic_warp(
            arr, rng, alpha=float(rng.uniform(1.0, 3.0 if not self.fallback else 5.0)), sigma=size / 6
        )
        return crop_to_ink(arr.clip(0, 255).astype(np.uint8), margin=3)


def elastic_warp(image: np.ndarray, rng: np.random.Generator, *, alpha: float, sigma: float) -> np.ndarray:
    """Smooth random displacement (Simard et al. 2003): ``alpha`` pixels at scale ``sigma``."""
    h, w = image.shape
    dx = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma, mode="constant")
    dy = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma, mode="constant")
    norm = max(float(np.abs(dx).max()), float(np.abs(dy).max()), 1e-6)
    dx *= alpha / norm
    dy *= alpha / norm
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return ndimage.map_coordinates(image.astype(np.float32), [yy + dy, xx + dx], order=1, mode="constant")


def crop_to_ink(image: np.ndarray, *, margin: int = 2, threshold: int = 20) -> np.ndarray:
    """Crop to the bounding box of pixels above ``threshold``, keeping ``margin`` pixels."""
    rows = np.flatnonzero((image > threshold).any(axis=1))
    cols = np.flatnonzero((image > threshold).any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return image
    y0, y1 = max(0, rows[0] - margin), min(image.shape[0], rows[-1] + margin + 1)
    x0, x1 = max(0, cols[0] - margin), min(image.shape[1], cols[-1] + margin + 1)
    return image[y0:y1, x0:x1]
