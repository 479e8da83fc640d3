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
- Verification: by the export driver (:mod:`kdtool.export.verify`) through :meth:`load`
  (ONNX Runtime) against PyTorch on real samples and at two sizes per dynamic axis; this
  exporter only says what to compare (:meth:`OnnxExporter.parity_plan`).
- Shared ONNX helpers (export, sessions, metadata, FP16, calibration reader) live in the
  public :mod:`kdtool.export.onnx_utils`, which the ``tensorrt`` and ``sherpa`` exporters use too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

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
    ParityPlan,
)
from kdtool.export.onnx_utils import (
    CalibrationReader,
    check_dynamic_axes,
    cleanup,
    convert_fp16,
    embed_metadata,
    export_onnx,
    load_onnx_runner,
    op_histogram,
    run_session,
)
from kdtool.export.spec import ExportSpec, GraphSpec, as_tuple, take
from kdtool.export.verify import max_relative_error, tolerance_for
from kdtool.quant import export_qdq, find_plan, is_quantization_aware

# torch.onnx logs a warning per missing optional library (torchvision ops); not the user's concern.
logging.getLogger("torch.onnx").setLevel(logging.ERROR)


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
        # a QAD model's plan (activation type, init stage) rides on its root module; a graph
        # that wraps a submodule (an RNN-T decoder or joiner) reports the model's plan
        plan = next((p for p in (find_plan(g.module) for g in spec.graphs) if p is not None), None)
        for graph in spec.graphs:
            name = "model" if len(spec.graphs) == 1 else graph.name
            if is_quantization_aware(graph.module):
                final = out_dir / f"{name}.onnx"
                info = export_learned_qdq(graph, final, options, target=ctx.target, plan=plan)
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

    # ------------------------------------------------------------ verification plan

    def parity_plan(
        self, spec: ExportSpec, artifact: Artifact, options: ExporterOptions, *, precision: str | None = None
    ) -> ParityPlan:
        assert isinstance(options, OnnxOptions)
        modes = {
            (info.get("quantization") or {}).get("mode")
            for info in artifact.details.get("graphs", {}).values()
        }
        quantization = "dynamic" if modes == {"dynamic"} else None
        plan = ParityPlan(tolerance=tolerance_for(precision or options.precision, quantization))
        if options.precision == "int8":
            # INT8 on random inputs is outside the calibrated range: check shapes only.
            plan.random_tolerance = float("inf")
        if options.shapes == "static":
            plan.sizes = {g.name: [g.sizes("opt")] for g in spec.graphs}
        return plan

    # ------------------------------------------------------------ load

    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        options = OnnxOptions.model_validate(manifest.get("options", {}))
        return load_onnx_runner(
            {name: directory / info["file"] for name, info in manifest["graphs"].items()},
            manifest,
            options=options,
            provider="cuda" if device.startswith("cuda") else "cpu",
            static_batch=options.shapes == "static",
        )

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort

        return {**super().versions(), "onnx": onnx.__version__, "onnxruntime": ort.__version__}


# --------------------------------------------------------------------------- helpers


def export_graph(graph: GraphSpec, path: Path, options: OnnxOptions, *, target: str) -> dict[str, Any]:
    """Export one graph with this exporter's options (see :func:`kdtool.export.onnx_utils.export_onnx`)."""
    return export_onnx(
        graph,
        path,
        opset=options.opset,
        exporter=options.exporter,
        static=options.shapes == "static",
        target=target,
    )


def export_learned_qdq(
    graph: GraphSpec,
    path: Path,
    options: OnnxOptions,
    *,
    target: str,
    plan: dict[str, Any] | None,
) -> dict[str, Any]:
    """A quantization-aware (QAD) model: its fake quantizers become QuantizeLinear /
    DequantizeLinear with the learned scales (no calibration); ORT fuses them at load.
    ``plan``: the model's quantization plan (:func:`kdtool.quant.find_plan`), reported in the
    manifest."""
    if options.precision != "int8":
        raise ExportError(
            f"target {target!r}: graph {graph.name!r} was trained quantization-aware (INT8 simulated in "
            f"training); export it with --precision int8",
            hint="for an FP32 artifact export the stage it started from (--model <init stage>)",
        )
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
        reader = CalibrationReader(graph, options.calibration_samples)
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
    return max(
        (
            max_relative_error(ref, run_session(session, graph, inputs))
            for inputs, ref in zip(samples, refs, strict=True)
        ),
        default=0.0,
    )


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
    samples = take(graph.calibration_inputs(8), 8)
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


__all__ = ["OnnxExporter", "OnnxOptions", "export_graph"]
