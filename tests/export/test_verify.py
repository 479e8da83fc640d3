"""Verification owned by the export driver (kdtool.export.verify): one tolerance table, one
parity check with readable failures, the same path for every exporter (runner or stand-in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kdtool_onnx.exporter import OnnxExporter, OnnxOptions

from kdtool.errors import ExportError
from kdtool.export.exporter import ArtifactRunner, Capabilities, ExporterOptions, StandIn
from kdtool.export.verify import (
    TOLERANCES,
    check_parity,
    compare_metric,
    describe_failures,
    draft_manifest,
    tolerance_for,
    verify_artifact,
)
from kdtool.plugins import get_registries
from kdtool.testing import reference_spec
from tests.export.test_onnx_export import export, run_dir  # noqa: F401  (module-scoped fixture)

# ---------------------------------------------------------------- the tolerance table


def test_one_table_keeps_the_exporters_values() -> None:
    assert tolerance_for("fp32") == 1e-3
    assert tolerance_for("fp16") == 3e-2
    assert tolerance_for("int8") == tolerance_for("int8", "static") == 0.25
    assert tolerance_for("int8", "dynamic") == TOLERANCES["int8-weights"] == 0.25
    assert tolerance_for("int8", "w8") == TOLERANCES["int8-weights"]
    assert tolerance_for("fp16", "palettize4") == TOLERANCES["palettize"] == 0.25
    assert tolerance_for("fp8") == 0.35
    assert tolerance_for("fp32-tf32") == 1e-2


def test_tolerances_are_capabilities() -> None:
    exporters = get_registries().exporters
    trt = exporters.get("tensorrt").capabilities
    assert trt.tolerance_key("fp32") == "fp32-tf32"  # TF32 engines: declared, not hard-coded
    assert trt.tolerance_key("fp16") == "fp16"
    onnx_caps = exporters.get("onnx").capabilities
    assert all(onnx_caps.tolerance_key(p) in TOLERANCES for p in onnx_caps.precisions)


def test_unknown_precision_names_the_known_rows() -> None:
    with pytest.raises(ExportError, match="no parity tolerance for precision 'int4'") as err:
        tolerance_for("int4")
    assert "fp32" in str(err.value) and "Capabilities(tolerances=" in str(err.value.hint)


# ---------------------------------------------------------------- check_parity


def test_parity_passes_within_tolerance_for_tensors_and_arrays() -> None:
    ref = (torch.tensor([[1.0, -2.0, 4.0]]), torch.tensor([3, 1]))
    got = (np.array([[1.0, -2.0, 4.001]], dtype=np.float32), np.array([3, 1]))
    results = check_parity(ref, got, 1e-3, graph="model", sizes={"batch": 1}, names=["logits", "label"])
    assert [r.output for r in results] == ["logits", "label"]
    assert all(r.passed for r in results)
    assert results[0].max_abs_error == pytest.approx(1e-3, rel=1e-2)
    assert results[0].max_rel_error == pytest.approx(2.5e-4, rel=1e-2)  # relative to max |ref| = 4


def test_parity_failure_names_the_output_and_its_error() -> None:
    ref = {"logits": np.array([[1.0, 2.0]]), "probs": np.array([[0.5, 0.5]])}
    got = {"logits": np.array([[1.0, 2.5]]), "probs": np.array([[0.5, 0.5]])}
    results = check_parity(ref, got, 1e-3, graph="model", sizes={"batch": 1})
    failed = [r for r in results if not r.passed]
    assert [r.output for r in failed] == ["logits"]
    message = failed[0].message
    assert "graph 'model' output 'logits'" in message
    assert (
        "max relative error 0.25" in message and "max abs 0.5" in message and "> tolerance 0.001" in message
    )


def test_parity_fails_on_shape_missing_output_and_nan() -> None:
    ref = (torch.zeros(2, 3), torch.ones(2))
    shape = check_parity(ref, (torch.zeros(3, 3), torch.ones(2)), 1e-3, names=["a", "b"])
    assert not shape[0].passed and "shape differs" in shape[0].message and shape[1].passed
    missing = check_parity(ref, (torch.zeros(2, 3),), 1e-3, names=["a", "b"])
    assert not missing[1].passed and "'b' missing" in missing[1].message
    nan = check_parity((torch.ones(2),), (torch.tensor([1.0, float("nan")]),), 1e-3)
    assert not nan[0].passed


# ---------------------------------------------------------------- verify_artifact on exporters


class _RunnerExporter(OnnxExporter):
    """The onnx exporter with a replaceable runner and runnability (for broken/stand-in cases)."""

    capabilities = Capabilities(
        name="onnx-test", suffix=".onnx", precisions=("fp32",), options_model=OnnxOptions, default_profile="x"
    )

    def __init__(self, runner: Any = None, runnable: bool = True, stand_in_runner: Any = None) -> None:
        self._runner, self._runnable, self._stand_in = runner, runnable, stand_in_runner

    def can_run_here(self, options: ExporterOptions) -> tuple[bool, str]:
        return (True, "") if self._runnable else (False, "needs hardware this machine lacks")

    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        return self._runner if self._runner is not None else super().load(directory, manifest)

    def stand_in(self, directory: Path, manifest: dict[str, Any], options: ExporterOptions) -> StandIn | None:
        if self._stand_in is None:
            return None
        return StandIn(self._stand_in, "the reference module itself", precision="fp32")


def _exported(tmp_path: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    spec = reference_spec()
    options = OnnxOptions()
    artifact = OnnxExporter().export(spec, options, tmp_path, _no_deps_context())
    return spec, artifact, options, draft_manifest(spec, artifact, options)


def _no_deps_context() -> Any:
    from kdtool.export.exporter import ExportContext

    def refuse(target: str, options: dict[str, Any]) -> Any:
        raise AssertionError("the onnx exporter needs no other artifact")

    return ExportContext(target="onnx", precision="fp32", require_artifact=refuse, log=lambda _m: None)


def _offset_runner(spec: Any, offset: float) -> ArtifactRunner:
    graph = spec.graphs[0]

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return (graph.module(*inputs) + offset,)

    return ArtifactRunner({graph.name: run}, kind="offset")


def test_verify_artifact_runs_the_exporters_runner(tmp_path: Path) -> None:
    spec, artifact, options, manifest = _exported(tmp_path)
    result = verify_artifact(_RunnerExporter(), spec, artifact, options, manifest)
    assert result.passed and result.parity and not result.not_verified
    assert result.checks["parity_runtime"] == "onnxruntime"
    # real samples first (natural sizes), then every test size of each dynamic axis
    sizes = [p.sizes for p in result.parity]
    assert any(s.get("sample") == 1 for s in sizes)
    assert {s["batch"] for s in sizes if "sample" not in s} == {
        s["batch"] for s in spec.graphs[0].test_sizes()
    }


def test_a_broken_runner_fails_verification(tmp_path: Path) -> None:
    spec, artifact, options, manifest = _exported(tmp_path)
    result = verify_artifact(_RunnerExporter(_offset_runner(spec, 0.5)), spec, artifact, options, manifest)
    assert result.parity and not result.passed
    text = describe_failures(result)
    assert f"output '{spec.graphs[0].outputs[0].name}'" in text and "max relative error" in text


def test_a_runner_that_raises_is_a_failed_entry_not_a_crash(tmp_path: Path) -> None:
    spec, artifact, options, manifest = _exported(tmp_path)

    def crash(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise RuntimeError("kernel not implemented for this shape")

    runner = ArtifactRunner({spec.graphs[0].name: crash}, kind="crash")
    result = verify_artifact(_RunnerExporter(runner), spec, artifact, options, manifest)
    assert not result.passed
    assert "run failed: RuntimeError: kernel not implemented" in result.failures[0].message


def test_stand_in_is_used_and_said_where_the_artifact_cannot_run(tmp_path: Path) -> None:
    spec, artifact, options, manifest = _exported(tmp_path)
    exporter = _RunnerExporter(runnable=False, stand_in_runner=_offset_runner(spec, 0.0))
    result = verify_artifact(exporter, spec, artifact, options, manifest, metric=lambda r: {"kind": r.kind})
    assert result.passed and result.parity
    assert result.checks["parity_runtime"] == "the reference module itself"
    assert any("needs hardware this machine lacks" in n and "stand-in" in n for n in result.not_verified)
    assert result.metric == {"kind": "offset", "runtime": "stand-in: the reference module itself"}


def test_without_runner_or_stand_in_parity_is_not_verified_with_the_reason(tmp_path: Path) -> None:
    spec, artifact, options, manifest = _exported(tmp_path)
    result = verify_artifact(_RunnerExporter(runnable=False), spec, artifact, options, manifest, metric=dict)
    assert not result.parity and result.metric is None
    assert any(n.startswith("numerical parity with PyTorch: not checked") for n in result.not_verified)
    assert any("task metric of the artifact: needs hardware" in n for n in result.not_verified)


# ---------------------------------------------------------------- through the driver


def test_the_driver_verifies_an_onnx_export(run_dir: Path) -> None:  # noqa: F811
    outcome = export(run_dir, "onnx", out=run_dir / "verified")
    v = outcome.manifest["verification"]
    assert v["passed"] is True and v["checks"]["parity_runtime"] == "onnxruntime"
    assert all(p["tolerance"] == TOLERANCES["fp32"] for p in v["parity"])
    assert {p["output"] for p in v["parity"]} == {"logits"}
    metric = outcome.manifest["metric"]
    assert metric["runtime"] == "artifact" and metric["drop"] == pytest.approx(0.0, abs=1e-6)
    # the loaded runner also runs on named numpy inputs, and check_parity takes its dict
    from kdtool import runtime
    from kdtool.export.driver import RunContext

    runner = runtime.load(outcome.directory)
    graph = RunContext(run_dir).export_spec("student").graphs[0]
    x = graph.make_inputs(generator=torch.Generator().manual_seed(3))[0]
    got = runner.run_named({"image": x.numpy()})
    assert set(got) == {"logits"} and isinstance(got["logits"], np.ndarray)
    with torch.no_grad():
        reference = {"logits": graph.module(x).numpy()}
    assert all(r.passed for r in check_parity(reference, got, TOLERANCES["fp32"]))
    with pytest.raises(ExportError, match=r"needs inputs \['image'\]; missing \['image'\]"):
        runner.run_named({"pixels": x.numpy()})


def test_the_driver_refuses_an_artifact_whose_runner_is_wrong(
    run_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_load = OnnxExporter.load

    def broken_load(self: Any, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> Any:
        runner = real_load(self, directory, manifest, device=device)
        good = runner.graphs["model"]
        runner.graphs["model"] = lambda *x: tuple(o * 1.5 + 1 for o in good(*x))
        return runner

    monkeypatch.setattr(OnnxExporter, "load", broken_load)
    out = run_dir / "broken"
    with pytest.raises(ExportError, match="does not match PyTorch: graph 'model' output 'logits'") as err:
        export(run_dir, "onnx", out=out)
    assert "max relative error" in str(err.value) and "> tolerance 0.001" in str(err.value)
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "parity_failed" and manifest["verification"]["passed"] is False


def test_an_exporters_own_verify_is_not_called_and_is_reported(
    run_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def old_verify(self: Any, *args: Any) -> Any:
        calls.append("verify")
        raise AssertionError("a 1.x verify() must not run")

    monkeypatch.setattr(OnnxExporter, "verify", old_verify, raising=False)
    lines: list[str] = []
    from kdtool.export.driver import ExportRequest, export_model

    outcome = export_model(ExportRequest(run=run_dir, target="onnx", out=run_dir / "old"), echo=lines.append)
    assert not calls and outcome.manifest["verification"]["passed"] is True
    assert any("defines verify(), which kdtool no longer calls" in line for line in lines)


def test_compare_metric_reports_the_drop(run_dir: Path) -> None:  # noqa: F811
    from kdtool.export.driver import RunContext

    ctx = RunContext(run_dir)
    spec = ctx.export_spec("student")
    graph = spec.graphs[0]

    def worse(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return (-graph.module(*inputs),)  # argmax becomes argmin: accuracy falls

    block = compare_metric(ctx.task, spec, ArtifactRunner({"model": worse}, kind="worse"), 64)
    assert block["name"] == "accuracy" and block["drop"] > 0.3
    assert block["drop"] == pytest.approx(block["pytorch"] - block["artifact"])


def test_max_relative_error_is_the_worst_float_output() -> None:
    from kdtool.export.verify import max_relative_error

    ref = (torch.tensor([2.0, -4.0]), torch.tensor([1, 2]), torch.tensor([10.0]))
    got = (torch.tensor([2.0, -3.0]), torch.tensor([9, 9]), torch.tensor([10.0]))
    assert max_relative_error(ref, got) == pytest.approx(0.25)  # integer outputs do not count
    assert max_relative_error((torch.ones(2),), (torch.tensor([1.0, float("nan")]),)) == float("inf")
