"""The exporter API: what an exporter plugin implements and the helpers it may use.

- Contract (:mod:`kdtool.export.exporter`): ``Exporter`` (``export``, ``load``, optional
  ``inspect``, ``parity_plan`` and ``stand_in``), ``Capabilities`` (tolerances included),
  ``ExporterOptions``, ``ExportContext``, ``Artifact``, ``ArtifactRunner``, ``ParityPlan``,
  ``StandIn``, ``VerifyResult``, ``ParityResult``.
- Verification (:mod:`kdtool.export.verify`), run by the export driver for every format:
  ``TOLERANCES``, ``tolerance_for``, ``check_parity``, ``verify_artifact``, ``compare_metric``.
- ONNX helpers shared by exporters (:mod:`kdtool.export.onnx_utils`): ``export_onnx``,
  ``make_session``, ``run_session``, ``load_onnx_runner``, ``embed_metadata``, ``convert_fp16``,
  ``op_histogram``, ``CalibrationReader``.

Names resolve on first use, so ``import kdtool.export`` imports neither torch nor onnx.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    **{
        name: "kdtool.export.exporter"
        for name in (
            "Artifact",
            "ArtifactRunner",
            "Capabilities",
            "ExportContext",
            "Exporter",
            "ExporterOptions",
            "ParityPlan",
            "ParityResult",
            "StandIn",
            "VerifyResult",
            "run_in_fixed_batches",
        )
    },
    **{
        name: "kdtool.export.verify"
        for name in ("TOLERANCES", "check_parity", "compare_metric", "tolerance_for", "verify_artifact")
    },
    **{
        name: "kdtool.export.onnx_utils"
        for name in (
            "CalibrationReader",
            "convert_fp16",
            "embed_metadata",
            "export_onnx",
            "load_onnx_runner",
            "make_session",
            "op_histogram",
            "run_session",
        )
    },
    **{name: "kdtool.export.spec" for name in ("ExportSpec", "GraphSpec", "TensorSpec", "DynamicAxis")},
    "TargetProfile": "kdtool.export.targets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdtool.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
