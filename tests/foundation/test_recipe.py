from __future__ import annotations

from pathlib import Path

import pytest

from kdtool.errors import RecipeError
from kdtool.recipe import load_recipe
from tests.helpers import REPO, tiny_recipe, write_recipe


def test_shipped_recipe_loads() -> None:
    loaded = load_recipe(REPO / "recipes" / "image_classification.yaml")
    recipe = loaded.recipe
    assert recipe.task.name == "image_classification"
    assert [s.name for s in recipe.stages] == ["teacher", "student", "baseline_student"]
    assert recipe.stage("student").teachers[0].stage == "teacher"
    from kdtool.task import default_roles

    assert recipe.default_deploy_model(default_roles()) == "student"


def test_unknown_key_names_file_line_path_and_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\ntask: {name: image_classification}\nmodels:\n  s: {arch: cls_mlp}\n"
        "stages:\n  - name: student\n    model: s\n    steps: 3\n    batch_sise: 8\n"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert f"{path}:9" in msg
    assert "stages[0](student).batch_sise" in msg
    assert "did you mean 'batch_size'" in msg


def test_wrong_type_and_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\ntask: {name: x}\nmodels: {}\nstages:\n  - name: a\n    model: m\n    epochs: many\n"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "epochs" in msg and "many" in msg and f"{path}:7" in msg


def test_unknown_model_reference_suggests(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    recipe["stages"][0]["model"] = "teachr"
    with pytest.raises(RecipeError, match="did you mean 'teacher'"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_teacher_must_be_an_earlier_stage(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    recipe["stages"][1]["teachers"] = ["baseline_student"]
    with pytest.raises(RecipeError, match="teacher stage"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_overrides_address_list_items_by_name(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    loaded = load_recipe(
        path, ["stages.student.steps=7", "seed=3", "stages.student.optimizer.lr=0.5", "data.augment=true"]
    )
    assert loaded.recipe.stage("student").steps == 7
    assert loaded.recipe.stage("student").optimizer.lr == 0.5
    assert loaded.recipe.seed == 3
    assert loaded.recipe.data["augment"] is True


def test_override_errors(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    with pytest.raises(RecipeError, match="did you mean 'student'"):
        load_recipe(path, ["stages.studnt.steps=7"])
    with pytest.raises(RecipeError, match="KEY.PATH=VALUE"):
        load_recipe(path, ["seed"])
    with pytest.raises(RecipeError, match="steps"):
        load_recipe(path, ["stages.student.steps=-1"])


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstages: [\n  {name: a\n")
    with pytest.raises(RecipeError, match=r"bad.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_yaml_tags_are_data_not_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


def test_stage_needs_epochs_or_steps(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    recipe["stages"][0]["epochs"] = 2
    with pytest.raises(RecipeError, match="exactly one of 'epochs' or 'steps'"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
