"""`kdtool study` end to end on the shipped classification recipe (2 seeds, a few steps)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kdtool.cli import main
from kdtool.errors import RunError
from kdtool.study import HELPED, HURT, NO_DIFFERENCE, StudyOptions, run_study, threads_per_job

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "image_classification.yaml"


def _study(tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "study",
            str(RECIPE),
            "--seeds",
            "2",
            "--max-steps",
            "6",
            "--set",
            f"runs_dir={tmp_path / 'runs'}",
            "--set",
            "device=cpu",
            *extra,
        ]
    )


@pytest.mark.slow
def test_study_writes_paired_statistics_and_resumes_only_unfinished_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _study(tmp_path) == 0
    printed = capsys.readouterr().out
    # not a terminal: the table is printed at full width, no cell cut to "…"
    assert "baseline_student" in printed and "…" not in printed
    (study_dir,) = (tmp_path / "runs" / "image_classification").glob("study-*")
    study = json.loads((study_dir / "study.json").read_text())
    assert study["recipe"] == "image_classification"
    assert study["seeds"] == [0, 1] and study["complete"] is True
    assert study["max_steps"] == 6
    assert study["primary_metric"] == {"name": "accuracy", "higher_is_better": True}
    assert set(study["models"]) == {"teacher", "student", "baseline_student"}
    runs = {}
    for seed, rel in study["runs"].items():
        summary = json.loads((study_dir / rel / "summary.json").read_text())
        resolved = (study_dir / rel / "recipe.resolved.yaml").read_text()
        assert f"seed: {seed}\n" in resolved  # each seed is its own full run
        assert summary["status"] == "complete"
        runs[int(seed)] = summary
    for name, model in study["models"].items():
        values = [runs[s]["models"][name]["metrics"]["accuracy"] for s in (0, 1)]
        assert model["metrics"]["accuracy"]["values"] == values
        assert model["metrics"]["accuracy"]["mean"] == pytest.approx(sum(values) / 2)
        assert model["train_seconds"]["n"] == 2
    (pair,) = study["pairs"]
    assert (pair["student"], pair["baseline"]) == ("student", "baseline_student")
    diffs = [
        runs[s]["models"]["student"]["metrics"]["accuracy"]
        - runs[s]["models"]["baseline_student"]["metrics"]["accuracy"]
        for s in (0, 1)
    ]
    assert pair["differences"] == pytest.approx(diffs)
    assert pair["wins"] == sum(d > 0 for d in diffs)
    assert pair["verdict"] in (HELPED, NO_DIFFERENCE, HURT)
    assert pair["ci"][0] <= pair["mean"] <= pair["ci"][1]
    assert "| student | baseline_student |" in (study_dir / "study.md").read_text()
    assert pair["verdict"] in (study_dir / "study.html").read_text()

    # a study killed after seed 0: seed 1 never finished
    seed0_log = (study_dir / "seed-0" / "distill.log").read_text()
    seed0_summary = (study_dir / "seed-0" / "summary.json").read_bytes()
    shutil.rmtree(study_dir / "seed-1")
    (study_dir / "study.json").unlink()
    assert _study(tmp_path, "--resume") == 0
    assert (study_dir / "seed-0" / "distill.log").read_text() == seed0_log  # not run again
    assert (study_dir / "seed-0" / "summary.json").read_bytes() == seed0_summary
    resumed = json.loads((study_dir / "study.json").read_text())
    assert resumed["seeds"] == [0, 1] and resumed["complete"] is True
    # the rerun seed is deterministic: the same numbers as the first time
    assert resumed["pairs"][0]["differences"] == pytest.approx(pair["differences"])


def test_resume_refuses_a_study_started_with_other_overrides(tmp_path: Path) -> None:
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    from kdtool.recipe import load_recipe

    config = {
        "recipe_file": str(RECIPE),
        "recipe_hash": load_recipe(RECIPE).recipe.hash(),
        "overrides": [],
        "max_steps": 6,
        "base_seed": 0,
    }
    (study_dir / "study.config.json").write_text(json.dumps(config))
    opts = StudyOptions(seeds=2, max_steps=5, resume=True, study_dir=study_dir, echo=lambda _m: None)
    with pytest.raises(RunError, match="max_steps"):
        run_study(RECIPE, opts)
    assert not (study_dir / "seed-0").exists()  # refused before running anything


def test_threads_per_job_divides_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert threads_per_job(1) == 8
    assert threads_per_job(3) == 2
    assert threads_per_job(16) == 1
