"""Test helpers: a tiny, fast recipe on scikit-learn's digits, temp plugin distributions, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(runs_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A three-stage digits recipe that trains in a couple of seconds."""
    recipe: dict[str, Any] = {
        "name": "tiny",
        "task": {"name": "image_classification"},
        "seed": 0,
        "device": "cpu",
        "runs_dir": str(runs_dir),
        "data": {"source": "digits", "image_size": 8, "augment": False},
        "models": {
            "teacher": {"arch": "cls_mlp", "options": {"hidden": 64}},
            "student": {"arch": "cls_mlp", "options": {"hidden": 16, "depth": 1}},
        },
        "stages": [
            {
                "name": "teacher",
                "model": "teacher",
                "role": "teacher",
                "steps": 30,
                "batch_size": 32,
                "optimizer": {"name": "adamw", "lr": 0.01},
            },
            {
                "name": "student",
                "model": "student",
                "role": "student",
                "teachers": ["teacher"],
                "steps": 30,
                "batch_size": 32,
                "optimizer": {"name": "adamw", "lr": 0.01},
                "losses": [{"name": "ce", "weight": 0.5}, {"name": "kd", "loss": "kl_t", "weight": 0.5}],
            },
            {
                "name": "baseline_student",
                "model": "student",
                "role": "baseline",
                "baseline_for": "student",
                "steps": 30,
                "batch_size": 32,
                "optimizer": {"name": "adamw", "lr": 0.01},
            },
        ],
        "checkpoint": {"every_steps": 10, "keep_last": 2},
        "logging": {"every_steps": 5, "progress": False},
    }
    recipe.update(overrides)
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def distill(tmp: Path, recipe: dict[str, Any]) -> Path:
    """Write ``recipe`` to ``tmp/r.yaml`` and run ``kdtool distill`` on it in-process, quietly;
    returns the run directory."""
    from kdtool.engine.trainer import DistillOptions, Engine
    from kdtool.recipe import load_recipe

    path = write_recipe(tmp / "r.yaml", recipe)
    result = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    return result


def make_plugin_distribution(
    root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]
) -> Path:
    """A real installed distribution (a ``.dist-info`` folder with ``entry_points.txt``) in
    ``root``; put ``root`` on PYTHONPATH and importlib.metadata finds its entry points."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    eps = "[kdtool]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(eps)
    (info / "RECORD").write_text("")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return root


def run_cli(
    args: list[str], *, env_extra: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env_extra or {})}
    if env_extra and "PYTHONPATH" in env_extra and os.environ.get("PYTHONPATH"):
        # extra paths come first; the caller's own PYTHONPATH (a checkout under test) stays
        env["PYTHONPATH"] = env_extra["PYTHONPATH"] + os.pathsep + os.environ["PYTHONPATH"]
    return subprocess.run(
        [sys.executable, "-m", "kdtool", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
