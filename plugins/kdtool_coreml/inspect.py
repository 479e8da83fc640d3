"""Read a saved ``.mlpackage`` without running it: interface, op list and weight storage.

Prediction needs macOS; everything here reads the package's protobuf (the model
description and the ML program), so it works on any platform. The exporter uses it to
verify a package against the export spec: input and output names, types and flexible
shapes, and that the weights are stored in the requested precision or palette.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdtool.export.spec import GraphSpec

from .options import CoreMLOptions

# Ops that hold compressed weights and how (coremltools' compression ops, iOS16 to iOS18).
LINEAR_OPS = {"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"}
LUT_OPS = {"constexpr_lut_to_dense"}
_FLOAT_TYPES = {"FLOAT16", "FLOAT32", "BFLOAT16", "FLOAT64"}
_INT_TYPES = {"INT8", "UINT8", "INT4", "UINT4"}


@dataclass
class PackageInfo:
    """What a package says about itself (JSON-able through :meth:`to_dict`)."""

    spec_version: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    ops: dict[str, int]
    float_weights: dict[str, dict[str, int]]
    compressed: list[dict[str, Any]]
    user_metadata: dict[str, str]
    author: str = ""
    version: str = ""
    short_description: str = ""
    largest_float_weight: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": self.spec_version,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "ops": self.ops,
            "float_weights": self.float_weights,
            "largest_float_weight": self.largest_float_weight,
            "compressed_weights": _summarise_compressed(self.compressed),
        }


def _summarise_compressed(items: list[dict[str, Any]]) -> dict[str, Any]:
    by_kind: dict[str, dict[str, int]] = {}
    for item in items:
        key = f"{item['kind']}{item['bits']}"
        entry = by_kind.setdefault(key, {"tensors": 0, "elements": 0})
        entry["tensors"] += 1
        entry["elements"] += item["elements"]
    return by_kind


def _dims(tensor_type: Any) -> list[int | None]:
    out: list[int | None] = []
    for d in tensor_type.dimensions:
        out.append(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None)
    return out


def _array_dtype(value: int) -> str:
    from coremltools.proto import FeatureTypes_pb2

    return FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(value)


def _mil_dtype(value: int) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(value)


def _feature(desc: Any) -> dict[str, Any]:
    """One input or output of the model description."""
    from coremltools.proto import FeatureTypes_pb2

    kind = desc.type.WhichOneof("Type")
    info: dict[str, Any] = {"name": desc.name, "description": desc.shortDescription}
    if kind == "multiArrayType":
        arr = desc.type.multiArrayType
        info.update(kind="tensor", dtype=_array_dtype(arr.dataType), shape=[int(s) for s in arr.shape])
        flex = arr.WhichOneof("ShapeFlexibility")
        if flex == "shapeRange":
            info["range"] = [[int(r.lowerBound), int(r.upperBound)] for r in arr.shapeRange.sizeRanges]
        elif flex == "enumeratedShapes":
            info["enumerated"] = [[int(s) for s in shape.shape] for shape in arr.enumeratedShapes.shapes]
    elif kind == "imageType":
        img = desc.type.imageType
        info.update(
            kind="image",
            color=FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(img.colorSpace),
            shape=[int(img.height), int(img.width)],
        )
        flex = img.WhichOneof("SizeFlexibility")
        if flex == "imageSizeRange":
            r = img.imageSizeRange
            info["range"] = [
                [int(r.heightRange.lowerBound), int(r.heightRange.upperBound)],
                [int(r.widthRange.lowerBound), int(r.widthRange.upperBound)],
            ]
        elif flex == "enumeratedSizes":
            info["enumerated"] = [[int(s.height), int(s.width)] for s in img.enumeratedSizes.sizes]
    else:
        info["kind"] = kind or "unknown"
    return info


def _walk(block: Any) -> list[Any]:
    ops = []
    for op in block.operations:
        ops.append(op)
        for inner in op.blocks:
            ops.extend(_walk(inner))
    return ops


def _value_type(op: Any, key: str, consts: dict[str, Any]) -> Any | None:
    """The tensor type of an op's argument, whether an attribute or a const op's output."""
    if key in op.attributes:
        return op.attributes[key].type.tensorType
    if key in op.inputs:
        for arg in op.inputs[key].arguments:
            binding = arg.WhichOneof("binding")
            if binding == "name" and arg.name in consts:
                return consts[arg.name]
            if binding == "value":  # iOS18 programs carry compressed data inline
                return arg.value.type.tensorType
    return None


def read_package(path: Path) -> PackageInfo:
    """Parse a saved package (no compilation, no prediction)."""
    import coremltools as ct

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    program = spec.mlProgram
    function = program.functions["main"]
    block = function.block_specializations[function.opset]
    ops = _walk(block)
    produced: dict[str, Any] = {}
    const_types: dict[str, Any] = {}
    for op in ops:
        for out in op.outputs:
            produced[out.name] = (op, out.type.tensorType)
        if op.type == "const" and "val" in op.attributes:
            const_types[op.outputs[0].name] = op.attributes["val"].type.tensorType
    # consts consumed by a compression op are its parts, not float weights
    consumed_by_constexpr: set[str] = set()
    compressed: list[dict[str, Any]] = []
    for op in ops:
        if not op.type.startswith("constexpr_"):
            continue
        for arg in op.inputs.values():
            for a in arg.arguments:
                if a.WhichOneof("binding") == "name":
                    consumed_by_constexpr.add(a.name)
        out_dims = _dims(op.outputs[0].type.tensorType)
        elements = math.prod(d or 1 for d in out_dims)
        if op.type in LUT_OPS:
            lut = _value_type(op, "lut", const_types)
            lut_dims = _dims(lut) if lut is not None else []
            size = (lut_dims[-2] if len(lut_dims) >= 3 else lut_dims[-1]) if lut_dims else 0
            bits = int(round(math.log2(size))) if size else 0
            compressed.append(
                {
                    "kind": "palette",
                    "bits": bits,
                    "lut": _mil_dtype(lut.dataType) if lut is not None else "?",
                    "elements": elements,
                }
            )
        elif op.type in LINEAR_OPS:
            data = _value_type(op, "quantized_data", const_types) or _value_type(op, "data", const_types)
            dtype = _mil_dtype(data.dataType) if data is not None else "?"
            bits = 4 if dtype.endswith("INT4") else 8
            compressed.append({"kind": "linear", "bits": bits, "dtype": dtype, "elements": elements})
        else:
            compressed.append({"kind": op.type, "bits": 0, "elements": elements})
    float_weights: dict[str, dict[str, int]] = {}
    largest: dict[str, int] = {}
    for op in ops:
        if op.type != "const" or op.outputs[0].name in consumed_by_constexpr:
            continue
        tensor = op.attributes["val"].type.tensorType if "val" in op.attributes else None
        if tensor is None or tensor.rank == 0:
            continue
        dtype = _mil_dtype(tensor.dataType)
        if dtype not in _FLOAT_TYPES:
            continue
        n = math.prod(d or 1 for d in _dims(tensor))
        entry = float_weights.setdefault(dtype, {"tensors": 0, "elements": 0})
        entry["tensors"] += 1
        entry["elements"] += n
        largest[dtype] = max(largest.get(dtype, 0), n)
    outputs = []
    for out_desc in spec.description.output:
        info = _feature(out_desc)
        if out_desc.name in produced:
            tensor = produced[out_desc.name][1]
            info["mil_dtype"] = _mil_dtype(tensor.dataType)
            info["dims"] = _dims(tensor)
        outputs.append(info)
    inputs = [_feature(d) for d in spec.description.input]
    mil_inputs = {i.name: _dims(i.type.tensorType) for i in function.inputs}
    for info in inputs:
        info["dims"] = mil_inputs.get(info["name"], [])
    meta = spec.description.metadata
    return PackageInfo(
        spec_version=int(spec.specificationVersion),
        inputs=inputs,
        outputs=outputs,
        ops=dict(sorted(Counter(op.type for op in ops).items())),
        float_weights=float_weights,
        compressed=compressed,
        user_metadata=dict(meta.userDefined),
        author=meta.author,
        version=meta.versionString,
        short_description=meta.shortDescription,
        largest_float_weight=largest,
    )


# --------------------------------------------------------------------------- checks against the spec


_ARRAY_DTYPE_FOR = {"float32": "FLOAT32", "float16": "FLOAT32", "int64": "INT32", "int32": "INT32"}


def expected_sizes(graph: GraphSpec, axis: str, options: CoreMLOptions) -> list[int]:
    """The sizes a dynamic axis may take in an enumerated-shapes package."""
    a = graph.dynamic_axes[axis]
    chosen = options.enumerated_sizes.get(axis) or [a.min, a.opt, a.max]
    return sorted({*chosen, a.opt})


def check_interface(
    info: PackageInfo, graph: GraphSpec, options: CoreMLOptions, image_inputs: set[str]
) -> list[str]:
    """Problems (empty when fine) between a package's inputs/outputs and the graph's spec."""
    problems: list[str] = []
    names = [i["name"] for i in info.inputs]
    want = [t.name for t in graph.inputs]
    if names != want:
        problems.append(f"inputs are {names}, the spec has {want}")
        return problems
    for t, got in zip(graph.inputs, info.inputs, strict=True):
        opt = t.concrete_shape(graph.sizes("opt"))
        if t.name in image_inputs:
            if got["kind"] != "image":
                problems.append(f"input {t.name!r} should be an image, is {got['kind']}")
                continue
            if got["shape"] != list(opt[2:]):
                problems.append(f"image input {t.name!r} default size {got['shape']} != spec {list(opt[2:])}")
            continue
        if got["kind"] != "tensor":
            problems.append(f"input {t.name!r} should be a tensor, is {got['kind']}")
            continue
        if got["dtype"] != _ARRAY_DTYPE_FOR[t.dtype]:
            problems.append(
                f"input {t.name!r} has type {got['dtype']}, expected {_ARRAY_DTYPE_FOR[t.dtype]} for {t.dtype}"
            )
        if got["shape"] != list(opt):
            problems.append(f"input {t.name!r} default shape {got['shape']} != spec opt shape {list(opt)}")
        dyn = t.dynamic_axes()
        if options.shapes == "range" and dyn:
            ranges = got.get("range")
            if ranges is None:
                problems.append(f"input {t.name!r} has no shape range")
                continue
            for i, dim in enumerate(t.shape):
                if isinstance(dim, str):
                    a = graph.dynamic_axes[dim]
                    if ranges[i] != [a.min, a.max]:
                        problems.append(
                            f"input {t.name!r} axis {dim!r} range {ranges[i]} != spec {[a.min, a.max]}"
                        )
                elif ranges[i] != [dim, dim]:
                    problems.append(f"input {t.name!r} axis {i} range {ranges[i]} != fixed {dim}")
        elif options.shapes == "enumerated" and dyn:
            shapes = got.get("enumerated")
            if not shapes:
                problems.append(f"input {t.name!r} has no enumerated shapes")
                continue
            for i, dim in dyn.items():
                seen = sorted({s[i] for s in shapes})
                if seen != expected_sizes(graph, dim, options):
                    problems.append(
                        f"input {t.name!r} axis {dim!r} sizes {seen} != {expected_sizes(graph, dim, options)}"
                    )
        elif options.shapes == "static" and (got.get("range") or got.get("enumerated")):
            ranges = got.get("range") or []
            if any(lo != hi for lo, hi in ranges) or len(got.get("enumerated") or []) > 1:
                problems.append(f"input {t.name!r} is flexible, but shapes=static was asked for")
    out_names = [o["name"] for o in info.outputs]
    want_out = [t.name for t in graph.outputs]
    if out_names != want_out:
        problems.append(f"outputs are {out_names}, the spec has {want_out}")
        return problems
    for t, got in zip(graph.outputs, info.outputs, strict=True):
        if got.get("dtype") != _ARRAY_DTYPE_FOR[t.dtype]:
            problems.append(
                f"output {t.name!r} has type {got.get('dtype')}, expected {_ARRAY_DTYPE_FOR[t.dtype]}"
            )
        dims = got.get("dims")
        if dims is None:
            continue
        if len(dims) != len(t.shape):
            problems.append(f"output {t.name!r} has rank {len(dims)}, the spec has {len(t.shape)}")
            continue
        for i, (d, s) in enumerate(zip(dims, t.shape, strict=True)):
            if isinstance(s, int) and d is not None and d != s:
                problems.append(f"output {t.name!r} axis {i} is {d}, the spec has {s}")
            if (
                isinstance(s, str)
                and options.shapes == "static"
                and d is not None
                and d != graph.dynamic_axes[s].opt
            ):
                problems.append(
                    f"output {t.name!r} axis {s!r} is {d}, expected {graph.dynamic_axes[s].opt} (static)"
                )
    return problems


def check_weights(info: PackageInfo, options: CoreMLOptions) -> list[str]:
    """Problems between how the weights are stored and what was asked for."""
    problems: list[str] = []
    quantize = options.effective_quantize
    float_dtype = "FLOAT32" if options.compute_precision == "fp32" else "FLOAT16"
    other = {k for k in info.float_weights if k != float_dtype}
    if other:
        problems.append(f"float weights stored as {sorted(other)}, expected {float_dtype} only")
    if quantize == "none":
        if info.compressed:
            problems.append(f"{len(info.compressed)} compressed weight tensor(s), but quantize=none")
        return problems
    if not info.compressed:
        problems.append(
            f"quantize={quantize} but no weight is compressed (all weights have at most "
            f"{options.weight_threshold} elements? lower --opt weight_threshold)"
        )
        return problems
    if quantize in ("w8", "w8a8"):
        wrong = [c for c in info.compressed if not (c["kind"] == "linear" and c["bits"] == 8)]
        if wrong:
            problems.append(
                f"quantize={quantize}: {len(wrong)} weight(s) not stored as linear 8-bit: {wrong[:3]}"
            )
        if quantize == "w8a8" and not info.ops.get("quantize"):
            problems.append("quantize=w8a8 but the program quantizes no activation (no quantize op)")
    else:
        bits = int(quantize.removeprefix("palettize"))
        wrong = [c for c in info.compressed if not (c["kind"] == "palette" and c["bits"] == bits)]
        if wrong:
            problems.append(
                f"quantize={quantize}: {len(wrong)} weight(s) not in a {bits}-bit palette: {wrong[:3]}"
            )
    return problems
