"""The segmentation_lad task: training steps, evaluation, export spec, and end-to-end runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from kdtool_segmentation.models import deeplabv3_r18
from kdtool_segmentation.task import SegmentationData, SegmentationLADTask, SegmentationOptions
from PIL import Image
from torch import nn

from kdtool.engine.context import StepContext
from kdtool.errors import RecipeError
from kdtool.recipe import StageConfig
from tests.helpers import REPO

from .test_data import write_voc_fixture

MODEL = {"width": 8, "head_channels": 16, "aspp_rates": [1, 2, 3]}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> SegmentationLADTask:
    data = SegmentationData(synthetic={"train_samples": 16, "val_samples": 6, "size": 32}, crop_size=32)  # type: ignore[arg-type]
    return SegmentationLADTask(
        SegmentationOptions(eval_batch_size=4), data, seed=0, cache_dir=tmp_path_factory.mktemp("c")
    )


def _ctx(teacher_fn: Any = None) -> StepContext:
    ctx = StepContext(
        device=torch.device("cpu"), precision="fp32", losses=nn.ModuleDict(), scaler=None, grad_accum=1,
        teacher_fn=teacher_fn, teacher_cache=None,
    )  # fmt: skip
    ctx.begin_step(seed=0, step=0, epoch=0)
    return ctx


def _batch(task: SegmentationLADTask, n: int = 4) -> dict[str, Any]:
    ds = task.build_dataset("train")
    return task.collate([ds[i] for i in range(n)])


def test_training_steps_of_each_role(task: SegmentationLADTask) -> None:
    torch.manual_seed(0)
    teacher = deeplabv3_r18(6, label_assisted=True, **MODEL)
    student = deeplabv3_r18(6, **MODEL)
    batch = _batch(task)
    t_stage = StageConfig(name="teacher", model="t", role="teacher", steps=1)
    losses = task.training_step(t_stage, {"t": teacher}, batch, _ctx())
    assert set(losses) == {"ce", "aux", "cwd"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert teacher.backbone.stem[0].weight.grad[:, 3].abs().sum() > 0  # the label channel is used

    teacher.eval().requires_grad_(False)
    s_stage = StageConfig(name="student", model="s", role="student", teachers=["teacher"], steps=1)
    ctx = _ctx(lambda b: task.teacher_outputs(s_stage, {"teacher": teacher}, b))
    ctx.use_stage(s_stage, task)  # the engine pairs the student's CWD (the registered cwd)
    losses = task.training_step(s_stage, {"s": student, "teacher": teacher}, batch, ctx)
    assert set(losses) == {"ce", "aux", "cwd"}
    sum(losses.values()).backward()
    # The student's 4th channel is zero: its stem weights there get no gradient.
    assert student.backbone.stem[0].weight.grad[:, 3].abs().sum() == 0

    b_stage = StageConfig(name="baseline", model="s", role="baseline", baseline_for="student", steps=1)
    assert set(task.training_step(b_stage, {"s": student}, batch, _ctx())) == {"ce"}
    b_aux = StageConfig(
        name="baseline2", model="s", role="baseline", baseline_for="student", steps=1, options={"aux": True}
    )
    assert set(task.training_step(b_aux, {"s": student}, batch, _ctx())) == {"ce", "aux"}


def test_bad_stage_options_are_recipe_errors(task: SegmentationLADTask) -> None:
    plain = StageConfig(name="t2", model="t", role="teacher", steps=1)
    with pytest.raises(RecipeError, match="label_assisted"):
        task.training_step(plain, {"t": deeplabv3_r18(6, **MODEL)}, _batch(task), _ctx())
    stage = StageConfig(name="tt", model="t", role="teacher", steps=1, options={"pixel_nois": 0.1})
    with pytest.raises(RecipeError, match="pixel_nois"):
        task.training_step(stage, {"t": deeplabv3_r18(6, label_assisted=True, **MODEL)}, _batch(task), _ctx())


def test_check_teacher_names_the_problem(task: SegmentationLADTask) -> None:
    stage = StageConfig(name="student", model="s", role="student", teachers=["teacher"], steps=1)
    task.check_teacher(stage, "teacher", deeplabv3_r18(6, label_assisted=True, **MODEL))
    with pytest.raises(RecipeError, match="not label-assisted"):
        task.check_teacher(stage, "teacher", deeplabv3_r18(6, **MODEL))
    with pytest.raises(RecipeError, match="4 classes"):
        task.check_teacher(stage, "teacher", deeplabv3_r18(4, label_assisted=True, **MODEL))


def test_teacher_evaluation_reports_label_and_zeroed_metrics(task: SegmentationLADTask) -> None:
    teacher = deeplabv3_r18(6, label_assisted=True, **MODEL)
    metrics = task.evaluate(task.predictor(teacher, "teacher"), "val")
    assert {"miou", "pixel_acc", "miou_label_zeroed"} <= set(metrics)
    student = task.evaluate(task.predictor(deeplabv3_r18(6, **MODEL), "student"), "val", limit=3)
    assert "miou" in student and "miou_label_zeroed" not in student


def test_export_spec_takes_three_channels_at_two_sizes(task: SegmentationLADTask) -> None:
    student = deeplabv3_r18(6, **MODEL).eval()
    spec = task.export_spec(student, "student")
    graph = spec.graphs[0]
    assert [t.name for t in graph.inputs] == ["image"] and graph.inputs[0].shape == (
        "batch",
        3,
        "height",
        "width",
    )
    assert spec.metadata.labels == ["background", "disc", "square", "triangle", "ring", "cross"]
    assert len(spec.metadata.extra["palette"]) == 6
    sizes = graph.test_sizes()
    assert len({(s["height"], s["width"]) for s in sizes}) >= 2
    for s in sizes:
        (x,) = graph.make_inputs(s)
        four = torch.cat([x, torch.zeros_like(x[:, :1])], 1)
        with torch.no_grad():
            assert torch.allclose(graph.module(x), student(four)["out"], atol=1e-5)
    assert len(list(graph.calibration_inputs(3))) == 3  # type: ignore[misc]
    labels_task = copy.copy(task)
    labels_task.options = SegmentationOptions(export_output="labels")
    labels_graph = labels_task.export_spec(student, "student").graphs[0]
    assert labels_graph.outputs[0].dtype == "int64" and labels_graph.module(x).dtype == torch.int64
    teacher_graph = task.export_spec(deeplabv3_r18(6, label_assisted=True, **MODEL), "teacher").graphs[0]
    assert [t.name for t in teacher_graph.inputs] == ["image", "label_channel"]


# --------------------------------------------------------------------------- end to end


def _small_recipe(tmp_path: Path, source: str, **data: Any) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / source).read_text())
    recipe["runs_dir"] = str(tmp_path / "runs")
    recipe["device"] = "cpu"
    recipe["num_workers"] = 0
    recipe["logging"] = {"every_steps": 1, "progress": False}
    recipe["data"].update(data)
    for model in recipe["models"].values():
        model["options"].update(MODEL)
    for stage in recipe["stages"]:
        stage.update(steps=2, batch_size=2, eval_every_steps=2)
        stage["eval_batch_size"] = 2
    recipe["task"]["options"].update(export_min_size=16, export_max_size=96, eval_batch_size=2)
    path = tmp_path / source
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _distill(path: Path) -> Path:
    from kdtool.engine.trainer import DistillOptions, Engine
    from kdtool.recipe import load_recipe

    result = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    return result


@pytest.mark.slow
def test_distill_export_onnx_and_predict(tmp_path: Path) -> None:
    import onnxruntime as ort

    from kdtool.export.driver import ExportRequest, export_model

    path = _small_recipe(
        tmp_path,
        "segmentation_lad.yaml",
        synthetic={"train_samples": 8, "val_samples": 4, "size": 32},
        crop_size=32,
    )
    run = _distill(path)
    summary = json.loads((run / "summary.json").read_text())
    assert {"teacher", "student", "baseline_student"} <= set(summary["models"])
    assert "miou_label_zeroed" in summary["models"]["teacher"]["metrics"]

    outcome = export_model(ExportRequest(run=run, target="onnx"), echo=lambda _m: None)
    manifest = outcome.manifest
    assert manifest["status"] == "ok" and manifest["model"] == "student", manifest.get("verification")
    assert manifest["verification"]["passed"] is True
    onnx_file = outcome.directory / manifest["graphs"]["segmenter"]["file"]
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for h, w in ((32, 32), (48, 40)):
        (out,) = session.run(
            None, {"image": np.random.default_rng(0).normal(size=(1, 3, h, w)).astype(np.float32)}
        )
        assert out.shape == (1, 6, h, w)

    from kdtool import runtime

    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(image)
    (result,) = runtime.predict_files(outcome.directory, [image], tmp_path / "pred")
    mask = np.asarray(Image.open(result["mask"]))
    assert mask.shape == (40, 36) and mask.max() < 6

    teacher = export_model(
        ExportRequest(run=run, target="onnx", model="teacher"), echo=lambda _m: None
    ).manifest
    assert teacher["status"] == "ok"


@pytest.mark.slow
def test_voc_recipe_runs_two_steps_on_the_fixture(tmp_path: Path) -> None:
    root = write_voc_fixture(tmp_path / "VOC2012", n_train=4, n_val=2)
    path = _small_recipe(tmp_path, "segmentation_lad_voc.yaml", root=str(root), crop_size=32)
    run = _distill(path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["models"]["student"]["metrics"]["miou"] >= 0.0
