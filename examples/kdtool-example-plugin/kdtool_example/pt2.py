"""The ``pt2`` exporter: each graph of the export spec as a ``torch.export`` ExportedProgram.

A ``.pt2`` file is what PyTorch-native deployment starts from (``torch.export.load`` in
Python, AOTInductor for a compiled shared library, ExecuTorch for phones). Dynamic axes of
the spec become ``torch.export.Dim``s bounded below by the spec's min; the example inputs use a size of at
least 2 on each dynamic axis so torch.export does not specialise it to 1. kdtool's export
driver verifies it through :meth:`Pt2Exporter.load` (the saved file loaded back) against the
PyTorch module, as it does every format.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdtool import ExportSpec
from kdtool.errors import ExportError
from kdtool.export.exporter import (
    Artifact,
    ArtifactRunner,
    Capabilities,
    ExportContext,
    Exporter,
    ExporterOptions,
)
from kdtool.export.spec import GraphSpec, as_tuple


class Pt2Options(ExporterOptions):
    """``--opt strict=true`` traces with TorchDynamo's strict mode (stricter Python checks)."""

    strict: bool = False


def _example_sizes(graph: GraphSpec) -> dict[str, int]:
    return {
        name: axis.opt if axis.opt >= 2 else min(axis.max, 2) for name, axis in graph.dynamic_axes.items()
    }


def _dynamic_shapes(graph: GraphSpec) -> tuple[dict[int, Any], ...]:
    # Lower bound from the spec; no upper bound: the spec's max tunes fixed-profile runtimes
    # (TensorRT), while an ExportedProgram runs any size, and evaluation batches may be larger.
    dims = {
        name: torch.export.Dim(re.sub(r"\W", "_", name), min=axis.min)
        for name, axis in graph.dynamic_axes.items()
        if axis.max > axis.min
    }
    return tuple({i: dims[a] for i, a in t.dynamic_axes().items() if a in dims} for t in graph.inputs)


def export_graph(graph: GraphSpec, path: Path, *, strict: bool) -> None:
    inputs = graph.make_inputs(_example_sizes(graph), generator=torch.Generator().manual_seed(0))
    try:
        program = torch.export.export(
            graph.module.eval(), inputs, dynamic_shapes=_dynamic_shapes(graph), strict=strict
        )
    except Exception as exc:  # torch.export's errors are long; keep the first lines
        first = "\n".join(str(exc).strip().splitlines()[:6])
        raise ExportError(
            f"torch.export could not export graph {graph.name!r}: {type(exc).__name__}: {first}"
        ) from exc
    torch.export.save(program, path)


def _callable(path: Path) -> Callable[..., tuple[torch.Tensor, ...]]:
    # kdtool's loader refuses archives that need pickle (code) unless `kdtool --trust` is given
    from kdtool.pt2 import load_program

    module = load_program(Path(path), what="pt2 artifact", error=ExportError).module()

    @torch.no_grad()
    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(o.detach().cpu() for o in as_tuple(module(*inputs)))

    return run


class Pt2Exporter(Exporter):
    capabilities = Capabilities(
        name="pt2",
        suffix=".pt2",
        precisions=("fp32",),
        options_model=Pt2Options,
        default_profile="pt2-cpu",
        description="torch.export ExportedProgram (.pt2) per graph, dynamic axes as torch.export.Dim",
    )

    def export(
        self, spec: ExportSpec, options: ExporterOptions, out_dir: Path, ctx: ExportContext
    ) -> Artifact:
        strict = bool(getattr(options, "strict", False))
        files = {}
        for graph in spec.graphs:
            path = out_dir / f"{graph.name}.pt2"
            export_graph(graph, path, strict=strict)
            files[graph.name] = path
        return Artifact(out_dir, files, details={"torch_export": {"strict": strict}})

    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        graphs = {}
        for name, info in manifest["graphs"].items():
            path = Path(directory) / info["file"]
            if not path.exists():
                raise ExportError(f"{directory}: graph file {info['file']} is missing")
            graphs[name] = _callable(path)
        return ArtifactRunner(
            graphs,
            kind="pt2",
            input_names={n: [i["name"] for i in g["inputs"]] for n, g in manifest["graphs"].items()},
            metadata=manifest.get("metadata", {}),
        )
