"""Quantization-aware distillation for the LAD student, whose export is a modified copy of it
(the 4-channel stem sliced to RGB): the fake quantizers are placed and calibrated on that copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from kdtool.export.driver import ExportRequest, export_model
from kdtool.quant import ActQuant, QuantLayer, find_plan
from kdtool.run import Run
from tests.helpers import REPO, distill

pytestmark = pytest.mark.slow


def _recipe(tmp: Path) -> dict[str, Any]:
    recipe = yaml.safe_load((REPO / "recipes" / "segmentation_lad.yaml").read_text())
    recipe["runs_dir"] = str(tmp / "runs")
    recipe["device"] = "cpu"
    recipe["logging"] = {"progress": False}
    recipe["data"]["synthetic"].update(train_samples=48, val_samples=8, size=32)
    recipe["data"]["crop_size"] = 32
    small = {"width": 8, "head_channels": 16, "aspp_rates": [1, 2, 3], "output_stride": 8}
    recipe["models"]["teacher"]["options"] = {**small, "label_assisted": True}
    recipe["models"]["student"]["options"] = dict(small)
    stages = [s for s in recipe["stages"] if s["role"] != "baseline"]
    for s in stages:
        s.update(steps=12, batch_size=8, eval_every_steps=12)
    qad = dict(stages[1])
    qad.update(
        name="student_qad",
        init="student",
        quantization_aware="int8",
        steps=10,
        keep="last",
        optimizer={"name": "adamw", "lr": 0.0005, "weight_decay": 0.0},
        schedule={"name": "cosine"},
    )
    recipe["stages"] = [*stages, qad]
    recipe["deploy_model"] = "student_qad"
    return recipe


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("segqad")
    return distill(tmp, _recipe(tmp))


def test_qad_student_is_traced_on_its_rgb_export_and_exports_learned_qdq(run_dir: Path) -> None:
    run = Run.open(run_dir)
    model = run.load_model("student_qad")
    plan = find_plan(model)
    assert plan is not None and plan["init"] == "student"
    stem = model.backbone.stem[0]
    assert isinstance(stem, QuantLayer)  # the stem conv is quantized, in the 4-channel model too
    assert stem.layer.weight[:, 3].abs().sum() == 0  # its label-channel weights zeroed (hook)
    # every quantizer was calibrated (a range other than the initial scale of 1)
    assert all(float(q.scale.detach()) != 1.0 for q in model.modules() if isinstance(q, ActQuant))

    outcome = export_model(
        ExportRequest(run=run_dir, target="onnx", precision="int8", out=run_dir / "exports" / "qad"),
        echo=lambda _m: None,
    )
    m = outcome.manifest
    (info,) = m["details"]["graphs"].values()
    q = info["quantization"]
    assert "learned" in q["scales"] and q["qad_init_stage"] == "student"
    assert q["summary"]["quantized_ops"].get("Conv", 0) > 0
    # the exported RGB graph equals the fake-quantized PyTorch copy it came from
    spec = run.export_spec("student_qad")
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = spec.graphs[0].module(x)
    ref = (out[0] if isinstance(out, (tuple, list)) else out).numpy()
    sess = ort.InferenceSession(str(outcome.directory / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    # the artifact's mIoU is the fake-quantized model's (the driver evaluated both)
    assert abs(m["metric"]["drop"]) <= 0.02
