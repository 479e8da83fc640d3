"""kdtool: distil big models into small on-device models, and export them.

Public API for plugin authors: ``hookimpl``, ``Task``, ``RoleSpec``, ``TaskOptions``,
``PrimaryMetric``, ``Predictor``, ``ExportSpec`` (typed pre/post-processing: ``ImagePreprocessing``,
``AudioPreprocessing``, ``CTCDecoding``, ...) (with ``GraphSpec``, ``TensorSpec``, ``DynamicAxis``,
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
    "AudioPreprocessing": "kdtool.export.spec",
    "CTCDecoding": "kdtool.export.spec",
    "ClassPostprocessing": "kdtool.export.spec",
    "ImagePreprocessing": "kdtool.export.spec",
    "LandmarksPostprocessing": "kdtool.export.spec",
    "Processing": "kdtool.export.spec",
    "TextLineImagePreprocessing": "kdtool.export.spec",
    "TransducerDecoding": "kdtool.export.spec",
    "RoleSpec": "kdtool.task",
    "Exporter": "kdtool.export.exporter",
    "Predictor": "kdtool.task",
    "PrimaryMetric": "kdtool.task",
    "Task": "kdtool.task",
    "TaskOptions": "kdtool.task",
}

__all__ = [
    "PLUGIN_API_VERSION",
    "AudioPreprocessing",
    "CTCDecoding",
    "ClassPostprocessing",
    "DeployMetadata",
    "DynamicAxis",
    "ExportSpec",
    "Exporter",
    "GraphSpec",
    "ImagePreprocessing",
    "LandmarksPostprocessing",
    "Predictor",
    "PrimaryMetric",
    "Processing",
    "QuantizationHints",
    "RoleSpec",
    "Task",
    "TaskOptions",
    "TensorSpec",
    "TextLineImagePreprocessing",
    "TransducerDecoding",
    "__version__",
    "hookimpl",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these are lazy
    from kdtool.export.exporter import Exporter
    from kdtool.export.spec import (
        AudioPreprocessing,
        ClassPostprocessing,
        CTCDecoding,
        DeployMetadata,
        DynamicAxis,
        ExportSpec,
        GraphSpec,
        ImagePreprocessing,
        LandmarksPostprocessing,
        Processing,
        QuantizationHints,
        TensorSpec,
        TextLineImagePreprocessing,
        TransducerDecoding,
    )
    from kdtool.task import Predictor, PrimaryMetric, RoleSpec, Task, TaskOptions


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdtool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
