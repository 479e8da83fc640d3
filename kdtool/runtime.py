"""Load an exported artifact and run it: ``kdtool.runtime.load(path)``.

This is the reference for how an app must feed the model: the returned runner takes the
graph inputs the manifest lists; ``predict_files`` applies the manifest's pre- and
post-processing to real files (``kdtool predict``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdtool.export.exporter import ArtifactRunner
from kdtool.export.manifest import find_manifest, read_manifest
from kdtool.plugins import get_registries


def load(path: str | Path, *, device: str = "cpu", threads: int | None = None) -> ArtifactRunner:
    """A runner for an artifact folder, its manifest, or a file inside it.

    ``threads`` overrides the artifact's intra-op thread count where its format has one
    (ONNX Runtime: ``options.threads``; 0 means the runtime's default)."""
    manifest_path = find_manifest(Path(path))
    manifest = read_manifest(manifest_path)
    exporter = get_registries().exporters.get(manifest["format"])()
    load_manifest = manifest
    if threads is not None and "threads" in manifest.get("options", {}):
        load_manifest = {**manifest, "options": {**manifest["options"], "threads": threads}}
    runner = exporter.load(manifest_path.parent, load_manifest, device=device)
    runner.manifest = manifest  # type: ignore[attr-defined]
    runner.directory = manifest_path.parent  # type: ignore[attr-defined]
    return runner


def predict_files(path: str | Path, inputs: list[Path], out_dir: Path | None = None) -> list[dict[str, Any]]:
    """Run an artifact on input files with its task's pre- and post-processing."""
    runner = load(path)
    manifest: dict[str, Any] = runner.manifest  # type: ignore[attr-defined]
    task_cls = get_registries().tasks.get(manifest["task"])
    out = out_dir or Path(runner.directory) / "predictions"  # type: ignore[attr-defined]
    out.mkdir(parents=True, exist_ok=True)
    return task_cls.predict_files(runner, manifest["metadata"], [Path(p) for p in inputs], out)
