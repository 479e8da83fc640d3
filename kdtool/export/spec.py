"""``ExportSpec``: how a task describes a trained model to an exporter (versioned contract).

A spec has one or more graphs (a classifier has one; an RNN-T has encoder, decoder and joiner).
Each graph names its inputs and outputs, marks every dynamic axis with min/opt/max sizes
(TensorRT optimisation profiles and Core ML ranges need all three), can produce calibration
inputs for quantization, and the spec carries the metadata a deployer needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

EXPORT_SPEC_VERSION = 1
METADATA_SCHEMA_VERSION = 1

TensorRole = Literal["data", "state_in", "state_out", "output"]
_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class DynamicAxis:
    """Sizes a dynamic axis takes: kernels are tuned for ``opt``; ``min``/``max`` bound it."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise ValueError(f"dynamic axis needs 1 <= min <= opt <= max, got {self}")

    def second_size(self) -> int:
        """A size other than ``opt`` inside the range, to check the axis really is dynamic."""
        if self.max > self.opt:
            return min(self.max, max(self.opt + 1, (self.opt + self.max) // 2))
        return self.min if self.min < self.opt else self.opt


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``shape`` holds ints, or axis names (str) for dynamic axes."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    role: TensorRole = "data"
    description: str = ""
    # For integer inputs (token ids), the exclusive upper bound of valid values.
    value_range: tuple[float, float] | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.dtype]

    def dynamic_axes(self) -> dict[int, str]:
        return {i: s for i, s in enumerate(self.shape) if isinstance(s, str)}

    def concrete_shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(sizes[s] if isinstance(s, str) else s for s in self.shape)


@dataclass
class QuantizationHints:
    """What a task knows about quantizing its graph; exporters may follow or override these."""

    # "static" suits CNNs (QDQ with calibration); "dynamic" suits RNNs and transformers.
    preferred: Literal["static", "dynamic"] = "static"
    # ONNX op types or node-name substrings to keep in float (e.g. a final regression layer).
    exclude_op_types: list[str] = field(default_factory=list)
    exclude_nodes: list[str] = field(default_factory=list)


@dataclass
class GraphSpec:
    """One exportable graph: a module with example inputs and named, typed interfaces."""

    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_axes: dict[str, DynamicAxis] = field(default_factory=dict)
    quantization: QuantizationHints = field(default_factory=QuantizationHints)
    # calibration_inputs(n) yields up to n input tuples drawn from the recipe's own data
    # (a joiner's calibration inputs are encoder outputs, not raw data).
    calibration_inputs: Callable[[int], Iterable[tuple[torch.Tensor, ...]]] | None = None

    def __post_init__(self) -> None:
        for t in [*self.inputs, *self.outputs]:
            for axis in t.dynamic_axes().values():
                if axis not in self.dynamic_axes:
                    raise ValueError(
                        f"graph {self.name!r}: tensor {t.name!r} uses dynamic axis {axis!r} "
                        f"but dynamic_axes has no min/opt/max for it"
                    )

    def sizes(self, which: Literal["min", "opt", "max"] = "opt") -> dict[str, int]:
        return {k: getattr(v, which) for k, v in self.dynamic_axes.items()}

    def make_inputs(
        self, sizes: dict[str, int] | None = None, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Random inputs at the given axis sizes (``opt`` where unspecified)."""
        resolved = {**self.sizes("opt"), **(sizes or {})}
        tensors = []
        for spec in self.inputs:
            shape = spec.concrete_shape(resolved)
            if spec.torch_dtype.is_floating_point:
                tensors.append(torch.randn(shape, generator=generator).to(spec.torch_dtype))
            else:
                lo, hi = spec.value_range or (0, 2)
                tensors.append(
                    torch.randint(int(lo), int(hi), shape, generator=generator).to(spec.torch_dtype)
                )
        return tuple(tensors)

    def test_sizes(self) -> list[dict[str, int]]:
        """Shapes a verifier should check: ``opt`` for all axes, then each axis at a second size."""
        base = self.sizes("opt")
        out = [base]
        for name, axis in self.dynamic_axes.items():
            other = axis.second_size()
            if other != axis.opt:
                out.append({**base, name: other})
        return out


@dataclass
class DeployMetadata:
    """What an app needs besides the graph: labels, pre- and post-processing (versioned)."""

    task: str
    labels: list[str] | None = None
    vocabulary: list[str] | None = None
    # e.g. {"kind": "image", "size": [H, W], "mean": [...], "std": [...], "channels": "RGB"}
    #      {"kind": "audio", "sample_rate": 16000, "features": {...}}
    preprocessing: dict[str, Any] = field(default_factory=dict)
    # e.g. {"kind": "argmax"}, {"kind": "ctc_greedy", "blank": 0}, {"kind": "transducer_greedy"}
    postprocessing: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = METADATA_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportSpec:
    """A task's description of one trained model for export."""

    task: str
    model_name: str
    graphs: list[GraphSpec]
    metadata: DeployMetadata
    version: int = EXPORT_SPEC_VERSION

    def __post_init__(self) -> None:
        names = [g.name for g in self.graphs]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"export spec needs one or more uniquely named graphs, got {names}")

    def graph(self, name: str) -> GraphSpec:
        for g in self.graphs:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def graph_names(self) -> list[str]:
        return [g.name for g in self.graphs]


def as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, Sequence):
        return tuple(outputs)
    raise TypeError(f"graph outputs must be a tensor or a tuple of tensors, got {type(outputs).__name__}")


def take(items: Iterable[Any], n: int) -> list[Any]:
    """The first ``n`` items of an iterable (e.g. a graph's ``calibration_inputs(n)``), without
    drawing the item after them (a data loader may be slow to produce it)."""
    out: list[Any] = []
    if n <= 0:
        return out
    for item in items:
        out.append(item)
        if len(out) >= n:
            break
    return out
