"""``kdtool plugins new``: write a new plugin distribution that installs and passes the kit.

``scaffold(name, kind, directory)`` writes ``directory/kdtool-<name>/`` with a pyproject.toml
declaring the ``kdtool`` entry point, one module with the hook implementations
(``kdtool_<name>/__init__.py``), a README, a test file that runs :mod:`kdtool.testing`, a
license placeholder and, for a task, a recipe. Names follow one rule so users can guess them:
plugin (entry point) ``<name>``, distribution ``kdtool-<name>``, module ``kdtool_<name>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from kdtool.errors import PluginError
from kdtool.hookspecs import PLUGIN_API_VERSION
from kdtool.scaffold import templates

KINDS = ("task", "exporter", "loss", "target")
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
_KIND_WORDS = {"task": "task", "exporter": "exporter", "loss": "KD loss", "target": "target profile"}
_REGISTRY = {"task": "tasks", "exporter": "exporters", "loss": "losses", "target": "targets"}
_DESCRIPTION = {
    "task": "a distillation task for kdtool",
    "exporter": "an export format for kdtool",
    "loss": "a knowledge-distillation loss for kdtool",
    "target": "a hardware target profile for kdtool",
}


@dataclass
class PluginNames:
    """Every name a scaffolded plugin uses, derived from the one the user gave."""

    plugin: str  # entry-point name: what `kdtool plugins` lists and KDTOOL_DISABLE_PLUGINS takes
    distribution: str  # what `pip install` takes
    module: str  # the importable package
    registered: str  # the name of the task / loss / exporter / profile in kdtool's registries
    cls: str  # CamelCase prefix for the generated classes

    @classmethod
    def from_name(cls, name: str, kind: str) -> PluginNames:
        raw = name.strip().lower()
        for prefix in ("kdtool-", "kdtool_"):
            raw = raw.removeprefix(prefix)
        if not _NAME.match(raw):
            raise PluginError(
                f"invalid plugin name {name!r}: use lowercase letters, digits and single '-' or '_' "
                "between them, starting with a letter (e.g. 'dist-loss')"
            )
        snake = raw.replace("-", "_")
        registered = raw if kind == "target" else snake
        camel = "".join(part.capitalize() for part in snake.split("_"))
        return cls(
            plugin=raw,
            distribution=f"kdtool-{raw}",
            module=f"kdtool_{snake}",
            registered=registered,
            cls=camel,
        )


@dataclass
class ScaffoldResult:
    root: Path
    kind: str
    names: PluginNames
    files: list[Path] = field(default_factory=list)


def _check_free(names: PluginNames, kind: str, manager: Any) -> None:
    """Refuse names an installed plugin already uses (two registrations would conflict)."""
    if manager is None:
        return
    if names.plugin in manager.infos:
        owner = manager.infos[names.plugin].distribution or "kdtool"
        raise PluginError(
            f"a plugin named {names.plugin!r} is already installed (from {owner}); choose another NAME"
        )
    regs = manager.registries(strict=False)
    wanted: list[tuple[str, list[Any]]] = {  # type: ignore[assignment]
        "loss": [(names.registered, [regs.losses])],
        "task": [(names.registered, [regs.tasks]), (f"{names.registered}_mlp", [regs.models])],
        # exporters and target profiles share one namespace (`kdtool export --target NAME`)
        "exporter": [
            (names.registered, [regs.exporters, regs.targets]),
            (f"{names.registered}-cpu", [regs.exporters, regs.targets]),
        ],
        "target": [(names.registered, [regs.exporters, regs.targets])],
    }[kind]
    for key, registries in wanted:
        for registry in registries:
            if key in registry:
                raise PluginError(
                    f"a {registry.kind} named {key!r} is already registered by plugin {registry.owner(key)!r}; "
                    "choose another NAME"
                )


def scaffold(name: str, kind: str, directory: Path | str = ".", *, manager: Any = None) -> ScaffoldResult:
    """Write a new ``kind`` plugin called ``name`` under ``directory``; return what was written.

    ``manager``: a :class:`kdtool.plugins.PluginManager` to refuse names already in use.
    """
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
    names = PluginNames.from_name(name, kind)
    _check_free(names, kind, manager)
    root = Path(directory) / names.distribution
    if root.exists() and any(root.iterdir()):
        raise PluginError(f"{root} already exists and is not empty; choose another --dir or NAME")
    from kdtool import __version__

    values = {
        "plugin": names.plugin,
        "dist": names.distribution,
        "module": names.module,
        "name": names.registered,
        "cls": names.cls,
        "api": PLUGIN_API_VERSION,
        "kind": kind,
        "kind_words": _KIND_WORDS[kind],
        "description": _DESCRIPTION[kind],
        "kdtool_version": ".".join(__version__.split(".")[:2]),
        "extra_registrations": {
            "task": f" and the model architecture `{names.registered}_mlp`",
            "exporter": f" and its target profile `{names.registered}-cpu`",
        }.get(kind, ""),
    }

    def fill(text: str) -> str:
        return Template(text).substitute(values)

    values["usage"] = fill(templates.USAGE[kind])
    files = {
        "pyproject.toml": templates.PYPROJECT,
        "README.md": templates.README,
        "LICENSE": templates.LICENSE,
        ".gitignore": templates.GITIGNORE,
        f"{names.module}/__init__.py": templates.MODULES[kind],
        f"tests/test_{names.module}.py": templates.TESTS[kind],
    }
    if kind == "task":
        files[f"recipes/{names.registered}.yaml"] = templates.TASK_RECIPE
    result = ScaffoldResult(root=root, kind=kind, names=names)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fill(text))
        result.files.append(path)
    return result
