"""``kdtool plugins new``: every kind scaffolds a distribution that installs, is listed at once,
and passes the conformance kit; bad names and taken names are refused."""

from __future__ import annotations

import ast
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdtool.cli import main
from kdtool.errors import PluginError
from kdtool.plugins import get_plugin_manager
from kdtool.scaffold import KINDS, PluginNames, scaffold
from tests.plugins_kit.venv import PluginVenv

HOOKS = {
    "loss": {"register_losses"},
    "task": {"register_tasks", "register_models"},
    "exporter": {"register_exporters", "register_targets"},
    "target": {"register_targets"},
}
EXPECTED = {
    "loss": {"loss": ["kit_loss"]},
    "task": {"task": ["kit_task"], "model architecture": ["kit_task_mlp"]},
    "exporter": {"exporter": ["kit_exporter"], "target profile": ["kit_exporter-cpu"]},
    "target": {"target profile": ["kit-target"]},
}


@pytest.mark.parametrize("kind", KINDS)
def test_scaffold_writes_an_installable_distribution(kind: str, tmp_path: Path) -> None:
    result = scaffold(f"kit-{kind}", kind, tmp_path, manager=get_plugin_manager())
    root = tmp_path / f"kdtool-kit-{kind}"
    assert result.root == root
    module = f"kdtool_kit_{kind}"
    expected = {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        ".gitignore",
        f"{module}/__init__.py",
        f"tests/test_{module}.py",
    }
    if kind == "task":
        expected.add("recipes/kit_task.yaml")
    assert {str(p.relative_to(root)) for p in result.files} == expected
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"kdtool-kit-{kind}"
    assert project["project"]["entry-points"]["kdtool"] == {f"kit-{kind}": module}
    assert project["tool"]["setuptools"]["packages"] == [module]
    source = (root / module / "__init__.py").read_text()
    tree = ast.parse(source)
    assert 'KDTOOL_PLUGIN_API = "2.0"' in source
    hooks = {
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and any(ast.unparse(d) == "hookimpl" for d in n.decorator_list)
    }
    assert hooks == HOOKS[kind]
    ast.parse((root / "tests" / f"test_{module}.py").read_text())
    assert "$" not in source.replace("$$", "")  # every placeholder was filled


def test_names_follow_one_rule() -> None:
    n = PluginNames.from_name("kdtool-Fancy-Loss", "loss")
    assert (n.plugin, n.distribution, n.module, n.registered, n.cls) == (
        "fancy-loss", "kdtool-fancy-loss", "kdtool_fancy_loss", "fancy_loss", "FancyLoss",
    )  # fmt: skip
    assert PluginNames.from_name("edge-npu", "target").registered == "edge-npu"
    for bad in ("1abc", "a b", "a--b", "Ä", "", "x/y"):
        with pytest.raises(PluginError, match="invalid plugin name"):
            PluginNames.from_name(bad, "loss")


def test_taken_names_and_existing_folders_are_refused(tmp_path: Path) -> None:
    manager = get_plugin_manager()
    with pytest.raises(PluginError, match="loss named 'kl_t' is already registered by plugin 'kdtool'"):
        scaffold("kl_t", "loss", tmp_path, manager=manager)
    with pytest.raises(
        PluginError, match="target profile named 'onnx-cpu' is already registered by plugin 'onnx'"
    ):
        scaffold("onnx-cpu", "target", tmp_path, manager=manager)
    with pytest.raises(PluginError, match="plugin named 'classification' is already installed"):
        scaffold("classification", "task", tmp_path, manager=manager)
    with pytest.raises(PluginError, match="unknown plugin kind 'model'"):
        scaffold("x", "model", tmp_path)
    scaffold("twice", "loss", tmp_path)
    with pytest.raises(PluginError, match="already exists and is not empty"):
        scaffold("twice", "loss", tmp_path)


def test_cli_new_prints_next_steps_and_errors_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plugins", "new", "cli-loss", "--kind", "loss", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "loss plugin 'cli-loss'" in out and 'pip install -e ".[test]"' in out
    assert (tmp_path / "kdtool-cli-loss" / "kdtool_cli_loss" / "__init__.py").exists()
    assert main(["plugins", "new", "cli-loss", "--kind", "loss", "--dir", str(tmp_path)]) == 4
    assert "already exists" in capsys.readouterr().err
    # the listing callback still works beside the new subcommands
    assert main(["plugins", "--json"]) == 0
    assert "plugin_api_version" in json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PluginVenv, Path]]:
    """All four kinds scaffolded and installed editable into one venv."""
    tmp = tmp_path_factory.mktemp("scaffold")
    for kind in KINDS:
        scaffold(f"kit-{kind}", kind, tmp / "src")
    env = PluginVenv(tmp / "venv")
    env.install(*sorted((tmp / "src").iterdir()))
    yield env, tmp / "src"
    env.remove()


@pytest.mark.slow
def test_scaffolded_plugins_are_listed_at_once(installed: tuple[PluginVenv, Path]) -> None:
    env, _ = installed
    result = env.kdtool("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    for kind, registered in EXPECTED.items():
        info = plugins[f"kit-{kind}"]
        assert info["status"] == "ok", info
        assert info["distribution"] == f"kdtool-kit-{kind}" and info["api_version"] == "2.0"
        assert info["registered"] == registered
    table = env.kdtool("plugins")
    assert "kit-task" in table.stdout and "kdtool-kit-exporter" in table.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_scaffolded_plugin_passes_its_own_conformance_tests(
    kind: str, installed: tuple[PluginVenv, Path]
) -> None:
    env, src = installed
    result = env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=src / f"kdtool-kit-{kind}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
