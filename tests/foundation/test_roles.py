"""Declared stage roles (``Task.roles``), options validated once at load, typed deploy metadata,
and the plugin API 2.0 error for 1.x plugins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kdtool.cli import main
from kdtool.export.spec import (
    METADATA_SCHEMA_VERSION,
    AudioPreprocessing,
    CTCDecoding,
    DeployMetadata,
    ImagePreprocessing,
    Processing,
    TransducerDecoding,
)
from kdtool.hookspecs import API_CHANGES, PLUGIN_API_VERSION
from kdtool.plugins import get_registries
from kdtool.recipe import load_recipe
from kdtool.task import NoStageOptions, RoleSpec, Task, default_roles
from tests.helpers import REPO, make_plugin_distribution, run_cli, tiny_recipe, write_recipe

BUILTIN_TASKS = ["image_classification", "facial_landmarks", "htr", "segmentation_lad", "asr_supernet"]


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


# --------------------------------------------------------------------------- role specs


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_every_builtin_task_declares_its_roles(name: str) -> None:
    task_cls = get_registries().tasks.get(name)
    assert task_cls.roles, f"{name} declares no roles"
    specs = task_cls.role_specs()
    for role, spec in specs.items():
        assert isinstance(spec, RoleSpec)
        assert spec.description, f"{name}.{role} has no description"
        assert spec.options.model_config.get("extra") == "forbid", f"{name}.{role}: options accept any key"
        assert spec.loss_slots, f"{name}.{role} names no loss slot"
    # exactly the controls need baseline_for
    assert [r for r, s in specs.items() if s.baseline] == ["baseline"]


def test_asr_roles_include_supernet_and_core_names_none() -> None:
    specs = get_registries().tasks.get("asr_supernet").role_specs()
    assert set(specs) == {"supernet", "teacher", "student", "baseline"}
    assert specs["supernet"].teachers == "none" and "kd" in specs["supernet"].loss_slots
    # no role name is hard-coded in core: the recipe schema, the report and the deploy rule
    for rel in (
        "kdtool/recipe.py",
        "kdtool/report/plots.py",
        "kdtool/report/collect.py",
        "kdtool/engine/trainer.py",
    ):
        text = (REPO / rel).read_text()
        assert '"supernet"' not in text and "'supernet'" not in text, rel
    assert '"baseline", "supernet"' not in (REPO / "kdtool/recipe.py").read_text()


def test_a_task_without_roles_gets_the_default_three() -> None:
    class Old(Task):  # type: ignore[type-arg]
        name = "old"

    assert set(Old.role_specs()) == {"teacher", "student", "baseline"}
    assert Old.role_spec("student").options is NoStageOptions
    assert default_roles()["baseline"].baseline


def test_describe_options_lists_names_types_and_defaults() -> None:
    spec = get_registries().tasks.get("image_classification").role_spec("student")
    rows = {name: (typ, default) for name, typ, default, _ in spec.describe_options()}
    assert rows["labeled_fraction"] == ("float", "1.0")


def test_default_deploy_model_ranks_roles_not_names(tmp_path: Path) -> None:
    loaded = load_recipe(REPO / "recipes" / "asr_supernet.yaml")
    roles = get_registries().tasks.get("asr_supernet").role_specs()
    # the supernet outranks the baselines (its twins), whatever their order
    assert loaded.recipe.default_deploy_model(roles) == "supernet"
    renamed = {"super": roles["supernet"], **{k: v for k, v in roles.items() if k != "supernet"}}
    for stage in loaded.recipe.stages:
        if stage.role == "supernet":
            stage.role = "super"
    assert loaded.recipe.default_deploy_model(renamed) == "supernet"


# --------------------------------------------------------------------------- load-time validation


def _bad_option_recipe(tmp_path: Path) -> Path:
    recipe = tiny_recipe(tmp_path / "runs")
    recipe["stages"][1]["options"] = {"labeled_fraction": 3.0}  # > 1: invalid
    return write_recipe(tmp_path / "bad.yaml", recipe)


def test_bad_stage_option_fails_validate_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_option_recipe(tmp_path)
    assert main(["recipes", "validate", str(path)]) == 2  # a recipe error
    err = capsys.readouterr().err
    assert f"{path}:{_line_of(path, 'labeled_fraction')}" in err
    assert "labeled_fraction" in err and "less than or equal to 1" in err


def test_bad_stage_option_fails_distill_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bad_option_recipe(tmp_path)
    assert main(["distill", str(path), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{_line_of(path, 'labeled_fraction')}" in err
    runs = tmp_path / "runs"
    assert not list(runs.rglob("*.safetensors")) and not list(runs.rglob("metrics.jsonl"))


def test_unknown_role_names_the_allowed_roles_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tiny_recipe(tmp_path / "runs")
    recipe["stages"][0]["role"] = "supernet"  # an ASR role, not a classification one
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["recipes", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{_line_of(path, 'role: supernet')}" in err
    assert "no role 'supernet'" in err and "allowed roles: teacher, student, baseline" in err


def test_role_rules_come_from_the_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_recipe(tmp_path / "runs")
    del recipe["stages"][2]["baseline_for"]  # a control without its student
    recipe["stages"][1]["teachers"] = []  # a classification student needs teachers
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["recipes", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "needs 'baseline_for'" in err and "needs 'teachers'" in err


def test_stage_options_are_validated_once_and_reused(tmp_path: Path) -> None:
    from kdtool.engine.options import check_component_options
    from kdtool.engine.trainer import build_task

    recipe = tiny_recipe(tmp_path / "runs")
    recipe["stages"][1]["options"] = {"labeled_fraction": 0.5}
    loaded = load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    registries = get_registries()
    task = build_task(loaded, registries)
    check_component_options(loaded, registries, task)
    stage = loaded.recipe.stage("student")
    first = task.stage_options(stage)
    assert first.labeled_fraction == 0.5
    assert task.stage_options(stage) is first  # the step never re-validates


def test_recipes_roles_lists_roles_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes", "roles", "asr_supernet"]) == 0
    out = capsys.readouterr().out
    assert "role supernet:" in out and "role baseline:" in out
    assert "num_random: int = 2" in out and "loss slots: rnnt, kd, subnet_rnnt" in out
    assert main(["recipes", "roles", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(BUILTIN_TASKS) <= set(data)
    seg = data["segmentation_lad"]["teacher"]["options"]
    assert {"name": "pixel_noise", "type": "float", "default": "0.03", "description": ""} in seg


# --------------------------------------------------------------------------- typed metadata


SCHEMA1_IMAGE = {
    "task": "image_classification",
    "labels": ["a", "b"],
    "vocabulary": None,
    "preprocessing": {
        "kind": "image",
        "size": [8, 8],
        "channels": "L",
        "scale": 1 / 255,
        "normalization": "inside the graph: (x - mean) / std",
        "mean": 0.5,
        "std": 0.5,
    },
    "postprocessing": {"kind": "softmax_argmax"},
    "extra": {},
    "schema_version": 1,
}


def test_schema1_manifest_metadata_still_loads(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"metadata": SCHEMA1_IMAGE}))
    meta = DeployMetadata.from_dict(json.loads(manifest.read_text())["metadata"])
    assert isinstance(meta.preprocessing, ImagePreprocessing)
    assert meta.preprocessing.normalization == "inside" and meta.preprocessing.channels == "L"
    landmarks = {
        **SCHEMA1_IMAGE["preprocessing"],
        "normalization": "outside the graph: (x / 255 - mean) / std",
    }
    outside = DeployMetadata.from_dict({**SCHEMA1_IMAGE, "preprocessing": landmarks})
    assert outside.pre.normalization == "outside"  # type: ignore[attr-defined]
    # written back as schema 2, with the same keys readers of plain JSON use
    out = meta.to_dict()
    assert out["schema_version"] == METADATA_SCHEMA_VERSION == 2
    assert out["preprocessing"]["normalization"] == "inside" and out["preprocessing"]["size"] == [8, 8]
    assert out["postprocessing"] == {"kind": "softmax_argmax"}  # only what the task gave
    typed = DeployMetadata("t", preprocessing=ImagePreprocessing(mean=0.5, std=0.5, normalization="inside"))
    assert typed.to_dict()["preprocessing"] == {
        "kind": "image",
        "mean": 0.5,
        "std": 0.5,
        "normalization": "inside",
    }


def test_typed_processing_by_kind_keeps_task_fields_and_reads_like_a_dict() -> None:
    meta = DeployMetadata(
        task="t",
        preprocessing={
            "kind": "audio",
            "sample_rate": 8000,
            "features": {"kind": "fbank"},
            "feature": "note",
        },
        postprocessing={"kind": "ctc_beam", "blank": 0, "beam_width": 4, "charset": "abc"},
    )
    assert isinstance(meta.preprocessing, AudioPreprocessing) and meta.preprocessing.sample_rate == 8000
    assert meta.preprocessing["feature"] == "note" and meta.preprocessing.get("missing", 1) == 1
    assert isinstance(meta.postprocessing, CTCDecoding) and meta.postprocessing.beam_width == 4
    meta.postprocessing["frame_repeat"] = 3  # an exporter may add a field
    assert meta.to_dict()["postprocessing"]["frame_repeat"] == 3
    assert isinstance(
        DeployMetadata("t", postprocessing={"kind": "transducer_greedy"}).post, TransducerDecoding
    )
    custom = DeployMetadata("t", preprocessing={"kind": "vector", "features": 8})
    assert type(custom.pre) is Processing and custom.to_dict()["preprocessing"] == {
        "kind": "vector",
        "features": 8,
    }
    with pytest.raises(ValueError):
        ImagePreprocessing(channels="CMYK")  # type: ignore[arg-type]


def test_coreml_image_input_reads_typed_fields() -> None:
    coreml = pytest.importorskip("kdtool_coreml.exporter")
    from torch import nn

    from kdtool.export.spec import DynamicAxis, ExportSpec, GraphSpec, TensorSpec

    graph = GraphSpec(
        "model", nn.Identity(), [TensorSpec("image", ("batch", 1, 8, 8))], [TensorSpec("y", ("batch", 1, 8, 8))],
        dynamic_axes={"batch": DynamicAxis(1, 1, 4)},
    )  # fmt: skip
    inside = DeployMetadata.from_dict(SCHEMA1_IMAGE)
    prep = coreml.image_prep(ExportSpec("t", "m", [graph], inside), graph)
    assert prep.bias == [0.0] and prep.scale == pytest.approx(1 / 255)  # the graph normalises
    outside = DeployMetadata(
        "t", preprocessing=ImagePreprocessing(mean=0.5, std=0.5, normalization="outside")
    )
    prep = coreml.image_prep(ExportSpec("t", "m", [graph], outside), graph)
    assert prep.bias == pytest.approx([-1.0]) and prep.scale == pytest.approx(2 / 255)


# --------------------------------------------------------------------------- plugin API 2.0

OLD_PLUGIN = """
from kdtool import hookimpl
KDTOOL_PLUGIN_API = "1.0"

@hookimpl
def register_tasks(register):
    raise AssertionError("a 1.x plugin must not be called")
"""


def test_plugin_api_is_2_and_names_what_changed() -> None:
    assert PLUGIN_API_VERSION == "2.0"
    text = " ".join(API_CHANGES)
    assert "Task.roles" in text and "stage_options" in text and "DeployMetadata" in text


def test_a_1x_plugin_is_listed_incompatible_and_its_use_names_what_changed(tmp_path: Path) -> None:
    site = make_plugin_distribution(
        tmp_path / "site", "kdtool-old", {"old": "kdtest_old_plugin"}, {"kdtest_old_plugin": OLD_PLUGIN}
    )
    env = {"PYTHONPATH": str(site)}
    listed = run_cli(["plugins", "--json"], env_extra=env)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    plugins = data["plugins"] if isinstance(data, dict) and "plugins" in data else data
    by_name = {p["name"]: p for p in plugins}
    assert by_name["old"]["status"] == "incompatible" and by_name["old"]["api_version"] == "1.0"

    recipe = tiny_recipe(tmp_path / "runs")
    recipe["task"] = {"name": "old_task"}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    used = run_cli(["recipes", "validate", str(path)], env_extra=env)
    assert used.returncode == 4, used.stderr  # a plugin error
    assert "plugin 'old' is written for plugin API 1.0" in used.stderr
    assert "Task.roles" in used.stderr and "must not be called" not in used.stderr
