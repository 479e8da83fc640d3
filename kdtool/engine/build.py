"""Rebuilding what a run holds: its task from the resolved recipe, a model from its config.

Shared by the engine (teachers from other runs) and :class:`kdtool.run.Run` (export, eval,
bench, report), so neither imports the other. Importing this module does not import torch;
``rebuild_model`` imports it through the weights it loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtool.errors import RunError
from kdtool.io import load_weights, read_json

if TYPE_CHECKING:
    from torch import nn

    from kdtool.plugins import Registries
    from kdtool.recipe import LoadedRecipe
    from kdtool.task import Task


def build_task(loaded: LoadedRecipe, registries: Registries, cache_dir: Path | None = None) -> Task:
    from kdtool.recipe import validate_section

    recipe = loaded.recipe
    task_cls = registries.tasks.get(recipe.task.name)
    options = validate_section(loaded, task_cls.Options, ("task", "options"), recipe.task.options)
    data = validate_section(loaded, task_cls.DataOptions, ("data",), recipe.data)
    cache = cache_dir or Path(recipe.runs_dir) / ".cache"
    return task_cls(options, data, seed=recipe.seed, cache_dir=cache)


def rebuild_model(registries: Registries, config: dict[str, Any], weights: Path | None) -> nn.Module:
    """A model from a run's ``config.json`` (and its weights)."""
    try:
        module = registries.models.get(config["arch"])(**config.get("options", {}))
    except KeyError as exc:
        raise RunError(f"model config lacks {exc}") from None
    if config.get("quantization_aware"):
        from kdtool.quant import apply_plan

        apply_plan(module, config["quantization_aware"], fold=False)
    if weights is not None:
        state = load_weights(weights)
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise RunError(f"weights {weights} do not fit architecture {config['arch']!r}: {exc}") from None
    return module


def load_run_model(
    registries: Registries, run_dir: Path, model_name: str
) -> tuple[nn.Module, dict[str, Any]]:
    """Model ``model_name`` of the run in ``run_dir`` and its config (see ``Run.load_model``)."""
    from kdtool.engine.rundir import read_summary

    summary = read_summary(run_dir)
    models = summary.get("models", {})
    if model_name not in models:
        raise RunError(f"run {run_dir} has no model {model_name!r}; models: {sorted(models)}")
    entry = models[model_name]
    if not entry.get("weights"):
        raise RunError(f"model {model_name!r} of run {run_dir} has no weights (its stage did not finish)")
    config = read_json(run_dir / entry["config"], what="model config")
    return rebuild_model(registries, config, run_dir / entry["weights"]), config
