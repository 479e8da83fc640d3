"""The tune split: held out of training, used by `keep: best`, validation only reported."""

from __future__ import annotations

import json
import math
from pathlib import Path

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.io import read_json
from kdtool.recipe import load_recipe
from tests.helpers import tiny_recipe, write_recipe


def _engine(tmp_path: Path, **overrides: object) -> Engine:
    path = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path / "runs", **overrides))
    return Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None))


def test_tune_prefix_is_held_out_of_every_stage(tmp_path: Path) -> None:
    engine = _engine(tmp_path, tune_fraction=0.1)
    n = len(engine._dataset("train"))  # type: ignore[arg-type]
    size = engine._tune_size()
    assert size == math.ceil(0.1 * n)
    for stage in engine.recipe.stages:
        subset = engine._train_subset(stage)
        assert subset is not None
        assert min(subset) == size and len(subset) == n - size


def test_task_subset_is_kept_and_tune_removed(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path / "runs", tune_fraction=0.2)
    recipe["stages"][2]["options"] = {"labeled_fraction": 0.3}  # the baseline: labelled subset only
    engine = Engine(
        load_recipe(write_recipe(tmp_path / "t.yaml", recipe)),
        DistillOptions(progress=False, echo=lambda _m: None),
    )
    stage = engine.recipe.stage("baseline_student")
    labelled = engine.task.train_indices(stage)
    assert labelled is not None
    assert engine._train_subset(stage) == [i for i in labelled if i >= engine._tune_size()]


def test_no_tune_split_by_default(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    assert engine._tune_size() == 0
    assert engine._train_subset(engine.recipe.stage("student")) is None


def test_keep_best_selects_on_tune_and_reports_val(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path / "runs", tune_fraction=0.1)
    for stage in recipe["stages"]:
        stage["eval_every_steps"] = 10
    path = write_recipe(tmp_path / "tiny.yaml", recipe)
    engine = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None))
    run_dir = engine.run()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = read_json(run_dir / "summary.json")
    for stage in ("teacher", "student", "baseline_student"):
        tune = {r["step"]: r["accuracy"] for r in records if r["stage"] == stage and r["split"] == "tune"}
        val = {r["step"]: r["accuracy"] for r in records if r["stage"] == stage and r["split"] == "val"}
        assert sorted(tune) == [10, 20, 30] and sorted(val) == [10, 20, 30]
        best = max(tune, key=lambda s: (tune[s], -s))  # first step with the best tune accuracy
        entry = summary["models"][stage]
        assert entry["kept"] == f"best (step {best}, selected on tune)"
        # the reported metric is the validation score of the kept step, not the tune score
        assert entry["metrics"]["accuracy"] == val[best]
