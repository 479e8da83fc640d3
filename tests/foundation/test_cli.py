"""The command line as a user meets it: usage errors, internal errors, a light start, and
help that lists every command (plugin ones included) without Python type names.

Run through the installed ``kdtool`` console script (a subprocess), as a user runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kdtool.cli import COMMANDS
from kdtool.cli.lazy import add_lazy_command
from tests.helpers import make_plugin_distribution

PLUGIN = """
from kdtool import hookimpl

@hookimpl
def register_commands(app):
    @app.command("boom")
    def boom():
        \"\"\"Fail with a bug (a test plugin).\"\"\"
        raise RuntimeError("a bug in a plugin command")

    @app.command("hello")
    def hello(name: str = "world"):
        \"\"\"Say hello (a test plugin).\"\"\"
        print(f"hello {name}")
"""


def _console_script() -> list[str]:
    """The ``kdtool`` console script of this environment (what `pip install` put on PATH)."""
    here = Path(sys.executable).parent / ("kdtool.exe" if os.name == "nt" else "kdtool")
    found = str(here) if here.exists() else shutil.which("kdtool")
    if found is None:  # not installed: the module is what the script runs
        return [sys.executable, "-m", "kdtool"]
    return [found]


def kdtool(*args: str, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([*_console_script(), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "site"
    return make_plugin_distribution(
        root, "kdtool-cli-test", {"clitest": "kdtest_cli"}, {"kdtest_cli": PLUGIN}
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frobnicate"], "No such command 'frobnicate'"),
        (["distil"], "Did you mean 'distill'?"),
        (["distill"], "Missing argument 'RECIPE'"),
        (["distill", "--bogus", "r.yaml"], "No such option: --bogus"),
        (["export", "--batch", "abc"], "Invalid value for '--batch'"),
    ],
)
def test_usage_errors_exit_2_with_the_usage_message(args: list[str], message: str) -> None:
    result = kdtool(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "ModuleNotFoundError" not in result.stderr
    assert "Usage: kdtool" in result.stderr
    assert message in result.stderr


def test_internal_error_is_one_line_and_exit_70(plugin_path: Path) -> None:
    result = kdtool("boom", extra_path=plugin_path)
    assert result.returncode == 70, result.stderr
    assert "internal error: RuntimeError: a bug in a plugin command" in result.stderr
    assert "Traceback" not in result.stderr and "--debug" in result.stderr
    debug = kdtool("--debug", "boom", extra_path=plugin_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert "RuntimeError: a bug in a plugin command" in debug.stderr


def test_user_error_keeps_its_kind_and_code(tmp_path: Path) -> None:
    result = kdtool("recipes", "validate", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2, result.stderr  # RecipeError
    assert "kdtool: recipe error:" in result.stderr and "Traceback" not in result.stderr


def test_import_kdtool_imports_neither_torch_nor_plugins() -> None:
    code = (
        "import sys, kdtool\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "assert not [m for m in sys.modules if m.startswith('kdtool_')], 'plugins'\n"
        "assert kdtool.Task.__name__ == 'Task' and 'torch' in sys.modules  # lazy attributes still work\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_help_lists_every_command_without_importing_torch(plugin_path: Path) -> None:
    code = (
        "import sys\n"
        "from kdtool.cli import main\n"
        "rc = main(['--help'])\n"
        "heavy = [m for m in ('torch', 'kdtool.engine.trainer', 'kdtool_asr.subnets') if m in sys.modules]\n"
        "print('HEAVY', heavy, rc)\n"
    )
    env = {**os.environ, "COLUMNS": "200"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_path), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY [] 0" in result.stdout
    listed = set(re.findall(r"^│ (\w+)\s{2,}", result.stdout, flags=re.MULTILINE))
    builtin = {c.name for c in COMMANDS}
    # built-in commands, the built-in ASR plugin's `subnets` and the test plugin's commands
    assert builtin | {"subnets", "boom", "hello"} <= listed, listed
    hello = kdtool("hello", "--name", "kd", extra_path=plugin_path)
    assert hello.returncode == 0 and "hello kd" in hello.stdout


def test_help_shows_flags_and_values_plainly() -> None:
    for name in [c.name for c in COMMANDS] + ["subnets"]:
        result = kdtool(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        text = result.stdout
        for python_name in ("<bool>", "<int>", "<float>", "<str>", "<path>", "<list[", "{"):
            assert python_name not in text, (name, python_name, text)
    distill = kdtool("distill", "--help").stdout
    assert "Usage: kdtool distill [OPTIONS] RECIPE" in distill
    assert re.search(r"--dry-run\s+Validate", distill)  # a flag: no value shown
    assert re.search(r"--set\s+KEY=VALUE", distill) and re.search(r"--max-steps\s+INTEGER", distill)
    assert "Usage: kdtool predict [OPTIONS] ARTIFACT INPUTS..." in kdtool("predict", "--help").stdout


def test_predict_help_says_what_each_task_accepts() -> None:
    from kdtool.plugins import get_registries

    text = " ".join(kdtool("predict", "--help").stdout.split())
    for entry in get_registries().tasks.entries():
        assert entry.obj.predict_inputs, f"task {entry.name} does not say what predict accepts"
        assert f"{entry.name}: {' '.join(entry.obj.predict_inputs.split())}" in text


def test_lazy_table_matches_the_commands_it_loads() -> None:
    """The one-line help `kdtool --help` shows without importing is the command's own."""
    for spec in COMMANDS:
        command = spec.load()
        own = " ".join((command.help or "").split("\n\n")[0].split())
        assert spec.help == own, (spec.name, spec.help, own)


def test_add_lazy_command_forwards_on_a_plain_typer_app() -> None:
    app = typer.Typer()
    add_lazy_command(app, "targets", "kdtool.cli.targets:register", help="Target profiles.")

    @app.command("other")
    def other() -> None:
        """Another command, so the app is a group."""

    result = CliRunner().invoke(app, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    assert '"onnx-cpu"' in result.output
    shown = CliRunner().invoke(app, ["targets", "--help"])
    assert "--json" in shown.output


def test_trust_flag_allows_code_running_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from kdtool.cli import main
    from kdtool.pt2 import TRUST_ENV, trusted

    # setenv first so that monkeypatch records the variable and removes what main() sets
    monkeypatch.setenv(TRUST_ENV, "")
    monkeypatch.delenv(TRUST_ENV)
    assert main(["recipes", "list"]) == 0 and not trusted()
    assert main(["--trust", "recipes", "list"]) == 0 and trusted()
