"""The export framework and the ONNX exporter on a real distilled run (digits)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from kdtool import runtime
from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.errors import ExportError, RunError
from kdtool.export.driver import ExportRequest, export_model
from kdtool.plugins import get_plugin_manager
from kdtool.recipe import load_recipe
from tests.helpers import run_cli, tiny_recipe, write_recipe


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    recipe = tiny_recipe(tmp / "runs")
    recipe["models"]["student"] = {"arch": "cls_cnn", "options": {"base": 8, "stages": 2}}
    recipe["stages"][1]["steps"] = 60
    recipe["export"] = {"target": "onnx", "options": {"calibration_samples": 32}}
    path = write_recipe(tmp / "r.yaml", recipe)
    result = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    return result


def export(run_dir: Path, target: str, **kw: Any) -> Any:
    return export_model(ExportRequest(run=run_dir, target=target, **kw), echo=lambda _m: None)


def test_onnx_fp32_export_is_verified_and_loads_back(run_dir: Path) -> None:
    outcome = export(run_dir, "onnx")
    m = outcome.manifest
    assert outcome.directory == run_dir / "exports" / "onnx-cpu"
    assert m["status"] == "ok" and m["target"] == "onnx-cpu" and m["precision"] == "fp32"
    assert m["model"] == "student" and m["task"] == "image_classification"
    assert m["verification"]["passed"] is True
    # parity at two batch sizes (the dynamic axis) and on real samples
    sizes = {p["sizes"].get("batch") for p in m["verification"]["parity"]}
    assert {1, 2} <= sizes or len(sizes - {None}) >= 2
    assert all(p["max_rel_error"] < 1e-3 for p in m["verification"]["parity"])
    assert m["metric"]["name"] == "accuracy" and abs(m["metric"]["drop"]) < 1e-6
    # the recipe's export defaults reached the resolved options
    assert m["options"]["calibration_samples"] == 32
    # files with hashes; ONNX metadata carries labels and pre-processing
    model_file = outcome.directory / m["graphs"]["model"]["file"]
    assert any(f["path"] == "model.onnx" and len(f["sha256"]) == 64 for f in m["files"])
    props = {p.key: p.value for p in onnx.load(str(model_file)).metadata_props}
    assert json.loads(props["labels"]) == [str(i) for i in range(10)]
    assert json.loads(props["metadata"])["preprocessing"]["size"] == [8, 8]
    # runs in plain onnxruntime at another batch size
    sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": np.random.rand(5, 1, 8, 8).astype(np.float32)})[0]
    assert out.shape == (5, 10)
    # kdtool.runtime.load gives the same outputs as the PyTorch model
    runner = runtime.load(outcome.directory)
    x = torch.rand(3, 1, 8, 8)
    from kdtool.run import Run

    spec = Run.open(run_dir).export_spec("student")
    with torch.no_grad():
        ref = spec.graphs[0].module(x)
    assert torch.allclose(runner(x)[0], ref, atol=1e-4)


def test_int8_static_qdq_per_channel(run_dir: Path) -> None:
    m = export(run_dir, "onnx-cpu-int8", eval_limit=200).manifest
    ops = m["details"]["graphs"]["model"]["ops"]
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    q = m["details"]["graphs"]["model"]["quantization"]
    assert q["mode"] == "static" and q["format"] == "QDQ" and q["per_channel"] and q["activations"] == "u8"
    assert q["calibration_samples"] == 32
    model = onnx.load(str(run_dir / "exports" / "onnx-cpu-int8" / "model.onnx"))
    # per-channel weights: some DequantizeLinear has a 1-D scale with more than one element
    inits = {i.name: i for i in model.graph.initializer}
    per_channel = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 1
        and inits[n.input[1]].dims[0] > 1
    ]
    assert per_channel
    assert m["metric"]["drop"] < 0.1
    assert m["status"] == "ok"


def test_option_precedence_cli_over_profile_over_recipe(run_dir: Path) -> None:
    m = export(
        run_dir,
        "onnx-cpu-int8",
        options=["calibration=percentile", "calibration_samples=8"],
        out=run_dir / "x",
    ).manifest
    assert m["options"]["calibration"] == "percentile"  # cli beats the profile's minmax
    assert m["options"]["calibration_samples"] == 8  # cli beats the recipe's 32
    assert m["details"]["graphs"]["model"]["quantization"]["calibration_samples"] == 8


def test_dynamic_int8_and_static_shapes(run_dir: Path) -> None:
    m = export(
        run_dir, "onnx", precision="int8", options=["quantization=dynamic"], out=run_dir / "dyn"
    ).manifest
    assert m["details"]["graphs"]["model"]["quantization"]["mode"] == "dynamic"
    m = export(run_dir, "onnx", batch=4, options=["shapes=static"], out=run_dir / "static").manifest
    model = onnx.load(str(run_dir / "static" / "model.onnx"))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 1, 8, 8]


def test_unknown_target_and_options_are_clear(run_dir: Path) -> None:
    with pytest.raises(ExportError, match="did you mean 'onnx-cpu'"):
        export(run_dir, "onnx-cpux")
    with pytest.raises(ExportError, match="unknown option 'calibraton'.*did you mean 'calibration'"):
        export(run_dir, "onnx", options=["calibraton=entropy"])
    with pytest.raises(ExportError, match="does not support precision 'fp8'"):
        export(run_dir, "onnx", precision="fp8")


def test_run_without_the_model_and_corrupt_weights(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no model 'studnt'.*"):
        export(run_dir, "onnx", model="studnt")
    with pytest.raises(RunError, match="no run at"):
        export(tmp_path / "nothing", "onnx")
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("exports"))
    (copy / "models" / "student.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RunError, match="corrupt or not safetensors"):
        export(copy, "onnx")
    (copy / "models" / "student.safetensors").unlink()
    with pytest.raises(RunError, match="weights file not found"):
        export(copy, "onnx")


def test_max_metric_drop_fails_and_keeps_the_marked_artifact(run_dir: Path) -> None:
    with pytest.raises(ExportError, match="more than --max-metric-drop"):
        # a negative budget cannot be met: the artifact must be better than PyTorch
        export(run_dir, "onnx", max_metric_drop=-0.5, out=run_dir / "budget")
    manifest = json.loads((run_dir / "budget" / "manifest.json").read_text())
    assert manifest["status"] == "metric_failed"


def test_unsupported_op_names_the_op_and_target(run_dir: Path) -> None:
    from kdtool_onnx.exporter import OnnxExporter, OnnxOptions

    from kdtool.export.exporter import ExportContext
    from kdtool.run import Run

    spec = Run.open(run_dir).export_spec("student")

    class Zeta(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.special.zeta(image.flatten(1)[:, :10] + 2.0, torch.ones(1) * 3.0)

    spec.graphs[0].module = Zeta()
    ctx = ExportContext(
        target="onnx-cpu", precision="fp32", require_artifact=lambda *_: None, log=lambda _m: None
    )  # type: ignore[arg-type,return-value]
    with pytest.raises(ExportError, match=r"target 'onnx-cpu': cannot export op .*special_zeta"):
        OnnxExporter().export(spec, OnnxOptions(), run_dir / "zeta", ctx)


def test_empty_calibration_data_is_an_error(run_dir: Path, tmp_path: Path) -> None:
    from kdtool_onnx.exporter import OnnxExporter, OnnxOptions

    from kdtool.export.exporter import ExportContext
    from kdtool.run import Run

    spec = Run.open(run_dir).export_spec("student")
    spec.graphs[0].calibration_inputs = lambda n: iter(())
    ctx = ExportContext(
        target="onnx-cpu-int8", precision="int8", require_artifact=lambda *_: None, log=lambda _m: None
    )  # type: ignore[arg-type,return-value]
    with pytest.raises(ExportError, match="calibration data .* is empty"):
        OnnxExporter().export(spec, OnnxOptions(precision="int8", quantization="static"), tmp_path, ctx)


def test_export_done_hook_sees_the_manifest(run_dir: Path) -> None:
    seen: list[dict[str, Any]] = []

    class Observer:
        @staticmethod
        @__import__("kdtool").hookimpl
        def on_export_done(artifact_dir: Path, manifest: dict[str, Any]) -> None:
            seen.append({"dir": artifact_dir, "status": manifest["status"]})

    manager = get_plugin_manager()
    manager.pm.register(Observer, name="export_observer")
    from kdtool.plugins import PluginInfo

    manager.infos["export_observer"] = PluginInfo(name="export_observer", module=__name__)
    try:
        export(run_dir, "onnx", out=run_dir / "observed")
    finally:
        manager.pm.unregister(name="export_observer")
        del manager.infos["export_observer"]
    assert seen == [{"dir": run_dir / "observed", "status": "ok"}]


@pytest.mark.slow
def test_cli_distill_export_eval_predict_bench(tmp_path: Path) -> None:
    """The user's path through the CLI, as README shows it."""
    recipe = tiny_recipe(tmp_path / "runs")
    path = write_recipe(tmp_path / "r.yaml", recipe)
    env = {"KDTOOL_DISABLE_PLUGINS": ""}
    assert run_cli(["distill", str(path), "--no-progress"], env_extra=env, cwd=tmp_path).returncode == 0
    for target in ("onnx", "onnx-cpu-int8"):
        r = run_cli(["export", "--target", target], env_extra=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"export {'onnx-cpu' if target == 'onnx' else target}: " in r.stdout
    artifact = tmp_path / "runs" / "latest" / "exports" / "onnx-cpu-int8"
    ev = run_cli(["eval", str(artifact), "--json"], cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["metrics"]["accuracy"] > 0.3
    # an INT8 artifact is shown next to the FP32 model it came from
    assert result["reference"]["model"] == "student" and result["reference"]["precision"] == "fp32"
    assert abs(result["reference"]["metrics"]["accuracy"] - result["metrics"]["accuracy"]) < 0.1
    text = run_cli(["eval", str(artifact)], cwd=tmp_path)
    assert "next to FP32 student" in text.stdout and "change" in text.stdout, text.stdout
    image = tmp_path / "digit.png"
    from sklearn.datasets import load_digits

    Image.fromarray((load_digits().images[0] * 16).astype(np.uint8)).save(image)
    pr = run_cli(["predict", str(artifact), str(image)], cwd=tmp_path)
    assert pr.returncode == 0, pr.stderr
    assert json.loads(pr.stdout)["input"] == str(image)
    bench = run_cli(["bench", "--seconds", "0.2", "--json", "--metric-limit", "50"], cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr
    rows = json.loads(bench.stdout)["rows"]
    assert [r["kind"] for r in rows] == ["pytorch", "onnxruntime", "onnxruntime"]
    assert all(r["latency_ms_p50"] > 0 and r["size_bytes"] > 0 for r in rows)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["bench"]  # results written back into the manifest
    bad = run_cli(["export", "--target", "onnx-cpux"], cwd=tmp_path)
    assert bad.returncode == 5 and "did you mean 'onnx-cpu'" in bad.stderr


def test_int8_warning_compares_against_the_fastest_float_of_the_same_runtime() -> None:
    from kdtool.export.bench import BenchRow, int8_warnings

    def row(name: str, kind: str, precision: str, ms: float) -> BenchRow:
        return BenchRow(
            name=name, kind=kind, model="student", precision=precision, size_bytes=1, latency_ms_p50=ms
        )

    slow_int8 = [
        row("pt", "pytorch", "fp32", 5.0),
        row("ort", "onnxruntime", "fp32", 1.0),
        row("q", "onnxruntime", "int8", 1.2),
    ]
    warnings = int8_warnings(slow_int8)
    assert len(warnings) == 1 and "not faster than ort (FP32)" in warnings[0]
    fast_int8 = [row("ort", "onnxruntime", "fp32", 1.0), row("q", "onnxruntime", "int8", 0.6)]
    assert int8_warnings(fast_int8) == []
    trt = [
        row("f16", "tensorrt", "fp16", 0.5),
        row("f32", "tensorrt", "fp32", 0.9),
        row("i8", "tensorrt", "int8", 0.7),
    ]
    assert "(FP16)" in int8_warnings(trt)[0]


def test_int8_sensitivity_pass_keeps_the_most_sensitive_layers_in_float(run_dir: Path) -> None:
    # a budget of 0 cannot be met: the pass excludes layers until max_excluded
    m = export(
        run_dir,
        "onnx-cpu-int8",
        options=["sensitivity=true", "max_quant_error=0.0", "max_excluded=2"],
        out=run_dir / "sens",
    ).manifest
    q = m["details"]["graphs"]["model"]["quantization"]
    report = q["sensitivity"]
    assert len(report["layers"]) >= 3  # every Conv/Gemm layer was scored (left out alone)
    ranked = sorted(report["layers"], key=report["layers"].get, reverse=True)
    assert report["excluded"] == ranked[:2] == q["excluded_nodes"]
    assert report["error_final"] < report["error_all_quantized"]
    model = onnx.load(str(run_dir / "sens" / "model.onnx"))
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name in report["excluded"]:
            # the kept layer reads its float weight directly, not through DequantizeLinear
            assert node.input[1] in inits
