"""A third-party exporter and target profile through the hooks, reusing ONNX the open way."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from kdtool import hookimpl
from kdtool.export.driver import ExportRequest, export_model
from kdtool.export.exporter import (
    Artifact,
    ArtifactRunner,
    Capabilities,
    ExportContext,
    Exporter,
    ExporterOptions,
)
from kdtool.export.spec import ExportSpec
from kdtool.export.targets import TargetProfile
from kdtool.plugins import PluginInfo, PluginManager
from tests.export.test_onnx_export import run_dir  # noqa: F401  (module-scoped fixture)


class ZipOptions(ExporterOptions):
    compression: int = 8


class ZipOnnxExporter(Exporter):
    """Packs the framework's ONNX artifact into a zip (a stand-in for a vendor format)."""

    capabilities = Capabilities(
        name="ziponnx",
        suffix=".zip",
        precisions=("fp32",),
        options_model=ZipOptions,
        default_profile="ziponnx-cpu",
    )

    def export(
        self, spec: ExportSpec, options: ExporterOptions, out_dir: Path, ctx: ExportContext
    ) -> Artifact:
        onnx_artifact = ctx.require_artifact("onnx", {})
        path = out_dir / "model.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for graph, file in onnx_artifact.graph_files.items():
                zf.write(file, arcname=f"{graph}.onnx")
        shutil.rmtree(onnx_artifact.directory)
        return Artifact(out_dir, {g.name: path for g in spec.graphs})

    def inspect(self, spec: ExportSpec, artifact: Artifact, options: ExporterOptions) -> dict[str, Any]:
        return {"zip_ok": zipfile.ZipFile(next(iter(artifact.graph_files.values()))).testzip() is None}

    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        from kdtool.export import load_onnx_runner

        unpacked = directory / "unpacked"
        with zipfile.ZipFile(directory / "model.zip") as zf:
            zf.extractall(unpacked)
        files = {name: unpacked / f"{name}.onnx" for name in manifest["graphs"]}
        return load_onnx_runner(files, manifest, kind="ziponnx")


class ZipPlugin:
    @staticmethod
    @hookimpl
    def register_exporters(register: Any) -> None:
        register("ziponnx", ZipOnnxExporter)

    @staticmethod
    @hookimpl
    def register_targets(register: Any) -> None:
        register(
            "ziponnx-cpu", TargetProfile(name="ziponnx-cpu", exporter="ziponnx", description="zipped ONNX")
        )


def test_third_party_exporter_uses_the_onnx_artifact_openly(run_dir: Path) -> None:  # noqa: F811
    manager = PluginManager()
    manager.pm.register(ZipPlugin, name="zip")
    manager.infos["zip"] = PluginInfo(name="zip", module=__name__)
    outcome = export_model(
        ExportRequest(run=run_dir, target="ziponnx", out=run_dir / "zip"),
        manager=manager,
        echo=lambda _m: None,
    )
    m = outcome.manifest
    assert m["format"] == "ziponnx" and m["target"] == "ziponnx-cpu"
    assert m["dependencies"]["onnx-cpu"]["exporter"] == "onnx"  # recorded, not hidden
    assert m["verification"]["checks"]["zip_ok"] is True  # the exporter's inspect()
    # the driver verified the zipped graphs through the exporter's load(), like any format
    assert m["verification"]["checks"]["parity_runtime"] == "ziponnx"
    assert m["verification"]["passed"] is True and m["verification"]["parity"]
    assert m["metric"]["drop"] == pytest.approx(0.0, abs=1e-6)


def test_profile_named_like_an_exporter_is_a_conflict() -> None:
    class Clash:
        @staticmethod
        @hookimpl
        def register_targets(register: Any) -> None:
            register("onnx", TargetProfile(name="onnx", exporter="onnx", description="clash"))

    manager = PluginManager()
    manager.pm.register(Clash, name="clash")
    manager.infos["clash"] = PluginInfo(name="clash", module=__name__)
    from kdtool.errors import PluginError

    # the clash is reported, and fails only where the name is used
    regs = manager.registries()
    assert any("has the name of an exporter" in message for message in manager.conflicts)
    with pytest.raises(PluginError, match="has the name of an exporter"):
        regs.targets.get("onnx")
    with pytest.raises(PluginError, match="has the name of an exporter"):
        regs.exporters.get("onnx")
    assert regs.targets.get("onnx-cpu-int8").exporter == "onnx"  # other names still work
