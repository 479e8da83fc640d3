"""The example plugin (examples/kdtool-example-plugin), installed from its own pyproject.toml
and exercised through the CLI: listed, its loss used by `kdtool distill`, its exporter by
`kdtool export`, and its own tests (kdtool's conformance kit) green.

CI installs it into the test environment (`pip install -e examples/kdtool-example-plugin`);
elsewhere these tests install a copy into a throwaway venv.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.plugins_kit.venv import PluginVenv, python_has_distribution

EXAMPLE = REPO / "examples" / "kdtool-example-plugin"
pytestmark = pytest.mark.slow


class _Here:
    """The test environment itself, when the example is installed in it (CI)."""

    python = Path(sys.executable)

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=900)

    def kdtool(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("-m", "kdtool", *args, cwd=cwd)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginVenv | _Here]:
    if python_has_distribution("kdtool-example-plugin"):
        yield _Here()
        return
    tmp = tmp_path_factory.mktemp("example")
    copy = tmp / "kdtool-example-plugin"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    venv = PluginVenv(tmp / "venv")
    venv.install(copy)
    yield venv
    venv.remove()


def test_example_is_listed_with_its_registrations(env: PluginVenv | _Here) -> None:
    result = env.kdtool("plugins", "--json")
    assert result.returncode == 0, result.stderr
    info = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}["example"]
    assert (
        info["status"] == "ok"
        and info["distribution"] == "kdtool-example-plugin"
        and info["api_version"] == "2.0"
    )
    assert info["registered"] == {"loss": ["dist"], "exporter": ["pt2"], "target profile": ["pt2-cpu"]}
    targets = env.kdtool("targets")
    assert targets.returncode == 0 and "pt2-cpu" in targets.stdout


def test_distill_with_dist_then_export_to_pt2_through_the_cli(
    env: PluginVenv | _Here, tmp_path: Path
) -> None:
    recipe = EXAMPLE / "recipes" / "digits_dist.yaml"
    distill = env.kdtool(
        "distill", str(recipe), "--max-steps", "6", "--no-progress", "--no-report",
        "--set", f"runs_dir={tmp_path}", "--set", "device=cpu",
    )  # fmt: skip
    assert distill.returncode == 0, distill.stderr
    run = (tmp_path / "latest").resolve()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kd = [m["loss/kd"] for m in metrics if m.get("stage") == "student" and "loss/kd" in m]
    assert kd and all(v > 0 for v in kd)  # the `dist` loss ran inside the student stage
    export = env.kdtool("export", str(run), "--target", "pt2", "--eval-limit", "64")
    assert export.returncode == 0, export.stderr
    manifest = json.loads((run / "exports" / "pt2-cpu" / "manifest.json").read_text())
    assert manifest["format"] == "pt2" and manifest["status"] == "ok"
    assert manifest["graphs"]["model"]["file"] == "model.pt2"
    assert manifest["verification"]["passed"] is True
    assert abs(manifest["metric"]["drop"]) < 1e-6
    blocked = env.kdtool("export", str(run), "--target", "pt2", "--out", str(tmp_path / "x"))
    assert blocked.returncode == 0
    disabled = subprocess.run(
        [str(env.python), "-m", "kdtool", "export", str(run), "--target", "pt2"],
        capture_output=True, text=True, env={**__import__("os").environ, "KDTOOL_DISABLE_PLUGINS": "example"},
    )  # fmt: skip
    assert disabled.returncode == 5 and "unknown target 'pt2'" in disabled.stderr


def test_example_plugin_own_tests_pass(env: PluginVenv | _Here, tmp_path: Path) -> None:
    tests = EXAMPLE / "tests"
    result = env.run(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tests), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "5 passed" in result.stdout
