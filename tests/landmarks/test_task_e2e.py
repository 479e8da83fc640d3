"""The task end to end: a tiny distill of the default recipe, ONNX export of the student and
evaluation through onnxruntime, and a 2-step run of the paper-scale recipe on a 300W fixture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from kdtool_landmarks.layouts import LAYOUTS
from kdtool_landmarks.metrics import nme_per_image, summarise
from kdtool_landmarks.synth import SynthConfig, render_face
from PIL import Image

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.errors import RecipeError
from kdtool.recipe import load_recipe
from kdtool.task import Predictor

REPO = Path(__file__).resolve().parents[2]

TINY = [
    "device=cpu",
    "data.image_size=32",
    "data.synthetic.train_size=48",
    "data.synthetic.val_size=12",
    "data.synthetic.supersample=2",
    "models.teacher.options={width: 8, layers: [1, 1, 1, 1]}",
    "models.student.options={width_mult: 0.35, last_channels: 64, blocks: 4}",
    "checkpoint.every_steps=0",
    "logging.progress=false",
] + [f"stages.{s}.batch_size=8" for s in ("tolerant_teacher", "tough_teacher", "student", "baseline_student")]


def distill(recipe: Path, overrides: list[str], **opts: Any) -> Path:
    engine = Engine(
        load_recipe(recipe, overrides), DistillOptions(progress=False, echo=lambda _m: None, **opts)
    )
    out = engine.run()
    assert isinstance(out, Path)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Engine]:
    runs = tmp_path_factory.mktemp("runs")
    overrides = [*TINY, f"runs_dir={runs}"]
    loaded = load_recipe(REPO / "recipes" / "facial_landmarks.yaml", overrides)
    engine = Engine(loaded, DistillOptions(progress=False, echo=lambda _m: None, max_steps=3))
    run_dir = engine.run()
    assert isinstance(run_dir, Path)
    return run_dir, engine


@pytest.mark.slow
def test_distill_writes_models_soft_landmarks_and_report_figures(tiny_run: tuple[Path, Engine]) -> None:
    run_dir, _ = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert set(summary["models"]) == {"tolerant_teacher", "tough_teacher", "student", "baseline_student"}
    for entry in summary["models"].values():
        assert {"nme", "fr@0.1", "auc@0.1"} <= set(entry["metrics"])
    extras = summary["landmarks"]
    assert extras["models"]["student"]["params"] < extras["models"]["tough_teacher"]["params"]
    assert extras["models"]["student"]["cpu_latency_ms"] > 0
    assert "student" in extras["kd_gain"]
    assert (run_dir / "figures" / "landmarks_ced.png").exists()
    assert (run_dir / "figures" / "landmarks_samples_student.png").exists()
    soft = np.load(run_dir / "landmarks" / "soft_landmarks.npy")
    assert soft.shape == (48, 68, 2)
    info = json.loads((run_dir / "landmarks" / "shape_model.json").read_text())
    assert info["variance_kept"] >= 0.97


@pytest.mark.slow
def test_onnx_export_matches_pytorch_and_evaluates(tiny_run: tuple[Path, Engine], tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    run_dir, engine = tiny_run
    from kdtool.engine.trainer import load_run_model

    model, _ = load_run_model(engine.registries, run_dir, "student")
    task = engine.task
    spec = task.export_spec(model.eval(), "student")
    graph = spec.graphs[0]
    assert graph.outputs[0].shape == ("batch", 68, 2)
    assert spec.metadata.preprocessing["mean"] == [0.5, 0.5, 0.5]
    path = tmp_path / "student.onnx"
    example = graph.make_inputs({"batch": 2})
    torch.onnx.export(
        graph.module,
        example,
        str(path),
        input_names=["image"],
        output_names=["landmarks"],
        dynamic_axes={"image": {0: "batch"}, "landmarks": {0: "batch"}},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_onnx(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(session.run(None, {"image": x.numpy()})[0]),)

    onnx_pred = Predictor({"model": run_onnx}, kind="onnxruntime", metadata=spec.metadata.to_dict())
    torch_metrics = task.evaluate(task.predictor(model, "student"), "val")
    onnx_metrics = task.evaluate(onnx_pred, "val")
    assert onnx_metrics["nme"] == pytest.approx(torch_metrics["nme"], rel=1e-3)
    calib = list(graph.calibration_inputs(3))  # type: ignore[misc]
    assert len(calib) == 3 and calib[0][0].shape == (1, 3, 32, 32)

    # kdtool predict path: a face crop on disk -> points in its own pixels and a drawing.
    img, _ = render_face(0, "val", 0, SynthConfig(size=64))
    Image.fromarray(img).save(tmp_path / "face.png")
    (result,) = type(task).predict_files(
        onnx_pred, spec.metadata.to_dict(), [tmp_path / "face.png"], tmp_path / "out"
    )
    assert len(result["points"]) == 68
    assert Path(result["figure"]).exists()


def test_stage_options_are_validated(tmp_path: Path) -> None:
    bad = [*TINY, f"runs_dir={tmp_path}", "stages.student.options={tolerant_teacher: nobody}"]
    engine = Engine(
        load_recipe(REPO / "recipes" / "facial_landmarks.yaml", bad),
        DistillOptions(progress=False, echo=lambda _m: None),
    )
    with pytest.raises(RecipeError, match="'nobody' is not among the stage's teachers"):
        engine.task.stage_options(engine.recipe.stage("student"))
    typo = load_recipe(
        REPO / "recipes" / "facial_landmarks.yaml", [*TINY, "stages.tough_teacher.options={targt: hard}"]
    )
    # a typo in a stage's options is caught when the run is set up, before any stage trains
    with pytest.raises(RecipeError, match=r"targt.*did you mean 'target'"):
        Engine(typo, DistillOptions(progress=False, echo=lambda _m: None))


def test_metrics_by_hand() -> None:
    layout = LAYOUTS["ibug68"]
    gt = np.zeros((2, 68, 2))
    gt[:, 45, 0] = 10.0  # inter-ocular distance 10
    pred = gt.copy()
    pred[0] += np.array([0.5, 0.0])  # every point off by 0.5 -> NME 0.05
    pred[1] += np.array([0.0, 2.0])  # off by 2 -> NME 0.2 (a failure)
    nme = nme_per_image(pred, gt, layout)
    np.testing.assert_allclose(nme, [0.05, 0.2])
    s = summarise(nme, 0.1)
    assert s["nme"] == pytest.approx(12.5)
    assert s["fr@0.1"] == pytest.approx(50.0)
    # CED: 0 below 0.05, 0.5 from 0.05 to 0.1 -> area 0.5 * 0.05 / 0.1 = 0.25
    assert s["auc@0.1"] == pytest.approx(0.25, abs=2e-3)


@pytest.mark.slow
def test_paper_recipe_runs_two_steps_on_a_300w_fixture(tmp_path: Path) -> None:
    from tests.landmarks.test_data import face_points, write_image, write_pts

    root = tmp_path / "300W"
    for sub in ("afw", "helen/trainset", "lfpw/trainset", "helen/testset", "lfpw/testset", "ibug"):
        d = root / sub
        d.mkdir(parents=True)
        for i in range(2):
            write_image(d / f"{i}.png", w=120, h=120)
            write_pts(d / f"{i}.pts", face_points(w=120, seed=i) + 1)
    overrides = [
        f"data.root={root}",
        f"runs_dir={tmp_path / 'runs'}",
        "device=cpu",
        "precision=fp32",
        "num_workers=0",
        "data.image_size=64",
        "logging.progress=false",
        "checkpoint.every_steps=0",
        "models.teacher.options={width_mult: 0.25, depth_mult: 0.25, dropout: 0.0}",
        "models.student.options={width_mult: 0.25, last_channels: 64}",
    ] + [
        f"stages.{s}.batch_size=2"
        for s in ("tolerant_teacher", "tough_teacher", "student", "baseline_student")
    ]
    run_dir = distill(REPO / "recipes" / "facial_landmarks_300w.yaml", overrides, max_steps=2)
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["models"]["student"]["metrics"]
    assert {"nme", "nme_common", "nme_challenging"} <= set(metrics)
    assert yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())["data"]["source"] == "300w"
