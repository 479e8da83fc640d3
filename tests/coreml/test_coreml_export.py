"""The ``coreml`` exporter on a real distilled run (digits): every profile converts, the
re-read package matches the spec, compressed packages shrink by the expected factor,
deployment-target conflicts are clear, and a missing coremltools says how to install it.

Prediction needs macOS; on this platform the checks are structural (the package's protobuf)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdtool import runtime
from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.errors import ExportError
from kdtool.export.driver import ExportRequest, export_model
from kdtool.export.spec import DeployMetadata, DynamicAxis, ExportSpec, GraphSpec, TensorSpec
from kdtool.plugins import get_registries
from kdtool.recipe import load_recipe
from tests.helpers import run_cli, tiny_recipe, write_recipe

pytest.importorskip("coremltools")

from kdtool_coreml.exporter import CoreMLExporter, image_prep  # noqa: E402
from kdtool_coreml.inspect import read_package  # noqa: E402
from kdtool_coreml.options import CoreMLOptions, check_compatibility  # noqa: E402

PROFILES = ["coreml-iphone", "coreml-iphone-small", "coreml-mac", "coreml-cpu"]
DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short digits run whose student (a 65k-parameter CNN) has weights that dominate the
    package, so compression factors are visible."""
    tmp = tmp_path_factory.mktemp("coreml")
    recipe = tiny_recipe(tmp / "runs")
    recipe["models"]["student"] = {"arch": "cls_cnn", "options": {"base": 32, "stages": 2}}
    for stage in recipe["stages"]:
        stage["steps"] = 10
    path = write_recipe(tmp / "r.yaml", recipe)
    result = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    return result


def export(run_dir: Path, target: str, **kw: Any) -> Any:
    return export_model(ExportRequest(run=run_dir, target=target, **kw), echo=lambda _m: None)


def weights_bytes(package: Path) -> int:
    return (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size


# --------------------------------------------------------------------------- no conversion needed


def test_profiles_and_capabilities_are_registered() -> None:
    regs = get_registries()
    assert set(PROFILES) <= set(regs.targets.names())
    caps = regs.exporters.get("coreml").capabilities
    assert caps.suffix == ".mlpackage" and caps.precisions == ("fp32", "fp16", "int8")
    assert caps.default_profile == "coreml-iphone" and caps.needs_macos_to_run
    assert caps.requires == (("coremltools", "pip install 'kdtool[coreml]'"),)
    for name in PROFILES:
        profile = regs.targets.get(name)
        CoreMLOptions.model_validate(profile.options)  # every profile's options are valid
        assert profile.machine["os"] == "darwin"
    assert regs.targets.get("coreml-cpu").options["compute_units"] == "CPU_ONLY"
    assert regs.targets.get("coreml-cpu").precision == "fp32"
    assert regs.targets.get("coreml-iphone-small").options["quantize"].startswith("palettize")


def _two_input_spec() -> ExportSpec:
    class Add(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    t = ("batch", 4)
    graph = GraphSpec(
        "g", Add(), [TensorSpec("a", t), TensorSpec("b", t)], [TensorSpec("y", t, role="output")],
        dynamic_axes={"batch": DynamicAxis(1, 2, 8)},
    )  # fmt: skip
    return ExportSpec("demo", "m", [graph], DeployMetadata(task="demo"))


def test_deployment_target_conflicts_name_both_sides() -> None:
    grouped = CoreMLOptions(
        precision="fp16",
        deployment_target="iOS17",
        quantize="palettize4",
        palettize_granularity="per_grouped_channel",
    )
    with pytest.raises(ExportError) as err:
        check_compatibility(grouped)
    text = str(err.value)
    assert "per_grouped_channel" in text and "iOS17" in text and "iOS18" in text
    assert "palettize_granularity=per_tensor" in text  # the other way out
    check_compatibility(grouped.model_copy(update={"deployment_target": "iOS18"}))
    check_compatibility(grouped.model_copy(update={"deployment_target": "macOS15"}))
    with pytest.raises(ExportError, match=r"w8a8.*iOS17 / macOS14.*deployment_target is iOS16"):
        check_compatibility(CoreMLOptions(quantize="w8a8", deployment_target="iOS16"))
    with pytest.raises(ExportError, match=r"compressed weights.*iOS16.*deployment_target is iOS15"):
        check_compatibility(CoreMLOptions(quantize="w8", deployment_target="iOS15"))
    with pytest.raises(ExportError, match="--precision int8 means linear INT8 weights"):
        check_compatibility(CoreMLOptions(precision="int8", quantize="palettize6"))
    assert CoreMLOptions(precision="int8").effective_quantize == "w8"
    spec = _two_input_spec()
    with pytest.raises(ExportError, match=r"shapes=enumerated.*several flexible inputs \(a, b\).*iOS18"):
        check_compatibility(CoreMLOptions(shapes="enumerated"), spec)
    check_compatibility(CoreMLOptions(shapes="range"), spec)
    with pytest.raises(ExportError, match="enumerated_sizes names axes \\['height'\\]"):
        check_compatibility(CoreMLOptions(shapes="range", enumerated_sizes={"height": [8]}), spec)


def test_image_input_scale_bias_from_metadata() -> None:
    """Outside-the-graph normalisation becomes scale/bias; unequal stds fold into the graph."""
    graph = GraphSpec(
        "model", nn.Identity(), [TensorSpec("image", ("batch", 3, 8, 8))], [TensorSpec("y", ("batch", 3, 8, 8))],
        dynamic_axes={"batch": DynamicAxis(1, 1, 4)},
    )  # fmt: skip
    pre = {
        "kind": "image",
        "scale": 1 / 255,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "channels": "RGB",
    }
    prep = image_prep(ExportSpec("t", "m", [graph], DeployMetadata(task="t", preprocessing=pre)), graph)
    assert prep.color == "RGB" and prep.channel_scale is None
    assert prep.scale == pytest.approx(1 / (255 * 0.25)) and prep.bias == pytest.approx([-2.0] * 3)
    pre["std"] = [0.2, 0.25, 0.5]
    prep = image_prep(ExportSpec("t", "m", [graph], DeployMetadata(task="t", preprocessing=pre)), graph)
    assert prep.scale == pytest.approx(1 / 255) and prep.bias == pytest.approx([-0.5] * 3)
    assert prep.channel_scale == pytest.approx([5.0, 4.0, 2.0])
    # the mapping is exact on representable pixels: x -> pixels -> x
    pixels = torch.randint(0, 256, (8, 8, 3)).numpy().astype("uint8")
    x = prep.from_pixels(pixels)
    assert (prep.to_pixels(x) == pixels).all()
    mean, std = torch.tensor([0.5] * 3).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.5]).view(3, 1, 1)
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5)
    # a task whose pre-processing is not a pixel scale cannot take an image input
    text_spec = ExportSpec(
        "htr", "m", [graph], DeployMetadata(task="htr", preprocessing={"kind": "text_line_image"})
    )
    with pytest.raises(ExportError, match="image_input=true needs an image task"):
        image_prep(text_spec, graph)


# --------------------------------------------------------------------------- conversions of a real run


def test_default_target_writes_a_checked_package_with_metadata(run_dir: Path) -> None:
    outcome = export(run_dir, "coreml")
    m = outcome.manifest
    assert outcome.directory == run_dir / "exports" / "coreml-iphone"
    assert m["status"] == "ok" and m["format"] == "coreml" and m["precision"] == "fp16"
    assert m["graphs"]["model"]["file"] == "model.mlpackage"
    assert m["versions"]["coremltools"].startswith("9.")
    # Linux: structure checked, parity plainly not
    assert m["verification"]["checks"]["package_structure"]["model"]["interface"] == "matches the spec"
    assert any("numerical parity with PyTorch: not checked on this platform" in n for n in m["not_verified"])
    assert m["metric"] is None
    details = m["details"]["graphs"]["model"]
    assert details["ops"]["conv"] == 4 and details["ops"]["linear"] == 1  # the op list
    assert set(details["float_weights"]) == {"FLOAT16"} and not details["compressed_weights"]
    # the package itself, re-read: enumerated batch sizes min/opt/max, FP32 I/O, metadata
    info = read_package(outcome.directory / "model.mlpackage")
    (inp,) = info.inputs
    assert inp["name"] == "image" and inp["dtype"] == "FLOAT32" and inp["shape"] == [1, 1, 8, 8]
    assert sorted({s[0] for s in inp["enumerated"]}) == [1, 64]
    (out,) = info.outputs
    assert out["name"] == "logits" and out["dtype"] == "FLOAT32" and out["dims"] == [None, 10]
    assert info.author == "kdtool" and "image_classification" in info.short_description
    assert json.loads(info.user_metadata["kdtool.labels"]) == DIGITS
    assert json.loads(info.user_metadata["kdtool.preprocessing"])["size"] == [8, 8]
    assert info.user_metadata["kdtool.compute_units"] == "ALL"
    assert "pixels in [0, 1]" in inp["description"]
    # off macOS the artifact cannot be loaded to run (bench then reports its size only)
    with pytest.raises(ExportError, match="run only on macOS"):
        runtime.load(outcome.directory)


@pytest.mark.slow
def test_every_profile_converts_and_compression_shrinks_weights(run_dir: Path) -> None:
    sizes: dict[str, tuple[int, int]] = {}
    for name in PROFILES:
        m = export(run_dir, name).manifest
        package = run_dir / "exports" / name / "model.mlpackage"
        assert m["status"] == "ok" and m["target"] == name
        sizes[name] = (weights_bytes(package), m["size_bytes"])
    for label, kw in {
        "w8": {"precision": "int8"},
        "palettize4": {"options": ["quantize=palettize4"]},
        "palettize8": {"options": ["quantize=palettize8"]},
    }.items():
        m = export(run_dir, "coreml", out=run_dir / "exports" / label, **kw).manifest
        info = m["details"]["graphs"]["model"]["compressed_weights"]
        bits = 8 if label == "w8" else int(label[-1])
        assert (
            info[("linear" if label == "w8" else "palette") + str(bits)]["tensors"] == 4
        )  # 4 convs, linear < 512
        sizes[label] = (weights_bytes(run_dir / "exports" / label / "model.mlpackage"), m["size_bytes"])
    fp32, fp16 = sizes["coreml-cpu"][0], sizes["coreml-mac"][0]
    assert fp16 / fp32 == pytest.approx(0.5, abs=0.02)
    assert sizes["coreml-iphone"][0] == fp16  # same FP16 weights, different shapes/compute units
    assert sizes["w8"][0] / fp16 == pytest.approx(0.5, abs=0.05)
    assert sizes["palettize8"][0] / fp16 == pytest.approx(0.5, abs=0.05)
    assert sizes["coreml-iphone-small"][0] / fp16 == pytest.approx(6 / 16, abs=0.05)  # 6-bit palette
    assert sizes["palettize4"][0] / fp16 == pytest.approx(4 / 16, abs=0.05)
    # whole packages shrink too (model description and manifests are a few KB)
    assert sizes["palettize4"][1] < 0.35 * sizes["coreml-mac"][1] < 0.2 * sizes["coreml-cpu"][1]


@pytest.mark.slow
def test_compute_precision_and_options_reach_the_package(run_dir: Path) -> None:
    m = export(
        run_dir, "coreml-cpu", options=["shapes=static"], batch=4, out=run_dir / "exports" / "static"
    ).manifest
    info = read_package(run_dir / "exports" / "static" / "model.mlpackage")
    assert info.inputs[0]["shape"] == [4, 1, 8, 8] and "range" not in info.inputs[0]
    assert set(info.float_weights) == {"FLOAT32"} and m["options"]["compute_units"] == "CPU_ONLY"
    m = export(run_dir, "coreml-mac", out=run_dir / "exports" / "range").manifest
    info = read_package(run_dir / "exports" / "range" / "model.mlpackage")
    assert info.inputs[0]["range"][0] == [1, 64]
    with pytest.raises(ExportError, match=r"per_grouped_channel.*deployment_target is iOS17"):
        export(
            run_dir, "coreml", options=["quantize=palettize4", "palettize_granularity=per_grouped_channel"]
        )
    assert not (run_dir / "exports" / ".coreml-iphone.tmp").exists()
    with pytest.raises(ExportError, match="unknown option 'quantise'.*did you mean 'quantize'"):
        export(run_dir, "coreml", options=["quantise=w8"])


@pytest.mark.slow
def test_w8a8_grouped_palettes_and_image_input(run_dir: Path) -> None:
    m = export(
        run_dir, "coreml", options=["quantize=w8a8", "calibration_samples=8"], out=run_dir / "x-w8a8"
    ).manifest
    g = m["details"]["graphs"]["model"]
    assert g["ops"]["quantize"] > 0 and g["ops"]["dequantize"] > 0  # activations in INT8
    assert g["compressed_weights"]["linear8"]["tensors"] == 5
    assert g["w8a8"]["calibration_samples"] == 8 and g["w8a8"]["simulated_max_rel_error"] < 0.1
    opts = ["quantize=palettize4", "palettize_granularity=per_grouped_channel", "deployment_target=iOS18"]
    m = export(run_dir, "coreml", options=opts, out=run_dir / "x-grouped").manifest
    g = m["details"]["graphs"]["model"]
    assert g["compressed_weights"]["palette4"]["tensors"] >= 3 and g["spec_version"] == 9
    m = export(run_dir, "coreml", options=["image_input=true"], out=run_dir / "x-image").manifest
    info = read_package(run_dir / "x-image" / "model.mlpackage")
    assert info.inputs[0]["kind"] == "image" and info.inputs[0]["color"] == "GRAYSCALE"
    assert m["details"]["graphs"]["model"]["image_input"]["scale"] == pytest.approx(1 / 255)
    assert "pixels 0..255" in info.inputs[0]["description"]


# --------------------------------------------------------------------------- missing coremltools


@pytest.fixture
def no_coremltools(tmp_path: Path) -> dict[str, str]:
    """A subprocess environment in which ``import coremltools`` fails (as if not installed)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['coremltools'] = None\n")
    import os

    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_missing_coremltools_gives_the_install_hint(run_dir: Path, no_coremltools: dict[str, str]) -> None:
    targets = run_cli(["targets", "--json"], env_extra=no_coremltools)
    assert targets.returncode == 0, targets.stderr
    rows = {r["name"]: r for r in json.loads(targets.stdout)}
    assert rows["coreml-iphone"]["verifiable_here"] is False
    assert "pip install 'kdtool[coreml]'" in rows["coreml-iphone"]["why_not"]
    assert rows["onnx-cpu"]["why_not"] == "" or "coremltools" not in rows["onnx-cpu"]["why_not"]
    result = run_cli(["export", str(run_dir), "--target", "coreml"], env_extra=no_coremltools)
    assert result.returncode == 5
    # (the CLI prints errors through rich markup, which currently eats "[coreml]": a core fix)
    assert "exporter 'coreml' needs 'coremltools'" in result.stderr and "pip install 'kdtool" in result.stderr


@pytest.mark.slow
def test_missing_coremltools_hint_in_kdtool_plugins(no_coremltools: dict[str, str]) -> None:
    plugins = run_cli(["plugins", "--json"], env_extra=no_coremltools)
    info = {p["name"]: p for p in json.loads(plugins.stdout)["plugins"]}["coreml"]
    assert info["registered"]["exporter"] == ["coreml"]  # registered, so targets and export can explain
    assert "pip install 'kdtool[coreml]'" in json.dumps(info)


def test_exporter_without_coremltools_raises_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from kdtool_coreml import exporter as mod

    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(ExportError, match="needs coremltools") as err:
        mod.import_coremltools()
    assert err.value.hint == "pip install 'kdtool[coreml]'"
    assert CoreMLExporter.capabilities.missing_requirements() == [
        ("coremltools", "pip install 'kdtool[coreml]'")
    ]
