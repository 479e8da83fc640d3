"""Report-time measurements are bounded and announced; the recipe can turn them off."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdtool.engine.rundir import read_summary
from kdtool.report import ReportOptions, collect_run
from kdtool.report.measure import bounded_times
from tests.helpers import run_cli, tiny_recipe, write_recipe


def test_a_slow_model_gets_fewer_calls_within_the_budget() -> None:
    calls = []

    def slow() -> None:
        calls.append(1)
        time.sleep(0.05)

    times = bounded_times(slow, seconds=0.02)  # one call is longer than the budget
    assert len(calls) == 3 and len(times) == 2
    calls.clear()
    fast_times = bounded_times(lambda: calls.append(1), seconds=0.05)
    assert len(fast_times) >= 10


def test_the_report_latency_budget_skips_the_remaining_models_and_says_so(
    report_run: Path, tmp_path: Path
) -> None:
    import shutil

    run = shutil.copytree(report_run, tmp_path / "run", symlinks=True)
    (run / "report_measurements.json").unlink(missing_ok=True)
    said: list[str] = []
    data = collect_run(
        run, ReportOptions(latency_seconds=0.05, latency_budget=0.0, task_figures=False, echo=said.append)
    )
    models = [r for r in data.models if r.has_weights]
    assert models and all(r.measurement.latency_ms_p50 is None for r in models)
    assert all(r.measurement.flops for r in models)  # MACs are still counted
    assert all(any("time budget" in n for n in r.measurement.notes) for r in models)
    assert any("counting MACs" in m for m in said) and not any("timing" in m for m in said)
    # with a budget, the models are timed, and the console says so first
    said.clear()
    collect_run(
        run, ReportOptions(latency_seconds=0.05, latency_budget=60, task_figures=False, echo=said.append)
    )
    assert any("timing on the CPU" in m for m in said)


def test_recipe_report_section_turns_latency_off_at_the_end_of_distill(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path / "runs")
    recipe["stages"] = recipe["stages"][:1]
    recipe["stages"][0]["steps"] = 3
    recipe["report"] = {"latency": False, "figures": False}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    result = run_cli(["distill", str(path), "--no-progress"])
    assert result.returncode == 0, result.stderr
    run = (tmp_path / "runs" / "latest").resolve()
    assert read_summary(run)["status"] == "complete"
    assert "report: writing the run's report" in result.stdout and "counting MACs" in result.stdout
    cache = json.loads((run / "report_measurements.json").read_text())
    assert all(not entry.get("latency") for entry in cache["models"].values())
    assert (run / "report.html").is_file()
