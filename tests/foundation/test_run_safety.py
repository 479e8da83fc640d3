"""Runs that fail, runs started together, resume after a recipe edit, progress when piped."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import kdtool
from kdtool.engine.rundir import newest_run
from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.errors import DataError, RunError
from kdtool.plugins import PluginInfo, PluginManager
from kdtool.recipe import load_recipe
from kdtool.report import ReportOptions, collect_run
from kdtool.run import Run
from tests.helpers import run_cli, tiny_recipe, write_recipe


def engine(
    path: Path, overrides: list[str] | None = None, manager: PluginManager | None = None, **opts: Any
) -> Engine:
    messages: list[str] = opts.pop("messages", [])
    return Engine(
        load_recipe(path, overrides or []),
        DistillOptions(progress=False, echo=messages.append, **opts),
        manager or PluginManager(),
    )


def test_a_run_that_fails_at_start_keeps_latest_and_is_marked_failed(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    good = engine(path, max_steps=2).run()
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DataError):
        engine(path, ["data.source=imagefolder", f"data.root={missing}"]).run()
    # the failed run did not take either pointer from the good run
    assert (tmp_path / "runs" / "latest").resolve() == good
    assert (tmp_path / "runs" / "tiny" / "latest").resolve() == good
    failed = newest_run(tmp_path / "runs" / "tiny")
    assert failed is not None and failed != good
    summary = json.loads((failed / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"]["kind"] == "data error"
    assert str(missing) in summary["error"]["message"]
    # export and report say plainly that the run failed, without a --resume hint
    with pytest.raises(RunError) as info:
        Run.open(failed).model_name(None)
    text = str(info.value)
    assert "failed" in text and "data error" in text and "--resume" not in text
    said: list[str] = []
    data = collect_run(failed, ReportOptions(measure=False, task_figures=False, echo=said.append))
    assert any("failed" in n for n in data.notes) and any("failed" in m for m in said)


class _RunAnotherWhenAStageStarts:
    """On the first stage start of run A, runs a whole run B (as if started together)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.other: Path | None = None

    @kdtool.hookimpl
    def on_stage_start(self, run_dir: Path, stage: str, recipe: dict[str, Any]) -> None:
        if self.other is None:
            self.other = engine(self.path, max_steps=2).run()


def test_latest_points_at_the_run_that_finished_last(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    hook = _RunAnotherWhenAStageStarts(path)
    pm = PluginManager()
    pm.pm.register(hook, name="run_another")
    pm.infos["run_another"] = PluginInfo(name="run_another", module=__name__)
    pm._registries = None
    first = engine(path, manager=pm, max_steps=2).run()
    assert hook.other is not None and hook.other != first
    # B was created after A but finished before it: latest is A
    assert (tmp_path / "runs" / "latest").resolve() == first
    assert (tmp_path / "runs" / "tiny" / "latest").resolve() == first


def test_resume_after_a_recipe_edit_reruns_only_changed_stages(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path / "runs")
    for stage in recipe["stages"]:
        stage["steps"] = 6
    path = write_recipe(tmp_path / "r.yaml", recipe)
    run_dir = engine(path).run()
    models = run_dir / "models"
    before = {
        n: (models / f"{n}.safetensors").stat().st_mtime_ns
        for n in ("teacher", "student", "baseline_student")
    }

    # the student's KD weight changes: the teacher and the baseline (which does not learn
    # from anything that changed) are reused, the student reruns
    recipe["stages"][1]["losses"][1]["weight"] = 0.7
    write_recipe(path, recipe)
    said: list[str] = []
    assert engine(path, resume=True, messages=said).run() == run_dir
    after = {n: (models / f"{n}.safetensors").stat().st_mtime_ns for n in before}
    assert after["teacher"] == before["teacher"]
    assert after["baseline_student"] == before["baseline_student"]
    assert after["student"] != before["student"]
    plan = next(m for m in said if m.startswith("recipe changed"))
    assert "reusing teacher, baseline_student" in plan and "rerunning student" in plan
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and set(summary["models"]) == set(before)
    train = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    student_steps = [r["step"] for r in train if r["stage"] == "student"]
    assert student_steps == sorted(set(student_steps))  # the old student's records are gone

    # the teacher's learning rate changes: the teacher and the student that learns from it rerun
    recipe["stages"][0]["optimizer"]["lr"] = 0.02
    write_recipe(path, recipe)
    said.clear()
    engine(path, resume=True, messages=said).run()
    again = {n: (models / f"{n}.safetensors").stat().st_mtime_ns for n in before}
    assert again["teacher"] != after["teacher"] and again["student"] != after["student"]
    assert again["baseline_student"] == before["baseline_student"]
    plan = next(m for m in said if m.startswith("recipe changed"))
    assert "reusing baseline_student" in plan and "rerunning teacher, student" in plan


class _StopAfterFirstCheckpoint:
    """Interrupts the run right after its first checkpoint (as a Ctrl-C would)."""

    @kdtool.hookimpl
    def on_checkpoint_saved(self, run_dir: Path, stage: str, step: int, path: Path) -> None:
        raise KeyboardInterrupt


def test_resumed_stage_time_excludes_the_downtime(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path / "runs")
    recipe["stages"] = recipe["stages"][:1]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    pm = PluginManager()
    pm.pm.register(_StopAfterFirstCheckpoint(), name="stopper")
    pm.infos["stopper"] = PluginInfo(name="stopper", module=__name__)
    pm._registries = None
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        engine(path, manager=pm).run()
    first = time.perf_counter() - start
    interrupted = newest_run(tmp_path / "runs" / "tiny")
    assert interrupted is not None
    assert json.loads((interrupted / "summary.json").read_text())["status"] == "interrupted"
    downtime = 3.0
    time.sleep(downtime)
    said: list[str] = []
    start = time.perf_counter()
    run_dir = engine(path, resume=True, messages=said).run()
    second = time.perf_counter() - start
    assert run_dir == interrupted
    assert any("resuming from checkpoints/teacher/step-0000010" in m for m in said)
    seconds = json.loads((run_dir / "summary.json").read_text())["models"]["teacher"]["train_seconds"]
    done = next(m for m in said if "done in" in m)
    shown = float(done.split("done in ")[1].split("s")[0])
    # the stage's time is the two invocations' training at most, never the pause between
    assert seconds <= first + second and shown <= first + second


def test_progress_lines_when_stdout_is_not_a_terminal(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path / "runs")
    recipe["stages"] = recipe["stages"][:1]
    recipe["stages"][0]["steps"] = 20
    recipe["logging"] = {"every_steps": 5, "progress": True, "plain_every_steps": 5}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    log = tmp_path / "out.txt"
    result = run_cli(["distill", str(path), "--no-report"])
    log.write_text(result.stdout)
    assert result.returncode == 0, result.stderr
    lines = [x for x in result.stdout.splitlines() if x.startswith("teacher: step ")]
    assert [x.split()[2] for x in lines] == ["5/20", "10/20", "15/20", "20/20"]
    assert all("loss " in x and "nan" not in x for x in lines)
    assert "samples/s" in lines[1] and "ETA" in lines[1]
    # the environment sets the interval for a batch job without editing the recipe
    every_10 = run_cli(["distill", str(path), "--no-report"], env_extra={"KDTOOL_PROGRESS_STEPS": "10"})
    assert [x.split()[2] for x in every_10.stdout.splitlines() if x.startswith("teacher: step ")] == [
        "10/20",
        "20/20",
    ]


def test_progress_bar_shows_no_loss_before_the_first_step() -> None:
    from kdtool.engine.progress import StageProgress

    progress = StageProgress(enabled=True, description="s", total=10, completed=0, plain=True, echo=print)
    first = progress.line(0)
    assert "loss" not in first and "nan" not in first
    progress.update(1, float("nan"))  # a NaN never shows as a value
    assert "loss" not in progress.line(1)
    progress.update(2, 0.5)
    assert "loss 0.5000" in progress.line(2)


def test_without_a_finished_run_commands_name_the_failed_one(tmp_path: Path) -> None:
    from kdtool.engine.rundir import resolve_run

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    with pytest.raises(DataError):
        engine(path, ["data.source=imagefolder", f"data.root={tmp_path / 'nothing'}"]).run()
    with pytest.raises(RunError) as info:
        resolve_run(None, tmp_path / "runs")
    text = str(info.value)
    assert "no finished run" in text and "failed (data error" in text
