"""A run directory as an object: the public API for plugins, bench scripts and kdtool itself.

``Run.open(path)`` opens ``runs/<recipe>/<stamp>/`` (or a recipe's runs folder, or
``runs/latest``); ``Run.of_artifact(path)`` opens the run an exported artifact came from.
A run gives its parsed ``summary`` (older summaries still load), its ``recipe``, its
``task`` (built from the registry), its models (``load_model``), and the only safe way to
change ``summary.json``: ``add_model`` / ``update_summary`` read, change and write it under an
exclusive lock (``fcntl.flock`` on ``RUN/.summary.lock``), atomically, so two processes adding
models at once both land.

Importing this module does not import torch; ``task`` and ``load_model`` do, on use.
See ``docs/run-api.md``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtool.engine.rundir import failure_note, read_summary, resolve_run, write_summary
from kdtool.errors import ExportError, RunError
from kdtool.io import read_json, write_json

if TYPE_CHECKING:
    from torch import nn

    from kdtool.export.spec import ExportSpec
    from kdtool.plugins import PluginManager, Registries
    from kdtool.recipe import LoadedRecipe, Recipe
    from kdtool.task import Task

try:  # POSIX; elsewhere summary updates are atomic but not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".summary.lock"


class Run:
    """A kdtool run directory: its summary, recipe, task and models.

    Open one with :meth:`open` (a path) or :meth:`of_artifact` (an export or its manifest).
    """

    def __init__(
        self, run_dir: Path | str, manager: PluginManager | None = None, *, task: Task | None = None
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        if not (self.run_dir / "summary.json").is_file():
            raise RunError(f"{run_dir} is not a kdtool run directory (no summary.json)")
        self._manager = manager
        self._summary: dict[str, Any] | None = None
        self._loaded: LoadedRecipe | None = None
        self._task: Task | None = task  # the engine passes the task it trained with

    # ------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: Path | str | None = None,
        *,
        manager: PluginManager | None = None,
        runs_dir: Path = Path("runs"),
    ) -> Run:
        """The run at ``path``: a run directory, a recipe's runs folder (its ``latest``), or
        ``runs/latest`` when ``path`` is None. Errors name the path and what is missing."""
        if path is not None and Path(path).is_file():
            raise RunError(
                f"{path} is a file, not a kdtool run directory",
                hint="pass the run directory (runs/<recipe>/<stamp>); for an exported artifact use its folder "
                "with `kdtool eval`, or Run.of_artifact",
            )
        run = cls(resolve_run(path, runs_dir), manager)
        if not (run.run_dir / "recipe.resolved.yaml").exists():
            raise RunError(
                f"run {run.run_dir} has no recipe.resolved.yaml (not a complete kdtool run directory)"
            )
        return run

    @classmethod
    def of_artifact(cls, path: Path | str, *, manager: PluginManager | None = None) -> Run:
        """The run an exported artifact belongs to, from its folder, its manifest or one of its files.

        Manifests written by this kdtool record the run relative to the manifest, so an artifact
        copied together with its run still finds it; older manifests hold an absolute path."""
        from kdtool.export.manifest import find_manifest, read_manifest, run_of_manifest

        manifest_path = find_manifest(Path(path))
        run_dir = run_of_manifest(read_manifest(manifest_path), manifest_path)
        if not (run_dir / "summary.json").is_file():
            raise ExportError(
                f"the run of artifact {manifest_path.parent} is not at {run_dir} (no summary.json there)",
                hint="copy or move the artifact together with its run (its manifest records the run "
                "relative to itself), or export it again",
            )
        return cls.open(run_dir, manager=manager)

    # ------------------------------------------------------------ reading

    @property
    def path(self) -> Path:
        return self.run_dir

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json``, parsed and brought to the current schema (cached; see :meth:`reload`)."""
        if self._summary is None:
            self._summary = read_summary(self.run_dir)
        return self._summary

    def reload(self) -> dict[str, Any]:
        """Read ``summary.json`` again (another process may have changed it)."""
        self._summary = None
        return self.summary

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        """The summary's model entries by name (stages, and models plugins added)."""
        return self.summary.get("models", {})

    @property
    def loaded(self) -> LoadedRecipe:
        """The resolved recipe with what is needed to report errors in it."""
        if self._loaded is None:
            from kdtool.recipe import load_recipe

            path = self.run_dir / "recipe.resolved.yaml"
            if not path.exists():
                raise RunError(f"run {self.run_dir} has no recipe.resolved.yaml")
            self._loaded = load_recipe(path)
        return self._loaded

    @property
    def recipe(self) -> Recipe:
        """The recipe the run was trained with (``recipe.resolved.yaml``)."""
        return self.loaded.recipe

    @property
    def manager(self) -> PluginManager:
        if self._manager is None:
            from kdtool.plugins import get_plugin_manager

            self._manager = get_plugin_manager()
        return self._manager

    @property
    def registries(self) -> Registries:
        return self.manager.registries()

    @property
    def task(self) -> Task:
        """The run's task, built from the registry with the recipe's options and prepared
        for this run directory (imports torch and the task's plugin)."""
        if self._task is None:
            from kdtool.engine.build import build_task

            self._task = build_task(self.loaded, self.registries)
            self._task.prepare(self.run_dir)
        return self._task

    def model_name(self, name: str | None) -> str:
        """``name`` checked against the run's models (default: the recipe's deploy model)."""
        from kdtool.registry import suggest

        chosen = name or self.summary.get("deploy_model")
        models = self.models
        failed = failure_note(self.summary)
        if (not chosen or chosen not in models) and failed:
            recipe = self.summary.get("recipe_file") or "RECIPE"
            hint = f"fix the cause and train again with `kdtool distill {recipe}`"
            if models:
                hint += (
                    f" (add `--resume --run {self.run_dir}` to keep its finished stages: {', '.join(models)})"
                )
            raise RunError(f"run {self.run_dir} has no model {chosen!r}: {failed}", hint=hint)
        if not chosen or chosen not in models:
            close = suggest(chosen or "", list(models))
            raise RunError(
                f"run {self.run_dir} has no model {chosen!r} (its stage did not finish or it does not exist); "
                f"models: {sorted(models) or 'none'}",
                hint=f"did you mean {close!r}?"
                if close
                else "finish the run with `kdtool distill RECIPE --resume`",
            )
        return chosen

    def model_config(self, name: str) -> dict[str, Any]:
        """The config that rebuilds model ``name`` (``models/<name>.json``)."""
        entry = self._entry(name)
        if not entry.get("config"):
            raise RunError(f"model {name!r} of run {self.run_dir} has no config file in summary.json")
        return read_json(self.run_dir / entry["config"], what="model config")

    def load_model(self, name: str | None = None) -> nn.Module:
        """Model ``name`` (default: the deploy model) rebuilt from its config and weights, in
        eval mode. Imports torch and the model's plugin."""
        from kdtool.engine.build import rebuild_model

        name = self.model_name(name)
        entry = self._entry(name)
        if not entry.get("weights"):
            raise RunError(f"model {name!r} of run {self.run_dir} has no weights (its stage did not finish)")
        module = rebuild_model(self.registries, self.model_config(name), self.run_dir / entry["weights"])
        return module.eval()

    def export_spec(self, name: str) -> ExportSpec:
        """The task's export description of model ``name``."""
        return self.task.export_spec(self.load_model(name), name)

    def _entry(self, name: str) -> dict[str, Any]:
        models = self.models
        if name not in models:
            raise RunError(f"run {self.run_dir} has no model {name!r}; models: {sorted(models)}")
        return models[name]

    # ------------------------------------------------------------ writing

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's summary lock (exclusive, between processes) for a read-change-write."""
        lock_path = self.run_dir / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def update_summary(
        self, changes: Mapping[str, Any] | Callable[[dict[str, Any]], None] | None = None, /, **fields: Any
    ) -> dict[str, Any]:
        """Change ``summary.json`` safely: under the lock, read the file as it is now, apply
        ``changes`` (a mapping of top-level keys, or a function that edits the summary in
        place) and ``fields``, and write it atomically. Returns the summary written."""
        with self.locked():
            summary = read_summary(self.run_dir)
            if callable(changes):
                changes(summary)
            elif changes is not None:
                summary.update(changes)
            summary.update(fields)
            if not isinstance(summary.get("models"), dict):
                raise RunError(f"update of {self.run_dir / 'summary.json'} left 'models' not an object")
            write_summary(self.run_dir, summary)
        self._summary = summary
        return summary

    def add_model(
        self,
        name: str,
        entry: Mapping[str, Any] | None = None,
        *,
        module: nn.Module | None = None,
        config: Mapping[str, Any] | None = None,
        role: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Add (or replace) model ``name`` in the run's summary and return its entry.

        With ``module`` and ``config`` the weights go to ``models/<name>.safetensors`` and the
        config (``arch``, ``options``: what rebuilds it) to ``models/<name>.json``, and the
        entry points at them, so :meth:`load_model` and ``kdtool export --model NAME`` work.
        ``entry``/``fields`` are the rest of the summary entry (``role``, ``metrics``, ...)."""
        if not name or "/" in name or name.startswith("."):
            raise RunError(
                f"model name {name!r} is not usable as a file name under {self.run_dir / 'models'}"
            )
        record: dict[str, Any] = dict(entry or {})
        record.update(fields)
        if role is not None:
            record["role"] = role
        if (module is None) != (config is None):
            raise RunError(f"add_model({name!r}): pass both module and config (what rebuilds it), or neither")
        if module is not None and config is not None:
            from kdtool.io import save_weights

            if "arch" not in config:
                raise RunError(f"add_model({name!r}): config lacks 'arch' (the registered model to rebuild)")
            weights = self.run_dir / "models" / f"{name}.safetensors"
            config_path = self.run_dir / "models" / f"{name}.json"
            save_weights(module, weights)
            write_json(config_path, dict(config))
            record.setdefault("arch", config["arch"])
            record.setdefault("params", sum(p.numel() for p in module.parameters()))
            record["weights"] = str(weights.relative_to(self.run_dir))
            record["config"] = str(config_path.relative_to(self.run_dir))

        def put(summary: dict[str, Any]) -> None:
            summary["models"][name] = record

        self.update_summary(put)
        return record

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r})"
