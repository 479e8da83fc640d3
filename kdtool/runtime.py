"""Load an exported artifact and run it: ``kdtool.runtime.load(path)``.

This is the reference for how an app must feed the model: the returned runner takes the
graph inputs the manifest lists; ``predict_files`` applies the manifest's pre- and
post-processing to real files (``kdtool predict``). The manifest's ``format`` names the
exporter whose ``load`` builds the runner: ONNX Runtime sessions for ``onnx``, sherpa-onnx's
recogniser for ``sherpa`` (a runner that takes waveforms, see ``kdtool_asr.sherpa``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdtool.errors import KdtoolError
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
    """Run an artifact on input files with its task's pre- and post-processing.

    Each input is run on its own, so one unreadable file does not cost the others: its
    result is ``{"input": ..., "error": ...}``. Outputs such as masks go to ``out_dir``
    (default ``./predictions``), never into the artifact folder."""
    runner = load(path)
    manifest: dict[str, Any] = runner.manifest  # type: ignore[attr-defined]
    task_cls = get_registries().tasks.get(manifest["task"])
    artifact_dir = Path(runner.directory).resolve()  # type: ignore[attr-defined]
    out = out_dir if out_dir is not None else Path.cwd() / "predictions"
    resolved = out.resolve()
    if resolved == artifact_dir or artifact_dir in resolved.parents:
        raise KdtoolError(
            f"--out {out} is inside the artifact folder {artifact_dir}; predictions never go into an artifact",
            hint="pass another folder, e.g. --out predictions",
        )
    created = not out.exists()
    results: list[dict[str, Any]] = []
    for item in inputs:
        item = Path(item)
        if not item.is_file():
            results.append({"input": str(item), "error": f"input file not found: {item}"})
            continue
        out.mkdir(parents=True, exist_ok=True)
        try:
            results.extend(task_cls.predict_files(runner, manifest["metadata"], [item], out))
        except NotImplementedError:
            raise
        except Exception as exc:  # one bad input is reported; the others still get results
            message = exc.message if isinstance(exc, KdtoolError) else f"{type(exc).__name__}: {exc}"
            results.append({"input": str(item), "error": f"cannot read {item}: {message}"})
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # the task wrote no files (e.g. class labels only)
    return results
