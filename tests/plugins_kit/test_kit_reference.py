"""The conformance kit's reference run needs no built-in task plugin (kdtool.testing_ref)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdtool.plugins import DISABLE_ENV, PluginManager, get_plugin_manager
from kdtool.testing import check_exporter, make_reference_run
from kdtool.testing_ref import TASK, with_reference_task


def test_reference_run_and_exporter_check_work_with_classification_blocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DISABLE_ENV, "classification")
    manager = PluginManager(warn=lambda _m: None)
    assert "image_classification" not in manager.registries().tasks  # the plugin is really blocked
    assert manager.infos["classification"].status == "disabled"

    run = make_reference_run(tmp_path / "ref", manager)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["task"] == TASK
    assert 0.0 <= summary["models"]["model"]["metrics"]["accuracy"] <= 1.0
    assert (run / summary["models"]["model"]["weights"]).exists()

    # the whole exporter check, through the real export driver, on that reference run
    report = check_exporter("onnx", workdir=tmp_path / "kit", manager=manager)
    assert any("through the export driver" in line for line in report.passed), report


def test_reference_task_is_not_registered_globally() -> None:
    global_manager = get_plugin_manager()
    assert TASK not in global_manager.registries().tasks
    kit = with_reference_task(global_manager)
    assert kit is not global_manager and TASK in kit.registries().tasks
    assert TASK not in global_manager.registries().tasks
    assert with_reference_task(kit) is kit  # added once
