"""Loaders on tiny fixtures in the real layouts, height normalisation, charset errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from kdtool_htr.datasets import (
    FRAME_STRIDE,
    AugmentOptions,
    Charset,
    HTRDataOptions,
    LineDataset,
    augment_line,
    charset_for,
    collate_lines,
    load_records,
    normalise_height,
    to_ink,
)

from kdtool.data import sample_rng
from kdtool.errors import DataError
from tests.htr.fixtures import line_png, write_iam, write_manifest, write_rimes


def _dataset(opts: HTRDataOptions, split: str = "train") -> LineDataset:
    train = load_records("train", opts, seed=0, cache_dir=None)
    records = train if split == "train" else load_records(split, opts, seed=0, cache_dir=None)
    return LineDataset(records, charset_for(opts, train), opts, train=split == "train", seed=0)


def test_iam_lines_layout_split_lists_and_err_flag(tmp_path: Path) -> None:
    root = write_iam(tmp_path / "iam")
    (root / "train.lst").write_text("a01-000u\nb02-011\n")
    (root / "val.lst").write_text("a01-000x\n")
    opts = HTRDataOptions(source="iam", root=str(root), train_list="train.lst", val_list="val.lst", height=32)
    train = load_records("train", opts, seed=0, cache_dir=None)
    val = load_records("val", opts, seed=0, cache_dir=None)
    assert [r.text for r in train] == [
        "A MOVE to stop",
        "Mr. Gaitskell from",
        "nominating any more",
        "is to be made",
        "at a meeting",
    ]
    assert [r.text for r in val] == ["Labour life Peers"]
    assert train[0].path == root / "lines" / "a01" / "a01-000u" / "a01-000u-00.png"
    assert train[0].where.endswith("lines.txt:4")
    skipped = load_records("train", opts.model_copy(update={"skip_err": True}), seed=0, cache_dir=None)
    assert "Mr. Gaitskell from" not in [r.text for r in skipped] and len(skipped) == 4
    ds = _dataset(opts)
    item = ds[0]
    assert item["image"].shape[:2] == (1, 32) and item["image"].max() <= 1.0
    assert ds.charset.decode(item["label"].tolist()) == "A MOVE to stop"
    # Scans are dark on light: after inversion the paper is ~0 and the ink reaches 1.
    img = ds.line_image(0)
    assert np.median(img) < 0.05 and img.max() > 0.9


def test_iam_hash_split_is_by_form(tmp_path: Path) -> None:
    root = write_iam(tmp_path / "iam")
    opts = HTRDataOptions(source="iam", root=str(root), val_fraction=0.5)
    train = load_records("train", opts, seed=0, cache_dir=None)
    val = load_records("val", opts, seed=0, cache_dir=None)
    assert len(train) + len(val) == 6
    forms = lambda rs: {r.path.parent.name for r in rs}  # noqa: E731
    assert not forms(train) & forms(val)


def test_iam_malformed_row_names_file_and_line(tmp_path: Path) -> None:
    root = write_iam(tmp_path / "iam")
    with (root / "lines.txt").open("a") as fh:
        fh.write("a01-000u-09 ok 154\n")
    with pytest.raises(DataError, match=r"lines\.txt:10: expected"):
        load_records("train", HTRDataOptions(source="iam", root=str(root)), seed=0, cache_dir=None)
    (root / "lines.txt").write_text("a01-000u-00 maybe 154 3 408 746 1661 89 A|MOVE\n")
    with pytest.raises(DataError, match=r"lines\.txt:1: segmentation flag"):
        load_records("train", HTRDataOptions(source="iam", root=str(root)), seed=0, cache_dir=None)


def test_rimes_style_folders(tmp_path: Path) -> None:
    root = write_rimes(tmp_path / "rimes")
    opts = HTRDataOptions(source="rimes", root=str(root))
    ds = _dataset(opts)
    assert ds.texts == ["Bonjour Madame", "je vous prie", "de bien vouloir"]
    assert [r.text for r in load_records("val", opts, seed=0, cache_dir=None)] == ["mon contrat"]
    (root / "train" / "line1.txt").unlink()
    with pytest.raises(DataError, match=r"line1\.png: no transcription"):
        load_records("train", opts, seed=0, cache_dir=None)


def test_manifest_and_bad_row(tmp_path: Path) -> None:
    root = write_manifest(tmp_path / "m")
    opts = HTRDataOptions(source="manifest", root=str(root))
    ds = _dataset(opts)
    assert ds.texts == ["hello world", "kd tool", "lines of text"]
    # The charset is every character of the training text (val must fit in it).
    assert set(ds.charset.chars) == set("hello worldkdtoolinesftx")
    with (root / "train.tsv").open("a") as fh:
        fh.write("no tab on this row\n")
    with pytest.raises(DataError, match=r"train\.tsv:4: expected 'image path<TAB>transcription'"):
        load_records("train", opts, seed=0, cache_dir=None)


def test_corrupt_image_is_a_data_error_naming_file_and_listing(tmp_path: Path) -> None:
    root = write_manifest(tmp_path / "m")
    (root / "img" / "train_1.png").write_bytes(b"not a png at all")
    ds = _dataset(HTRDataOptions(source="manifest", root=str(root)))
    with pytest.raises(DataError, match=r"train_1\.png: cannot read the image.*listed at .*train\.tsv:2"):
        ds[1]
    (root / "img" / "train_2.png").unlink()
    with pytest.raises(DataError, match=r"train_2\.png: image not found"):
        ds[2]


def test_characters_outside_the_set_error_or_map(tmp_path: Path) -> None:
    root = write_manifest(tmp_path / "m")
    line_png(root / "img" / "val_0.png", "hëllo")
    (root / "val.tsv").write_text("img/val_0.png\thëllo\n")
    opts = HTRDataOptions(source="manifest", root=str(root))
    with pytest.raises(
        DataError, match=r"val\.tsv:1: transcription 'hëllo' has characters outside the character set: 'ë'"
    ):
        _dataset(opts, "val")
    mapped = _dataset(opts.model_copy(update={"unknown": "map"}), "val")
    assert mapped.texts == ["h¤llo"]
    assert mapped.charset.decode(mapped[0]["label"].tolist()) == "h¤llo"


def test_charset_roundtrip_and_blank() -> None:
    cs = Charset("ab ")
    assert cs.num_classes == 4 and cs.labels[0] == "<blank>"
    assert cs.encode("ba a") == [2, 1, 3, 1]
    assert cs.decode([0, 2, 1, 0, 3]) == "ba "
    with pytest.raises(DataError, match="duplicate"):
        Charset("aab")


def test_height_normalisation_keeps_aspect_and_squeezes_long_lines() -> None:
    ink = np.zeros((64, 200), np.float32)
    assert normalise_height(ink, 32, 400).shape == (32, 100)
    assert normalise_height(ink, 32, 64).shape == (32, 64)
    dark_on_light = np.full((10, 10), 240, np.uint8)
    dark_on_light[4:6, 2:8] = 10
    out = to_ink(dark_on_light)
    assert out[5, 5] == pytest.approx(1.0) and out[0, 0] == 0.0


def test_collate_pads_to_stride_sorts_by_width_and_counts_frames() -> None:
    cs = Charset("abc")
    items = []
    for k, (w, text) in enumerate([(9, "ab"), (22, "abc"), (4, "c")]):
        items.append(
            {
                "index": k,
                "image": torch.ones(1, 32, w),
                "width": w,
                "label": torch.tensor(cs.encode(text)),
                "text": text,
                "source": "x",
                "difficulty": 0.5,
            }
        )
    b = collate_lines(items)
    assert b["image"].shape == (3, 1, 32, 24) and 24 % FRAME_STRIDE == 0
    assert b["width"].tolist() == [22, 9, 4] and b["index"].tolist() == [1, 0, 2]
    assert b["frames"].tolist() == [6, 3, 1]
    assert b["label"].tolist() == [[1, 2, 3], [1, 2, 0], [3, 0, 0]] and b["label_length"].tolist() == [
        3,
        2,
        1,
    ]
    assert b["image"][1, 0, :, 9:].abs().sum() == 0  # zero padding = blank paper


def test_augmentation_is_seeded_and_changes_the_image() -> None:
    rng_image = np.zeros((32, 80), np.float32)
    rng_image[10:22, 10:70] = 1.0
    opts = AugmentOptions(affine_p=1, elastic_p=1, blur_p=1, noise_p=1, morph_p=1)
    a = augment_line(rng_image, sample_rng(0, 1, 5), opts, 256)
    b = augment_line(rng_image, sample_rng(0, 1, 5), opts, 256)
    c = augment_line(rng_image, sample_rng(0, 2, 5), opts, 256)
    assert np.array_equal(a, b)
    assert a.shape[0] == 32 and (a.shape != c.shape or not np.allclose(a, c))
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_embedded_mix_is_deterministic_and_cached(tmp_path: Path) -> None:
    opts = HTRDataOptions(
        embedded={"digit_lines": 6, "font_lines": 4, "val_digit_lines": 2, "val_font_lines": 2}
    )
    first = load_records("train", opts, seed=3, cache_dir=tmp_path)
    # Interleaved evenly, so a prefix (the tune split) holds both sources.
    assert [r.source for r in first] == ["digits", "font", "digits", "font", "digits"] + ["digits", "font", "digits", "font", "digits"]
    assert len(list(tmp_path.glob("htr_embedded_*.npz"))) == 1
    again = load_records("train", opts, seed=3, cache_dir=tmp_path)  # from the cache
    fresh = load_records("train", opts, seed=3, cache_dir=None)
    for a, b, c in zip(first, again, fresh, strict=True):
        assert (
            a.text == b.text == c.text
            and np.array_equal(a.image, b.image)
            and np.array_equal(a.image, c.image)
        )
    assert all(r.image is not None and r.image.shape[0] == 32 for r in first)
    assert all(set(r.text) <= set("0123456789 ") for r in first if r.source == "digits")
    assert [r.where for r in first] == [f"embedded train line {k}" for k in range(10)]
