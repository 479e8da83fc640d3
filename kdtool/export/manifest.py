"""``manifest.json`` beside every artifact (versioned; tools read it, nothing parses logs).

Fields: ``schema_version``, ``status`` (ok | parity_failed | metric_failed), ``format``,
``target``, ``precision``, ``options`` (resolved), ``task``, ``model``, ``source`` (run,
recipe hash, weights sha256), ``graphs`` (file, inputs/outputs with shapes and dtypes,
dynamic axes min/opt/max), ``metadata`` (labels, pre/post-processing), ``files`` (path,
sha256, bytes), ``size_bytes``, ``versions``, ``verification`` (parity per graph, output and
shape), ``metric`` (PyTorch vs artifact), ``not_verified`` (what and why), ``bench``.

Schema 2 records ``source.run`` relative to the manifest's folder (so an artifact copied or
moved together with its run still finds it; ``source.run_at_export`` keeps the absolute path
as a fallback). Schema 1 manifests (an absolute ``source.run``) still load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdtool.errors import ExportError, RunError
from kdtool.io import read_json, sha256_file, write_json

MANIFEST_SCHEMA_VERSION = 2
# versions this kdtool reads (1: source.run is an absolute path)
READABLE_MANIFEST_VERSIONS = (1, 2)


def run_reference(run_dir: Path, manifest_dir: Path) -> str:
    """``source.run`` of a manifest in ``manifest_dir``: the run's path relative to it (POSIX
    separators), or the absolute path where no relative one exists (another drive)."""
    run_abs, here = Path(run_dir).resolve(), Path(manifest_dir).resolve()
    try:
        return Path(os.path.relpath(run_abs, here)).as_posix()
    except ValueError:
        return str(run_abs)


def run_of_manifest(manifest: dict[str, Any], manifest_path: Path) -> Path:
    """The run directory a manifest refers to. A relative ``source.run`` is resolved against
    the manifest's folder; when it is not there (an artifact copied alone) the absolute
    ``source.run_at_export`` is tried. Schema 1 manifests hold an absolute path."""
    source = manifest.get("source")
    if not isinstance(source, dict) or not source.get("run"):
        raise ExportError(
            f"{manifest_path} does not name the run it was exported from (no source.run)",
            hint="artifacts written by bench scripts have no run; export from a run with `kdtool export`",
        )
    ref = Path(source["run"])
    if ref.is_absolute():
        return ref
    here = (Path(manifest_path).parent / ref).resolve()
    fallback = source.get("run_at_export")
    if not (here / "summary.json").is_file() and fallback and (Path(fallback) / "summary.json").is_file():
        return Path(fallback)
    return here


def file_entries(directory: Path, files: list[Path]) -> list[dict[str, Any]]:
    entries = []
    for path in files:
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            digest = ""
        else:
            size = path.stat().st_size
            digest = sha256_file(path)
        entries.append({"path": str(path.relative_to(directory)), "sha256": digest, "bytes": size})
    return entries


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    write_json(path, manifest)


def find_manifest(path: Path) -> Path:
    """The manifest of an artifact given its folder, its manifest, or one of its files."""
    path = Path(path)
    for candidate in (path / "manifest.json", path.parent / "manifest.json", path):
        if candidate.name == "manifest.json" and candidate.is_file():
            return candidate
    raise ExportError(f"{path} is not an exported artifact (no manifest.json beside it)")


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = find_manifest(path)
    try:
        manifest = read_json(manifest_path, what="artifact manifest")
    except RunError as exc:
        raise ExportError(str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") not in READABLE_MANIFEST_VERSIONS:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ExportError(
            f"{manifest_path} has schema_version {version}; this kdtool reads "
            f"{', '.join(map(str, READABLE_MANIFEST_VERSIONS))}"
        )
    return manifest
