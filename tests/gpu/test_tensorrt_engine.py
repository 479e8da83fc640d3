"""The TensorRT engine path: build with the Python API, stamps, runner on CUDA buffers, parity and latency.

Runs only where ``import tensorrt`` works and a CUDA GPU is visible (skipped otherwise, with the
reason). The same checks, as a script printing JSON: ``python bench/tensorrt_engine_check.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from kdtool_tensorrt import engine as eng

from kdtool import runtime
from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.errors import ExportError
from kdtool.export.driver import ExportRequest, export_model
from kdtool.recipe import load_recipe
from kdtool.run import Run
from tests.helpers import tiny_recipe, write_recipe

pytestmark = pytest.mark.gpu

TRT, WHY = eng.import_tensorrt()
if TRT is None:
    pytest.skip(f"TensorRT engine tests need TensorRT: {WHY}", allow_module_level=True)
if not torch.cuda.is_available():
    pytest.skip("TensorRT engine tests need a CUDA GPU; none is visible to PyTorch", allow_module_level=True)

CC = "{}.{}".format(*torch.cuda.get_device_capability(0))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("trt-gpu")
    recipe = tiny_recipe(tmp / "runs")
    recipe["models"]["student"] = {"arch": "cls_cnn", "options": {"base": 8, "stages": 2}}
    recipe["stages"] = recipe["stages"][:2]
    recipe["stages"][1]["steps"] = 60
    path = write_recipe(tmp / "r.yaml", recipe)
    result = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    return result


def export(run_dir: Path, target: str, **kw: Any) -> Any:
    return export_model(ExportRequest(run=run_dir, target=target, eval_limit=200, **kw), echo=lambda _m: None)


@pytest.fixture(scope="module")
def fp16(run_dir: Path) -> Any:
    return export(run_dir, "trt-local")


def test_fp16_engine_is_built_stamped_and_verified(fp16: Any) -> None:
    m = fp16.manifest
    stamps = m["details"]["engine"]
    assert stamps["built"] is True and stamps["tensorrt"] == str(TRT.__version__)
    assert stamps["compute_capability"] == CC and stamps["gpu"] == torch.cuda.get_device_name(0)
    assert stamps["cuda_runtime"] == torch.version.cuda
    assert (
        m["graphs"]["model"]["file"] == "model.engine"
        and (fp16.directory / "model.engine").stat().st_size > 0
    )
    assert (fp16.directory / "timing.cache").stat().st_size > 0
    assert m["verification"]["checks"]["parity_runtime"] == "tensorrt"  # the runner load() returns
    assert m["verification"]["passed"] is True
    assert m["verification"]["checks"]["latency_ms_at_opt_shapes"]["model"]["p50_ms"] > 0
    assert m["metric"] is not None and abs(m["metric"]["drop"]) < 0.02  # driver ran the task on the engine


def test_runner_runs_any_batch_in_the_profile(run_dir: Path, fp16: Any) -> None:
    runner = runtime.load(fp16.directory)
    assert runner.kind == "tensorrt"
    module = Run.open(run_dir).export_spec("student").graphs[0].module
    for batch in (1, 7, 64):
        x = torch.rand(batch, 1, 8, 8)
        with torch.no_grad():
            ref = module(x)
        got = runner(x)[0]
        assert got.device.type == "cpu" and got.shape == ref.shape
        assert float((got - ref).abs().max() / ref.abs().max()) < 3e-2
    with pytest.raises(ExportError, match="outside the engine's optimisation profile"):
        runner(torch.rand(65, 1, 8, 8))


def test_mismatched_engine_is_refused_clearly(fp16: Any, tmp_path: Path) -> None:
    manifest = json.loads((fp16.directory / "manifest.json").read_text())
    bad = json.loads(json.dumps(manifest))
    bad["details"]["engine"]["tensorrt"] = "9.9.9"
    from kdtool_tensorrt.exporter import TensorRTExporter

    with pytest.raises(ExportError, match=r"built with TensorRT 9\.9\.9; this machine has TensorRT"):
        TensorRTExporter().load(fp16.directory, bad)
    bad = json.loads(json.dumps(manifest))
    bad["details"]["engine"]["compute_capability"] = "1.0"
    with pytest.raises(ExportError, match="built for compute capability 1.0"):
        TensorRTExporter().load(fp16.directory, bad)


def test_int8_engine_parity_and_fp16_comparison(run_dir: Path) -> None:
    m = export(run_dir, "trt-local", precision="int8", out=run_dir / "exports" / "trt-int8").manifest
    assert m["details"]["engine"]["built"] is True
    assert m["verification"]["passed"] is True
    cmp = m["verification"]["checks"]["int8_vs_fp16"]["graphs"]["model"]
    assert cmp["int8_p50_ms"] > 0 and cmp["fp16_p50_ms"] > 0
    if not cmp["int8_faster"]:
        assert m["verification"]["checks"]["int8_vs_fp16"]["warnings"]


def test_fp32_engine_and_shared_timing_cache(run_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "shared.cache"
    first = export(
        run_dir, "trt-local", precision="fp32", options=[f"timing_cache={cache}"], out=tmp_path / "a"
    ).manifest
    assert (
        cache.stat().st_size > 0
        and first["details"]["graphs"]["model"]["build"]["timing_cache_reused"] is False
    )
    second = export(
        run_dir, "trt-local", precision="fp32", options=[f"timing_cache={cache}"], out=tmp_path / "b"
    ).manifest
    assert second["details"]["graphs"]["model"]["build"]["timing_cache_reused"] is True
    assert second["verification"]["passed"] is True


def test_other_gpu_target_is_not_built_here(run_dir: Path) -> None:
    target = "trt-t4" if CC != "7.5" else "trt-a100"
    m = export(run_dir, target, out=run_dir / "exports" / "other-gpu").manifest
    assert m["details"]["engine"]["built"] is False
    assert "is not the target's" in m["details"]["engine"]["reason"]


@pytest.mark.skipif(tuple(int(x) for x in CC.split(".")) < (8, 9), reason="FP8 needs compute capability 8.9+")
def test_fp8_engine_where_supported(run_dir: Path) -> None:
    m = export(run_dir, "trt-local", precision="fp8", out=run_dir / "exports" / "trt-fp8").manifest
    assert m["details"]["engine"]["built"] is True
    assert m["verification"]["passed"] is True
