"""Public ONNX helpers that several exporters share (``onnx``, ``tensorrt``, ``sherpa``, plugins).

Exporters never import each other's modules; what more than one needs lives here:

- :func:`export_onnx`: a graph of an :class:`~kdtool.export.spec.ExportSpec` to an ``.onnx`` file
  (dynamo first, TorchScript as fallback, every dynamic axis checked at a second size), and
  :func:`cleanup` (ONNX Runtime's hardware-independent optimisations, offline).
- :func:`make_session`, :func:`run_session`, :func:`session_callable` and
  :func:`load_onnx_runner`: ONNX Runtime sessions and runners over torch tensors.
- :func:`embed_metadata`, :func:`convert_fp16`, :func:`op_histogram`: artifact post-processing.
- :class:`CalibrationReader`: ONNX Runtime's calibration data reader over a graph's
  ``calibration_inputs``.

``onnx`` and ``onnxruntime`` are imported inside the functions, so importing this module costs
nothing where they are not installed.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdtool.errors import ExportError
from kdtool.export.exporter import ArtifactRunner, run_in_fixed_batches
from kdtool.export.spec import ExportSpec, GraphSpec, as_tuple, take

NP_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
}

GRAPH_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")


def to_numpy(x: torch.Tensor, dtype: str) -> np.ndarray:
    """A tensor as the numpy array an ONNX input of ``dtype`` (a spec dtype name) takes."""
    return x.detach().cpu().numpy().astype(NP_DTYPES[dtype], copy=False)


# --------------------------------------------------------------------------- sessions and runners


def make_session(
    path: Path,
    options: Any = None,
    *,
    provider: str = "cpu",
    graph_optimization: str | None = None,
    threads: int | None = None,
) -> Any:
    """An ONNX Runtime session for ``path``. ``options`` may be any object with
    ``graph_optimization`` and ``threads`` attributes (an exporter's options); keyword arguments
    override it. ``provider="cuda"`` uses CUDA where ONNX Runtime offers it, CPU otherwise."""
    import onnxruntime as ort

    level = graph_optimization or getattr(options, "graph_optimization", None) or "all"
    n_threads = threads if threads is not None else int(getattr(options, "threads", 0) or 0)
    if level not in GRAPH_OPTIMIZATION_LEVELS:
        raise ExportError(
            f"graph_optimization {level!r} is not one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
        )
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if n_threads:
        so.intra_op_num_threads = n_threads
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


def run_session(session: Any, graph: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Run ``session`` on positional torch inputs named and typed as ``graph`` declares."""
    feed = {t.name: to_numpy(x, t.dtype) for t, x in zip(graph.inputs, inputs, strict=True)}
    return tuple(torch.from_numpy(np.asarray(o)) for o in session.run(None, feed))


def session_callable(
    session: Any, names: list[str], dtypes: list[str], static_batch: int | None = None
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """A callable over torch tensors. A graph exported with a fixed batch N runs any batch:
    inputs are cut into chunks of N (the last padded by repeating its final sample)."""

    np_types = [NP_DTYPES[d] for d in dtypes]
    run_raw = session.run

    def run_once(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        # per-call work kept to the feed conversion: this sits on every inference's path
        feed = {}
        for name, x, np_type in zip(names, inputs, np_types, strict=True):
            array = x.detach().numpy() if x.device.type == "cpu" else x.detach().cpu().numpy()
            feed[name] = array if array.dtype == np_type else array.astype(np_type)
        return tuple(torch.from_numpy(np.asarray(o)) for o in run_raw(None, feed))

    if static_batch is None:

        def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return run_once(inputs)

    else:

        def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return run_in_fixed_batches(run_once, inputs, static_batch)

    return run


def load_onnx_runner(
    files: Mapping[str, Path],
    manifest: Mapping[str, Any],
    *,
    kind: str = "onnxruntime",
    options: Any = None,
    provider: str = "cpu",
    graph_optimization: str | None = None,
    static_batch: bool = False,
) -> ArtifactRunner:
    """A runner over ONNX files, one per graph of ``manifest["graphs"]`` (names, dtypes and
    dynamic axes come from the manifest). ``static_batch``: the graphs were exported with the
    batch fixed at its ``opt`` size; the runner then accepts any batch."""
    graphs = {}
    input_names = {}
    output_names = {name: [o["name"] for o in info["outputs"]] for name, info in manifest["graphs"].items()}
    for name, info in manifest["graphs"].items():
        session = make_session(files[name], options, provider=provider, graph_optimization=graph_optimization)
        names = [i["name"] for i in info["inputs"]]
        dtypes = [i["dtype"] for i in info["inputs"]]
        batch = None
        if static_batch and "batch" in info.get("dynamic_axes", {}):
            batch = int(info["dynamic_axes"]["batch"]["opt"])
        graphs[name] = session_callable(session, names, dtypes, batch)
        input_names[name] = names
    return ArtifactRunner(
        graphs,
        kind=kind,
        input_names=input_names,
        output_names=output_names,
        metadata=dict(manifest.get("metadata", {})),
    )


# --------------------------------------------------------------------------- artifact files


def embed_metadata(path: Path, spec: ExportSpec, graph: GraphSpec) -> None:
    """Write kdtool's metadata (version, task, model, graph, deploy metadata, labels or
    vocabulary) into the ONNX file's ``metadata_props``."""
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
    set_onnx_metadata(path, props, producer="kdtool")


def set_onnx_metadata(path: Path, props: Mapping[str, str], *, producer: str | None = None) -> None:
    """Add or replace entries of an ONNX file's ``metadata_props`` (and its producer name)."""
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    if producer is not None:
        model.producer_name = producer
    onnx.save(model, str(path))


def op_histogram(path: Path) -> dict[str, int]:
    """How many nodes of each op type the graph has (sorted by op type)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def convert_fp16(src: Path, dst: Path) -> None:
    """FP16 initialisers and ops, FP32 inputs and outputs (ONNX Runtime's converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(dst))


def cleanup(path: Path) -> None:
    """Hardware-independent clean-up (constant folding, redundant nodes) with ORT basic level."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    tmp = path.with_suffix(".clean.onnx")
    so.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    tmp.replace(path)


class CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` over a graph's first ``n`` calibration inputs."""

    def __init__(self, graph: GraphSpec, n: int) -> None:
        if graph.calibration_inputs is None:
            raise ExportError(
                f"graph {graph.name!r} has no calibration_inputs; static quantization needs the recipe's data"
            )
        names = [t.name for t in graph.inputs]
        self._items = [
            {name: to_numpy(x, spec.dtype) for name, x, spec in zip(names, inputs, graph.inputs, strict=True)}
            for inputs in take(graph.calibration_inputs(n), n)
        ]
        self._iter = iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._items)


# --------------------------------------------------------------------------- torch -> ONNX


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


def export_onnx(
    graph: GraphSpec,
    path: Path,
    *,
    opset: int = 18,
    exporter: str = "auto",
    static: bool = False,
    target: str = "onnx",
) -> dict[str, Any]:
    """Export one graph to ``path``; returns what happened (exporter used, fallbacks and why).

    ``torch.onnx.export(dynamo=True)`` with every dynamic axis declared; where dynamo fails, or
    its graph does not accept a second size on a dynamic axis (seen with LSTMs), the
    TorchScript exporter is tried. ``exporter``: ``auto``, ``dynamo`` or ``torchscript``."""
    import onnx

    module = graph.module.eval()
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
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    last_error: Exception | None = None
    for which in order:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                names: dict[str, Any] = {"input_names": in_names, "output_names": out_names}
                if which == "dynamo":
                    dynamic_shapes = (
                        None if static or not graph.dynamic_axes else _dynamic_shapes(graph, static)
                    )
                    torch.onnx.export(
                        module, args, str(path), **names, opset_version=opset, dynamo=True,
                        external_data=False, dynamic_shapes=dynamic_shapes, verbose=False,
                    )  # fmt: skip
                else:
                    dynamic_axes = None
                    if not static:
                        tensors = [*graph.inputs, *graph.outputs]
                        dynamic_axes = {t.name: t.dynamic_axes() for t in tensors if t.dynamic_axes()}
                    torch.onnx.export(
                        module, args, str(path), **names, opset_version=min(opset, 20), dynamo=False,
                        dynamic_axes=dynamic_axes,
                    )  # fmt: skip
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
        f"target {target!r}: cannot export {what} of graph {graph.name!r} to ONNX opset {opset}; tried "
        + "; ".join(attempts),
        hint="try --opt exporter=torchscript or a different opset (--opt opset=17), or replace the op in the model",
    )


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
