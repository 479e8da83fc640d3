"""Quantization-aware distillation: fake quantization in training, learned-scale QDQ at export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from kdtool.errors import ExportError, RecipeError
from kdtool.export.driver import ExportRequest, export_model
from kdtool.recipe import load_recipe
from kdtool.run import Run
from tests.helpers import distill, tiny_recipe, write_recipe

QAD_STEPS = 40


def _recipe(tmp: Path, qad_steps: int = QAD_STEPS) -> dict[str, Any]:
    recipe = tiny_recipe(tmp / "runs")
    recipe["data"]["image_size"] = 16
    recipe["models"]["student"] = {"arch": "cls_cnn", "options": {"base": 8, "stages": 2}}
    recipe["stages"][1]["steps"] = 80
    recipe["stages"] = recipe["stages"][:2]
    recipe["stages"].append(
        {
            "name": "student_qad",
            "model": "student",
            "role": "student",
            "init": "student",
            "quantization_aware": "int8",
            "teachers": ["teacher"],
            "steps": qad_steps,
            "batch_size": 32,
            "keep": "last",
            "optimizer": {"name": "adamw", "lr": 0.0005},
            "losses": [{"name": "ce", "weight": 0.5}, {"name": "kd", "loss": "kl_t", "weight": 0.5}],
        }
    )
    recipe["deploy_model"] = "student_qad"
    return recipe


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("qad")
    return distill(tmp, _recipe(tmp))


def _export(run_dir: Path, **kw: Any) -> Any:
    return export_model(ExportRequest(run=run_dir, **kw), echo=lambda _m: None)


@pytest.fixture(scope="module")
def qad_export(run_dir: Path) -> Any:
    return _export(run_dir, target="onnx", precision="int8", out=run_dir / "exports" / "qad")


def test_fake_quant_round_trip_on_a_conv_net(tmp_path: Path) -> None:
    """Trace, fold, calibrate, perturb the learned scales, export: ORT equals PyTorch."""
    from torch import nn

    from kdtool.quant import ActQuant, QuantLayer, apply_plan, calibrate, export_qdq, trace_plan

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 16, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )  # fmt: skip
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    xs = [torch.randn(4, 3, 16, 16) for _ in range(4)]
    plan = trace_plan(net, lambda: net(xs[0]), activations="u8", exclude=[])
    assert plan["folded_batchnorms"] == {"1": "0", "4": "3"}
    assert plan["quantized_activations"] == ["2", "5"]  # conv outputs quantized after their activation
    assert plan["layers"]["3"]["shared_input"] == "2"  # one quantizer per tensor
    assert plan["layers"]["6"]["quant_output"] and not plan["layers"]["9"]["quant_output"]
    apply_plan(net, plan)
    assert calibrate(net, [lambda x=x: net(x) for x in xs]) == 4
    with torch.no_grad():  # scales as if learned: moved away from the calibrated ones
        for q in net.modules():
            if isinstance(q, ActQuant):
                q.scale.mul_(0.8)
    assert sum(isinstance(m, QuantLayer) for m in net.modules()) == 4
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        ref = net(x).numpy()
    path = tmp_path / "m.onnx"
    with export_qdq(net):
        torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True)
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 3
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8) == 4  # the four layers' weights stored as int8 (besides zero points)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.slow
def test_exported_qdq_equals_the_fake_quantized_model(run_dir: Path, qad_export: Any) -> None:
    outcome = qad_export
    m = outcome.manifest
    q = m["details"]["graphs"]["model"]["quantization"]
    assert "learned" in q["scales"] and q["qad_init_stage"] == "student"
    assert q["summary"]["quantize_nodes"] > 0 and "Conv" in q["summary"]["quantized_ops"]
    path = outcome.directory / "model.onnx"
    spec = Run.open(run_dir).export_spec("student_qad")
    x = torch.rand(16, 1, 16, 16)
    with torch.no_grad():
        ref = spec.graphs[0].module(x).numpy()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(run_dir / "optimized.onnx")
    got = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()}
    )[0]
    # equal up to the odd rounding tie (int kernels vs float simulation): within 1% of the range
    assert np.abs(got - ref).max() <= 0.01 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    # ONNX Runtime runs the convolutions as integer kernels (the Q/DQ pattern fused)
    ops = {n.op_type for n in onnx.load(str(run_dir / "optimized.onnx")).graph.node}
    assert "QLinearConv" in ops
    # the artifact's metric is the fake-quantized model's (the driver compares them)
    assert abs(m["metric"]["drop"]) <= 0.02


@pytest.mark.slow
def test_qad_keeps_or_improves_int8_accuracy_versus_ptq(run_dir: Path, qad_export: Any) -> None:
    qad = qad_export.manifest
    ptq = _export(run_dir, target="onnx-cpu-int8", model="student", out=run_dir / "exports" / "ptq").manifest
    assert qad["metric"]["artifact"] >= ptq["metric"]["artifact"] - 1e-9
    # the PTQ manifest says where the graph stays float, and `kdtool bench` prints it
    summary = ptq["details"]["graphs"]["model"]["quantization"]["summary"]
    assert summary["quantize_nodes"] > 0 and summary["quantized_ops"].get("Conv", 0) > 0
    assert "Sub" in summary["float_ops"] or "Div" in summary["float_ops"]  # input normalisation
    from kdtool.cli.bench import bench_artifact

    row = bench_artifact(
        run_dir / "exports" / "ptq", batch=2, seconds=0.05, metric_limit=None, with_metric=False
    )
    assert any("QuantizeLinear" in n and "ops left in float" in n for n in row.notes)


@pytest.mark.slow
def test_fp32_export_of_a_qad_model_is_refused_clearly(run_dir: Path) -> None:
    with pytest.raises(ExportError, match="quantization-aware.*--precision int8"):
        _export(run_dir, target="onnx", out=run_dir / "exports" / "fp32")


def test_init_must_name_an_earlier_stage_of_the_same_model(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    recipe["stages"][2]["init"] = "teacher"
    with pytest.raises(RecipeError, match="init stage 'teacher' trains model 'teacher'"):
        load_recipe(write_recipe(tmp_path / "a.yaml", recipe))
    recipe["stages"][2]["init"] = "nope"
    with pytest.raises(RecipeError, match="unknown init stage"):
        load_recipe(write_recipe(tmp_path / "b.yaml", recipe))
