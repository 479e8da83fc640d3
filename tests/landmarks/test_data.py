"""Loaders on tiny fixtures in the real layouts, crop/augmentation geometry and flip permutations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kdtool_landmarks.datasets import (
    AugmentConfig,
    LandmarksDataset,
    Record,
    from_frame,
    load_300w,
    load_manifest,
    load_rgb,
    load_wflw,
    parse_pts,
    to_frame,
)
from kdtool_landmarks.layouts import LAYOUTS, layout_for
from kdtool_landmarks.synth import SynthConfig, face_template, render_face
from PIL import Image

from kdtool.errors import DataError


def write_pts(path: Path, points: np.ndarray) -> None:
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    path.write_text(f"version: 1\nn_points:  {len(points)}\n{{\n{body}\n}}\n")


def face_points(n: int = 68, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.25, 0.75, size=(n, 2)) * w).astype(np.float32)


def write_image(path: Path, w: int = 80, h: int = 60) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def w300(tmp_path: Path) -> Path:
    """300W layout: afw/, helen/trainset/, ibug/ with image + .pts pairs."""
    for sub, n in (("afw", 2), ("helen/trainset", 1), ("ibug", 1)):
        d = tmp_path / "300W" / sub
        d.mkdir(parents=True)
        for i in range(n):
            write_image(d / f"img{i}.jpg")
            write_pts(d / f"img{i}.pts", face_points(seed=i) + 1.0)
    return tmp_path / "300W"


def test_300w_loader_reads_pts_beside_images(w300: Path) -> None:
    records = load_300w(w300, ["afw", "helen/trainset"])
    assert len(records) == 3
    assert records[0].points.shape == (68, 2)
    assert Path(records[0].image).name == "img0.jpg"
    # 1-based .pts -> continuous coordinates: x_pts - 1 + 0.5
    np.testing.assert_allclose(records[0].points, face_points(seed=0) + 0.5, atol=1e-3)
    assert {r.group for r in records} == {"afw", "helen/trainset"}


def test_300w_missing_dir_and_missing_image(w300: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_300w(w300, ["lfpw/trainset"])
    (w300 / "ibug" / "img0.jpg").unlink()
    with pytest.raises(DataError, match=r"img0\.pts: no image beside it"):
        load_300w(w300, ["ibug"])


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("version: 1\nn_points: 2\n{\n1 2\n3 x\n}\n", 5, "two numbers"),
        ("version: 1\nn_points: two\n{\n1 2\n}\n", 2, "n_points"),
        ("version: 1\nbogus\n{\n1 2\n}\n", 2, "unexpected"),
    ],
)
def test_malformed_pts_names_file_and_line(tmp_path: Path, text: str, line: int, what: str) -> None:
    path = tmp_path / "bad.pts"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"bad\.pts:{line}: .*{what}"):
        parse_pts(path)


def test_pts_count_mismatch_and_unclosed(tmp_path: Path) -> None:
    path = tmp_path / "a.pts"
    path.write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(DataError, match="n_points: 3 but the file lists 2"):
        parse_pts(path)
    path.write_text("version: 1\nn_points: 1\n{\n1 2\n")
    with pytest.raises(DataError, match="enclosed"):
        parse_pts(path)


def test_corrupt_image_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg: cannot read image"):
        load_rgb(bad)
    rec = Record(bad, face_points(), None)
    ds = LandmarksDataset(
        [rec],
        layout=LAYOUTS["ibug68"],
        size=32,
        crop_source="points",
        margin=0.1,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        augment=None,
        seed=0,
    )
    with pytest.raises(DataError, match="broken.jpg"):
        ds[0]


def wflw_line(points: np.ndarray, box: tuple[int, int, int, int], path: str) -> str:
    coords = " ".join(f"{v:.2f}" for v in points.ravel())
    return f"{coords} {' '.join(map(str, box))} 0 1 0 0 0 1 {path}"


def test_wflw_loader(tmp_path: Path) -> None:
    images = tmp_path / "WFLW_images" / "0--Parade"
    images.mkdir(parents=True)
    write_image(images / "a.jpg")
    pts = face_points(98)
    ann = tmp_path / "list_98pt_rect_attr_train.txt"
    ann.write_text(wflw_line(pts, (10, 12, 60, 58), "0--Parade/a.jpg") + "\n")
    (rec,) = load_wflw(ann, tmp_path / "WFLW_images")
    assert rec.points.shape == (98, 2)
    np.testing.assert_allclose(rec.points, pts + 0.5, atol=1e-2)
    assert rec.box == (10, 12, 60, 58)
    assert rec.load_image().size == (80, 60)
    ann.write_text(wflw_line(pts, (10, 12, 60, 58), "a.jpg") + "\n" + "1 2 3\n")
    with pytest.raises(DataError, match=r"list_98pt_rect_attr_train\.txt:2: expected 207 fields"):
        load_wflw(ann, tmp_path)


def test_manifest_loader(tmp_path: Path) -> None:
    write_image(tmp_path / "f.png")
    pts = face_points(5)
    (tmp_path / "m.txt").write_text(
        "# image x1 y1 ...\nf.png," + ",".join(f"{v}" for v in pts.ravel()) + "\n"
    )
    (rec,) = load_manifest(tmp_path / "m.txt")
    assert Path(rec.image) == tmp_path / "f.png"
    np.testing.assert_allclose(rec.points, pts + 0.5, atol=1e-4)
    (tmp_path / "m.txt").write_text("f.png 1 2 3\n")
    with pytest.raises(DataError, match=r"m\.txt:1: .*even number"):
        load_manifest(tmp_path / "m.txt")


# ------------------------------------------------------------------ layouts and flips


@pytest.mark.parametrize("name", ["ibug68", "wflw98", "cofw29"])
def test_flip_permutations_are_involutions(name: str) -> None:
    perm = np.asarray(LAYOUTS[name].flip_perm)
    assert sorted(perm.tolist()) == list(range(LAYOUTS[name].num_points))
    assert np.array_equal(perm[perm], np.arange(len(perm)))


def test_ibug_flip_maps_the_symmetric_template_onto_itself() -> None:
    pts, _ = face_template(np.random.default_rng(3))
    perm = np.asarray(LAYOUTS["ibug68"].flip_perm)
    mirrored = pts[perm] * np.array([-1.0, 1.0, 1.0])
    # Equal up to the generator's small asymmetry jitter, and far from the un-permuted mirror.
    assert np.abs(mirrored - pts)[:, :2].mean() < 0.03
    assert np.abs(pts * np.array([-1.0, 1.0, 1.0]) - pts)[:, :2].mean() > 0.2


def test_layout_inference() -> None:
    assert layout_for(None, 68).name == "ibug68"
    assert layout_for(None, 98).eye_corners == (60, 72)
    generic = layout_for(None, 5)
    assert generic.flip_perm is None and generic.eye_corners is None
    with pytest.raises(ValueError, match="68 points"):
        layout_for("ibug68", 98)


def _dataset(records: list[Record], augment: AugmentConfig | None, size: int = 48) -> LandmarksDataset:
    return LandmarksDataset(
        records,
        layout=LAYOUTS["ibug68"],
        size=size,
        crop_source="points",
        margin=0.2,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        augment=augment,
        seed=0,
    )


def test_flip_augmentation_mirrors_image_and_points_consistently() -> None:
    cfg = SynthConfig(size=48)
    image, points = render_face(0, "train", 0, cfg)
    rec = Record(image, points)
    plain = _dataset([rec], None)[0]
    flip_only = AugmentConfig(
        flip=1.0, rotation_deg=0, scale=(1, 1), shift=0, brightness=0, contrast=0, saturation=0
    )
    flipped = _dataset([rec], flip_only)[0]
    np.testing.assert_allclose(flipped["image"].numpy(), plain["image"].numpy()[:, :, ::-1], atol=2 / 255)
    perm = np.asarray(LAYOUTS["ibug68"].flip_perm)
    px, fx = from_frame(plain["points"].numpy(), 48), from_frame(flipped["points"].numpy(), 48)
    np.testing.assert_allclose(fx[:, 0], 48 - px[perm, 0], atol=1e-4)
    np.testing.assert_allclose(fx[:, 1], px[perm, 1], atol=1e-4)
    # After re-indexing, point 36 (the subject's right outer eye corner) is still on the image left.
    assert fx[36, 0] < fx[45, 0]


def test_augmentation_keeps_points_on_the_features() -> None:
    """A bright dot at a landmark must still be under that landmark after rotation/scale/shift."""
    size = 64
    img = np.zeros((size, size, 3), dtype=np.uint8)
    pts = np.tile(np.array([[20.5, 30.5]], dtype=np.float32), (68, 1))
    pts[1:] += np.random.default_rng(0).uniform(-10, 10, size=(67, 2)).astype(np.float32)
    img[30, 20] = 255
    rec = Record(img, pts)
    aug = AugmentConfig(
        flip=0.0, rotation_deg=25, scale=(0.8, 1.2), shift=0.1, brightness=0, contrast=0, saturation=0
    )
    ds = LandmarksDataset(
        [rec],
        layout=LAYOUTS["ibug68"],
        size=size,
        crop_source="full",
        margin=0.0,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        augment=aug,
        seed=0,
    )
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[0]
        p = from_frame(item["points"][0].numpy(), size)
        heat = item["image"][0].numpy()
        y, x = np.unravel_index(heat.argmax(), heat.shape)
        assert abs((x + 0.5) - p[0]) < 1.0 and abs((y + 0.5) - p[1]) < 1.0


def test_augmentation_depends_only_on_seed_epoch_index() -> None:
    recs = [Record(*render_face(0, "train", i, SynthConfig(size=32))) for i in range(2)]
    a = _dataset(recs, AugmentConfig(), size=32)
    b = _dataset(recs, AugmentConfig(), size=32)
    a.set_epoch(1), b.set_epoch(1)
    assert np.array_equal(a[1]["points"].numpy(), b[1]["points"].numpy())
    b.set_epoch(2)
    assert not np.array_equal(a[1]["points"].numpy(), b[1]["points"].numpy())


def test_frame_round_trip() -> None:
    x = np.array([0.0, 32.0, 64.0])
    np.testing.assert_allclose(to_frame(x, 64), [0.5, 0.0, -0.5])
    np.testing.assert_allclose(from_frame(to_frame(x, 64), 64), x)


def test_synthetic_faces_are_deterministic_and_varied() -> None:
    cfg = SynthConfig(size=32)
    a_img, a_pts = render_face(5, "train", 3, cfg)
    b_img, b_pts = render_face(5, "train", 3, cfg)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_pts, b_pts)
    c_img, c_pts = render_face(5, "train", 4, cfg)
    assert not np.array_equal(a_pts, c_pts)
    assert a_pts.shape == (68, 2) and a_img.shape == (32, 32, 3)
    # Points stay (mostly) inside the crop.
    assert (a_pts > -4).all() and (a_pts < 36).all()
