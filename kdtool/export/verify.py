"""Verification of every exported artifact, owned by the export driver.

One place for what used to be a parity loop per exporter: the artifact (through the runner its
exporter's ``load`` returns, or the exporter's :class:`~kdtool.export.exporter.StandIn` where it
cannot run here) is compared with PyTorch on real samples and at the test sizes of every dynamic
axis, within the tolerance its precision allows (:data:`TOLERANCES`), and the task metric of both
is measured. An exporter only converts (``export``), loads (``load``), inspects (``inspect``) and
says what to compare (``parity_plan``, capabilities' ``tolerances``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdtool.errors import ExportError
from kdtool.export.exporter import (
    Artifact,
    ArtifactRunner,
    Exporter,
    ExporterOptions,
    ParityPlan,
    ParityResult,
    StandIn,
    VerifyResult,
)
from kdtool.export.spec import ExportSpec, GraphSpec, as_tuple, take
from kdtool.task import Predictor, Task

# Allowed max relative error (max abs error / the reference's max magnitude) against PyTorch,
# by precision or quantization. One table for every exporter (merged from the onnx, coreml and
# tensorrt exporters' own tables, values kept).
TOLERANCES: dict[str, float] = {
    "fp32": 1e-3,  # ONNX Runtime, Core ML, torch.export in FP32
    "fp32-tf32": 1e-2,  # TensorRT FP32 engines: TF32 tensor cores on Ampere and newer
    "fp16": 3e-2,
    "int8": 0.25,  # static INT8 (calibrated activations and weights)
    "int8-weights": 0.25,  # weight-only INT8 (ONNX Runtime dynamic quantization, Core ML w8)
    "palettize": 0.25,  # Core ML N-bit look-up tables
    "fp8": 0.35,  # FP8 E4M3 Q/DQ (TensorRT)
}

# Quantization kinds that :func:`tolerance_for` maps to a row of the table.
_QUANTIZATION_ROWS = {"dynamic": "int8-weights", "weights": "int8-weights", "w8": "int8-weights"}


def tolerance_for(precision: str, quantization: str | None = None) -> float:
    """The row of :data:`TOLERANCES` for ``precision`` (or a row name), refined by
    ``quantization`` (``static``, ``dynamic``/``w8`` = weight-only, ``palettizeN``)."""
    key = precision
    if quantization and quantization not in ("none", "static", "auto"):
        key = (
            "palettize" if quantization.startswith("palettize") else _QUANTIZATION_ROWS.get(quantization, key)
        )
    if key not in TOLERANCES:
        raise ExportError(
            f"no parity tolerance for precision {key!r}; known: {', '.join(TOLERANCES)}",
            hint="declare Capabilities(tolerances=((precision, row), ...)) with a row of "
            "kdtool.export.verify.TOLERANCES",
        )
    return TOLERANCES[key]


# --------------------------------------------------------------------------- parity


def _tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def _outputs(outputs: Any, names: Sequence[str] | None) -> tuple[list[str], list[torch.Tensor | None]]:
    """Output names and tensors of a tuple/list of tensors or arrays, or of a dict name -> array."""
    if isinstance(outputs, Mapping):
        keys = list(names) if names is not None else list(outputs)
        return keys, [_tensor(outputs[k]) if k in outputs else None for k in keys]
    if isinstance(outputs, torch.Tensor | np.ndarray):
        outputs = (outputs,)
    items: list[torch.Tensor | None] = [_tensor(o) for o in outputs]
    keys = list(names) if names is not None else [f"output_{i}" for i in range(len(items))]
    return keys, items


def _float_errors(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """Max abs error and max relative error (to the reference's max magnitude); NaN -> inf."""
    if not ref.numel():
        return 0.0, 0.0
    abs_err = float((ref - got).abs().max())
    if abs_err != abs_err:  # NaN in the artifact's output
        abs_err = float("inf")
    return abs_err, abs_err / max(float(ref.abs().max()), 1e-12)


def check_parity(
    reference_outputs: Any,
    artifact_outputs: Any,
    tolerance: float,
    *,
    graph: str = "model",
    sizes: dict[str, int] | None = None,
    names: Sequence[str] | None = None,
) -> list[ParityResult]:
    """Compare outputs (tuples of tensors or arrays, or dicts name -> array) output by output.

    Float outputs: max abs error and max relative error (to the reference's max magnitude),
    passed when the relative error is within ``tolerance``. Integer outputs: the fraction of
    differing elements. A shape that differs, or an output the artifact did not produce,
    fails. Each result's ``message`` names the graph, output, sizes and error."""
    sizes = dict(sizes or {})
    ref_names, refs = _outputs(reference_outputs, names)
    _, gots = _outputs(artifact_outputs, ref_names if isinstance(artifact_outputs, Mapping) else None)
    results = []
    for i, (name, ref) in enumerate(zip(ref_names, refs, strict=False)):
        got = gots[i] if i < len(gots) else None
        if ref is None:
            continue
        if got is None:
            results.append(
                ParityResult(graph, sizes, f"(output {name!r} missing from the artifact's outputs)",
                             float("inf"), float("inf"), tolerance, False)
            )  # fmt: skip
            continue
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
        abs_err, rel = _float_errors(ref_f, got_f)
        results.append(ParityResult(graph, sizes, name, abs_err, rel, tolerance, rel <= tolerance))
    return results


def max_relative_error(reference_outputs: Any, artifact_outputs: Any) -> float:
    """The worst relative error (max abs error / the reference's max magnitude) over the float
    outputs: one number, e.g. for a quantizer's sensitivity search. Integer outputs are skipped."""
    _, refs = _outputs(reference_outputs, None)
    _, gots = _outputs(artifact_outputs, None)
    worst = 0.0
    for ref, got in zip(refs, gots, strict=False):
        if ref is None or got is None or not ref.is_floating_point() or not ref.numel():
            continue
        worst = max(worst, _float_errors(ref.detach().float().cpu(), got.detach().float().cpu())[1])
    return worst


def sizes_of(graph: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """The dynamic axis sizes of concrete inputs (a real sample's batch, width, time...),
    marked ``sample: 1``."""
    sizes: dict[str, int] = {"sample": 1}
    for spec, x in zip(graph.inputs, inputs, strict=False):
        for index, axis in spec.dynamic_axes().items():
            sizes[axis] = int(x.shape[index])
    return sizes


def parity_cases(
    graph: GraphSpec, plan: ParityPlan, generator: torch.Generator
) -> list[tuple[dict[str, int], tuple[torch.Tensor, ...], float]]:
    """``(sizes, inputs, tolerance)``: real samples first, then random inputs at the plan's sizes."""
    cases = []
    if graph.calibration_inputs is not None and plan.samples > 0:
        for inputs in take(graph.calibration_inputs(plan.samples), plan.samples):
            if plan.accepts is None or plan.accepts(graph, inputs):
                cases.append((sizes_of(graph, inputs), inputs, plan.tolerance))
    random_tol = plan.tolerance if plan.random_tolerance is None else plan.random_tolerance
    sizes_list = (plan.sizes or {}).get(graph.name, graph.test_sizes())
    for sizes in sizes_list:
        cases.append((sizes, graph.make_inputs(sizes, generator=generator), random_tol))
    if plan.prepare is not None:
        prepare = plan.prepare
        cases = [(s, prepare(graph, x), t) for s, x, t in cases]
    return cases


def graph_parity(
    graph: GraphSpec,
    run: Callable[..., tuple[torch.Tensor, ...]],
    plan: ParityPlan,
    generator: torch.Generator,
) -> list[ParityResult]:
    """One graph of the artifact against its PyTorch module; a runtime failure is a failed
    entry naming the sizes, not a crash."""
    graph.module.eval()
    names = [t.name for t in graph.outputs]
    results: list[ParityResult] = []
    for sizes, inputs, tol in parity_cases(graph, plan, generator):
        with torch.no_grad():
            reference = as_tuple(graph.module(*inputs))
        try:
            got = run(*inputs)
        except Exception as exc:
            message = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            results.append(
                ParityResult(graph.name, sizes, f"(run failed: {type(exc).__name__}: {message})",
                             float("inf"), float("inf"), tol, False)
            )  # fmt: skip
            continue
        results += check_parity(reference, got, tol, graph=graph.name, sizes=sizes, names=names)
    return results


def spec_parity(spec: ExportSpec, runner: Predictor, plan: ParityPlan) -> list[ParityResult]:
    """Every graph of ``spec`` run by ``runner`` against PyTorch (one seeded generator)."""
    generator = torch.Generator().manual_seed(0)
    results: list[ParityResult] = []
    for graph in spec.graphs:
        results += graph_parity(graph, runner.graphs[graph.name], plan, generator)
    return results


def describe_failures(result: VerifyResult, limit: int = 3) -> str:
    """The failed comparisons, worst first, one clause each (for an error message)."""
    failed = sorted(result.failures, key=lambda p: -p.max_rel_error)
    text = "; ".join(p.message for p in failed[:limit])
    if len(failed) > limit:
        text += f"; and {len(failed) - limit} more"
    return text


# --------------------------------------------------------------------------- metric


def metric_drop(pytorch: float, artifact: float, higher_is_better: bool) -> float:
    """How much worse the artifact is (positive = worse)."""
    return pytorch - artifact if higher_is_better else artifact - pytorch


def compare_metric(task: Task, spec: ExportSpec, runner: Predictor, limit: int | None) -> dict[str, Any]:
    """The task's primary metric of PyTorch and of ``runner`` on the validation split."""
    metric = task.primary_metric
    reference = task.evaluate(Predictor.from_spec(spec), "val", limit=limit)
    artifact = task.evaluate(runner, "val", limit=limit)
    return {
        "name": metric.name,
        "higher_is_better": metric.higher_is_better,
        "pytorch": float(reference[metric.name]),
        "artifact": float(artifact[metric.name]),
        "drop": metric_drop(
            float(reference[metric.name]), float(artifact[metric.name]), metric.higher_is_better
        ),
        "pytorch_all": reference,
        "artifact_all": artifact,
        "samples": limit,
    }


# --------------------------------------------------------------------------- the driver's step


def _runs_every_graph(runner: Predictor | None, spec: ExportSpec) -> bool:
    return runner is not None and all(g.name in runner.graphs for g in spec.graphs)


def verify_artifact(
    exporter: Exporter,
    spec: ExportSpec,
    artifact: Artifact,
    options: ExporterOptions,
    manifest: dict[str, Any],
    *,
    metric: Callable[[Predictor], dict[str, Any]] | None = None,
    echo: Callable[[str], None] = lambda _m: None,
) -> VerifyResult:
    """Verify an artifact the same way whatever its format.

    1. ``exporter.inspect``: structural checks (recorded under ``checks``).
    2. The runner: ``exporter.load`` where ``can_run_here``; otherwise (or where the runner has
       no per-graph callables) ``exporter.stand_in``; with neither, parity is listed as not
       verified with the reason.
    3. Parity with PyTorch per ``exporter.parity_plan`` (tolerances from the table).
    4. ``metric(runner)`` (see :func:`compare_metric`) on the artifact, or on its stand-in
       (said in ``not_verified``) where the stand-in allows it.
    """
    result = VerifyResult()
    result.checks.update(exporter.inspect(spec, artifact, options) or {})
    directory = Path(artifact.directory)
    runnable, why = exporter.can_run_here(options)
    runner: ArtifactRunner | Predictor | None = None
    if runnable:
        try:
            runner = exporter.load(directory, manifest)
        except ExportError as exc:
            why = f"does not load on this machine ({exc.message})"
            result.not_verified.append(f"the artifact: {why}")
    runs_here = _runs_every_graph(runner, spec)
    stand_in: StandIn | None = None if runs_here else exporter.stand_in(directory, manifest, options)
    if runs_here:
        assert runner is not None
        plan = exporter.parity_plan(spec, artifact, options)
        result.checks.setdefault("parity_runtime", runner.kind)
        result.parity = spec_parity(spec, runner, plan)
    elif stand_in is not None:
        plan = exporter.parity_plan(spec, artifact, options, precision=stand_in.precision)
        result.checks["parity_runtime"] = stand_in.description
        result.parity = spec_parity(spec, stand_in.runner, plan)
        if runner is None:
            result.not_verified.append(
                f"the artifact's own numerics: it {why or 'cannot run here'}; parity (and the task metric) "
                f"measured on its stand-in: {stand_in.description}"
            )
    else:
        structural = f"; checked structurally instead: {', '.join(result.checks)}" if result.checks else ""
        result.not_verified.append(
            f"numerical parity with PyTorch: not checked on this platform ({platform.system()}): "
            f"the artifact {why or 'has no runner'}{structural}"
        )
    if metric is None:
        return result
    metric_runner: Predictor | None = runner
    where = "artifact"
    if metric_runner is None and stand_in is not None and stand_in.metric:
        metric_runner, where = stand_in.runner, f"stand-in: {stand_in.description}"
    if metric_runner is None:
        result.not_verified.append(f"task metric of the artifact: {why or 'it cannot run here'}")
        return result
    echo(f"verify: task metric of PyTorch and the {where}")
    result.metric = {**metric(metric_runner), "runtime": where}
    return result


def artifact_graphs(spec: ExportSpec, artifact: Artifact) -> dict[str, Any]:
    """The ``graphs`` section of a manifest: file, inputs, outputs and dynamic axes per graph."""

    def tensors(items: Sequence[Any]) -> list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "shape": list(t.shape),
                "dtype": t.dtype,
                "role": t.role,
                "description": t.description,
            }
            for t in items
        ]

    return {
        g.name: {
            "file": str(Path(artifact.graph_files[g.name]).relative_to(artifact.directory)),
            "inputs": tensors(g.inputs),
            "outputs": tensors(g.outputs),
            "dynamic_axes": {
                k: {"min": v.min, "opt": v.opt, "max": v.max} for k, v in g.dynamic_axes.items()
            },
        }
        for g in spec.graphs
    }


def draft_manifest(spec: ExportSpec, artifact: Artifact, options: ExporterOptions) -> dict[str, Any]:
    """The parts of a manifest an exporter's ``load`` reads (graphs, options, details,
    metadata): for verifying an artifact outside the driver (the conformance kit)."""
    return {
        "format": "",
        "precision": options.precision,
        "options": options.model_dump(mode="json"),
        "task": spec.task,
        "graphs": artifact_graphs(spec, artifact),
        "metadata": spec.metadata.to_dict(),
        "details": artifact.details,
    }


__all__ = [
    "TOLERANCES",
    "artifact_graphs",
    "check_parity",
    "compare_metric",
    "describe_failures",
    "draft_manifest",
    "graph_parity",
    "max_relative_error",
    "metric_drop",
    "parity_cases",
    "sizes_of",
    "spec_parity",
    "tolerance_for",
    "verify_artifact",
]
