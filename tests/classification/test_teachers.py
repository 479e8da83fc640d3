"""Bring your own teacher: ONNX, torch.export (.pt2), registered architecture + safetensors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.errors import DataError, RecipeError
from kdtool.export.driver import ExportRequest, export_model
from kdtool.recipe import load_recipe
from tests.helpers import tiny_recipe, write_recipe


def run(path: Path, overrides: list[str] | None = None, **opts: Any) -> Path:
    result = Engine(
        load_recipe(path, overrides or []), DistillOptions(progress=False, echo=lambda _m: None, **opts)
    ).run()
    assert isinstance(result, Path)
    return result


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained teacher, exported to ONNX."""
    tmp = tmp_path_factory.mktemp("teacher")
    recipe = tiny_recipe(tmp / "runs")
    recipe["stages"] = recipe["stages"][:1]
    recipe["stages"][0]["steps"] = 60
    run_dir = run(write_recipe(tmp / "t.yaml", recipe))
    export_model(ExportRequest(run=run_dir, target="onnx", model="teacher"), echo=lambda _m: None)
    return run_dir


def _export_program(graph: Any) -> Any:
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(graph.module, graph.make_inputs({"batch": 4}), dynamic_shapes=({0: batch},))


def student_recipe(tmp: Path, teacher: dict[str, Any], **data: Any) -> Path:
    recipe = tiny_recipe(tmp / "runs")
    recipe["stages"] = recipe["stages"][1:]
    recipe["stages"][0]["teachers"] = [teacher]
    recipe["data"].update(data)
    tmp.mkdir(parents=True, exist_ok=True)
    return write_recipe(tmp / "s.yaml", recipe)


def accuracy(run_dir: Path, model: str = "student") -> float:
    return json.loads((run_dir / "summary.json").read_text())["models"][model]["metrics"]["accuracy"]


def test_onnx_teacher_teaches(teacher_run: Path, tmp_path: Path) -> None:
    onnx_file = teacher_run / "exports" / "onnx-cpu" / "model.onnx"
    assert onnx_file.exists()
    run_dir = run(student_recipe(tmp_path, {"name": "teacher", "onnx": str(onnx_file)}))
    assert accuracy(run_dir) > 0.3  # learned from the teacher's outputs (plus labels)


def test_onnx_teacher_without_labels_uses_only_the_teacher(teacher_run: Path, tmp_path: Path) -> None:
    onnx_file = teacher_run / "exports" / "onnx-cpu" / "model.onnx"
    path = student_recipe(tmp_path, {"name": "teacher", "onnx": str(onnx_file)})
    run_dir = run(path, ["stages.student.losses.ce.weight=0.0", "stages.student.steps=60"])
    # trained on teacher outputs alone, the student still beats chance (0.1) clearly
    assert accuracy(run_dir) > 0.3


def test_program_teacher_teaches(teacher_run: Path, tmp_path: Path) -> None:
    from kdtool.run import Run

    spec = Run.open(teacher_run).export_spec("teacher")
    graph = spec.graphs[0]
    program = _export_program(graph)
    pt2 = tmp_path / "teacher.pt2"
    torch.export.save(program, str(pt2))
    run_dir = run(student_recipe(tmp_path, {"name": "teacher", "program": str(pt2)}))
    assert accuracy(run_dir) > 0.3


def test_registered_architecture_and_safetensors_teacher(teacher_run: Path, tmp_path: Path) -> None:
    weights = teacher_run / "models" / "teacher.safetensors"
    teacher = {"name": "teacher", "checkpoint": str(weights), "arch": "cls_mlp", "options": {"hidden": 64}}
    run_dir = run(student_recipe(tmp_path, teacher))
    assert accuracy(run_dir) > 0.3
    wrong = {"name": "teacher", "checkpoint": str(weights), "arch": "cls_mlp", "options": {"hidden": 32}}
    with pytest.raises(RecipeError, match="does not fit architecture 'cls_mlp'"):
        run(student_recipe(tmp_path / "w", wrong))


def test_teacher_that_disagrees_with_the_data_fails_naming_both(teacher_run: Path, tmp_path: Path) -> None:
    onnx_file = teacher_run / "exports" / "onnx-cpu" / "model.onnx"
    with pytest.raises(DataError, match=r"takes input \['batch', 1, 8, 8\].*\['batch', 1, 16, 16\]"):
        run(student_recipe(tmp_path / "a", {"name": "teacher", "onnx": str(onnx_file)}, image_size=16))
    folder = tmp_path / "three_classes"
    for label in ("a", "b", "c"):
        (folder / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / label / f"{i}.png")
    with pytest.raises(DataError, match=r"labels \['0', '1'.*data's labels are \['a', 'b', 'c'\]"):
        run(
            student_recipe(
                tmp_path / "b",
                {"name": "teacher", "onnx": str(onnx_file)},
                source="imagefolder",
                root=str(folder),
            )
        )
    # without label metadata (a .pt2 program), the class count is checked
    from kdtool.run import Run

    graph = Run.open(teacher_run).export_spec("teacher").graphs[0]
    pt2 = tmp_path / "teacher.pt2"
    torch.export.save(_export_program(graph), str(pt2))
    with pytest.raises(DataError, match=r"predicts 10 classes.*data has 3 classes"):
        run(
            student_recipe(
                tmp_path / "c",
                {"name": "teacher", "program": str(pt2)},
                source="imagefolder",
                root=str(folder),
            )
        )


def _write_images(folder: Path, n: int) -> list[Path]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray((digits.images[i] * 15).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_imagefolder_manifest_and_corrupt_image(tmp_path: Path) -> None:
    from kdtool_classification.data import image_folder, load_image, read_manifest

    root = tmp_path / "folder"
    for label in ("cat", "dog"):
        _write_images(root / label, 3)
    items, classes = image_folder(root, None)
    assert classes == ["cat", "dog"] and len(items) == 6 and items[-1][1] == 1
    csv_path = tmp_path / "m.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerow(["folder/cat/img0.png", "cat"])
        writer.writerow(["folder/dog/img1.png", "dog"])
    items, classes = read_manifest(csv_path, None)
    assert classes == ["cat", "dog"] and items[1] == (tmp_path / "folder/dog/img1.png", 1)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "folder/cat/img0.png", "label": "cat"}\nnot json\n')
    with pytest.raises(DataError, match=r"m.jsonl:2"):
        read_manifest(jsonl, None)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match=r"cannot read image .*bad.png"):
        load_image(bad, 1, 8)
    with pytest.raises(DataError, match="label 'bird' is not one of"):
        csv_path.write_text("path,label\nfolder/cat/img0.png,bird\n")
        read_manifest(csv_path, ["cat", "dog"])


def test_unlabeled_images_train_on_the_teacher_with_a_dual_head(teacher_run: Path, tmp_path: Path) -> None:
    onnx_file = teacher_run / "exports" / "onnx-cpu" / "model.onnx"
    _write_images(tmp_path / "unlabeled", 40)
    path = student_recipe(
        tmp_path, {"name": "teacher", "onnx": str(onnx_file)}, unlabeled_root=str(tmp_path / "unlabeled")
    )
    run_dir = run(path, ["models.student.options.dual_head=true"])
    assert accuracy(run_dir) > 0.3
    # the exported student combines both heads: 10 outputs, not 20
    outcome = export_model(ExportRequest(run=run_dir, target="onnx"), echo=lambda _m: None)
    assert outcome.manifest["status"] == "ok"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(outcome.directory / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"image": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)
