"""Line datasets: IAM, RIMES-style folders, a plain manifest, and the embedded synthetic mix.

Every source yields :class:`LineRecord` (an image, or a path to one, plus its transcription
and where it came from). :class:`LineDataset` turns records into training items:

- height normalisation keeping the aspect ratio (``height`` pixels; lines wider than
  ``max_width`` are squeezed to it), ink high on a zero background so zero padding is blank
  paper;
- augmentation for the training split (affine, elastic, blur, noise, erosion/dilation), each
  drawn from :func:`kdtool.data.sample_rng` so resumed runs see the same images;
- text encoded over the character set; characters outside it raise a ``DataError`` naming
  the file and line, or map to an unknown symbol, as ``data.unknown`` says;
- width padding to a multiple of the model's frame stride in :func:`collate_lines`, which
  also sorts a batch by width (the task then splits it into width buckets).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from torch.utils.data import Dataset

from kdtool.data import sample_rng
from kdtool.errors import DataError

from .synth import DigitLineComposer, FontLineRenderer, corpus_lines, load_corpus

FRAME_STRIDE = 4  # the encoder pools the width by 4: one output frame per 4 input columns
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# The character set of the embedded default: digits, letters and common punctuation.
DEFAULT_CHARSET = " !\"'(),-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AugmentOptions(_Strict):
    """Training-time augmentation; each ``*_p`` is the probability to apply that step."""

    enabled: bool = True
    affine_p: float = Field(default=0.5, ge=0, le=1)
    shear: float = Field(default=0.25, ge=0, description="max horizontal shear (slant)")
    scale_x: float = Field(default=0.15, ge=0, lt=1, description="max relative width change")
    elastic_p: float = Field(default=0.3, ge=0, le=1)
    elastic_alpha: float = Field(default=1.5, ge=0, description="displacement in pixels")
    blur_p: float = Field(default=0.2, ge=0, le=1)
    noise_p: float = Field(default=0.2, ge=0, le=1)
    noise_std: float = Field(default=0.06, ge=0, description="fraction of full ink")
    morph_p: float = Field(default=0.2, ge=0, le=1, description="erosion or dilation")


class EmbeddedOptions(_Strict):
    """The embedded default: real handwritten digits composed into lines, plus font lines."""

    digit_lines: int = Field(default=1500, ge=0)
    font_lines: int = Field(default=1500, ge=0)
    val_digit_lines: int = Field(default=150, ge=0)
    val_font_lines: int = Field(default=150, ge=0)
    digit_chars: tuple[int, int] = (3, 12)
    font_chars: tuple[int, int] = (3, 20)
    fonts: list[str] | None = None  # file names under plugins/kdtool_htr/fonts or absolute paths
    corpus: str | None = None  # a UTF-8 text file; None = the bundled English text


class HTRDataOptions(_Strict):
    """The recipe's ``data`` section for the ``htr`` task."""

    source: Literal["embedded", "iam", "rimes", "manifest"] = "embedded"
    root: str | None = None
    height: int = Field(default=32, ge=16, description="line height after normalisation")
    max_width: int = Field(default=256, ge=32, description="wider lines are squeezed to this width")
    charset: str | None = None  # None: embedded default, or every character of the training text
    unknown: Literal["error", "map"] = "error"
    unknown_token: str = Field(default="¤", min_length=1, max_length=1)
    invert: Literal["auto", "always", "never"] = "auto"  # files: dark ink on light paper -> invert
    # IAM: keep only lines whose segmentation flag is "ok" (the flag is "err" otherwise).
    skip_err: bool = False
    # IAM: split lists (one form or line id per line, e.g. the Aachen split); else by form hash.
    train_list: str | None = None
    val_list: str | None = None
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    # RIMES-style folders (``<root>/<dir>/*.png`` with ``.gt.txt`` or ``.txt`` sidecars).
    train_dir: str = "train"
    val_dir: str = "val"
    # Plain manifests (``<root>/<file>``: ``image path<TAB>transcription`` per line).
    train_manifest: str = "train.tsv"
    val_manifest: str = "val.tsv"
    limit_train: int | None = Field(default=None, ge=1)
    limit_val: int | None = Field(default=None, ge=1)
    embedded: EmbeddedOptions = Field(default_factory=EmbeddedOptions)
    augment: AugmentOptions = Field(default_factory=AugmentOptions)


@dataclass
class LineRecord:
    """One text line: an in-memory image (uint8, ink high) or a file, and its text."""

    text: str
    where: str  # "file:line" of the transcription, for error messages
    source: str  # "digits", "font", "iam", "rimes", "manifest"
    image: np.ndarray | None = None
    path: Path | None = None


# --------------------------------------------------------------------------- character set


class Charset:
    """Characters <-> label ids; id 0 is the CTC blank, characters start at 1."""

    def __init__(
        self, chars: str, *, unknown: Literal["error", "map"] = "error", unknown_token: str = "¤"
    ) -> None:
        if unknown == "map" and unknown_token not in chars:
            chars = chars + unknown_token
        if len(set(chars)) != len(chars):
            raise DataError(f"the character set has duplicate characters: {chars!r}")
        self.chars = chars
        self.unknown = unknown
        self.unknown_token = unknown_token
        self.index = {c: i + 1 for i, c in enumerate(chars)}

    @property
    def num_classes(self) -> int:
        return len(self.chars) + 1

    @property
    def labels(self) -> list[str]:
        return ["<blank>", *self.chars]

    def normalise(self, text: str, where: str) -> str:
        """The text with out-of-set characters mapped (or a ``DataError``)."""
        missing = sorted({c for c in text if c not in self.index})
        if not missing:
            return text
        if self.unknown == "map":
            return "".join(c if c in self.index else self.unknown_token for c in text)
        raise DataError(
            f"{where}: transcription {text!r} has characters outside the character set: {''.join(missing)!r}",
            hint=f"add them to data.charset, or set data.unknown: map to map them to {self.unknown_token!r}",
        )

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if 0 < i <= len(self.chars))


# --------------------------------------------------------------------------- image helpers


def to_ink(gray: np.ndarray, invert: Literal["auto", "always", "never"] = "auto") -> np.ndarray:
    """A scanned line (uint8, any polarity) as ink-high float in [0, 1] on a zero background.

    Inverts dark-on-light images (``auto``: when the median is bright), subtracts the median
    (the paper level) and stretches the darkest ink to 1."""
    x = gray.astype(np.float32) / 255.0
    if invert == "always" or (invert == "auto" and float(np.median(x)) > 0.5):
        x = 1.0 - x
    x = x - float(np.median(x))
    top = float(x.max())
    return (x / top).clip(0.0, 1.0) if top > 1e-6 else np.zeros_like(x)


def normalise_height(ink: np.ndarray, height: int, max_width: int) -> np.ndarray:
    """Resize to ``height`` keeping the aspect ratio (squeezed to ``max_width`` if wider)."""
    h, w = ink.shape
    new_w = int(min(max_width, max(FRAME_STRIDE, round(w * height / max(h, 1)))))
    img = Image.fromarray((ink.clip(0, 1) * 255).astype(np.uint8))
    return np.asarray(img.resize((new_w, height), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def preprocess_file(
    path: Path, *, height: int, max_width: int, invert: Literal["auto", "always", "never"]
) -> np.ndarray:
    """Load an image file exactly as training and deployment do (see the export metadata)."""
    try:
        with Image.open(path) as im:
            gray = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from None
    if gray.size == 0:
        raise DataError(f"{path}: the image is empty")
    return normalise_height(to_ink(gray, invert), height, max_width)


def augment_line(
    image: np.ndarray, rng: np.random.Generator, opts: AugmentOptions, max_width: int
) -> np.ndarray:
    """Random affine (slant, width), elastic warp, blur, noise and erosion/dilation."""
    out = image
    h = out.shape[0]
    if rng.random() < opts.affine_p:
        shear = rng.uniform(-opts.shear, opts.shear)
        sx = 1.0 + rng.uniform(-opts.scale_x, opts.scale_x)
        new_w = int(min(max_width, max(FRAME_STRIDE, round(out.shape[1] * sx))))
        img = Image.fromarray((out * 255).astype(np.uint8))
        # Output pixel (x, y) samples input (x * w / new_w + shear * (y - h / 2), y).
        coeffs = (out.shape[1] / new_w, shear, -shear * h / 2, 0.0, 1.0, 0.0)
        out = np.asarray(img.transform((new_w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR))
        out = out.astype(np.float32) / 255.0
    if rng.random() < opts.elastic_p:
        from .synth import elastic_warp

        out = elastic_warp(out, rng, alpha=opts.elastic_alpha, sigma=h / 8)
    if rng.random() < opts.morph_p:
        size = (2, 2) if rng.random() < 0.5 else (1, 2)
        out = (
            ndimage.grey_dilation(out, size=size)
            if rng.random() < 0.5
            else ndimage.grey_erosion(out, size=size)
        )
    if rng.random() < opts.blur_p:
        out = ndimage.gaussian_filter(out, float(rng.uniform(0.3, 1.0)))
    if rng.random() < opts.noise_p:
        out = out + rng.normal(0.0, opts.noise_std, out.shape).astype(np.float32)
    return np.asarray(out, dtype=np.float32).clip(0.0, 1.0)


# --------------------------------------------------------------------------- sources


def _read_text(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None


def _split_of(form: str, val_fraction: float) -> str:
    return "val" if (zlib.crc32(form.encode()) % 10_000) / 10_000 < val_fraction else "train"


def read_iam(root: Path, split: str, opts: HTRDataOptions) -> list[LineRecord]:
    """IAM lines: ``lines.txt`` (or ``ascii/lines.txt``) and ``lines/a01/a01-000u/*.png``.

    ``lines.txt`` rows: ``id status graylevel components x y w h text`` where status is ``ok``
    or ``err`` and the text separates words with ``|``."""
    lines_txt = next((p for p in (root / "lines.txt", root / "ascii" / "lines.txt") if p.exists()), None)
    if lines_txt is None:
        raise DataError(f"{root}: no lines.txt (nor ascii/lines.txt); is data.root an IAM directory?")
    wanted: set[str] | None = None
    listing = opts.train_list if split == "train" else opts.val_list
    if listing is not None:
        list_path = Path(listing) if Path(listing).is_absolute() else root / listing
        wanted = {ln.strip() for ln in _read_text(list_path) if ln.strip() and not ln.startswith("#")}
    records: list[LineRecord] = []
    for lineno, raw in enumerate(_read_text(lines_txt), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        parts = raw.split(" ")
        where = f"{lines_txt}:{lineno}"
        if len(parts) < 9:
            raise DataError(f"{where}: expected 'id status graylevel components x y w h text', got {raw!r}")
        line_id, status = parts[0], parts[1]
        if status not in ("ok", "err", "er"):
            raise DataError(f"{where}: segmentation flag must be 'ok' or 'err', got {status!r}")
        pieces = line_id.split("-")
        if len(pieces) < 3:
            raise DataError(f"{where}: line id {line_id!r} is not like a01-000u-00")
        form = f"{pieces[0]}-{pieces[1]}"
        if opts.skip_err and status != "ok":
            continue
        if wanted is not None:
            if line_id not in wanted and form not in wanted:
                continue
        elif _split_of(form, opts.val_fraction) != split:
            continue
        text = " ".join(parts[8:]).replace("|", " ").replace("&quot;", '"')
        path = root / "lines" / pieces[0] / form / f"{line_id}.png"
        records.append(LineRecord(text=text, where=where, source="iam", path=path))
    return records


def read_rimes(root: Path, split: str, opts: HTRDataOptions) -> list[LineRecord]:
    """RIMES-style folders: ``<root>/<train_dir|val_dir>/*.png`` (or jpg/tif), each with a
    ``<stem>.gt.txt`` (or ``<stem>.txt``) UTF-8 transcription beside it."""
    folder = root / (opts.train_dir if split == "train" else opts.val_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (data.{split}_dir of a RIMES-style dataset)")
    records = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        sidecar = next(
            (p for p in (image.with_suffix(".gt.txt"), image.with_suffix(".txt")) if p.exists()), None
        )
        if sidecar is None:
            raise DataError(f"{image}: no transcription beside it ({image.stem}.gt.txt or {image.stem}.txt)")
        lines = [ln for ln in _read_text(sidecar) if ln.strip()]
        if len(lines) != 1:
            raise DataError(f"{sidecar}:1: expected one line of text, found {len(lines)}")
        records.append(LineRecord(text=lines[0].strip(), where=f"{sidecar}:1", source="rimes", path=image))
    if not records:
        raise DataError(f"{folder}: no line images ({', '.join(IMAGE_SUFFIXES)})")
    return records


def read_manifest(root: Path, split: str, opts: HTRDataOptions) -> list[LineRecord]:
    """A plain manifest: ``image path<TAB>transcription`` per line, paths relative to it."""
    manifest = root / (opts.train_manifest if split == "train" else opts.val_manifest)
    records = []
    for lineno, raw in enumerate(_read_text(manifest), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        where = f"{manifest}:{lineno}"
        if "\t" not in raw:
            raise DataError(f"{where}: expected 'image path<TAB>transcription', got {raw!r}")
        rel, text = raw.split("\t", 1)
        path = Path(rel) if Path(rel).is_absolute() else manifest.parent / rel
        records.append(LineRecord(text=text.strip(), where=where, source="manifest", path=path))
    return records


def interleave(first: list[LineRecord], second: list[LineRecord]) -> list[LineRecord]:
    """Merge two lists evenly: item i of a list of n sits at (i + 0.5) / n; order kept within each."""
    keyed = [((i + 0.5) / len(first), 0, r) for i, r in enumerate(first)]
    keyed += [((i + 0.5) / len(second), 1, r) for i, r in enumerate(second)]
    return [r for _, _, r in sorted(keyed, key=lambda t: (t[0], t[1]))]


def embedded_records(split: str, opts: HTRDataOptions, seed: int, cache_dir: Path | None) -> list[LineRecord]:
    """The embedded default: digit lines (real handwriting) and distorted font lines.

    Generation is deterministic in (seed, split, options) and cached under ``cache_dir``. The
    two sources are interleaved evenly (not digits first), so any prefix of the split (the tune
    split is the first ``tune_fraction`` of train) holds both in proportion."""
    e = opts.embedded
    n_digits = e.digit_lines if split == "train" else e.val_digit_lines
    n_font = e.font_lines if split == "train" else e.val_font_lines
    key = hashlib.sha256(
        json.dumps([split, seed, opts.height, e.model_dump(mode="json"), 3], sort_keys=True).encode()
    ).hexdigest()[:16]
    cache = cache_dir / f"htr_embedded_{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            texts, sources = list(z["texts"]), list(z["sources"])
            images = [z[f"i{k}"] for k in range(len(texts))]
        return [
            LineRecord(text=str(t), where=f"embedded {split} line {k}", source=str(s), image=im)
            for k, (t, s, im) in enumerate(zip(texts, sources, images, strict=True))
        ]
    rng = np.random.default_rng(
        np.random.SeedSequence([seed & 0xFFFFFFFF, 0 if split == "train" else 1, 4711])
    )
    digits = DigitLineComposer(split, height=opts.height)
    renderer = FontLineRenderer(e.fonts)
    words = load_corpus(Path(e.corpus) if e.corpus else None)
    lines = corpus_lines(words, rng, min_chars=e.font_chars[0], max_chars=e.font_chars[1])
    records: list[LineRecord] = []
    for k in range(n_digits + n_font):
        if k < n_digits:
            text = digits.text(rng, min_chars=e.digit_chars[0], max_chars=e.digit_chars[1])
            image, source = digits.render(text, rng), "digits"
        else:
            text = next(lines)
            image, source = renderer.render(text, rng), "font"
        ink = normalise_height(image.astype(np.float32) / 255.0, opts.height, opts.max_width)
        records.append(
            LineRecord(
                text=text,
                where=f"embedded {split} line {k}",
                source=source,
                image=(ink * 255).astype(np.uint8),
            )
        )
    records = interleave(records[:n_digits], records[n_digits:])
    for k, record in enumerate(records):
        record.where = f"embedded {split} line {k}"
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        arrays = {f"i{k}": r.image for k, r in enumerate(records) if r.image is not None}
        np.savez(
            tmp,
            texts=np.array([r.text for r in records]),
            sources=np.array([r.source for r in records]),
            **arrays,
        )
        tmp.replace(cache)
    return records


def load_records(split: str, opts: HTRDataOptions, *, seed: int, cache_dir: Path | None) -> list[LineRecord]:
    """The records of a split for the configured source."""
    if opts.source == "embedded":
        records = embedded_records(split, opts, seed, cache_dir)
    else:
        if opts.root is None:
            raise DataError(f"data.source is {opts.source!r} but data.root is not set")
        root = Path(opts.root).expanduser()
        if not root.is_dir():
            raise DataError(f"data.root {root} is not a directory")
        reader = {"iam": read_iam, "rimes": read_rimes, "manifest": read_manifest}[opts.source]
        records = reader(root, split, opts)
        if not records:
            raise DataError(
                f"{root}: the {split} split has no lines (check data.val_fraction or the split lists)"
            )
    limit = opts.limit_train if split == "train" else opts.limit_val
    return records[:limit] if limit else records


def charset_for(opts: HTRDataOptions, train_records: list[LineRecord]) -> Charset:
    """The recipe's charset, the embedded default, or every character of the training text."""
    if opts.charset is not None:
        chars = opts.charset
    elif opts.source == "embedded":
        chars = DEFAULT_CHARSET
    else:
        chars = "".join(sorted({c for r in train_records for c in r.text}))
    return Charset(chars, unknown=opts.unknown, unknown_token=opts.unknown_token)


# --------------------------------------------------------------------------- dataset


class LineDataset(Dataset[dict[str, Any]]):
    """Items: ``index``, ``image`` (1, H, W) float in [0, 1], ``width``, ``label`` (ids),
    ``text``, ``source`` and ``difficulty`` (the line's length percentile in its split, which
    the student's curriculum uses)."""

    def __init__(
        self,
        records: list[LineRecord],
        charset: Charset,
        opts: HTRDataOptions,
        *,
        train: bool,
        seed: int,
    ) -> None:
        self.records = records
        self.charset = charset
        self.opts = opts
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.texts = [charset.normalise(r.text, r.where) for r in records]
        lengths = np.array([len(t) for t in self.texts], dtype=np.float64)
        ranks = lengths.argsort(kind="stable").argsort(kind="stable")
        self.difficulty = ((ranks + 1) / max(1, len(records))).astype(np.float32)
        # Validation images are reused every epoch: keep them normalised in memory.
        self._cache: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def line_image(self, index: int) -> np.ndarray:
        """The normalised (not augmented) line image as float32 (H, W) in [0, 1]."""
        record = self.records[index]
        if record.image is not None:
            return record.image.astype(np.float32) / 255.0
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        assert record.path is not None
        if not record.path.exists():
            raise DataError(f"{record.path}: image not found (listed at {record.where})")
        try:
            image = preprocess_file(
                record.path, height=self.opts.height, max_width=self.opts.max_width, invert=self.opts.invert
            )
        except DataError as exc:
            raise DataError(f"{exc.message} (listed at {record.where})") from None
        if not self.train:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.line_image(index)
        if self.train and self.opts.augment.enabled:
            rng = sample_rng(self.seed, self.epoch, index)
            image = augment_line(image, rng, self.opts.augment, self.opts.max_width)
        text = self.texts[index]
        return {
            "index": index,
            "image": torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0),
            "width": image.shape[1],
            "label": torch.tensor(self.charset.encode(text), dtype=torch.long),
            "text": text,
            "source": self.records[index].source,
            "difficulty": float(self.difficulty[index]),
        }


def collate_lines(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Sort by width (widest first), pad images to a multiple of the frame stride, pad labels.

    Returns ``image`` (N, 1, H, Wmax), ``width`` (N,), ``frames`` (N,) valid output frames,
    ``label`` (N, Lmax) padded with 0, ``label_length`` (N,), ``difficulty`` (N,), ``index``
    (N,), ``text`` and ``source`` (lists)."""
    items = sorted(items, key=lambda it: -int(it["width"]))
    height = items[0]["image"].shape[1]
    max_w = max(int(it["width"]) for it in items)
    max_w = -(-max_w // FRAME_STRIDE) * FRAME_STRIDE
    images = torch.zeros(len(items), 1, height, max_w)
    max_len = max(1, max(len(it["label"]) for it in items))
    labels = torch.zeros(len(items), max_len, dtype=torch.long)
    for k, it in enumerate(items):
        images[k, :, :, : it["width"]] = it["image"]
        labels[k, : len(it["label"])] = it["label"]
    widths = torch.tensor([int(it["width"]) for it in items], dtype=torch.long)
    return {
        "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
        "image": images,
        "width": widths,
        "frames": (widths + FRAME_STRIDE - 1) // FRAME_STRIDE,
        "label": labels,
        "label_length": torch.tensor([len(it["label"]) for it in items], dtype=torch.long),
        "difficulty": torch.tensor([float(it["difficulty"]) for it in items], dtype=torch.float32),
        "text": [it["text"] for it in items],
        "source": [it["source"] for it in items],
    }
