"""kdtool: distil big models into small on-device models, and export them.

Public API for plugin authors: ``hookimpl``, ``Task``, ``TaskOptions``, ``PrimaryMetric``,
``Predictor``, ``ExportSpec`` (with ``GraphSpec``, ``TensorSpec``, ``DynamicAxis``,
``DeployMetadata``), ``Exporter`` and ``PLUGIN_API_VERSION``.
"""

from __future__ import annotations

from typing import Any

from kdtool.export.spec import (
    DeployMetadata,
    DynamicAxis,
    ExportSpec,
    GraphSpec,
    QuantizationHints,
    TensorSpec,
)
from kdtool.hookspecs import PLUGIN_API_VERSION, hookimpl
from kdtool.task import Predictor, PrimaryMetric, Task, TaskOptions

__version__ = "0.1.0"

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


def __getattr__(name: str) -> Any:
    # Exporter lives in kdtool.export.exporter, imported lazily to keep `import kdtool` light.
    if name == "Exporter":
        from kdtool.export.exporter import Exporter

        return Exporter
    raise AttributeError(name)
