"""Every built-in registration passes the same conformance kit a third-party plugin runs.

Parametrized over everything registered (``get_registries()``), so a plugin added later is
checked without editing this file. Built-in losses written before ``input_specs`` existed get
their example inputs here; a task whose shipped recipe needs data that is not on this
machine is skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from kdtool.errors import DataError
from kdtool.plugins import MissingDependency, get_plugin_manager, get_registries
from kdtool.testing import (
    ConformanceError,
    check_exporter,
    check_loss,
    check_plugin,
    check_target,
    check_task,
    find_recipes,
)
from tests.helpers import REPO

REGISTRIES = get_registries()


def _g(*shape: int, long_below: int | None = None) -> Any:
    def make(generator: torch.Generator) -> torch.Tensor:
        if long_below is not None:
            return torch.randint(0, long_below, shape, generator=generator)
        return torch.randn(shape, generator=generator)

    return make


# Example inputs (and options) for built-in losses that do not declare input_specs.
LOSS_EXAMPLES: dict[str, dict[str, Any]] = {
    "ce": {"inputs": lambda g: (_g(4, 10)(g), _g(4, long_below=10)(g))},
    "mse": {"inputs": lambda g: (_g(4, 3)(g), _g(4, 3)(g))},
    "hint": {
        "options": {"student_channels": 6, "teacher_channels": 8},
        "inputs": lambda g: (_g(4, 6, 3, 3)(g), _g(4, 8, 3, 3)(g)),
    },
    "cwd": {"inputs": lambda g: (_g(4, 6, 5, 5)(g), _g(4, 6, 5, 5)(g))},
    "ctc_kd": {"inputs": lambda g: (_g(2, 12, 6)(g), _g(2, 12, 6)(g))},
    "landmarks_kd_loss": {"inputs": lambda g: tuple(_g(4, 68, 2)(g) * 0.1 for _ in range(4))},
}

# `--set` overrides that shrink a shipped recipe's data; applied only where the key exists.
SHRINK = {
    "facial_landmarks": ["data.synthetic.train_size=16", "data.synthetic.val_size=8"],
    "htr": [
        "data.embedded.digit_lines=8",
        "data.embedded.font_lines=8",
        "data.embedded.val_digit_lines=4",
        "data.embedded.val_font_lines=4",
    ],
    "segmentation_lad": ["data.synthetic.train_samples=8", "data.synthetic.val_samples=4"],
    "asr_supernet": ["data.num_train=8", "data.num_val=4"],
}
FAST_TASKS = {"image_classification"}


@pytest.mark.parametrize("name", REGISTRIES.losses.names())
def test_registered_loss_conforms(name: str) -> None:
    check_loss(name, **LOSS_EXAMPLES.get(name, {}))


@pytest.mark.parametrize("name", REGISTRIES.targets.names())
def test_registered_target_conforms(name: str) -> None:
    check_target(name)


@pytest.mark.parametrize("name", sorted(n for n, i in get_plugin_manager().infos.items() if i.status == "ok"))
def test_loaded_plugin_conforms(name: str) -> None:
    check_plugin(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", REGISTRIES.exporters.names())
def test_registered_exporter_conforms(name: str, tmp_path: Path) -> None:
    check_exporter(name, workdir=tmp_path)


def _has_key(data: Any, override: str) -> bool:
    """Whether the recipe has the key an override ``a.b.c=value`` sets."""
    for key in override.split("=", 1)[0].split("."):
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def _task_param(name: str) -> Any:
    marks = [] if name in FAST_TASKS else [pytest.mark.slow]
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_task_param(n) for n in REGISTRIES.tasks.names()])
def test_registered_task_conforms_on_its_shipped_recipe(name: str, tmp_path: Path) -> None:
    recipes = find_recipes(name, REPO / "recipes")
    if not recipes:
        pytest.skip(f"no recipe under recipes/ names task {name!r} yet")
    recipe = next((r for r in recipes if r.stem == name), recipes[0])
    data = yaml.safe_load(recipe.read_text())
    overrides = [o for o in SHRINK.get(name, []) if _has_key(data, o)]
    try:
        check_task(name, recipe, overrides=overrides, workdir=tmp_path)
    except ConformanceError as exc:
        cause = exc.__cause__
        if isinstance(cause, DataError | MissingDependency):
            pytest.skip(
                f"task {name!r}: recipe {recipe.name} needs data or a package not on this machine: {cause}"
            )
        raise
