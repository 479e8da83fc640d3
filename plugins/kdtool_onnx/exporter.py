"""The ``onnx`` exporter: torch.onnx (dynamo, TorchScript fallback), clean-up, FP16, INT8.

- Export: ``torch.onnx.export(dynamo=True)`` with every dynamic axis declared; where dynamo
  fails, or its graph does not accept a second size on a dynamic axis (seen with LSTMs),
  the TorchScript exporter is tried and the manifest says which one was used.
- Clean-up: ONNX Runtime's basic (hardware-independent) optimisations are applied offline:
  constant folding and redundant-node elimination; the profile's full optimisation level is
  applied when the model is loaded.
- FP16: float initialisers and ops converted, inputs and outputs kept in FP32.
- INT8 static (QDQ): shape inference and pre-processing first, calibration on the recipe's own
  data (MinMax, Entropy or Percentile), per-channel weights, S8S8 as the option default, U8S8
  in the x86 and ARM profiles (measured faster on x86). INT8 dynamic (weights only) for RNN and
  transformer graphs. The manifest records Q/DQ counts and which op types stayed float.
- QAD: a model trained quantization-aware (:mod:`kdtool.quant`) is exported with its fake
  quantizers as Q/DQ and their learned scales; no calibration.
- Verification: ONNX Runtime against PyTorch on real samples and at two sizes per dynamic
  axis, max abs and relative error recorded.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from pydantic import Field

from kdtool.errors import ExportError
from kdtool.export.exporter import (
    Artifact,
    ArtifactRunner,
    Capabilities,
    ExportContext,
    Exporter,
    ExporterOptions,
    ParityResult,
    VerifyResult,
    compare_outputs,
    run_in_fixed_batches,
)
from kdtool.export.spec import ExportSpec, GraphSpec, as_tuple
from kdtool.quant import export_qdq, find_plan, is_quantization_aware

# torch.onnx logs a warning per missing optional library (torchvision ops); not the user's concern.
logging.getLogger("torch.onnx").setLevel(logging.ERROR)

TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "int8": 0.25}


class OnnxOptions(ExporterOptions):
    opset: int = Field(default=18, ge=13, le=23)
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"
    shapes: Literal["dynamic", "static"] = "dynamic"
    # Offline clean-up with ORT's basic optimisations; the load-time level comes from `graph_optimization`.
    cleanup: bool = True
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = "all"
    quantization: Literal["auto", "static", "dynamic"] = "auto"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = Field(default=64, ge=1)
    per_channel: bool = True
    activations: Literal["s8", "u8"] = "s8"
    symmetric_activations: bool = False
    exclude_nodes: list[str] = Field(default_factory=list)
    exclude_op_types: list[str] = Field(default_factory=list)
    # Per-layer sensitivity pass (static INT8): keep the most sensitive layers in float until
    # the relative output error on real samples is within max_quant_error.
    sensitivity: bool = False
    max_quant_error: float = Field(default=0.05, ge=0)
    max_excluded: int = Field(default=8, ge=1)
    execution_provider: Literal["cpu", "cuda", "coreml", "xnnpack"] = "cpu"
    threads: int = Field(default=0, ge=0, description="intra-op threads at load time (0: ORT's default)")


class OnnxExporter(Exporter):
    capabilities = Capabilities(
        name="onnx",
        suffix=".onnx",
        precisions=("fp32", "fp16", "int8"),
        options_model=OnnxOptions,
        default_profile="onnx-cpu",
        description="ONNX for ONNX Runtime (CPU, CUDA, mobile)",
        requires=(("onnx", "pip install onnx"), ("onnxruntime", "pip install onnxruntime")),
    )

    # ------------------------------------------------------------ export

    def export(
        self, spec: ExportSpec, options: ExporterOptions, out_dir: Path, ctx: ExportContext
    ) -> Artifact:
        assert isinstance(options, OnnxOptions)
        graph_files: dict[str, Path] = {}
        details: dict[str, Any] = {"graphs": {}}
        not_verified: list[str] = []
        for graph in spec.graphs:
            name = "model" if len(spec.graphs) == 1 else graph.name
            if is_quantization_aware(graph.module):
                final = out_dir / f"{name}.onnx"
                info = export_learned_qdq(graph, final, options, target=ctx.target)
                embed_metadata(final, spec, graph)
                info["ops"] = op_histogram(final)
                info["quantization"]["summary"] = quant_summary(final)
                details["graphs"][graph.name] = info
                graph_files[graph.name] = final
                continue
            fp32_path = (
                out_dir / f"{name}.fp32.onnx" if options.precision != "fp32" else out_dir / f"{name}.onnx"
            )
            info = export_graph(graph, fp32_path, options, target=ctx.target)
            if options.cleanup:
                cleanup(fp32_path)
            final = fp32_path
            if options.precision == "fp16":
                final = out_dir / f"{name}.onnx"
                convert_fp16(fp32_path, final)
                fp32_path.unlink()
            elif options.precision == "int8":
                final = out_dir / f"{name}.onnx"
                mode = options.quantization
                if mode == "auto":
                    mode = graph.quantization.preferred
                info["quantization"] = quantize(graph, fp32_path, final, options, mode)
                problem = check_dynamic_axes(graph, final) if options.shapes == "dynamic" else None
                if problem and mode == "static":
                    # Seen on attention graphs: ORT's QDQ pass can tie a dynamic axis to the
                    # calibration size. Weight-only (dynamic) INT8 keeps the axes dynamic.
                    ctx.log(
                        f"warning: graph {graph.name!r}: static QDQ INT8 breaks a dynamic axis ({problem}); "
                        "falling back to dynamic (weight-only) INT8"
                    )
                    info["quantization"] = quantize(graph, fp32_path, final, options, "dynamic")
                    info["quantization"]["fallback_from_static"] = problem
                    problem = check_dynamic_axes(graph, final)
                if problem:
                    raise ExportError(
                        f"target {ctx.target!r}: the INT8 graph {graph.name!r} no longer runs at every size: {problem}",
                        hint="export with --opt shapes=static, or keep FP32 for this model",
                    )
                fp32_path.unlink()
            embed_metadata(final, spec, graph)
            info["ops"] = op_histogram(final)
            if options.precision == "int8":
                info["quantization"]["summary"] = quant_summary(final)
            details["graphs"][graph.name] = info
            graph_files[graph.name] = final
        if options.execution_provider != "cpu":
            not_verified.append(
                f"execution provider {options.execution_provider}: verified with the CPU provider here"
            )
        return Artifact(out_dir, graph_files, details=details, not_verified=not_verified)

    # ------------------------------------------------------------ verify

    def verify(self, spec: ExportSpec, artifact: Artifact, options: ExporterOptions) -> VerifyResult:
        assert isinstance(options, OnnxOptions)
        result = VerifyResult()
        tolerance = TOLERANCE.get(options.precision, 1e-3)
        try:
            sessions = {
                g.name: make_session(artifact.graph_files[g.name], options, provider="cpu")
                for g in spec.graphs
            }
        except ExportError as exc:
            result.not_verified.append(f"numerical parity: {exc.message}")
            return result
        generator = torch.Generator().manual_seed(0)
        for graph in spec.graphs:
            graph.module.eval()
            session = sessions[graph.name]
            out_names = [t.name for t in graph.outputs]
            # real samples at their natural shapes
            if graph.calibration_inputs is not None:
                samples = list(_take(graph.calibration_inputs(4), 4))
                if options.shapes == "static" and "batch" in graph.dynamic_axes:
                    samples = (
                        [_stack_batch(graph, samples, graph.dynamic_axes["batch"].opt)] if samples else []
                    )
                for inputs in samples:
                    with torch.no_grad():
                        ref = as_tuple(graph.module(*inputs))
                    sizes = _sizes_of(graph, inputs)
                    got = _run_or_fail(session, graph, inputs, sizes, result)
                    if got is not None:
                        result.parity += compare_outputs(graph.name, sizes, out_names, ref, got, tolerance)
            # random inputs at opt and at a second size of each dynamic axis
            for sizes in graph.test_sizes() if options.shapes == "dynamic" else [graph.sizes("opt")]:
                inputs = graph.make_inputs(sizes, generator=generator)
                with torch.no_grad():
                    ref = as_tuple(graph.module(*inputs))
                got = _run_or_fail(session, graph, inputs, sizes, result)
                if got is None:
                    continue
                # INT8 on random inputs is outside the calibrated range: check shapes only.
                tol = float("inf") if options.precision == "int8" else tolerance
                result.parity += compare_outputs(graph.name, sizes, out_names, ref, got, tol)
        result.checks["onnx_checker"] = "passed"
        return result

    # ------------------------------------------------------------ load

    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        options = OnnxOptions.model_validate(manifest.get("options", {}))
        provider = "cuda" if device.startswith("cuda") else "cpu"
        graphs = {}
        input_names = {}
        for name, info in manifest["graphs"].items():
            session = make_session(directory / info["file"], options, provider=provider)
            dtypes = [i["dtype"] for i in info["inputs"]]
            static_batch = None
            if options.shapes == "static" and "batch" in info.get("dynamic_axes", {}):
                static_batch = int(info["dynamic_axes"]["batch"]["opt"])
            graphs[name] = _session_callable(
                session, [i["name"] for i in info["inputs"]], dtypes, static_batch
            )
            input_names[name] = [i["name"] for i in info["inputs"]]
        return ArtifactRunner(
            graphs, kind="onnxruntime", input_names=input_names, metadata=manifest.get("metadata", {})
        )

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort

        return {**super().versions(), "onnx": onnx.__version__, "onnxruntime": ort.__version__}


# --------------------------------------------------------------------------- helpers


def _take(items: Any, n: int) -> Iterator[tuple[torch.Tensor, ...]]:
    for i, item in enumerate(items):
        if i >= n:
            return
        yield item


def _sizes_of(graph: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """The dynamic axis sizes of concrete inputs (a real sample's batch, width, time...)."""
    sizes: dict[str, int] = {"sample": 1}
    for spec, x in zip(graph.inputs, inputs, strict=False):
        for index, axis in spec.dynamic_axes().items():
            sizes[axis] = int(x.shape[index])
    return sizes


def _run_or_fail(
    session: Any,
    graph: GraphSpec,
    inputs: tuple[torch.Tensor, ...],
    sizes: dict[str, int],
    result: VerifyResult,
) -> tuple[torch.Tensor, ...] | None:
    """Run the artifact; a runtime failure is a failed parity entry naming the sizes, not a crash."""
    try:
        return run_session(session, graph, inputs)
    except Exception as exc:
        message = str(exc).splitlines()[0][:300]
        result.parity.append(
            ParityResult(
                graph.name, sizes, f"(run failed: {message})", float("inf"), float("inf"), 0.0, False
            )
        )
        return None


def _stack_batch(
    graph: GraphSpec, samples: list[tuple[torch.Tensor, ...]], batch: int
) -> tuple[torch.Tensor, ...]:
    """Batch-1 samples concatenated (and repeated) into one input of the static batch size."""
    picked = [samples[i % len(samples)] for i in range(batch)]
    out = []
    for pos, spec in enumerate(graph.inputs):
        axis = next((i for i, s in enumerate(spec.shape) if s == "batch"), 0)
        out.append(torch.cat([p[pos] for p in picked], dim=axis))
    return tuple(out)


def _dynamic_shapes(graph: GraphSpec, static: bool) -> tuple[dict[int, Any], ...]:
    shapes = []
    for t in graph.inputs:
        axes: dict[int, Any] = {}
        if not static:
            for index, axis_name in t.dynamic_axes().items():
                axis = graph.dynamic_axes[axis_name]
                axes[index] = torch.export.Dim(axis_name, min=axis.min, max=axis.max)
        shapes.append(axes)
    return tuple(shapes)


_UNSUPPORTED = re.compile(r"(aten::[\w.]+|aten\.[\w.]+|torch\.ops\.[\w.]+)")


def export_graph(graph: GraphSpec, path: Path, options: OnnxOptions, *, target: str) -> dict[str, Any]:
    """Export one graph; returns what happened (exporter used, fallbacks and why)."""
    module = graph.module.eval()
    static = options.shapes == "static"
    sizes = graph.sizes("opt")
    # Export with example sizes of at least 2 on dynamic axes: size-1 axes get specialised.
    example_sizes = {
        k: (v if static else max(v, min(2, graph.dynamic_axes[k].max))) for k, v in sizes.items()
    }
    args = graph.make_inputs(example_sizes, generator=torch.Generator().manual_seed(0))
    in_names = [t.name for t in graph.inputs]
    out_names = [t.name for t in graph.outputs]
    attempts: list[str] = []
    info: dict[str, Any] = {}
    order = ["dynamo", "torchscript"] if options.exporter == "auto" else [options.exporter]
    last_error: Exception | None = None
    for which in order:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if which == "dynamo":
                    torch.onnx.export(
                        module,
                        args,
                        str(path),
                        input_names=in_names,
                        output_names=out_names,
                        opset_version=options.opset,
                        dynamo=True,
                        external_data=False,
                        dynamic_shapes=None
                        if static or not graph.dynamic_axes
                        else _dynamic_shapes(graph, static),
                        verbose=False,
                    )
                else:
                    dynamic_axes = None
                    if not static:
                        dynamic_axes = {
                            t.name: t.dynamic_axes()
                            for t in [*graph.inputs, *graph.outputs]
                            if t.dynamic_axes()
                        }
                    torch.onnx.export(
                        module,
                        args,
                        str(path),
                        input_names=in_names,
                        output_names=out_names,
                        opset_version=min(options.opset, 20),
                        dynamo=False,
                        dynamic_axes=dynamic_axes,
                    )
            onnx.checker.check_model(str(path))
            if not static:
                problem = check_dynamic_axes(graph, path)
                if problem:
                    attempts.append(f"{which}: {problem}")
                    last_error = ExportError(problem)
                    continue
            info["exporter"] = which
            if attempts:
                info["fallback_reasons"] = attempts
            return info
        except Exception as exc:  # the exporters raise many types; we report and fall back
            last_error = exc
            attempts.append(
                f"{which}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            )
    text = str(last_error) if last_error else ""
    ops = sorted(set(_UNSUPPORTED.findall(text)))
    what = f"op {', '.join(ops)}" if ops else "the model"
    raise ExportError(
        f"target {target!r}: cannot export {what} of graph {graph.name!r} to ONNX opset {options.opset}; tried "
        + "; ".join(attempts),
        hint="try --opt exporter=torchscript or a different opset (--opt opset=17), or replace the op in the model",
    )


def export_learned_qdq(graph: GraphSpec, path: Path, options: OnnxOptions, *, target: str) -> dict[str, Any]:
    """A quantization-aware (QAD) model: its fake quantizers become QuantizeLinear /
    DequantizeLinear with the learned scales (no calibration); ORT fuses them at load."""
    if options.precision != "int8":
        raise ExportError(
            f"target {target!r}: graph {graph.name!r} was trained quantization-aware (INT8 simulated in "
            f"training); export it with --precision int8",
            hint="for an FP32 artifact export the stage it started from (--model <init stage>)",
        )
    plan = find_plan(graph.module)
    with export_qdq(graph.module):
        info = export_graph(graph, path, options, target=target)
    if options.cleanup:
        cleanup(path)
    info["quantization"] = {
        "mode": "static",
        "format": "QDQ",
        "scales": "learned by quantization-aware distillation (QAD); not calibrated",
        "activations": plan.get("activations") if plan else None,
        "per_channel": True,
        "weights": plan.get("weights") if plan else None,
        "qad_init_stage": plan.get("init") if plan else None,
        "excluded": plan.get("excluded", []) if plan else [],
    }
    return info


def probe_sizes(graph: GraphSpec) -> list[dict[str, int]]:
    """The verifier's sizes plus, per dynamic axis, min, max and odd sizes in between: shape
    bugs often show only at some sizes (an off-by-one after a strided convolution)."""
    out = list(graph.test_sizes())
    base = graph.sizes("opt")
    for name, axis in graph.dynamic_axes.items():
        for value in sorted(
            {axis.min, axis.max, (axis.min + axis.opt) // 2 | 1, ((axis.opt + axis.max) // 2) | 1}
        ):
            if axis.min <= value <= axis.max and value != axis.opt:
                candidate = {**base, name: value}
                if candidate not in out:
                    out.append(candidate)
    return out


def check_dynamic_axes(graph: GraphSpec, path: Path) -> str | None:
    """Run the exported file at a second size on each dynamic axis; report a failure."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return f"ONNX Runtime cannot load the graph: {exc}"
    for sizes in probe_sizes(graph):
        inputs = graph.make_inputs(sizes, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = as_tuple(graph.module(*inputs))
        try:
            got = run_session(session, graph, inputs)
        except Exception as exc:
            return f"fails at sizes {sizes}: {str(exc).splitlines()[0][:200]}"
        for r, g in zip(ref, got, strict=False):
            if tuple(r.shape) != tuple(g.shape):
                return f"output shape {tuple(g.shape)} != PyTorch {tuple(r.shape)} at sizes {sizes} (a dynamic axis was fixed)"
    return None


def cleanup(path: Path) -> None:
    """Hardware-independent clean-up (constant folding, redundant nodes) with ORT basic level."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    tmp = path.with_suffix(".clean.onnx")
    so.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    tmp.replace(path)


def convert_fp16(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(dst))


class _Reader:
    """ONNX Runtime's CalibrationDataReader over the task's calibration inputs."""

    def __init__(self, graph: GraphSpec, n: int) -> None:
        assert graph.calibration_inputs is not None
        names = [t.name for t in graph.inputs]
        self._items = [
            {
                name: _to_numpy(x, spec.dtype)
                for name, x, spec in zip(names, inputs, graph.inputs, strict=True)
            }
            for inputs in _take(graph.calibration_inputs(n), n)
        ]
        self._iter = iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._items)


def quantize(graph: GraphSpec, src: Path, dst: Path, options: OnnxOptions, mode: str) -> dict[str, Any]:
    """INT8 with ONNX Runtime's quantizer, run in a scratch working directory: for large
    models its shape inference and calibration write temporary files (``<uuid>.data``,
    ``sym_shape_infer_temp.onnx``, tens of MB) into the current directory."""
    import contextlib
    import tempfile

    src, dst = src.resolve(), dst.resolve()
    with tempfile.TemporaryDirectory(prefix="kdtool-quant-") as scratch, contextlib.chdir(scratch):
        return _quantize(graph, src, dst, options, mode)


def _quantize(graph: GraphSpec, src: Path, dst: Path, options: OnnxOptions, mode: str) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = src.with_suffix(".prep.onnx")
    # Shape inference only: the graph was already cleaned up, and the pre-processor's own
    # optimisation pass can fold shape-dependent subgraphs at one size and break dynamic axes
    # (seen on the HTR attention at a second width).
    try:
        quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=False)
    except Exception:
        quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
    exclude = sorted({*graph.quantization.exclude_nodes, *options.exclude_nodes})
    excluded_types = {*graph.quantization.exclude_op_types, *options.exclude_op_types}
    model = onnx.load(str(prepared))
    node_names = [n.name for n in model.graph.node]
    exclude_resolved = [n for n in node_names if any(e == n or e in n for e in exclude)]
    op_types = sorted({n.op_type for n in model.graph.node} - excluded_types) if excluded_types else None
    info: dict[str, Any] = {
        "mode": mode,
        "excluded_nodes": exclude_resolved,
        "excluded_op_types": sorted(excluded_types),
    }
    if mode == "dynamic":
        quantize_dynamic(
            str(prepared),
            str(dst),
            per_channel=options.per_channel,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude_resolved,
            op_types_to_quantize=op_types,
        )
    else:
        if graph.calibration_inputs is None:
            raise ExportError(
                f"graph {graph.name!r} has no calibration_inputs; static INT8 needs the recipe's data"
            )
        reader = _Reader(graph, options.calibration_samples)
        if len(reader) == 0:
            raise ExportError(
                f"calibration data for graph {graph.name!r} is empty: the task's calibration_inputs yielded nothing",
                hint="check the recipe's data section, or use --opt quantization=dynamic",
            )
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[options.calibration]

        def run_static(target: Path, excluded: list[str], only: list[str] | None = None) -> None:
            reader.rewind()
            quantize_static(
                str(prepared),
                str(target),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=options.per_channel,
                activation_type=QuantType.QInt8 if options.activations == "s8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                nodes_to_exclude=excluded,
                nodes_to_quantize=only,
                op_types_to_quantize=op_types,
                extra_options={"ActivationSymmetric": options.symmetric_activations, "WeightSymmetric": True},
            )

        run_static(dst, exclude_resolved)
        if options.sensitivity:
            info["sensitivity"] = sensitivity_pass(
                graph, prepared, dst, options, exclude_resolved, run_static
            )
            info["excluded_nodes"] = info["sensitivity"]["excluded"]
        info.update(
            calibration=options.calibration,
            calibration_samples=len(reader),
            activations=options.activations,
            per_channel=options.per_channel,
            format="QDQ",
        )
    prepared.unlink(missing_ok=True)
    return info


def output_error(
    path: Path,
    graph: GraphSpec,
    samples: list[tuple[torch.Tensor, ...]],
    refs: list[tuple[torch.Tensor, ...]],
) -> float:
    """Worst relative output error (max abs error / max abs reference) over real samples."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for inputs, ref in zip(samples, refs, strict=True):
        got = run_session(session, graph, inputs)
        for r, g in zip(ref, got, strict=False):
            if r.is_floating_point() and r.numel():
                worst = max(
                    worst, float((r.float() - g.float()).abs().max()) / max(float(r.abs().max()), 1e-12)
                )
    return worst


def sensitivity_pass(
    graph: GraphSpec,
    prepared: Path,
    dst: Path,
    options: OnnxOptions,
    excluded: list[str],
    run_static: Any,
) -> dict[str, Any]:
    """Keep the most sensitive layers in float until the INT8 output error is within budget.

    Sensitivity of a layer = how much the output error (on real calibration samples) falls
    when that layer alone is left in float and everything else is quantized. Layers are then
    excluded, most sensitive first, until the error of the whole quantized graph is at most
    ``max_quant_error`` or ``max_excluded`` layers are out. The output error is a proxy for the
    task metric, which the driver then measures next to PyTorch's."""
    assert graph.calibration_inputs is not None
    samples = list(_take(graph.calibration_inputs(8), 8))
    with torch.no_grad():
        refs = [as_tuple(graph.module(*x)) for x in samples]
    model = onnx.load(str(prepared))
    candidates = [
        n.name
        for n in model.graph.node
        if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and n.name not in excluded
    ]
    error_all = output_error(dst, graph, samples, refs)
    result: dict[str, Any] = {
        "error_all_quantized": error_all,
        "target": options.max_quant_error,
        "layers": {},
        "excluded": list(excluded),
    }
    if error_all <= options.max_quant_error or not candidates:
        result["error_final"] = error_all
        return result
    probe = dst.with_suffix(".probe.onnx")
    for name in candidates:
        run_static(probe, [*excluded, name])
        result["layers"][name] = error_all - output_error(probe, graph, samples, refs)
    ranked = sorted(candidates, key=lambda n: result["layers"][n], reverse=True)
    chosen = list(excluded)
    error = error_all
    for name in ranked[: options.max_excluded]:
        chosen.append(name)
        run_static(dst, chosen)
        error = output_error(dst, graph, samples, refs)
        if error <= options.max_quant_error:
            break
    probe.unlink(missing_ok=True)
    result.update(excluded=chosen, error_final=error)
    return result


def embed_metadata(path: Path, spec: ExportSpec, graph: GraphSpec) -> None:
    model = onnx.load(str(path))
    from kdtool import __version__

    props = {
        "kdtool_version": __version__,
        "task": spec.task,
        "model": spec.model_name,
        "graph": graph.name,
        "metadata": json.dumps(spec.metadata.to_dict()),
    }
    if spec.metadata.labels:
        props["labels"] = json.dumps(spec.metadata.labels)
    if spec.metadata.vocabulary:
        props["vocabulary"] = json.dumps(spec.metadata.vocabulary)
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    model.producer_name = "kdtool"
    onnx.save(model, str(path))


def op_histogram(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


# Ops that carry no arithmetic worth quantizing: their staying float costs nothing.
_LAYOUT_OPS = {
    "Shape", "Constant", "ConstantOfShape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice",
    "Cast", "Range", "Equal", "Where", "Expand", "Identity", "Less", "Greater", "Not", "And", "Or",
    "Reshape", "Transpose", "Flatten", "Split",
}  # fmt: skip


def quant_summary(path: Path) -> dict[str, Any]:
    """Where an INT8 graph stays float: Q/DQ node counts, and per op type how many compute
    nodes read a dequantized input (run in INT8 after ORT fuses the Q/DQ pattern) and how
    many do not (stay float, with a DQ -> op -> Q round trip around them when they sit
    between quantized ops). Dynamic (weight-only) graphs count their integer ops."""
    model = onnx.load(str(path), load_external_data=False)
    producer = {out: n.op_type for n in model.graph.node for out in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    quantized: dict[str, int] = {}
    floating: dict[str, int] = {}
    q = dq = 0
    for node in model.graph.node:
        op = node.op_type
        if op == "QuantizeLinear" or op == "DynamicQuantizeLinear":
            q += 1
            continue
        if op == "DequantizeLinear":
            dq += 1
            continue
        if op in _LAYOUT_OPS:
            continue
        integer_op = op.startswith(("QLinear", "ConvInteger", "MatMulInteger", "DynamicQuantize"))
        # ORT folds a Relu/Clip that feeds only QuantizeLinear into the quantization.
        folded = op in ("Relu", "Clip") and all(
            c == "QuantizeLinear" for o in node.output for c in consumers.get(o, ["graph output"])
        )
        if integer_op or folded or any(producer.get(i) == "DequantizeLinear" for i in node.input):
            quantized[op] = quantized.get(op, 0) + 1
        else:
            floating[op] = floating.get(op, 0) + 1
    return {
        "quantize_nodes": q,
        "dequantize_nodes": dq,
        "quantized_ops": dict(sorted(quantized.items())),
        "float_ops": dict(sorted(floating.items())),
    }


def describe_quantization(summary: dict[str, Any]) -> str:
    """One line for warnings: Q/DQ counts and the op types left in float."""
    floats = ", ".join(f"{k} x{v}" for k, v in summary.get("float_ops", {}).items()) or "none"
    return (
        f"{summary.get('quantize_nodes', 0)} QuantizeLinear / {summary.get('dequantize_nodes', 0)} "
        f"DequantizeLinear nodes; ops left in float: {floats}"
    )


def make_session(path: Path, options: OnnxOptions, *, provider: str) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.graph_optimization]
    if options.threads:
        so.intra_op_num_threads = options.threads
    so.log_severity_level = 3
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if provider == "cuda" and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as exc:
        raise ExportError(
            f"ONNX Runtime cannot load {path} with {providers}: {str(exc).splitlines()[0][:300]}"
        ) from None


_NP_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
}


def _to_numpy(x: torch.Tensor, dtype: str) -> np.ndarray:
    return x.detach().cpu().numpy().astype(_NP_DTYPES[dtype], copy=False)


def run_session(session: Any, graph: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    feed = {t.name: _to_numpy(x, t.dtype) for t, x in zip(graph.inputs, inputs, strict=True)}
    return tuple(torch.from_numpy(np.asarray(o)) for o in session.run(None, feed))


def _session_callable(
    session: Any, names: list[str], dtypes: list[str], static_batch: int | None = None
) -> Any:
    """A callable over torch tensors. A graph exported with a fixed batch N runs any batch:
    inputs are cut into chunks of N (the last padded by repeating its final sample)."""

    np_types = [_NP_DTYPES[d] for d in dtypes]
    run_session = session.run

    def run_once(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        # per-call work kept to the feed conversion: this sits on every inference's path
        feed = {}
        for name, x, np_type in zip(names, inputs, np_types, strict=True):
            array = x.detach().numpy() if x.device.type == "cpu" else x.detach().cpu().numpy()
            feed[name] = array if array.dtype == np_type else array.astype(np_type)
        return tuple(torch.from_numpy(np.asarray(o)) for o in run_session(None, feed))

    if static_batch is None:

        def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return run_once(inputs)

    else:

        def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return run_in_fixed_batches(run_once, inputs, static_batch)

    return run


__all__ = ["OnnxExporter", "OnnxOptions", "ParityResult"]
