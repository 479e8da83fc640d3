"""TensorRT-ready ONNX: sanitising, FP16 typing and explicit (Q/DQ) quantization.

- Sanitise (every precision): constant folding and shape inference with polygraphy, dead-node
  removal and topological sort with onnx-graphsurgeon, unused opset imports dropped (TensorRT's
  parser sees only what the graph uses).
- FP16 with strong typing: the float graph converted to FP16 with FP32 inputs and outputs, so
  the network's types say FP16 (TensorRT 11 has no FP16 builder flag).
- INT8 / FP8: explicit quantization, placed as TensorRT expects (FP8: the INT8 ranges mapped to
  E4M3, see :func:`int8_to_fp8`). We use ONNX Runtime's
  ``quantize_static`` (QDQ format) rather than inserting Q/DQ by hand with graphsurgeon because
  it brings the calibrators (MinMax / Entropy / Percentile; Distribution for FP8), computes
  per-channel weight scales and stores pre-quantized INT8 weights behind DequantizeLinear, all
  well tested; we constrain it to TensorRT's rules: symmetric activations and weights (zero
  points 0), per-channel weights, biases left in float (``QuantizeBias=False``: TensorRT fuses a
  float bias and has no INT32 DequantizeLinear), Q/DQ only on the *inputs* of the weighted ops
  (Conv, ConvTranspose, Gemm, MatMul by default; ``OpTypesToExcludeOutputQuantization`` keeps
  their outputs float so Conv+ReLU fusions stay intact). :func:`qdq_report` then checks the
  result against those rules and the export fails with a clear message if any is broken.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from kdtool.errors import ExportError
from kdtool.export.onnx_utils import CalibrationReader
from kdtool.export.spec import GraphSpec

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_BIAS_OPS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


@contextlib.contextmanager
def _quiet() -> Any:
    """Polygraphy and ORT's calibrators print progress lines; keep the CLI's output clean."""
    from polygraphy.logger import G_LOGGER

    old = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        G_LOGGER.module_severity = old
        root.setLevel(old_level)


def strip_unused_opsets(model: onnx.ModelProto) -> list[str]:
    """Drop opset imports of domains no node uses (ORT's quantizer adds several)."""
    used = {n.domain or "" for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or (o.domain or "") == ""]
    dropped = [o.domain for o in model.opset_import if o not in keep]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return dropped


def sanitize(src: Path, dst: Path, *, fold: bool = True) -> dict[str, Any]:
    """Constant folding + shape inference (polygraphy), cleanup + toposort (graphsurgeon).

    ``fold=False`` after quantization: folding would turn DequantizeLinear(INT8 weights) back
    into float weights and undo the explicit quantization."""
    import onnx_graphsurgeon as gs
    from polygraphy.backend.onnx import fold_constants, infer_shapes

    model = onnx.load(str(src))
    before = len(model.graph.node)
    props = list(model.metadata_props)
    with _quiet():
        if fold:
            model = fold_constants(model, error_ok=True)
        model = infer_shapes(model, error_ok=True)
        graph = gs.import_onnx(model)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        cleaned = gs.export_onnx(graph)
    cleaned.ir_version = model.ir_version
    del cleaned.metadata_props[:]
    cleaned.metadata_props.extend(props)
    dropped = strip_unused_opsets(cleaned)
    custom = sorted({n.domain for n in cleaned.graph.node if n.domain not in ("", "ai.onnx")})
    try:
        onnx.checker.check_model(cleaned)
    except onnx.checker.ValidationError as exc:
        raise ExportError(
            f"the sanitised ONNX for TensorRT is invalid: {str(exc).splitlines()[0][:300]}"
        ) from None
    onnx.save(cleaned, str(dst))
    info: dict[str, Any] = {
        "constant_folding": fold,
        "shape_inference": True,
        "nodes_before": before,
        "nodes_after": len(cleaned.graph.node),
        "dropped_opset_imports": dropped,
    }
    if custom:
        info["custom_domains"] = custom  # TensorRT needs plugins for these
    return info


def quantize_qdq(
    graph: GraphSpec,
    src: Path,
    dst: Path,
    *,
    precision: str,
    calibration: str,
    calibration_samples: int,
    op_types: list[str],
    exclude_nodes: list[str],
    exclude_op_types: list[str],
) -> dict[str, Any]:
    """Explicit Q/DQ for TensorRT (see the module docstring), calibrated on the recipe's data."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if graph.calibration_inputs is None:
        raise ExportError(
            f"graph {graph.name!r} has no calibration_inputs: TensorRT {precision.upper()} needs explicit Q/DQ "
            f"calibrated on the recipe's data",
            hint="use --precision fp16 for this graph",
        )
    reader = CalibrationReader(graph, calibration_samples)
    if len(reader) == 0:
        raise ExportError(
            f"calibration data for graph {graph.name!r} is empty: the task's calibration_inputs yielded nothing",
            hint="check the recipe's data section, or use --precision fp16",
        )
    prepared = dst.with_suffix(".prep.onnx")
    with _quiet():
        try:
            quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference fails on some graphs; plain inference is enough
            quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    node_names = [n.name for n in model.graph.node]
    excluded = sorted(
        {
            n
            for n in node_names
            if any(e == n or e in n for e in [*graph.quantization.exclude_nodes, *exclude_nodes])
        }
    )
    skip_types = {*graph.quantization.exclude_op_types, *exclude_op_types}
    quantized_types = [t for t in op_types if t not in skip_types]
    present = sorted({n.op_type for n in model.graph.node} & set(quantized_types))
    if not present:
        prepared.unlink(missing_ok=True)
        raise ExportError(
            f"graph {graph.name!r} has none of the op types to quantize ({', '.join(quantized_types) or 'none'}): "
            f"an INT8/FP8 engine would run entirely in float",
            hint="use --precision fp16, or --opt quantize_op_types=[...] with ops the graph has",
        )
    qtype = QuantType.QInt8
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[calibration]
    with _quiet():
        quantize_static(
            str(prepared),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=qtype,
            weight_type=qtype,
            calibrate_method=method,
            op_types_to_quantize=quantized_types,
            nodes_to_exclude=excluded,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS),
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            },
        )
    prepared.unlink(missing_ok=True)
    if precision == "fp8":
        int8_to_fp8(dst, dst)
    return {
        "tool": "onnxruntime.quantization.quantize_static (QDQ), constrained to TensorRT placement"
        + ("; INT8 ranges rescaled to FP8 E4M3 (amax / 448)" if precision == "fp8" else ""),
        "type": "FLOAT8E4M3FN" if precision == "fp8" else "INT8",
        "calibration": calibration,
        "calibration_samples": len(reader),
        "op_types": quantized_types,
        "excluded_nodes": excluded,
        "excluded_op_types": sorted(skip_types),
        "symmetric_activations": True,
        "symmetric_weights": True,
        "per_channel_weights": True,
        "bias": "float (not quantized)",
    }


FP8_MAX = 448.0  # largest finite FLOAT8E4M3FN value
INT8_MAX = 127.0


def int8_to_fp8(src: Path, dst: Path) -> None:
    """Turn a symmetric INT8 Q/DQ graph into FP8 (E4M3) Q/DQ with the same calibrated ranges.

    ONNX Runtime's only float8 calibrator ("distribution") sets scales from the spread of the
    values, which cost 30 points of accuracy on our digits CNN; calibrating ranges with the
    INT8 calibrators and mapping each range's amax to FP8's 448 (TensorRT's own FP8 recipe)
    keeps it. Activation scales become ``scale * 127 / 448``; weights are dequantized and
    requantized per channel to E4M3 with ``amax / 448``; zero points become FP8 zeros."""
    import ml_dtypes

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    consts = {name: numpy_helper.to_array(i) for name, i in inits.items()}
    fp8 = ml_dtypes.float8_e4m3fn
    done: set[str] = set()

    def replace(name: str, array: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
        done.add(name)

    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        data, scale_name = n.input[0], n.input[1]
        zp_name = n.input[2] if len(n.input) > 2 else ""
        if n.op_type == "DequantizeLinear" and data in consts and consts[data].dtype == np.int8:
            if data not in done:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                q = consts[data].astype(np.float32)
                scale = consts[scale_name].astype(np.float32)
                shape = [1] * q.ndim
                if scale.size > 1:
                    shape[axis] = scale.size
                w = q * scale.reshape(shape)
                reduce = tuple(i for i in range(q.ndim) if scale.size == 1 or i != axis)
                amax = np.abs(w).max(axis=reduce, keepdims=True)
                new_scale = np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)
                replace(data, (w / new_scale).astype(fp8))
                replace(scale_name, new_scale.reshape(scale.shape))
        elif scale_name in consts and scale_name not in done:
            replace(
                scale_name, (consts[scale_name].astype(np.float32) * INT8_MAX / FP8_MAX).astype(np.float32)
            )
        if zp_name and zp_name in consts and zp_name not in done:
            replace(zp_name, np.zeros(consts[zp_name].shape, dtype=fp8))
    # Inferred INT8 types of Q outputs are stale now; shape inference re-derives them.
    del model.graph.value_info[:]
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 19:
            opset.version = 19  # FLOAT8 QuantizeLinear/DequantizeLinear are opset 19
    onnx.save(model, str(dst))


def _const(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute:
            with contextlib.suppress(Exception):
                values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def qdq_report(path: Path) -> dict[str, Any]:
    """What a Q/DQ graph looks like, against TensorRT's rules: zero points all 0 (symmetric),
    weights per-channel, biases float, no Q/DQ on the outputs of weighted ops."""
    model = onnx.load(str(path))
    consts = _const(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq_nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    nonzero: list[str] = []
    types: set[str] = set()
    for n in [*q_nodes, *dq_nodes]:
        if len(n.input) > 2 and n.input[2]:
            zp = consts.get(n.input[2])
            if zp is None:
                nonzero.append(f"{n.name}: zero point is not a constant")
                continue
            init = next((i for i in model.graph.initializer if i.name == n.input[2]), None)
            if init is not None:
                types.add(onnx.TensorProto.DataType.Name(init.data_type))
            if not np.all(np.asarray(zp).astype(np.float32) == 0):
                nonzero.append(n.name)
    weight_dq = {n.output[0]: n for n in dq_nodes if n.input[0] in consts}
    per_channel: list[str] = []
    per_tensor: list[str] = []
    for n in weight_dq.values():
        scale = np.asarray(consts.get(n.input[1], np.zeros(1)))
        (per_channel if scale.size > 1 else per_tensor).append(n.input[0])
    quantized_bias: list[str] = []
    float_bias: list[str] = []
    weighted_unquantized: list[str] = []
    output_qdq: list[str] = []
    for n in model.graph.node:
        if n.op_type in WEIGHTED_OPS:
            if not all(i in producers and producers[i].op_type == "DequantizeLinear" for i in n.input[:2]):
                weighted_unquantized.append(n.name)
            idx = _BIAS_OPS.get(n.op_type)
            if idx is not None and len(n.input) > idx and n.input[idx]:
                src = producers.get(n.input[idx])
                if src is not None and src.op_type == "DequantizeLinear":
                    quantized_bias.append(n.name)
                else:
                    float_bias.append(n.name)
    for n in q_nodes:
        src = producers.get(n.input[0])
        if src is not None and src.op_type in WEIGHTED_OPS:
            output_qdq.append(src.name)
    return {
        "quantize_nodes": len(q_nodes),
        "dequantize_nodes": len(dq_nodes),
        "quantized_types": sorted(types),
        "zero_points_all_zero": not nonzero,
        "nonzero_zero_points": nonzero[:20],
        "per_channel_weights": len(per_channel),
        "per_tensor_weights": len(per_tensor),
        "per_tensor_weight_names": per_tensor[:20],
        "float_biases": len(float_bias),
        "quantized_biases": quantized_bias[:20],
        "weighted_ops_left_float": weighted_unquantized[:50],
        "qdq_on_weighted_outputs": output_qdq[:20],
    }


def check_qdq_for_tensorrt(report: dict[str, Any], graph: str) -> list[str]:
    """Raise where TensorRT would reject the graph; return notes for what only costs speed."""
    if not report["zero_points_all_zero"]:
        raise ExportError(
            f"graph {graph!r}: Q/DQ zero points must be 0 for TensorRT (symmetric quantization); non-zero at "
            f"{', '.join(report['nonzero_zero_points'][:5])}"
        )
    if report["quantized_biases"]:
        raise ExportError(
            f"graph {graph!r}: biases must stay float for TensorRT; quantized at {', '.join(report['quantized_biases'][:5])}"
        )
    notes = []
    if report["weighted_ops_left_float"]:
        notes.append(
            f"graph {graph!r}: {len(report['weighted_ops_left_float'])} weighted op(s) left in float "
            f"(excluded or not calibrated): {', '.join(report['weighted_ops_left_float'][:5])}; they run in "
            f"FP32 in a strongly typed engine"
        )
    if report["per_tensor_weights"]:
        notes.append(
            f"graph {graph!r}: {report['per_tensor_weights']} weight(s) quantized per-tensor (single output channel "
            f"or an op without per-channel support): {', '.join(report['per_tensor_weight_names'][:5])}"
        )
    return notes
