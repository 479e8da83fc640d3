"""The exporter contract: capabilities, options, export, verify, and a runner for artifacts.

An exporter plugin subclasses :class:`Exporter`, declares :class:`Capabilities` in one
place, and implements :meth:`Exporter.export`, :meth:`Exporter.verify` and
:meth:`Exporter.load`. Exporters never call each other: one that starts from ONNX asks the
framework through :meth:`ExportContext.require_artifact`.
"""

from __future__ import annotations

import platform
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

from kdtool.export.spec import ExportSpec, as_tuple
from kdtool.task import Predictor

Precision = Literal["fp32", "fp16", "int8", "fp8"]


class ExporterOptions(BaseModel):
    """Base of an exporter's options model (``--opt key=value``). Unknown keys are errors.

    ``precision`` is set by the framework from ``--precision`` / the profile."""

    model_config = ConfigDict(extra="forbid")

    precision: str = "fp32"


@dataclass(frozen=True)
class Capabilities:
    """What an exporter can do, declared once (``kdtool targets`` and the driver read it)."""

    name: str
    suffix: str  # ".onnx", ".mlpackage", ".engine"
    precisions: tuple[str, ...]
    options_model: type[ExporterOptions]
    default_profile: str
    description: str = ""
    needs_gpu_to_build: bool = False
    needs_gpu_to_run: bool = False
    needs_macos_to_run: bool = False
    # Python modules the exporter needs, with the line that installs them.
    requires: tuple[tuple[str, str], ...] = ()
    # Tasks whose export specs it takes (empty: any task), e.g. a speech runtime's layout.
    tasks: tuple[str, ...] = ()

    def missing_requirements(self) -> list[tuple[str, str]]:
        import importlib.util

        return [(mod, hint) for mod, hint in self.requires if importlib.util.find_spec(mod) is None]


@dataclass
class Artifact:
    """What an export wrote: the folder, one file per graph, and any extra files."""

    directory: Path
    graph_files: dict[str, Path]
    extra_files: list[Path] = field(default_factory=list)
    # Facts the exporter wants in the manifest (e.g. exporter path used, op list, quantized nodes).
    details: dict[str, Any] = field(default_factory=dict)
    not_verified: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        return [*self.graph_files.values(), *self.extra_files]


@dataclass
class ParityResult:
    graph: str
    sizes: dict[str, int]
    output: str
    max_abs_error: float
    max_rel_error: float
    tolerance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "sizes": self.sizes,
            "output": self.output,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }


@dataclass
class VerifyResult:
    parity: list[ParityResult] = field(default_factory=list)
    not_verified: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity)


class ExportContext:
    """What the framework offers an exporter during an export."""

    def __init__(
        self,
        *,
        target: str,
        precision: str,
        require_artifact: Callable[[str, dict[str, Any]], Artifact],
        log: Callable[[str], None],
    ) -> None:
        self.target = target
        self.precision = precision
        self._require = require_artifact
        self.log = log

    def require_artifact(self, target: str, options: dict[str, Any] | None = None) -> Artifact:
        """Export the same model through another target first (e.g. ``onnx``) and return it.
        The framework runs that exporter in the open, records it in the manifest."""
        return self._require(target, options or {})


class ArtifactRunner(Predictor):
    """A loaded artifact that runs: the same interface as a PyTorch predictor."""


class Exporter(ABC):
    """Subclass and set ``capabilities``; register with ``register_exporters``."""

    capabilities: ClassVar[Capabilities]

    @abstractmethod
    def export(
        self, spec: ExportSpec, options: ExporterOptions, out_dir: Path, ctx: ExportContext
    ) -> Artifact:
        """Write the artifact for ``spec`` into ``out_dir``."""

    @abstractmethod
    def verify(self, spec: ExportSpec, artifact: Artifact, options: ExporterOptions) -> VerifyResult:
        """Compare the artifact to PyTorch where this machine can run it; say what was not
        checked and why where it cannot."""

    @abstractmethod
    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        """Load an artifact folder (with its ``manifest.json``) as a runner."""

    def can_run_here(self, options: ExporterOptions) -> tuple[bool, str]:
        """Whether artifacts of this exporter (with these options) run on this machine."""
        caps = self.capabilities
        if caps.needs_macos_to_run and sys.platform != "darwin":
            return False, "runs only on macOS"
        if caps.needs_gpu_to_run and not torch.cuda.is_available():
            return False, "needs an NVIDIA GPU (CUDA not available here)"
        return True, ""

    def versions(self) -> dict[str, str]:
        """Library versions to stamp into the manifest."""
        return {"torch": torch.__version__, "python": platform.python_version()}


def run_in_fixed_batches(
    run_once: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
    inputs: tuple[torch.Tensor, ...],
    static_batch: int | None,
) -> tuple[torch.Tensor, ...]:
    """Run a graph exported with a fixed batch N on any batch: inputs are cut into chunks of
    N along dim 0 (the last padded by repeating its final sample) and outputs joined again."""
    if static_batch is None or inputs[0].shape[0] == static_batch:
        return run_once(inputs)
    total = inputs[0].shape[0]
    chunks: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, total, static_batch):
        part = [x[start : start + static_batch] for x in inputs]
        short = static_batch - part[0].shape[0]
        if short:
            part = [torch.cat([p, p[-1:].expand(short, *p.shape[1:])]) for p in part]
        chunks.append(run_once(tuple(part)))
    return tuple(torch.cat([c[i] for c in chunks])[:total] for i in range(len(chunks[0])))


def compare_outputs(
    graph: str,
    sizes: dict[str, int],
    names: list[str],
    reference: tuple[torch.Tensor, ...],
    candidate: tuple[torch.Tensor, ...],
    tolerance: float,
) -> list[ParityResult]:
    """Max abs and relative (to the reference's max magnitude) error per output."""
    results = []
    for name, ref, got in zip(names, as_tuple(reference), as_tuple(candidate), strict=False):
        ref_f = ref.detach().float().cpu()
        got_f = got.detach().float().cpu()
        if ref_f.shape != got_f.shape:
            results.append(ParityResult(graph, sizes, name, float("inf"), float("inf"), tolerance, False))
            continue
        if not ref.is_floating_point():
            mismatch = float((ref_f != got_f).float().mean()) if ref_f.numel() else 0.0
            results.append(
                ParityResult(graph, sizes, name, mismatch, mismatch, tolerance, mismatch <= tolerance)
            )
            continue
        abs_err = float((ref_f - got_f).abs().max()) if ref_f.numel() else 0.0
        scale = float(ref_f.abs().max()) if ref_f.numel() else 1.0
        rel = abs_err / max(scale, 1e-12)
        results.append(ParityResult(graph, sizes, name, abs_err, rel, tolerance, rel <= tolerance))
    return results
