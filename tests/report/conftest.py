"""A real tiny distilled run (digits) with an ONNX export, shared by the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.export.driver import ExportRequest, export_model
from kdtool.recipe import load_recipe
from tests.helpers import tiny_recipe, write_recipe


@pytest.fixture(scope="session")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Teacher, distilled student and baseline student (20 steps each, two evaluations per
    stage) plus an ONNX export of the student. Tests that change the run copy it first."""
    tmp = tmp_path_factory.mktemp("report")
    recipe = tiny_recipe(tmp / "runs")
    for stage in recipe["stages"]:
        stage["steps"] = 20
        stage["eval_every_steps"] = 10
    path = write_recipe(tmp / "tiny.yaml", recipe)
    run_dir = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(run_dir, Path)
    export_model(ExportRequest(run=run_dir, target="onnx", eval_limit=100), echo=lambda _m: None)
    return run_dir
