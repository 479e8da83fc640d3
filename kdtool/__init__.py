"""kdtool: distil big models into small on-device models, and export them.

Public API for plugin authors: ``hookimpl``, ``Task``, ``TaskOptions``, ``PrimaryMetric``,
``Predictor``, ``ExportSpec`` (with ``GraphSpec``, ``TensorSpec``, ``DynamicAxis``,
``DeployMetadata``, ``QuantizationHints``), ``Exporter`` and ``PLUGIN_API_VERSION``.

``import kdtool`` is light: it imports neither torch nor any plugin. The names that need
torch are attributes resolved on first use (module ``__getattr__``), so ``kdtool --help``
and plugin discovery start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdtool.hookspecs import PLUGIN_API_VERSION, hookimpl

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "DeployMetadata": "kdtool.export.spec",
    "DynamicAxis": "kdtool.export.spec",
    "ExportSpec": "kdtool.export.spec",
    "GraphSpec": "kdtool.export.spec",
    "QuantizationHints": "kdtool.export.spec",
    "TensorSpec": "kdtool.export.spec",
    "Exporter": "kdtool.export.exporter",
    "Predictor": "kdtool.task",
    "PrimaryMetric": "kdtool.task",
    "Task": "kdtool.task",
    "TaskOptions": "kdtool.task",
}

__all__ = [
    "PLUGIN_API_VERSION",
    "DeployMetadata",
    "DynamicAxis",
    "ExportSpec",
    "Exporter",
    "GraphSpec",
    "Predictor",
    "PrimaryMetric",
    "QuantizationHints",
    "Task",
    "TaskOptions",
    "TensorSpec",
    "__version__",
    "hookimpl",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these are lazy
    from kdtool.export.exporter import Exporter
    from kdtool.export.spec import (
        DeployMetadata,
        DynamicAxis,
        ExportSpec,
        GraphSpec,
        QuantizationHints,
        TensorSpec,
    )
    from kdtool.task import Predictor, PrimaryMetric, Task, TaskOptions


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdtool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
