"""Plugin discovery through real entry points of temporary distributions (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdtool.hookspecs import ALL_HOOKS
from tests.helpers import make_plugin_distribution, run_cli, tiny_recipe, write_recipe

GOOD = """
from kdtool import hookimpl
KDTOOL_PLUGIN_API = "2.0"

@hookimpl
def register_losses(register):
    import torch
    class Zero(torch.nn.Module):
        def forward(self, a, b):
            return (a * 0).sum()
    register("zero_loss", Zero, description="always zero")


@hookimpl
def register_models(register):
    import torch
    register("test_linear", lambda num_classes=10, in_channels=1, image_size=8: torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size * image_size, num_classes)))


@hookimpl
def register_tasks(register):
    from kdtool_classification.task import ClassificationTask
    class Renamed(ClassificationTask):
        name = "test_classification"
    register("test_classification", Renamed)


@hookimpl
def register_commands(app):
    @app.command("hello")
    def hello(name: str = "world"):
        # say hello (added by a plugin)
        print(f"hello {name} from a plugin")
"""

BROKEN = """
raise RuntimeError("this plugin is broken on purpose")
"""

DUPLICATE = """
from kdtool import hookimpl

@hookimpl
def register_losses(register):
    import torch
    register("kl_t", torch.nn.MSELoss)
"""

MISSING_DEP = """
import a_module_that_is_not_installed_anywhere
"""

INCOMPATIBLE = """
from kdtool import hookimpl
KDTOOL_PLUGIN_API = "99.0"

@hookimpl
def register_losses(register):
    raise AssertionError("must not be called")
"""


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    return make_plugin_distribution(
        tmp_path / "site",
        "kdtool-test-plugins",
        {
            "good": "kdtest_good",
            "broken": "kdtest_broken",
            "dup": "kdtest_dup",
            "missing": "kdtest_missing",
            "incompatible": "kdtest_incompatible",
        },
        {
            "kdtest_good": GOOD,
            "kdtest_broken": BROKEN,
            "kdtest_dup": DUPLICATE,
            "kdtest_missing": MISSING_DEP,
            "kdtest_incompatible": INCOMPATIBLE,
        },
    )


def _plugins_json(env: dict[str, str]) -> dict:
    result = run_cli(["plugins", "--json"], env_extra=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_plugins_listing_records_each_kind_of_failure(plugin_path: Path) -> None:
    env = {"PYTHONPATH": str(plugin_path)}
    result = run_cli(["plugins", "--json"], env_extra=env)
    assert result.returncode == 0
    data = json.loads(result.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["good"]["status"] == "ok"
    assert by_name["good"]["version"] == "1.2.3"
    assert by_name["good"]["distribution"] == "kdtool-test-plugins"
    assert by_name["good"]["registered"] == {
        "task": ["test_classification"],
        "model architecture": ["test_linear"],
        "loss": ["zero_loss"],
    }
    assert by_name["good"]["hooks"] == [
        "register_commands",
        "register_losses",
        "register_models",
        "register_tasks",
    ]
    assert by_name["broken"]["status"] == "broken"
    assert "broken on purpose" in by_name["broken"]["error"]
    assert by_name["missing"]["status"] == "unavailable"
    assert "pip install a_module_that_is_not_installed_anywhere" in by_name["missing"]["hint"]
    assert by_name["incompatible"]["status"] == "incompatible"
    assert "99.0" in by_name["incompatible"]["error"]
    # the duplicate is a conflict naming both plugins
    assert any("'kdtool'" in c and "'dup'" in c and "kl_t" in c for c in data["conflicts"])
    # one warning line on stderr for the broken plugin
    assert "plugin 'broken' failed to load" in result.stderr
    # built-in plugins still work
    assert by_name["classification"]["status"] == "ok"


def test_conflict_fails_commands_with_both_names_and_disable_fixes_it(
    plugin_path: Path, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    env = {"PYTHONPATH": str(plugin_path)}
    failed = run_cli(["recipes", "validate", str(recipe)], env_extra=env)
    assert failed.returncode == 4
    assert "'kdtool'" in failed.stderr and "'dup'" in failed.stderr and "Traceback" not in failed.stderr
    ok = run_cli(
        ["recipes", "validate", str(recipe)], env_extra={**env, "KDTOOL_DISABLE_PLUGINS": "dup,broken"}
    )
    assert ok.returncode == 0, ok.stderr
    data = _plugins_json({**env, "KDTOOL_DISABLE_PLUGINS": "dup"})
    assert {p["name"]: p["status"] for p in data["plugins"]}["dup"] == "disabled"
    assert data["conflicts"] == []


def test_every_hook_is_documented_and_tested() -> None:
    """Meta-test (as datasette does): every hookspec has a docstring and a test naming it."""
    from kdtool import hookspecs

    tests_dir = Path(__file__).resolve().parents[1]
    corpus = "\n".join(p.read_text() for p in tests_dir.rglob("*.py"))
    for hook in ALL_HOOKS:
        doc = getattr(hookspecs, hook).__doc__
        assert doc and len(doc.strip()) > 40, f"hook {hook} lacks a docstring"
        assert f"def {hook}(" in corpus, f"no test implements hook {hook}"


def test_a_plugin_task_model_and_command_work_through_the_cli(plugin_path: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(plugin_path), "KDTOOL_DISABLE_PLUGINS": "dup"}
    hello = run_cli(["hello", "--name", "kd"], env_extra=env)
    assert hello.returncode == 0, hello.stderr
    assert "hello kd from a plugin" in hello.stdout
    recipe = tiny_recipe(tmp_path / "runs", task={"name": "test_classification"})
    recipe["models"]["student"] = {"arch": "test_linear"}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    result = run_cli(["distill", str(path), "--max-steps", "3", "--no-progress"], env_extra=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "runs" / "latest" / "summary.json").read_text())
    assert summary["task"] == "test_classification"
    assert summary["models"]["student"]["arch"] == "test_linear"
    assert summary["plugins"]["good"]["version"] == "1.2.3"
