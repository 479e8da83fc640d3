"""Tiny HTR datasets written in the real layouts (IAM, RIMES-style, manifest) for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IAM_LINES = [
    ("a01-000u-00", "ok", "A|MOVE|to|stop"),
    ("a01-000u-01", "err", "Mr.|Gaitskell|from"),
    ("a01-000u-02", "ok", "nominating|any|more"),
    ("a01-000x-00", "ok", "Labour|life|Peers"),
    ("b02-011-00", "ok", "is|to|be|made"),
    ("b02-011-01", "ok", "at|a|meeting"),
]


def line_png(path: Path, text: str, *, width: int | None = None) -> None:
    """A dark-on-light scan of ``text`` (as IAM ships them)."""
    font = ImageFont.load_default(size=22)
    left, top, right, bottom = font.getbbox(text)
    w = width or right - left + 16
    img = Image.new("L", (w, bottom - top + 16), 235)
    ImageDraw.Draw(img).text((8 - left, 8 - top), text, fill=20, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_iam(root: Path, lines: list[tuple[str, str, str]] | None = None) -> Path:
    """``root/lines.txt`` and ``root/lines/a01/a01-000u/a01-000u-00.png`` ..."""
    lines = lines or IAM_LINES
    rows = ["#--- lines.txt ---", "# format: a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop", ""]
    for line_id, status, text in lines:
        rows.append(f"{line_id} {status} 154 3 408 746 1661 89 {text}")
        writer, form_no = line_id.split("-")[:2]
        line_png(root / "lines" / writer / f"{writer}-{form_no}" / f"{line_id}.png", text.replace("|", " "))
    (root / "lines.txt").write_text("\n".join(rows) + "\n")
    return root


def write_rimes(root: Path) -> Path:
    """``root/train/*.png`` and ``root/val/*.png`` with ``.gt.txt`` / ``.txt`` sidecars."""
    samples = {"train": ["Bonjour Madame", "je vous prie", "de bien vouloir"], "val": ["mon contrat"]}
    for split, texts in samples.items():
        for k, text in enumerate(texts):
            line_png(root / split / f"line{k}.png", text)
            sidecar = ".gt.txt" if k % 2 == 0 else ".txt"
            (root / split / f"line{k}{sidecar}").write_text(text + "\n")
    return root


def write_manifest(root: Path) -> Path:
    """``root/train.tsv`` and ``root/val.tsv``: ``image path<TAB>text``."""
    for split, texts in {"train": ["hello world", "kd tool", "lines of text"], "val": ["hello kd"]}.items():
        rows = []
        for k, text in enumerate(texts):
            rel = f"img/{split}_{k}.png"
            line_png(root / rel, text)
            rows.append(f"{rel}\t{text}")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


def ink_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((height, width)) > 0.7).astype(np.float32)
