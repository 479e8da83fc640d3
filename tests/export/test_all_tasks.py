"""Every registered task (as timm tests every registered model): a short distill of its shipped
embedded recipe, then ONNX export, load, run and parity at two sizes per dynamic axis."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.export.driver import ExportRequest, export_model
from kdtool.plugins import get_registries
from kdtool.recipe import load_recipe
from tests.helpers import REPO

TEST_TASKS = {"test_classification", "nan_task"}


def embedded_recipe(task: str) -> Path | None:
    """The shipped recipe of a task that runs on generated or bundled data (no data.root)."""
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if (data.get("task") or {}).get("name") != task:
            continue
        data_section = data.get("data") or {}
        if any(k in data_section for k in ("root", "train_manifest")) or any(
            "onnx" in t or "program" in t
            for s in data.get("stages", [])
            for t in s.get("teachers", [])
            if isinstance(t, dict)
        ):
            continue
        return path
    return None


TASKS = sorted(set(get_registries().tasks.names()) - TEST_TASKS)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_task_distills_exports_and_matches_pytorch(task: str, tmp_path: Path) -> None:
    recipe = embedded_recipe(task)
    if recipe is None:
        pytest.skip(f"task {task!r} ships no embedded-data recipe")
    loaded = load_recipe(recipe, [f"runs_dir={tmp_path / 'runs'}", "device=cpu", "logging.progress=false"])
    run_dir = Engine(loaded, DistillOptions(max_steps=2, progress=False, echo=lambda _m: None)).run()
    assert isinstance(run_dir, Path)
    outcome = export_model(ExportRequest(run=run_dir, target="onnx", eval_limit=16), echo=lambda _m: None)
    manifest = outcome.manifest
    assert manifest["status"] == "ok", manifest["verification"]
    assert manifest["verification"]["passed"] is True
    for name, graph in manifest["graphs"].items():
        assert (outcome.directory / graph["file"]).exists()
        for axis, sizes in graph["dynamic_axes"].items():
            checked = {p["sizes"].get(axis) for p in manifest["verification"]["parity"] if p["graph"] == name}
            if sizes["max"] > sizes["opt"] or sizes["min"] < sizes["opt"]:
                assert len(checked - {None}) >= 2, f"graph {name}: axis {axis} checked only at {checked}"
    assert manifest["metric"] is not None and abs(manifest["metric"]["drop"]) < 0.05
