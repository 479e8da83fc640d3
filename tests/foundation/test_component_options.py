"""Typos in the options of registered components fail when the recipe loads (file:line, did-you-mean)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kdtool.engine.options import check_component_options
from kdtool.engine.trainer import build_task, check_recipe_names
from kdtool.errors import RecipeError
from kdtool.plugins import get_registries
from kdtool.recipe import load_recipe
from tests.helpers import REPO, run_cli, tiny_recipe, write_recipe


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def validate(path: Path) -> None:
    loaded = load_recipe(path)
    registries = get_registries()
    check_recipe_names(loaded.recipe, registries)
    check_component_options(loaded, registries, build_task(loaded, registries))


def edited(tmp_path: Path, edit: Any) -> Path:
    recipe = tiny_recipe(tmp_path / "runs")
    edit(recipe)
    return write_recipe(tmp_path / "r.yaml", recipe)


def test_model_option_typo_is_caught_by_validate_with_line_and_suggestion(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda r: r["models"]["student"]["options"].update({"hiden": 8}))
    result = run_cli(["recipes", "validate", str(path)])
    assert result.returncode == 2, result.stdout
    err = " ".join(result.stderr.split())
    assert f"{path}:{line_of(path, 'hiden')}" in err
    assert "models.student.options.hiden" in err and "did you mean 'hidden'?" in err


def test_loss_option_typo_is_caught_before_training(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda r: r["stages"][1]["losses"][1].update({"options": {"temprature": 2.0}}))
    with pytest.raises(RecipeError) as info:
        validate(path)
    text = str(info.value)
    assert f"{path}:{line_of(path, 'temprature')}" in text
    assert "loss 'kl_t'" in text and "did you mean 'temperature'?" in text
    # --dry-run fails the same way, before anything is trained
    dry = run_cli(["distill", str(path), "--dry-run"])
    assert dry.returncode == 2 and "temprature" in dry.stderr
    assert not (tmp_path / "runs").exists()


def test_optimizer_schedule_and_teacher_options_are_checked(tmp_path: Path) -> None:
    def edit(r: dict[str, Any]) -> None:
        r["stages"][0]["optimizer"]["options"] = {"betaz": [0.9, 0.99]}
        r["stages"][0]["schedule"] = {"name": "cosine", "options": {"min_factr": 0.1}}

    path = edited(tmp_path, edit)
    with pytest.raises(RecipeError) as info:
        validate(path)
    text = str(info.value)
    assert "optimizer 'adamw'" in text and "did you mean 'betas'?" in text
    assert "schedule 'cosine'" in text and "did you mean 'min_factor'?" in text
    assert f"{path}:{line_of(path, 'betaz')}" in text and f"{path}:{line_of(path, 'min_factr')}" in text
    # valid options pass (forwarded options are checked against torch's optimizer)
    ok = edited(tmp_path, lambda r: r["stages"][0]["optimizer"].update({"options": {"betas": [0.9, 0.99]}}))
    validate(ok)


def test_required_loss_option_is_named(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda r: r["stages"][1]["losses"].append({"name": "h", "loss": "hint"}))
    with pytest.raises(RecipeError) as info:
        validate(path)
    assert "needs option 'student_channels'" in str(info.value)


def test_stage_option_typo_is_caught_with_the_tasks_model(tmp_path: Path) -> None:
    path = edited(tmp_path, lambda r: r["stages"][2].update({"options": {"labeled_fractoin": 0.5}}))
    with pytest.raises(RecipeError) as info:
        validate(path)
    text = str(info.value)
    assert f"{path}:{line_of(path, 'labeled_fractoin')}" in text
    assert "did you mean 'labeled_fraction'?" in text


def test_every_shipped_recipe_still_validates() -> None:
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert data["name"]
        validate(path)
