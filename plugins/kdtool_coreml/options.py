"""Options of the ``coreml`` exporter and the checks that tie them to a deployment target.

This module does not import coremltools, so ``kdtool targets`` and option validation work
(and say how to install it) on a machine without it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kdtool.errors import ExportError
from kdtool.export.exporter import ExporterOptions
from kdtool.export.spec import ExportSpec, GraphSpec

ComputeUnits = Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"]
DeploymentTarget = Literal[
    "iOS15", "iOS16", "iOS17", "iOS18", "iOS26", "macOS12", "macOS13", "macOS14", "macOS15", "macOS26"
]
Quantize = Literal["none", "w8", "w8a8", "palettize4", "palettize6", "palettize8"]

# Core ML specification level of each deployment target (coremltools' ``ct.target`` values):
# an iOS release and the macOS released with it run the same ML program features.
SPEC_LEVEL: dict[str, int] = {
    "iOS15": 6, "macOS12": 6,
    "iOS16": 7, "macOS13": 7,
    "iOS17": 8, "macOS14": 8,
    "iOS18": 9, "macOS15": 9,
    "iOS26": 10, "macOS26": 10,
}  # fmt: skip
_LEVEL_NAMES = {
    6: "iOS15 / macOS12",
    7: "iOS16 / macOS13",
    8: "iOS17 / macOS14",
    9: "iOS18 / macOS15",
    10: "iOS26 / macOS26",
}
# The macOS that runs a package built for a given level (a Mac runs iOS-targeted packages too).
MACOS_FOR_LEVEL = {6: (12, 0), 7: (13, 0), 8: (14, 0), 9: (15, 0), 10: (26, 0)}


class CoreMLOptions(ExporterOptions):
    """``--opt key=value`` for ``kdtool export --target coreml*``.

    ``precision`` (from ``--precision``): ``fp32`` or ``fp16`` is the compute precision of the
    ML program; ``int8`` means FP16 compute with INT8 weights (``quantize=w8`` unless
    ``quantize=w8a8`` is given).
    """

    compute_units: ComputeUnits = Field(
        default="ALL",
        description="where Core ML may run the model (stored in the package metadata; used at load)",
    )
    deployment_target: DeploymentTarget = Field(default="iOS17", description="minimum OS the package needs")
    quantize: Quantize = Field(
        default="none",
        description="w8: INT8 weights; w8a8: INT8 weights and activations (calibrated in PyTorch); "
        "palettizeN: N-bit lookup-table weights",
    )
    palettize_granularity: Literal["per_tensor", "per_grouped_channel"] = "per_tensor"
    palettize_group_size: int = Field(
        default=16, ge=1, description="channels per palette (per_grouped_channel)"
    )
    palettize_mode: Literal["kmeans", "uniform"] = Field(
        default="kmeans", description="how palette values are chosen"
    )
    weight_threshold: int = Field(
        default=512, ge=0, description="weights with fewer elements stay in float (compression would not pay)"
    )
    shapes: Literal["auto", "range", "enumerated", "static"] = Field(
        default="range",
        description="dynamic axes as ranges (min..max), an enumerated set, or fixed at opt; auto: enumerated "
        "where the deployment target allows it (one flexible input, or iOS18+), else range",
    )
    enumerated_sizes: dict[str, list[int]] = Field(
        default_factory=dict,
        description="sizes per dynamic axis for shapes=enumerated (default: min, opt, max)",
    )
    image_input: bool = Field(
        default=False,
        description="image tasks: take a Core ML image (CVPixelBuffer) with scale/bias pre-processing",
    )
    calibration_samples: int = Field(default=64, ge=1, description="samples of the recipe's data for w8a8")
    frontend: Literal["auto", "trace", "export"] = Field(
        default="auto",
        description="PyTorch capture: torch.jit.trace (coremltools' mature path), torch.export (beta), "
        "or auto (trace, then export if trace fails)",
    )
    shapes_fallback: Literal["static", "error"] = Field(
        default="static",
        description="when coremltools cannot convert the flexible shapes (e.g. a resize to a size taken from the "
        "input), fix them at opt and say so in the manifest, or fail",
    )
    author: str = "kdtool"
    license: str = ""
    version: str = Field(default="", description="model version string (default: the kdtool version)")
    short_description: str = ""

    @property
    def spec_level(self) -> int:
        return SPEC_LEVEL[self.deployment_target]

    def shapes_for(self, graph: GraphSpec) -> str:
        """``shapes`` for one graph, with ``auto`` resolved."""
        if self.shapes != "auto":
            return self.shapes
        flexible = sum(1 for t in graph.inputs if t.dynamic_axes())
        return "enumerated" if flexible <= 1 or self.spec_level >= 9 else "range"

    @property
    def effective_quantize(self) -> str:
        """``quantize`` after ``--precision int8`` is applied (int8 alone means w8)."""
        if self.precision == "int8" and self.quantize == "none":
            return "w8"
        return self.quantize

    @property
    def compute_precision(self) -> str:
        """The ML program's compute precision: fp32 only when asked for."""
        return "fp32" if self.precision == "fp32" else "fp16"


def _needs(what: str, level: int, options: CoreMLOptions, fix: str) -> None:
    if options.spec_level < level:
        raise ExportError(
            f"{what} needs deployment_target {_LEVEL_NAMES[level]} or later, but deployment_target is "
            f"{options.deployment_target}",
            hint=f"raise it (--opt deployment_target={_LEVEL_NAMES[level].split(' / ')[0]}) or {fix}",
        )


def check_compatibility(options: CoreMLOptions, spec: ExportSpec | None = None) -> None:
    """Raise a clear ExportError when two choices cannot go together (before converting)."""
    quantize = options.effective_quantize
    if options.precision == "int8" and quantize.startswith("palettize"):
        raise ExportError(
            f"--precision int8 means linear INT8 weights, but quantize={options.quantize} asks for palettization",
            hint="use --precision fp16 with --opt quantize=palettizeN, or --precision int8 with quantize=w8 or w8a8",
        )
    if options.precision not in ("fp32", "fp16", "int8"):
        raise ExportError(f"Core ML supports precision fp32, fp16 or int8, not {options.precision!r}")
    if quantize.startswith("palettize") and options.palettize_granularity == "per_grouped_channel":
        _needs(
            f"quantize={quantize} with palettize_granularity=per_grouped_channel",
            9,
            options,
            "use --opt palettize_granularity=per_tensor",
        )
    if quantize == "w8a8":
        _needs("quantize=w8a8 (INT8 activations)", 8, options, "use --opt quantize=w8 (weights only)")
    elif quantize != "none":
        _needs(f"quantize={quantize} (compressed weights)", 7, options, "use --opt quantize=none")
    if options.compute_units == "CPU_AND_NE":
        _needs("compute_units=CPU_AND_NE", 7, options, "use --opt compute_units=ALL")
    if spec is None:
        return
    for graph in spec.graphs:
        dynamic_inputs = [t.name for t in graph.inputs if t.dynamic_axes()]
        if options.shapes == "enumerated" and len(dynamic_inputs) > 1:
            _needs(
                f"shapes=enumerated on graph {graph.name!r} with several flexible inputs ({', '.join(dynamic_inputs)})",
                9,
                options,
                "use --opt shapes=range",
            )
        for t in [*graph.inputs, *graph.outputs]:
            if t.dtype == "bool":
                raise ExportError(
                    f"graph {graph.name!r}: {t.name!r} is a bool tensor; Core ML inputs and outputs are float or int32",
                    hint="make the task's export wrapper return an int or float tensor",
                )
    unknown = sorted(set(options.enumerated_sizes) - {a for g in spec.graphs for a in g.dynamic_axes})
    if unknown:
        axes = sorted({a for g in spec.graphs for a in g.dynamic_axes})
        raise ExportError(
            f"enumerated_sizes names axes {unknown} that no graph has; dynamic axes: {', '.join(axes) or 'none'}"
        )
    for graph in spec.graphs:
        for axis, sizes in options.enumerated_sizes.items():
            if axis in graph.dynamic_axes:
                a = graph.dynamic_axes[axis]
                bad = [s for s in sizes if not a.min <= s <= a.max]
                if bad or not sizes:
                    raise ExportError(
                        f"enumerated_sizes[{axis!r}] = {sizes}: sizes must lie in the axis range {a.min}..{a.max}"
                    )
