"""The throwaway venv the plugin tests install into sees *this* environment's packages (the
kdtool under test, its setuptools), also when this environment is itself a venv, as README's
Quick start makes it. With ``--system-site-packages`` it saw the base interpreter's instead
(item 1 of the clean-clone trial)."""

from __future__ import annotations

import sys
from pathlib import Path

import setuptools

import kdtool
from tests.plugins_kit.venv import PluginVenv


def test_plugin_venv_sees_this_environment(tmp_path: Path) -> None:
    env = PluginVenv(tmp_path / "venv")
    try:
        code = "import kdtool, setuptools, sys; print(kdtool.__file__); print(setuptools.__version__); print(sys.prefix)"
        result = env.run("-c", code, cwd=tmp_path)  # not the checkout: imports come from site dirs
        assert result.returncode == 0, result.stderr
        kdtool_file, setuptools_version, prefix = result.stdout.split()
        assert Path(kdtool_file).resolve() == Path(kdtool.__file__).resolve()
        assert setuptools_version == setuptools.__version__
        assert Path(prefix).resolve() == (tmp_path / "venv").resolve() != Path(sys.prefix).resolve()
    finally:
        env.remove()
