"""Plugin discovery: entry points of the ``kdtool`` group, loaded one at a time.

A plugin that fails to import or to register is recorded with its error (and one warning
line on stderr); the rest keep working. A plugin whose optional dependency is missing is
*unavailable*, with the install line. ``KDTOOL_DISABLE_PLUGINS=a,b`` blocks plugins by
entry-point or distribution name. Two plugins registering one name is a conflict that names
both: ``kdtool plugins`` lists it, every command warns about it once on stderr, and only a
command that uses the clashing name fails (see :class:`kdtool.registry.Registry`).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from kdtool import hookspecs
from kdtool.errors import PluginError
from kdtool.hookspecs import PLUGIN_API_VERSION, PROJECT_NAME
from kdtool.registry import Registry

ENTRY_POINT_GROUP = "kdtool"
DISABLE_ENV = "KDTOOL_DISABLE_PLUGINS"


class MissingDependency(ImportError):
    """Raise from a plugin (at import or registration) when an optional dependency is absent."""

    def __init__(self, package: str, install: str) -> None:
        super().__init__(f"needs {package!r}, which is not installed")
        self.package = package
        self.install = install


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str = ""
    version: str = ""
    status: str = "ok"  # ok | broken | unavailable | incompatible | disabled
    error: str = ""
    hint: str = ""
    api_version: str = ""
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    # What a loaded plugin's exporters still need: [{"exporter", "module", "install"}].
    missing: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "hint": self.hint,
            "api_version": self.api_version,
            "hooks": self.hooks,
            "registered": self.registered,
            "missing": self.missing,
        }


@dataclass
class Registries:
    tasks: Registry[Any]
    models: Registry[Any]
    losses: Registry[Any]
    optimizers: Registry[Any]
    schedules: Registry[Any]
    exporters: Registry[Any]
    targets: Registry[Any]
    postprocessors: Registry[Any]
    report_figures: Registry[Any]

    @classmethod
    def empty(cls) -> Registries:
        from kdtool.errors import ExportError, RecipeError

        return cls(
            tasks=Registry("task", RecipeError),
            models=Registry("model architecture", RecipeError),
            losses=Registry("loss", RecipeError),
            optimizers=Registry("optimizer", RecipeError),
            schedules=Registry("schedule", RecipeError),
            exporters=Registry("exporter", ExportError),
            targets=Registry("target profile", ExportError),
            postprocessors=Registry("post-processor", RecipeError),
            report_figures=Registry("report figure", PluginError),
        )


_HOOK_TO_REGISTRY = {
    "register_tasks": "tasks",
    "register_models": "models",
    "register_losses": "losses",
    "register_optimizers": "optimizers",
    "register_exporters": "exporters",
    "register_targets": "targets",
    "register_postprocessors": "postprocessors",
    "register_report_figures": "report_figures",
}


def _disabled() -> set[str]:
    return {p.strip() for p in os.environ.get(DISABLE_ENV, "").split(",") if p.strip()}


def api_mismatch_message(plugin: str, declared: str) -> str:
    """Why a plugin written for another plugin API major version is not used, with what changed."""
    from kdtool.hookspecs import API_CHANGES

    changes = "\n  - ".join(API_CHANGES)
    return (
        f"plugin {plugin!r} is written for plugin API {declared}; this kdtool has {PLUGIN_API_VERSION} "
        f"and does not load it. What changed in {PLUGIN_API_VERSION.split('.')[0]}.0:\n  - {changes}"
    )


def _api_compatible(declared: str) -> bool:
    return declared.split(".")[0] == PLUGIN_API_VERSION.split(".")[0]


def _warn(message: str) -> None:
    print(f"kdtool: warning: {message}", file=sys.stderr)


class PluginManager:
    """pluggy's manager plus what kdtool records about each plugin and the registries."""

    def __init__(self, *, load_entry_points: bool = True, warn: Callable[[str], None] = _warn) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.conflicts: list[str] = []
        self._incompatible: dict[str, ModuleType] = {}
        self._warn = warn
        self._registries: Registries | None = None
        from kdtool import builtins

        self._add(builtins, PluginInfo(name="kdtool", module=builtins.__name__, builtin=True))
        from kdtool import __version__

        self.infos["kdtool"].version = __version__
        self.infos["kdtool"].distribution = "kdtool"
        if load_entry_points:
            self._load_entry_points()

    # ------------------------------------------------------------ loading

    def _add(self, module: ModuleType, info: PluginInfo) -> None:
        declared = getattr(module, "KDTOOL_PLUGIN_API", None)
        info.api_version = str(declared) if declared is not None else ""
        if declared is not None and not _api_compatible(str(declared)):
            info.status = "incompatible"
            info.error = f"written for plugin API {declared}, this kdtool has {PLUGIN_API_VERSION}"
            info.hint = "upgrade the plugin (or kdtool) so their plugin API major versions match"
            self.infos[info.name] = info
            self._incompatible[info.name] = module
            self._warn(f"plugin {info.name!r} is incompatible: {info.error}")
            return
        try:
            self.pm.register(module, name=info.name)
        except Exception as exc:  # pluggy validates hook names and signatures
            info.status = "broken"
            info.error = f"{type(exc).__name__}: {exc}"
            self.infos[info.name] = info
            self._warn(f"plugin {info.name!r} failed to load: {info.error}")
            return
        info.hooks = sorted(impl for impl in hookspecs.ALL_HOOKS if hasattr(module, impl))
        self.infos[info.name] = info

    def _load_entry_points(self) -> None:
        disabled = _disabled()
        eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        for ep in eps:
            dist = ep.dist.name if ep.dist is not None else ""
            version = ep.dist.version if ep.dist is not None else ""
            info = PluginInfo(name=ep.name, module=ep.value, distribution=dist, version=version)
            if ep.name in self.infos:
                info.status = "broken"
                info.error = f"entry point name {ep.name!r} is used by another plugin ({self.infos[ep.name].distribution})"
                self.infos[f"{ep.name} ({dist})"] = info
                self._warn(f"plugin {ep.name!r} from {dist}: {info.error}")
                continue
            if ep.name in disabled or dist in disabled:
                info.status = "disabled"
                info.error = f"blocked by {DISABLE_ENV}"
                self.infos[ep.name] = info
                continue
            try:
                module = ep.load()
            except MissingDependency as exc:
                self._unavailable(info, str(exc), exc.install)
                continue
            except ModuleNotFoundError as exc:
                missing = exc.name or "?"
                if missing.split(".")[0] == ep.value.split(".")[0].split(":")[0]:
                    self._broken(info, exc)
                else:
                    self._unavailable(
                        info, f"needs {missing!r}, which is not installed", f"pip install {missing}"
                    )
                continue
            except Exception as exc:
                self._broken(info, exc)
                continue
            if not isinstance(module, ModuleType):
                info.status = "broken"
                info.error = f"entry point {ep.value!r} must name a module, got {type(module).__name__}"
                self.infos[ep.name] = info
                self._warn(f"plugin {ep.name!r}: {info.error}")
                continue
            self._add(module, info)

    def _unavailable(self, info: PluginInfo, error: str, hint: str) -> None:
        info.status = "unavailable"
        info.error = error
        info.hint = hint
        self.infos[info.name] = info

    def _broken(self, info: PluginInfo, exc: BaseException) -> None:
        info.status = "broken"
        info.error = f"{type(exc).__name__}: {exc}"
        info.hint = f"block it with {DISABLE_ENV}={info.name} or reinstall it"
        self.infos[info.name] = info
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" ({tb[-1].filename}:{tb[-1].lineno})" if tb else ""
        self._warn(f"plugin {info.name!r} failed to load: {info.error}{where}")

    def register_module(self, module: ModuleType, name: str) -> None:
        """Register a module as a plugin directly (tests, embedding)."""
        self._add(module, PluginInfo(name=name, module=module.__name__))
        self._registries = None

    # ------------------------------------------------------------ registries

    def registries(self, *, strict: bool = True) -> Registries:
        """All registrations, built once.

        A name conflict does not fail here (it was warned about while building): looking the
        clashing name up fails, naming both plugins. ``strict`` is kept for callers written
        for the old behaviour and has no effect.
        """
        if self._registries is None:
            self._registries = self._build()
        return self._registries

    def _build(self) -> Registries:
        regs = Registries.empty()
        for hook_name, attr in _HOOK_TO_REGISTRY.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in sorted(
                hook.get_hookimpls(), key=lambda i: (i.plugin_name != "kdtool", i.plugin_name)
            ):
                info = self.infos[impl.plugin_name]
                if info.status != "ok":
                    continue
                staged: list[tuple[str, Any, str]] = []

                def register(
                    name: str, obj: Any, *, description: str = "", _staged: list[Any] = staged
                ) -> None:
                    _staged.append((name, obj, description))

                try:
                    impl.function(register=register)
                except MissingDependency as exc:
                    self._unavailable(info, str(exc), exc.install)
                    continue
                except Exception as exc:
                    self._broken(info, exc)
                    continue
                for name, obj, description in staged:
                    target = (
                        regs.schedules
                        if attr == "optimizers" and name.startswith("schedule:")
                        else getattr(regs, attr)
                    )
                    key = name.removeprefix("schedule:") if target is regs.schedules else name
                    try:
                        target.register(key, obj, owner=impl.plugin_name, description=description)
                    except PluginError as exc:
                        self.conflicts.append(exc.message)
                        self._warn(
                            f"{exc.message}; commands that use {key!r} fail until one plugin is "
                            f"uninstalled or blocked ({DISABLE_ENV}={impl.plugin_name})"
                        )
                        continue
                    info.registered.setdefault(target.kind, []).append(key)
        for name in self._incompatible:
            self._note_incompatible(regs, name)
        for entry in regs.exporters.entries():
            caps = getattr(entry.obj, "capabilities", None)
            if caps is None:
                continue
            for module, install in caps.missing_requirements():
                self.infos[entry.owner].missing.append(
                    {"exporter": entry.name, "module": module, "install": install}
                )
        # exporter and target names share one namespace: `--target` takes either.
        for name in regs.targets.names():
            if regs.exporters.clash(name) is None and name in regs.exporters:
                message = (
                    f"target profile {name!r} (plugin {regs.targets.owner(name)!r}) has the name of an exporter "
                    f"(plugin {regs.exporters.owner(name)!r})"
                )
                self.conflicts.append(message)
                self._warn(f"{message}; `--target {name}` fails until one plugin is uninstalled or blocked")
                error = PluginError(message, hint=f"uninstall one plugin or block it with {DISABLE_ENV}")
                regs.targets.mark_clash(name, error)
                regs.exporters.mark_clash(name, error)
        return regs

    def _note_incompatible(self, regs: Registries, plugin: str) -> None:
        """An incompatible plugin is never called (its hooks may expect the other API), so its
        names are unknown: a lookup of an unknown name then fails as a plugin error that says
        the plugin was not loaded and what changed in the plugin API."""
        info = self.infos[plugin]
        error = PluginError(
            api_mismatch_message(plugin, info.api_version),
            hint=info.hint + "; see docs/plugins.md (Migrating a plugin from 1.x to 2.0)",
        )
        for attr in {*_HOOK_TO_REGISTRY.values(), "schedules"}:
            getattr(regs, attr).note_not_loaded(error)

    # ------------------------------------------------------------ lifecycle

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call a lifecycle hook on every plugin; a failing observer is reported, not fatal."""
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                self._warn(f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}")

    def add_commands(self, app: Any) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(app=app)
            except Exception as exc:
                self._broken(self.infos[impl.plugin_name], exc)


_MANAGER: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PluginManager()
    return _MANAGER


def get_registries() -> Registries:
    return get_plugin_manager().registries()


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (tests that install plugins at run time)."""
    global _MANAGER
    _MANAGER = None
    importlib.invalidate_caches()
