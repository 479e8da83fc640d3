"""A third-party plugin that registers a name a built-in plugin already has (item 16 of the
clean-clone trial): every command warns and goes on; only a command that uses the clashing
name fails, naming both plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdtool.errors import PluginError
from kdtool.registry import Registry
from tests.helpers import REPO, make_plugin_distribution, run_cli

CLASHING = """
from kdtool import hookimpl
KDTOOL_PLUGIN_API = "2.0"

@hookimpl
def register_tasks(register):
    from kdtool_classification.task import ClassificationTask
    register("image_classification", ClassificationTask, description="the same name again")
"""


@pytest.fixture(scope="module")
def clash_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clash") / "site"
    return make_plugin_distribution(
        root, "kdtool-clash", {"clasher": "kdtest_clasher"}, {"kdtest_clasher": CLASHING}
    )


def test_a_clash_fails_only_where_the_name_is_used(clash_path: Path) -> None:
    env = {"PYTHONPATH": str(clash_path)}
    targets = run_cli(["targets"], env_extra=env)
    assert targets.returncode == 0, targets.stderr
    assert "warning: task 'image_classification' is registered twice" in targets.stderr
    other = run_cli(["recipes", "validate", str(REPO / "recipes" / "facial_landmarks.yaml")], env_extra=env)
    assert other.returncode == 0, other.stderr
    assert "ok:" in other.stdout and "'clasher'" in other.stderr  # warned, went on
    used = run_cli(
        ["recipes", "validate", str(REPO / "recipes" / "image_classification.yaml")], env_extra=env
    )
    assert used.returncode == 4, used.stderr  # PluginError, where the name is used
    assert "'classification'" in used.stderr and "'clasher'" in used.stderr
    assert "Traceback" not in used.stderr
    listing = run_cli(["plugins", "--json"], env_extra=env)
    assert listing.returncode == 0 and "is registered twice" in listing.stdout


def test_registry_keeps_the_first_and_refuses_lookups_of_a_clash() -> None:
    reg: Registry[int] = Registry("task")
    reg.register("a", 1, owner="one")
    reg.register("b", 2, owner="one")
    with pytest.raises(PluginError):
        reg.register("a", 3, owner="two")
    assert reg.get("b") == 2 and "b" in reg and reg.owner("a") == "one" and reg.names() == ["a", "b"]
    for lookup in (reg.get, reg.entry, reg.__contains__):  # every use of the name fails
        with pytest.raises(PluginError, match="by plugin 'one' and by plugin 'two'"):
            lookup("a")
    assert reg.clash("b") is None and reg.clash("a") is not None
