"""The exporter contract: capabilities, options, export, load (a runner) and inspect.

An exporter plugin subclasses :class:`Exporter`, declares :class:`Capabilities` in one
place (its tolerances included), and implements :meth:`Exporter.export` and
:meth:`Exporter.load`; :meth:`Exporter.inspect` (structural checks), :meth:`Exporter.parity_plan`
and :meth:`Exporter.stand_in` are optional. The export driver verifies every artifact the same
way (:mod:`kdtool.export.verify`): parity with PyTorch and the task metric, through the runner
``load`` returns (or the stand-in where the artifact cannot run on this machine). Exporters
never call each other: one that starts from ONNX asks the framework through
:meth:`ExportContext.require_artifact`, or uses the public helpers in
:mod:`kdtool.export.onnx_utils`.
"""

from __future__ import annotations

import platform
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from kdtool.errors import ExportError
from kdtool.export.spec import ExportSpec
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
    # Parity tolerances: precision -> a row of kdtool.export.verify.TOLERANCES, where the
    # artifact's numerics differ from the precision's own row (e.g. TensorRT FP32 runs TF32).
    tolerances: tuple[tuple[str, str], ...] = ()

    def tolerance_key(self, precision: str) -> str:
        """The row of ``kdtool.export.verify.TOLERANCES`` for artifacts of ``precision``."""
        return dict(self.tolerances).get(precision, precision)

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
    """One output of one graph at one set of sizes, compared with PyTorch."""

    graph: str
    sizes: dict[str, int]
    output: str
    max_abs_error: float
    max_rel_error: float
    tolerance: float
    passed: bool

    @property
    def message(self) -> str:
        """One line naming the graph, output, sizes and the error against the tolerance."""
        if self.output.startswith("("):  # the artifact did not run, or an output is missing
            return f"graph {self.graph!r} at sizes {self.sizes}: {self.output.strip('()')}"
        if self.max_rel_error == float("inf"):
            return f"graph {self.graph!r} output {self.output!r} at sizes {self.sizes}: shape differs from PyTorch"
        return (
            f"graph {self.graph!r} output {self.output!r} at sizes {self.sizes}: max relative error "
            f"{self.max_rel_error:.3g} (max abs {self.max_abs_error:.3g}) "
            f"{'<=' if self.passed else '>'} tolerance {self.tolerance:g}"
        )

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
    """What the driver's verification found (see :func:`kdtool.export.verify.verify_artifact`)."""

    parity: list[ParityResult] = field(default_factory=list)
    not_verified: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    # The task metric of PyTorch and of the artifact (or its stand-in), when measured.
    metric: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity)

    @property
    def failures(self) -> list[ParityResult]:
        return [p for p in self.parity if not p.passed]


@dataclass
class ParityPlan:
    """How the driver compares an artifact with PyTorch; :meth:`Exporter.parity_plan` makes it.

    Per graph: up to ``samples`` real inputs (the task's calibration inputs, at their natural
    sizes), then random inputs at ``sizes`` (default: each graph's ``test_sizes()``).
    """

    # Allowed max relative error (to the reference's max magnitude) on real samples.
    tolerance: float
    # On random inputs; ``inf`` checks shapes only (a quantized graph's calibrated range does
    # not cover random inputs). None: the same as ``tolerance``.
    random_tolerance: float | None = None
    samples: int = 4
    # Graph name -> the sizes of random inputs; graphs not named use their test_sizes().
    sizes: dict[str, list[dict[str, int]]] | None = None
    # Whether a real sample is in what the artifact accepts (e.g. a TensorRT profile's range).
    accepts: Callable[[Any, tuple[torch.Tensor, ...]], bool] | None = None
    # Maps inputs to what the artifact can represent (e.g. an image input's uint8 pixels)
    # before PyTorch and the artifact both run them.
    prepare: Callable[[Any, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]] | None = None


@dataclass
class StandIn:
    """What runs in the artifact's place where it cannot run here (TensorRT without a GPU: the
    TensorRT-ready ONNX it was built from, in ONNX Runtime), or where its runner has no
    per-graph callables (sherpa-onnx decodes whole utterances)."""

    runner: ArtifactRunner
    # What runs, for the manifest, e.g. "onnxruntime (TensorRT-ready ONNX; no engine built here)".
    description: str
    # Its row of kdtool.export.verify.TOLERANCES (the stand-in's own numerics).
    precision: str
    # Whether the task metric is measured on it when the artifact itself cannot run.
    metric: bool = True


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
    """A loaded artifact that runs: the same interface as a PyTorch predictor (positional CPU
    tensors per graph), and :meth:`run_named` for named numpy inputs and outputs."""

    def __init__(
        self,
        graphs: Mapping[str, Callable[..., tuple[torch.Tensor, ...]]],
        *,
        kind: str,
        input_names: Mapping[str, list[str]] | None = None,
        output_names: Mapping[str, list[str]] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(graphs, kind=kind, input_names=input_names, metadata=metadata)
        self.output_names = dict(output_names or {})

    def run_named(self, feed: Mapping[str, Any], *, graph: str | None = None) -> dict[str, np.ndarray]:
        """Run one graph on named arrays (``{"image": array}``) and return named numpy outputs
        (``output_<i>`` where the runner does not know the names)."""
        if graph is None:
            if len(self.graphs) != 1:
                raise ExportError(f"the artifact has graphs {sorted(self.graphs)}; pass graph=NAME")
            graph = next(iter(self.graphs))
        if graph not in self.graphs:
            raise ExportError(f"the artifact has no graph {graph!r}; graphs: {sorted(self.graphs)}")
        names = self.input_names.get(graph)
        if not names:
            raise ExportError(f"graph {graph!r} of this {self.kind} runner does not name its inputs")
        missing = [n for n in names if n not in feed]
        if missing:
            raise ExportError(f"graph {graph!r} needs inputs {names}; missing {missing}")
        outputs = self.graphs[graph](*[torch.as_tensor(np.asarray(feed[n])) for n in names])
        out_names = self.output_names.get(graph) or [f"output_{i}" for i in range(len(outputs))]
        return {n: o.detach().cpu().numpy() for n, o in zip(out_names, outputs, strict=False)}


class Exporter(ABC):
    """Subclass and set ``capabilities``; register with ``register_exporters``."""

    capabilities: ClassVar[Capabilities]

    @abstractmethod
    def export(
        self, spec: ExportSpec, options: ExporterOptions, out_dir: Path, ctx: ExportContext
    ) -> Artifact:
        """Write the artifact for ``spec`` into ``out_dir``."""

    @abstractmethod
    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        """Load an artifact folder (with its ``manifest.json``) as a runner: one callable per
        graph over CPU torch tensors. Raise :class:`~kdtool.errors.ExportError` where it
        cannot load (the driver then says so in the manifest)."""

    def inspect(self, spec: ExportSpec, artifact: Artifact, options: ExporterOptions) -> dict[str, Any]:
        """Structural checks the driver records under ``verification.checks`` (op histogram,
        interface against the spec, weight storage...). Raise ``ExportError`` for an artifact
        that is wrong whatever its numbers. Default: none."""
        return {}

    def parity_plan(
        self, spec: ExportSpec, artifact: Artifact, options: ExporterOptions, *, precision: str | None = None
    ) -> ParityPlan:
        """How to compare with PyTorch. ``precision``: the tolerance row to use (a stand-in's);
        default: this exporter's row for ``options.precision`` (see ``Capabilities.tolerances``)."""
        from kdtool.export.verify import tolerance_for

        key = precision or self.capabilities.tolerance_key(options.precision)
        return ParityPlan(tolerance=tolerance_for(key))

    def stand_in(self, directory: Path, manifest: dict[str, Any], options: ExporterOptions) -> StandIn | None:
        """What the driver may run in place of the artifact when it cannot run here (or its
        runner has no per-graph callables). Default: nothing; parity is then not verified."""
        return None

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
    """Kept for plugin API 1.x: :func:`kdtool.export.verify.check_parity` with positional names."""
    from kdtool.export.verify import check_parity

    return check_parity(reference, candidate, tolerance, graph=graph, sizes=sizes, names=names)
