"""A throwaway virtual environment that sees this environment's packages (kdtool included)
and gets plugin distributions installed into it the way a user installs them."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path


def _site_dirs() -> list[str]:
    """This interpreter's site-packages folders (a venv's own, not its base interpreter's)."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


class PluginVenv:
    """A venv layered on *this* environment, plus ``pip install --no-deps -e`` of plugins.

    ``--system-site-packages`` would expose the *base* interpreter's packages, which under a
    venv (how README installs kdtool) have neither kdtool nor a recent setuptools. Instead the
    throwaway venv gets a ``.pth`` file that adds this environment's site-packages folders
    with ``site.addsitedir`` (so their own ``.pth`` files, editable installs included, work).
    Its own site-packages comes first, so what is installed into it wins. Nothing is installed
    into the test environment itself; deleting the folder removes all.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        venv.EnvBuilder(system_site_packages=False, with_pip=False).create(root)
        self.python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        purelib = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in _site_dirs())
        (Path(purelib) / "_kdtool_parent_env.pth").write_text(lines)

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
        # PYTHONPATH is kept: a checkout under test (on PYTHONPATH) is what the venv must see
        env = {k: v for k, v in os.environ.items() if k != "KDTOOL_DISABLE_PLUGINS"}
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
