"""The ``coreml`` exporter: ML programs (``.mlpackage``) with coremltools, one per graph.

- Capture: ``torch.jit.trace`` (coremltools' mature path; ``--opt frontend=export`` uses
  ``torch.export``, beta in coremltools). Inputs and outputs keep the spec's names; float
  inputs and outputs stay FP32 and int64 ones become int32 (Core ML has no int64 I/O).
- Shapes: each dynamic axis of the spec becomes a range (min..max, default opt), an
  enumerated set (min, opt, max unless ``enumerated_sizes`` says otherwise; the Neural
  Engine prefers these), or is fixed at opt.
- Precision: ``fp32``/``fp16`` compute; ``int8`` = FP16 compute with INT8 weights.
  ``quantize=w8`` (per-channel symmetric INT8 weights) and ``palettizeN`` (N-bit look-up
  tables, k-means or uniform, per tensor or per grouped channel) compress the converted
  program with ``coremltools.optimize.coreml``. ``quantize=w8a8`` needs activation ranges:
  coremltools calibrates a converted model by calling ``predict`` (macOS only), so here the
  PyTorch module is quantized with ``coremltools.optimize.torch`` (observers calibrated on the
  recipe's own data, then finalized) before conversion; the simulated error is recorded.
- Metadata: author, version, licence, short description, per input/output descriptions, and
  user-defined ``kdtool.*`` entries (task, labels or vocabulary, pre/post-processing JSON,
  compute units). ``image_input=true`` turns an image task's input into a Core ML image
  with the task's scale and per-channel bias (per-channel std folded into the graph when the
  channels' std differ).
- Verification: :meth:`CoreMLExporter.inspect` re-reads the package and checks it against the
  spec (names, types, flexible shapes, output ranks), the weights against the requested
  precision or palette, and records the op list. Prediction runs only on macOS: there the
  export driver (:mod:`kdtool.export.verify`) compares outputs with PyTorch through
  :meth:`CoreMLExporter.load`, as for every format; elsewhere the manifest says parity was not
  checked.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import platform
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdtool.errors import ExportError
from kdtool.export.exporter import (
    Artifact,
    ArtifactRunner,
    Capabilities,
    ExportContext,
    Exporter,
    ExporterOptions,
    ParityPlan,
    run_in_fixed_batches,
)
from kdtool.export.spec import (
    PREPROCESSING_KINDS,
    ExportSpec,
    GraphSpec,
    ImagePreprocessing,
    TensorSpec,
    as_tuple,
    parse_processing,
    take,
)
from kdtool.export.verify import max_relative_error, tolerance_for

from .inspect import PackageInfo, check_interface, check_weights, expected_sizes, read_package
from .options import MACOS_FOR_LEVEL, SPEC_LEVEL, CoreMLOptions, check_compatibility

INSTALL_HINT = "pip install 'kdtool[coreml]'"
# Beyond this many enumerated shapes per input the package grows and the ANE gains little.
MAX_ENUMERATED = 64
_SYMBOLS = itertools.count(1)


# --------------------------------------------------------------------------- quiet coremltools


@contextlib.contextmanager
def quiet(buffer: io.StringIO | None = None) -> Iterator[io.StringIO]:
    """Silence coremltools' progress bars, import warnings (untested torch version, no
    native runtime off macOS) and torch's tracing warnings; keep the text for errors."""
    buf = buffer or io.StringIO()
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        logger.setLevel(level)


def import_coremltools() -> Any:
    try:
        with quiet():
            import coremltools as ct
    except ImportError:
        raise ExportError(
            "the coreml exporter needs coremltools, which is not installed", hint=INSTALL_HINT
        ) from None
    return ct


def on_macos() -> bool:
    return sys.platform == "darwin"


# --------------------------------------------------------------------------- image inputs


@dataclass
class ImagePrep:
    """How a Core ML image input maps pixels p (0..255) to the spec's tensor x:
    ``x_c = (p * scale + bias_c) * channel_scale_c`` (channel_scale folded into the graph)."""

    input: str
    channels: int
    color: str  # GRAYSCALE, RGB, BGR
    scale: float
    bias: list[float]
    channel_scale: list[float] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "color_layout": self.color,
            "scale": self.scale,
            "bias": self.bias,
            "channel_scale_in_graph": self.channel_scale,
        }

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        """Invert the mapping for one (C, H, W) tensor: uint8 pixels (H, W) or (H, W, C)."""
        v = x.detach().float().cpu().numpy()
        cs = np.asarray(self.channel_scale or [1.0] * self.channels, dtype=np.float32)[:, None, None]
        bias = np.asarray(self.bias, dtype=np.float32)[:, None, None]
        p = np.clip(np.rint((v / cs - bias) / self.scale), 0, 255).astype(np.uint8)
        return p[0] if self.channels == 1 else p.transpose(1, 2, 0)

    def from_pixels(self, p: np.ndarray) -> torch.Tensor:
        arr = p[None].astype(np.float32) if p.ndim == 2 else p.transpose(2, 0, 1).astype(np.float32)
        cs = np.asarray(self.channel_scale or [1.0] * self.channels, dtype=np.float32)[:, None, None]
        bias = np.asarray(self.bias, dtype=np.float32)[:, None, None]
        return torch.from_numpy((arr * self.scale + bias) * cs)


def _per_channel(value: Any, channels: int, what: str) -> list[float]:
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ExportError(
            f"image_input: preprocessing {what} has {len(values)} values for {channels} channels"
        )
    return values


def image_prep(spec: ExportSpec, graph: GraphSpec) -> ImagePrep:
    """The first input of an image task as a Core ML image, from the spec's metadata.

    Pixels are scaled by the typed ``ImagePreprocessing.scale``; when the mean/std
    normalisation happens outside the graph (``normalization: outside``) it becomes the image's per-channel bias, and a per-channel std becomes one multiply in
    the graph unless all channels share it (then it folds into the scale)."""
    pre = parse_processing(spec.metadata.preprocessing, PREPROCESSING_KINDS)
    tensor = graph.inputs[0]
    if not isinstance(pre, ImagePreprocessing):
        raise ExportError(
            f"image_input=true needs an image task (preprocessing kind 'image'); task {spec.task!r} has "
            f"preprocessing kind {pre.kind!r}",
            hint="drop --opt image_input=true: the package takes the tensor the metadata describes",
        )
    if len(tensor.shape) != 4 or tensor.shape[1] not in (1, 3):
        raise ExportError(
            f"image_input=true: input {tensor.name!r} of graph {graph.name!r} has shape {tensor.shape}; "
            "a Core ML image input needs (batch, 1 or 3, height, width)"
        )
    channels = int(tensor.shape[1])
    scale = float(pre.scale)
    bias = [0.0] * channels
    channel_scale: list[float] | None = None
    if pre.normalization == "outside" and pre.mean is not None and pre.std is not None:
        means = _per_channel(pre.mean, channels, "mean")
        stds = _per_channel(pre.std, channels, "std")
        if any(s <= 0 for s in stds):
            raise ExportError(f"image_input: preprocessing std {stds} must be positive")
        if max(stds) - min(stds) <= 1e-9 * max(stds):
            scale, bias = scale / stds[0], [-m / stds[0] for m in means]
        else:
            bias, channel_scale = [-m for m in means], [1.0 / s for s in stds]
    color = "GRAYSCALE" if channels == 1 else ("BGR" if pre.channels == "BGR" else "RGB")
    return ImagePrep(tensor.name, channels, color, scale, bias, channel_scale)


class _ChannelScale(nn.Module):
    """Multiplies the first input by a per-channel factor, then runs the graph."""

    def __init__(self, module: nn.Module, factors: list[float]) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("factors", torch.tensor(factors, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> Any:
        return self.module(x * self.factors, *rest)


# --------------------------------------------------------------------------- conversion


def _np_dtype(t: TensorSpec) -> Any:
    return np.float32 if t.torch_dtype.is_floating_point else np.int32


def input_shape(
    ct: Any, graph: GraphSpec, t: TensorSpec, options: CoreMLOptions, symbol_tag: str = "0"
) -> Any:
    """The coremltools shape of one input: fixed, ranges, or enumerated shapes."""
    opt = t.concrete_shape(graph.sizes("opt"))
    dyn = t.dynamic_axes()
    if options.shapes == "static" or not dyn:
        return opt
    if options.shapes == "range":
        dims: list[Any] = []
        for s in t.shape:
            if isinstance(s, str):
                a = graph.dynamic_axes[s]
                # coremltools keeps symbols process-wide: a fresh name per conversion, shared by
                # the inputs of one graph so equal axes stay equal.
                dims.append(
                    ct.RangeDim(
                        lower_bound=a.min, upper_bound=a.max, default=a.opt, symbol=f"{s}_{symbol_tag}"
                    )
                )
            else:
                dims.append(s)
        return tuple(dims)
    choices = [expected_sizes(graph, s, options) if isinstance(s, str) else [s] for s in t.shape]
    shapes = [tuple(c) for c in itertools.product(*choices)]
    # torch.export checks its example input against the first enumerated shape
    first = t.concrete_shape(_example_sizes(graph, options))
    shapes = [first, *(s for s in shapes if s != first)] if first in shapes else shapes
    if len(shapes) > MAX_ENUMERATED:
        raise ExportError(
            f"shapes=enumerated gives {len(shapes)} shapes for input {t.name!r} (more than {MAX_ENUMERATED})",
            hint="choose fewer sizes with --opt 'enumerated_sizes={axis: [a, b]}' or use --opt shapes=range",
        )
    return ct.EnumeratedShapes(shapes=shapes, default=tuple(opt))


def _example_sizes(graph: GraphSpec, options: CoreMLOptions) -> dict[str, int]:
    sizes = graph.sizes("opt")
    if options.shapes == "static":
        return sizes
    # Capture with sizes of at least 2 on dynamic axes so no axis is specialised to 1
    # (in enumerated mode, the nearest enumerated size).
    out = {}
    for k, v in sizes.items():
        want = max(v, min(2, graph.dynamic_axes[k].max))
        if options.shapes == "enumerated":
            allowed = expected_sizes(graph, k, options)
            want = min((s for s in allowed if s >= want), default=max(allowed))
        out[k] = want
    return out


def _trace_inputs(graph: GraphSpec, options: CoreMLOptions) -> tuple[torch.Tensor, ...]:
    return graph.make_inputs(_example_sizes(graph, options), generator=torch.Generator().manual_seed(0))


def quantize_activations(
    graph: GraphSpec, module: nn.Module, options: CoreMLOptions
) -> tuple[nn.Module, dict[str, Any]]:
    """W8A8 in PyTorch: coremltools.optimize.torch's LinearQuantizer with observers run over
    the recipe's calibration data (no training), then finalized for conversion."""
    from torch.ao.quantization import disable_fake_quant, disable_observer, enable_fake_quant, enable_observer

    with quiet():
        from coremltools.optimize.torch.quantization import (
            LinearQuantizer,
            LinearQuantizerConfig,
            ModuleLinearQuantizerConfig,
        )
    if graph.calibration_inputs is None:
        raise ExportError(
            f"quantize=w8a8: graph {graph.name!r} has no calibration inputs", hint="use --opt quantize=w8"
        )
    samples = take(graph.calibration_inputs(options.calibration_samples), options.calibration_samples)
    if not samples:
        raise ExportError(
            f"quantize=w8a8: calibration data for graph {graph.name!r} is empty",
            hint="check the recipe's data section, or use --opt quantize=w8",
        )
    # MinMax observers: the default moving averages suit QAT over many steps; over a few
    # calibration batches they leave ranges too narrow (measured: 0.55 vs 0.01 max rel error).
    config = LinearQuantizerConfig(
        global_config=ModuleLinearQuantizerConfig(
            quantization_scheme="symmetric", activation_observer="min_max", weight_observer="min_max"
        )
    )
    try:
        with quiet():
            quantizer = LinearQuantizer(copy.deepcopy(module).eval(), config)
            prepared = quantizer.prepare(example_inputs=samples[0])
            prepared.apply(enable_observer)
            prepared.apply(disable_fake_quant)
            prepared.eval()
            with torch.no_grad():
                for inputs in samples:
                    prepared(*inputs)
            prepared.apply(disable_observer)
            prepared.apply(enable_fake_quant)
            finalized = quantizer.finalize(prepared).eval()
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"quantize=w8a8: coremltools.optimize.torch cannot quantize graph {graph.name!r}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
            hint="the module must be torch.fx traceable; use --opt quantize=w8 (weights only) instead",
        ) from None
    with quiet(), torch.no_grad():
        worst = max(
            (max_relative_error(as_tuple(module(*x)), as_tuple(finalized(*x))) for x in samples[:4]),
            default=0.0,
        )
    info = {
        "method": "coremltools.optimize.torch LinearQuantizer (symmetric, per-channel INT8 weights, "
        "UINT8/INT8 activations), MinMax observers calibrated without training",
        "calibration_samples": len(samples),
        "simulated_max_rel_error": worst,
    }
    return finalized, info


def capture(module: nn.Module, graph: GraphSpec, options: CoreMLOptions) -> Any:
    """The PyTorch program coremltools converts (TorchScript trace or ExportedProgram)."""
    args = _trace_inputs(graph, options)
    with quiet(), torch.no_grad():
        if options.frontend == "trace":
            return torch.jit.trace(module, args, check_trace=False)
        dynamic: list[dict[int, Any]] = []
        for t in graph.inputs:
            axes: dict[int, Any] = {}
            if options.shapes != "static":
                for i, name in t.dynamic_axes().items():
                    a = graph.dynamic_axes[name]
                    axes[i] = torch.export.Dim(name, min=a.min, max=a.max)
            dynamic.append(axes)
        program = torch.export.export(module, args, dynamic_shapes=tuple(dynamic) if any(dynamic) else None)
        return program.run_decompositions({})


def _failing_op(exc: BaseException) -> str | None:
    """The PyTorch op coremltools was converting when it failed (from the traceback)."""
    tb = exc.__traceback__
    found = None
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        kind = getattr(node, "kind", None)
        if isinstance(kind, str):
            found = kind
        tb = tb.tb_next
    if found is None:
        import re

        match = re.search(r"op '([\w.:]+)'|Unable to map (\w+)", str(exc))
        if match:
            found = match.group(1) or match.group(2)
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def convert_graph(
    ct: Any, spec: ExportSpec, graph: GraphSpec, options: CoreMLOptions, *, target: str
) -> tuple[Any, dict[str, Any]]:
    """One graph to an in-memory MLModel (compressed as asked), with what happened.

    Attempts, in order: the asked frontend (``auto``: trace, then torch.export) with the
    asked shapes; then, when ``shapes_fallback=static`` and the flexible shapes are what
    failed, the same frontends with shapes fixed at opt. Every failed attempt is recorded."""
    info: dict[str, Any] = {}
    module: nn.Module = graph.module.eval()
    prep = image_prep(spec, graph) if options.image_input else None
    if prep is not None:
        if prep.channel_scale is not None:
            module = _ChannelScale(module, prep.channel_scale).eval()
        info["image_input"] = prep.to_dict()
    quantize = options.effective_quantize
    if quantize == "w8a8":
        module, info["w8a8"] = quantize_activations(graph, module, options)
    frontends = ["trace", "export"] if options.frontend == "auto" else [options.frontend]
    asked = options.shapes_for(graph)
    shape_modes = [asked]
    if asked != "static" and options.shapes_fallback == "static" and graph.dynamic_axes:
        shape_modes.append("static")
    attempts: list[str] = []
    failures: list[tuple[str, BaseException]] = []
    model = None
    for shapes in shape_modes:
        for frontend in frontends:
            attempt = options.model_copy(update={"shapes": shapes, "frontend": frontend})
            try:
                model = _convert_once(ct, graph, module, attempt, prep)
            except ExportError:
                raise
            except Exception as exc:  # coremltools raises many types; report and fall back
                failures.append((f"{frontend}/{shapes}", exc))
                op = _failing_op(exc)
                attempts.append(
                    f"{frontend} with {shapes} shapes: {f'op {op}: ' if op else ''}{_first_line(exc)}"
                )
                continue
            info.update(frontend=frontend, shapes=shapes)
            break
        if model is not None:
            break
    if model is None:
        op = next((o for o in (_failing_op(e) for _, e in failures) if o), None)
        what = f"op {op}" if op else "the model"
        raise ExportError(
            f"target {target!r}: coremltools {ct.__version__} cannot convert {what} of graph {graph.name!r}; tried "
            + "; ".join(attempts),
            hint="try another --opt frontend (trace, export) or --opt shapes=static, or replace the op in the model",
        )
    if attempts:
        info["fallback_reasons"] = attempts
    if info["shapes"] != asked:
        info["shapes_note"] = (
            f"shapes={asked} failed ({'; '.join(attempts[: len(frontends)])}); the package has fixed shapes at opt "
            f"{graph.sizes('opt')} (--opt shapes_fallback=error makes this an error)"
        )
    if quantize in ("w8",) or quantize.startswith("palettize"):
        model, info["compression"] = compress(ct, model, options, quantize)
    elif quantize == "w8a8":
        info["compression"] = {"weights": "INT8 per-channel from the quantized PyTorch module"}
    return model, info


def _convert_once(
    ct: Any, graph: GraphSpec, module: nn.Module, options: CoreMLOptions, prep: ImagePrep | None
) -> Any:
    inputs = []
    symbol_tag = next(_SYMBOLS)
    for i, t in enumerate(graph.inputs):
        shape = input_shape(ct, graph, t, options, str(symbol_tag))
        if prep is not None and i == 0:
            inputs.append(
                ct.ImageType(
                    name=t.name,
                    shape=shape,
                    scale=prep.scale,
                    bias=prep.bias if prep.channels == 3 else prep.bias[0],
                    color_layout=getattr(ct.colorlayout, prep.color),
                )
            )
        else:
            inputs.append(ct.TensorType(name=t.name, shape=shape, dtype=_np_dtype(t)))
    outputs = [ct.TensorType(name=t.name, dtype=_np_dtype(t)) for t in graph.outputs]
    program = capture(module, graph, options)
    with quiet():
        return ct.convert(
            program,
            inputs=inputs,
            outputs=outputs,
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, options.deployment_target),
            compute_precision=ct.precision.FLOAT32
            if options.compute_precision == "fp32"
            else ct.precision.FLOAT16,
            compute_units=getattr(ct.ComputeUnit, options.compute_units),
            skip_model_load=not on_macos(),
        )


def compress(ct: Any, model: Any, options: CoreMLOptions, quantize: str) -> tuple[Any, dict[str, Any]]:
    """Post-training weight compression of a converted program (coremltools.optimize.coreml)."""
    with quiet():
        import coremltools.optimize as cto
    if quantize == "w8":
        op_config: Any = cto.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype="int8",
            granularity="per_channel",
            weight_threshold=options.weight_threshold,
        )
        info = {
            "method": "linear_quantize_weights",
            "mode": "linear_symmetric",
            "dtype": "int8",
            "granularity": "per_channel",
        }
        run = cto.coreml.linear_quantize_weights
    else:
        bits = int(quantize.removeprefix("palettize"))
        kwargs: dict[str, Any] = {}
        if options.palettize_granularity == "per_grouped_channel":
            kwargs["group_size"] = options.palettize_group_size
        if options.palettize_mode == "kmeans":
            import importlib.util

            if importlib.util.find_spec("sklearn") is None:
                raise ExportError(
                    "palettize_mode=kmeans needs scikit-learn, which is not installed",
                    hint="pip install scikit-learn, or use --opt palettize_mode=uniform",
                )
        op_config = cto.coreml.OpPalettizerConfig(
            mode=options.palettize_mode,
            nbits=bits,
            granularity=options.palettize_granularity,
            weight_threshold=options.weight_threshold,
            **kwargs,
        )
        info = {
            "method": "palettize_weights",
            "nbits": bits,
            "mode": options.palettize_mode,
            "granularity": options.palettize_granularity,
            **kwargs,
        }
        run = cto.coreml.palettize_weights
    info["weight_threshold"] = options.weight_threshold
    try:
        with quiet():
            compressed = run(model, config=cto.coreml.OptimizationConfig(global_config=op_config))
    except Exception as exc:
        raise ExportError(f"quantize={quantize}: coremltools cannot compress the program: {exc}") from None
    return compressed, info


def _describe(t: TensorSpec, graph: GraphSpec, prep: ImagePrep | None) -> str:
    shape = ", ".join(
        f"{s} {graph.dynamic_axes[s].min}..{graph.dynamic_axes[s].max}" if isinstance(s, str) else str(s)
        for s in t.shape
    )
    text = t.description or t.role
    if prep is not None and prep.input == t.name:
        return (
            f"{prep.color} image, pixels 0..255 mapped to x = p * {prep.scale:.6g} + bias {[round(b, 6) for b in prep.bias]}"
            + (" then times a per-channel factor inside the model" if prep.channel_scale else "")
            + f" ({text})"
        )
    return f"{text} [{shape}] {t.dtype}"


def set_metadata(
    model: Any, spec: ExportSpec, graph: GraphSpec, options: CoreMLOptions, prep: ImagePrep | None
) -> None:
    from kdtool import __version__

    model.author = options.author
    model.license = options.license
    model.version = options.version or f"kdtool {__version__}"
    graph_part = f" (graph {graph.name})" if len(spec.graphs) > 1 else ""
    model.short_description = options.short_description or (
        f"{spec.task}: model {spec.model_name!r}{graph_part}, distilled and exported with kdtool {__version__}"
    )
    for t in graph.inputs:
        model.input_description[t.name] = _describe(t, graph, prep)
    for t in graph.outputs:
        model.output_description[t.name] = _describe(t, graph, None)
    meta = spec.metadata
    user = {
        "kdtool.version": __version__,
        "kdtool.task": spec.task,
        "kdtool.model": spec.model_name,
        "kdtool.graph": graph.name,
        "kdtool.compute_units": options.compute_units,
        "kdtool.quantize": options.effective_quantize,
        "kdtool.preprocessing": json.dumps(meta.pre.to_dict()),
        "kdtool.postprocessing": json.dumps(meta.post.to_dict()),
        "kdtool.dynamic_axes": json.dumps({k: [v.min, v.opt, v.max] for k, v in graph.dynamic_axes.items()}),
        "kdtool.metadata": json.dumps(meta.to_dict()),
    }
    if meta.labels:
        user["kdtool.labels"] = json.dumps(meta.labels)
    if meta.vocabulary:
        user["kdtool.vocabulary"] = json.dumps(meta.vocabulary)
    if prep is not None:
        user["kdtool.image_input"] = json.dumps(prep.to_dict())
    model.user_defined_metadata.update(user)


def package_problems(
    info: PackageInfo, graph: GraphSpec, options: CoreMLOptions, image_inputs: set[str]
) -> list[str]:
    problems = check_interface(info, graph, options, image_inputs) + check_weights(info, options)
    if info.spec_version < SPEC_LEVEL[options.deployment_target]:
        problems.append(
            f"specification version {info.spec_version} is older than {options.deployment_target}"
        )
    return problems


# --------------------------------------------------------------------------- the exporter


class CoreMLExporter(Exporter):
    capabilities = Capabilities(
        name="coreml",
        suffix=".mlpackage",
        precisions=("fp32", "fp16", "int8"),
        options_model=CoreMLOptions,
        default_profile="coreml-iphone",
        description="Core ML ML programs (.mlpackage) for iPhone, iPad and Mac",
        needs_macos_to_run=True,
        requires=(("coremltools", INSTALL_HINT),),
    )

    def export(
        self, spec: ExportSpec, options: ExporterOptions, out_dir: Path, ctx: ExportContext
    ) -> Artifact:
        assert isinstance(options, CoreMLOptions)
        check_compatibility(options, spec)
        ct = import_coremltools()
        graph_files: dict[str, Path] = {}
        details: dict[str, Any] = {"graphs": {}, "deployment_target": options.deployment_target}
        for graph in spec.graphs:
            name = "model" if len(spec.graphs) == 1 else graph.name
            model, info = convert_graph(ct, spec, graph, options, target=ctx.target)
            prep = image_prep(spec, graph) if options.image_input else None
            set_metadata(model, spec, graph, options, prep)
            path = out_dir / f"{name}.mlpackage"
            with quiet():
                model.save(str(path))
            package = read_package(path)
            effective = options.model_copy(update={"shapes": info["shapes"]})
            problems = package_problems(package, graph, effective, {prep.input} if prep else set())
            if problems:
                raise ExportError(
                    f"target {ctx.target!r}: the converted package of graph {graph.name!r} does not match the spec: "
                    + "; ".join(problems)
                )
            info.update(package.to_dict())
            details["graphs"][graph.name] = info
            graph_files[graph.name] = path
        not_verified = [
            f"flexible shapes of graph {g!r}: {info['shapes_note']}"
            for g, info in details["graphs"].items()
            if "shapes_note" in info
        ]
        for line in not_verified:
            ctx.log(f"warning: {line}")
        if options.compute_units in ("ALL", "CPU_AND_NE"):
            not_verified.append(
                "which ops the Neural Engine runs (decided by Core ML on the device at load time)"
            )
        return Artifact(out_dir, graph_files, details=details, not_verified=not_verified)

    def inspect(self, spec: ExportSpec, artifact: Artifact, options: ExporterOptions) -> dict[str, Any]:
        """Each package re-read and checked against the spec (interface, shapes, metadata,
        weight storage, op count); works on every platform."""
        assert isinstance(options, CoreMLOptions)
        import_coremltools()
        structure: dict[str, Any] = {}
        for graph in spec.graphs:
            path = artifact.graph_files[graph.name]
            prep = image_prep(spec, graph) if options.image_input else None
            info = read_package(path)
            effective = _effective(options, artifact.details, graph.name)
            problems = package_problems(info, graph, effective, {prep.input} if prep else set())
            if problems:
                raise ExportError(f"{path.name} does not match the export spec: " + "; ".join(problems))
            missing_meta = [k for k in ("kdtool.task", "kdtool.metadata") if k not in info.user_metadata]
            if missing_meta or not info.author or not info.short_description:
                raise ExportError(
                    f"{path.name}: metadata incomplete (missing {missing_meta or 'author/description'})"
                )
            structure[graph.name] = {
                "interface": "matches the spec",
                "weights": _weights_line(info, options),
                "ops": sum(info.ops.values()),
                "spec_version": info.spec_version,
            }
        return {"package_structure": structure}

    def parity_plan(
        self, spec: ExportSpec, artifact: Artifact, options: ExporterOptions, *, precision: str | None = None
    ) -> ParityPlan:
        """Tolerance by compression (palette, INT8 weights) or compute precision; random inputs
        only at sizes the package accepts; image inputs fed as the uint8 pixels Core ML sees."""
        assert isinstance(options, CoreMLOptions)
        quantize = options.effective_quantize
        sizes: dict[str, list[dict[str, int]]] = {}
        preps = {}
        for graph in spec.graphs:
            effective = _effective(options, artifact.details, graph.name)
            sizes_list = graph.test_sizes() if effective.shapes != "static" else [graph.sizes("opt")]
            if effective.shapes == "enumerated":
                axes = _input_axes(graph)
                sizes_list = [
                    s
                    for s in sizes_list
                    if all(v in expected_sizes(graph, k, effective) for k, v in s.items() if k in axes)
                ]
            sizes[graph.name] = sizes_list
            preps[graph.name] = image_prep(spec, graph) if options.image_input else None

        def prepare(graph: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            prep = preps.get(graph.name)
            if prep is None:
                return inputs
            first = torch.stack([prep.from_pixels(prep.to_pixels(x)) for x in inputs[0]])
            return (first, *inputs[1:])

        compute = precision or options.compute_precision
        return ParityPlan(
            tolerance=tolerance_for(compute if quantize == "none" else "int8", quantize),
            # compressed weights on random inputs: shapes only (outside the calibrated range)
            random_tolerance=float("inf") if quantize != "none" else None,
            sizes=sizes,
            prepare=prepare,
        )

    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        options = CoreMLOptions.model_validate(manifest.get("options", {}))
        if not on_macos():
            raise ExportError(
                f"Core ML packages run only on macOS (this machine: {platform.system()}); "
                f"{directory} can be measured for size here, not run",
                hint="copy the artifact folder to a Mac (macOS 13+) to run, evaluate or bench it",
            )
        ok, why = self.can_run_here(options)
        if not ok:
            raise ExportError(f"cannot run {directory} here: {why}")
        graphs = {}
        input_names = {}
        for name, info in manifest["graphs"].items():
            inputs = [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in info["inputs"]]
            prep = None
            image = manifest.get("details", {}).get("graphs", {}).get(name, {}).get("image_input")
            if image:
                prep = ImagePrep(
                    image["input"], int(inputs[0].shape[1]), image["color_layout"], image["scale"], image["bias"],
                    image.get("channel_scale_in_graph"),
                )  # fmt: skip
            static_batch = None
            shapes = manifest.get("details", {}).get("graphs", {}).get(name, {}).get("shapes", options.shapes)
            if shapes == "static" and "batch" in info.get("dynamic_axes", {}):
                static_batch = int(info["dynamic_axes"]["batch"]["opt"])
            graphs[name] = _model_callable(directory / info["file"], inputs, options, prep, static_batch)
            input_names[name] = [t.name for t in inputs]
        return ArtifactRunner(
            graphs, kind="coreml", input_names=input_names, metadata=manifest.get("metadata", {})
        )

    def can_run_here(self, options: ExporterOptions) -> tuple[bool, str]:
        ok, why = super().can_run_here(options)
        if not ok or not isinstance(options, CoreMLOptions):
            return ok, why
        need = MACOS_FOR_LEVEL[SPEC_LEVEL[options.deployment_target]]
        release = platform.mac_ver()[0]
        have = tuple(int(p) for p in release.split(".")[:2]) if release else (0, 0)
        if have < need:
            return (
                False,
                f"deployment_target {options.deployment_target} needs macOS {need[0]}+, this Mac has {release}",
            )
        return True, ""

    def versions(self) -> dict[str, str]:
        ct = import_coremltools()
        return {**super().versions(), "coremltools": ct.__version__}


def _effective(options: CoreMLOptions, details: dict[str, Any], graph: str) -> CoreMLOptions:
    """The options a graph was converted with (shapes may have fallen back to static)."""
    shapes = details.get("graphs", {}).get(graph, {}).get("shapes", options.shapes)
    return options.model_copy(update={"shapes": shapes})


def _weights_line(info: PackageInfo, options: CoreMLOptions) -> str:
    parts = [f"{v['tensors']} float tensor(s) {k}" for k, v in info.float_weights.items()]
    for kind, v in info.to_dict()["compressed_weights"].items():
        parts.append(f"{v['tensors']} {kind}-bit tensor(s)")
    return f"quantize={options.effective_quantize}, compute {options.compute_precision}: " + ", ".join(parts)


def _input_axes(graph: GraphSpec) -> set[str]:
    return {a for t in graph.inputs for a in t.dynamic_axes().values()}


def graph_inputs(graph: GraphSpec) -> list[TensorSpec]:
    return list(graph.inputs)


def _static_batch(graph: GraphSpec, options: CoreMLOptions) -> int | None:
    if options.shapes == "static" and "batch" in graph.dynamic_axes:
        return graph.dynamic_axes["batch"].opt
    return None


def _model_callable(
    path: Path,
    inputs: list[TensorSpec],
    options: CoreMLOptions,
    prep: ImagePrep | None,
    static_batch: int | None,
) -> Any:
    """macOS: a callable over torch tensors running the package with Core ML. Image inputs
    are fed one sample at a time as PIL images; a fixed-batch package runs in chunks."""
    ct = import_coremltools()
    from PIL import Image

    with quiet():
        model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, options.compute_units))
    output_names = [o.name for o in model.get_spec().description.output]

    def predict(feed: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        out = model.predict(feed)
        return tuple(
            torch.from_numpy(
                np.asarray(out[n]).astype(np.float32 if np.asarray(out[n]).dtype.kind == "f" else np.int64)
            )
            for n in output_names
        )

    def run_once(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if prep is None:
            feed = {
                t.name: x.detach().cpu().numpy().astype(_np_dtype(t))
                for t, x in zip(inputs, tensors, strict=True)
            }
            return predict(feed)
        results = []
        for i in range(tensors[0].shape[0]):
            pixels = prep.to_pixels(tensors[0][i])
            feed = {inputs[0].name: Image.fromarray(pixels, mode="L" if prep.channels == 1 else "RGB")}
            for t, x in zip(inputs[1:], tensors[1:], strict=True):
                feed[t.name] = x[i : i + 1].detach().cpu().numpy().astype(_np_dtype(t))
            results.append(predict(feed))
        return tuple(torch.cat([r[k] for r in results]) for k in range(len(results[0])))

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return run_in_fixed_batches(run_once, tensors, static_batch)

    return run


__all__ = ["CoreMLExporter", "CoreMLOptions", "INSTALL_HINT"]
