"""A throwaway virtual environment that sees this environment's packages (kdtool included)
and gets plugin distributions installed into it the way a user installs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path


class PluginVenv:
    """``python -m venv --system-site-packages`` plus ``pip install --no-deps -e`` of plugins.

    Nothing is installed into the test environment itself; deleting the folder removes all.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root)
        self.python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def install(self, *projects: Path) -> None:
        # This environment's pip and setuptools, no network: --no-build-isolation and --no-deps.
        args = [str(self.python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        for project in projects:
            args += ["-e", str(project)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr

    def run(
        self, *args: str, cwd: Path | None = None, timeout: int = 600
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KDTOOL_DISABLE_PLUGINS")}
        env["OMP_NUM_THREADS"] = "1"
        env["COLUMNS"] = "250"  # rich tables: no wrapped plugin names
        return subprocess.run(
            [str(self.python), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
        )

    def kdtool(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("-m", "kdtool", *args, cwd=cwd)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def python_has_distribution(name: str) -> bool:
    """Whether the test environment itself has ``name`` installed (CI installs the example)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return sys.executable is not None
