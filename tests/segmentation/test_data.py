"""Loaders of the segmentation plugin on tiny fixtures in the real layouts, written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from kdtool_segmentation.datasets import cityscapes_pairs, manifest_pairs, voc_pairs, voc_palette
from kdtool_segmentation.task import SegmentationData, SegmentationLADTask, SegmentationOptions
from PIL import Image

from kdtool.errors import DataError


def _palette_png(mask: np.ndarray, path: Path) -> None:
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette([c for rgb in voc_palette(256) for c in rgb])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _rgb(path: Path, h: int, w: int, seed: int, fmt: str | None = None) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def write_voc_fixture(
    root: Path, *, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (40, 52)
) -> Path:
    """A VOC-layout folder: JPEGImages, SegmentationClass palette PNGs, ImageSets/Segmentation."""
    h, w = size
    names = {
        "train": [f"2007_{i:06d}" for i in range(n_train)],
        "val": [f"2008_{i:06d}" for i in range(n_val)],
    }
    for split, ids in names.items():
        for k, name in enumerate(ids):
            _rgb(root / "JPEGImages" / f"{name}.jpg", h, w, k, "JPEG")
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1 + (k * 7) % 20  # an object
            mask[h // 4 - 1, w // 4 : 3 * w // 4] = 255  # VOC's void outline
            _palette_png(mask, root / "SegmentationClass" / f"{name}.png")
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True, exist_ok=True)
        (sets / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_cityscapes_fixture(root: Path) -> Path:
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        for k in range(2):
            stem = f"{city}_{k:06d}_000019"
            _rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 32, 64, k)
            ids = np.zeros((32, 64), np.uint8)  # 0 = unlabeled -> void
            ids[:, :16] = 7  # road -> 0
            ids[:, 16:32] = 26  # car -> 13
            ids[:, 32:48] = 33  # bicycle -> 18
            path = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids, mode="L").save(path)
    return root


def _task(tmp_path: Path, **data: object) -> SegmentationLADTask:
    return SegmentationLADTask(SegmentationOptions(), SegmentationData(**data), seed=0, cache_dir=tmp_path)  # type: ignore[arg-type]


def test_voc_loader_reads_palette_indices(tmp_path: Path) -> None:
    root = write_voc_fixture(tmp_path / "VOC2012")
    pairs = voc_pairs(root, "train")
    assert [p.image.name for p in pairs][:2] == ["2007_000000.jpg", "2007_000001.jpg"]
    task = _task(tmp_path, format="voc", root=str(root), crop_size=32)
    assert task.num_classes == 21 and task.class_names[15] == "person"
    val = task.build_dataset("val")
    item = val[1]
    assert item["image"].shape == (3, 40, 52) and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) == {0, 8, 255}  # palette indices, not colours
    train = task.build_dataset("train")
    train.set_epoch(0)
    a = train[2]
    assert a["image"].shape == (3, 32, 32) and a["mask"].shape == (32, 32)
    assert torch.equal(train[2]["mask"], a["mask"])  # seeded per (seed, epoch, index)
    train.set_epoch(1)
    assert train[2]["mask"].shape == (32, 32)


def test_voc_missing_split_list_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ImageSets"):
        voc_pairs(tmp_path, "train")


def test_cityscapes_loader_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    root = write_cityscapes_fixture(tmp_path / "cityscapes")
    assert len(cityscapes_pairs(root, "val")) == 2
    task = _task(tmp_path, format="cityscapes", root=str(root), crop_size=32)
    assert task.num_classes == 19
    mask = task.build_dataset("val")[0]["mask"]
    assert mask[0, 0].item() == 0 and mask[0, 20].item() == 13 and mask[0, 40].item() == 18
    assert mask[0, 60].item() == 255  # unlabeled -> void


def test_cityscapes_missing_annotation_names_the_file(tmp_path: Path) -> None:
    root = write_cityscapes_fixture(tmp_path / "cs")
    (root / "gtFine" / "val" / "frankfurt" / "frankfurt_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="frankfurt_000001_000019_gtFine_labelIds.png"):
        cityscapes_pairs(root, "val")


def test_manifest_loader_and_its_errors(tmp_path: Path) -> None:
    _rgb(tmp_path / "img" / "a.png", 20, 24, 0)
    Image.fromarray(np.full((20, 24), 2, np.uint8), mode="L").save(tmp_path / "a_mask.png")
    manifest = tmp_path / "train.tsv"
    manifest.write_text("# image\tmask\nimg/a.png\ta_mask.png\n\n")
    pairs = manifest_pairs(manifest)
    assert pairs[0].image == tmp_path / "img" / "a.png" and pairs[0].mask == tmp_path / "a_mask.png"
    task = _task(
        tmp_path,
        format="manifest",
        train_manifest=str(manifest),
        val_manifest=str(manifest),
        classes=["bg", "x", "y"],
    )
    item = task.build_dataset("val")[0]
    assert item["mask"].unique().tolist() == [2]
    bad = tmp_path / "bad.tsv"
    bad.write_text("img/a.png\ta_mask.png\nonly_one_field.png\n")
    with pytest.raises(DataError, match=r"bad\.tsv:2"):
        manifest_pairs(bad)
    # A class id beyond the class list names the mask file.
    small = _task(
        tmp_path,
        format="manifest",
        train_manifest=str(manifest),
        val_manifest=str(manifest),
        classes=["bg", "x"],
    )
    with pytest.raises(DataError, match="a_mask.png"):
        small.build_dataset("val")[0]


def test_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    root = write_voc_fixture(tmp_path / "VOC", n_train=1, n_val=1)
    _palette_png(np.zeros((10, 10), np.uint8), root / "SegmentationClass" / "2008_000000.png")
    task = _task(tmp_path, format="voc", root=str(root))
    with pytest.raises(DataError) as err:
        task.build_dataset("val")[0]
    assert "2008_000000.png" in str(err.value) and "2008_000000.jpg" in str(err.value)


def test_unreadable_image_is_a_data_error(tmp_path: Path) -> None:
    root = write_voc_fixture(tmp_path / "VOC", n_train=1, n_val=1)
    (root / "JPEGImages" / "2008_000000.jpg").write_bytes(b"not a jpeg")
    task = _task(tmp_path, format="voc", root=str(root))
    with pytest.raises(DataError, match="2008_000000.jpg"):
        task.build_dataset("val")[0]


def test_data_options_are_validated() -> None:
    with pytest.raises(ValueError, match="root"):
        SegmentationData(format="voc")
    with pytest.raises(ValueError, match="classes"):
        SegmentationData(format="manifest", train_manifest="a", val_manifest="b")
    with pytest.raises(ValueError, match="extra"):
        SegmentationData(crop_sz=3)  # type: ignore[call-arg]
