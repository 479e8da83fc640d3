"""``manifest.json`` beside every artifact (versioned; tools read it, nothing parses logs).

Fields: ``schema_version``, ``status`` (ok | parity_failed | metric_failed), ``format``,
``target``, ``precision``, ``options`` (resolved), ``task``, ``model``, ``source`` (run,
recipe hash, weights sha256), ``graphs`` (file, inputs/outputs with shapes and dtypes,
dynamic axes min/opt/max), ``metadata`` (labels, pre/post-processing), ``files`` (path,
sha256, bytes), ``size_bytes``, ``versions``, ``verification`` (parity per graph, output and
shape), ``metric`` (PyTorch vs artifact), ``not_verified`` (what and why), ``bench``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdtool.errors import ExportError, RunError
from kdtool.io import read_json, sha256_file, write_json

MANIFEST_SCHEMA_VERSION = 1


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
    if manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise ExportError(
            f"{manifest_path} has schema_version {manifest.get('schema_version')}; this kdtool reads {MANIFEST_SCHEMA_VERSION}"
        )
    return manifest
