"""``ExportSpec``: how a task describes a trained model to an exporter (versioned contract).

A spec has one or more graphs (a classifier has one; an RNN-T has encoder, decoder and joiner).
Each graph names its inputs and outputs, marks every dynamic axis with min/opt/max sizes
(TensorRT optimisation profiles and Core ML ranges need all three), can produce calibration
inputs for quantization, and the spec carries the metadata a deployer needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn

EXPORT_SPEC_VERSION = 1
# 2: typed pre/post-processing (``normalization`` is inside | outside | none, not prose).
METADATA_SCHEMA_VERSION = 2

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


# --------------------------------------------------------------------------- pre/post-processing


def _where(text: Any) -> Any:
    """Schema 1 wrote where the normalisation happens as prose ("inside the graph: ..."); as
    Core ML read it then, anything that does not say inside means outside."""
    if isinstance(text, str) and text not in ("inside", "outside", "none"):
        low = text.lower()
        return "inside" if "inside" in low and "outside" not in low else "outside"
    return text


class Processing(BaseModel):
    """Base of the typed pre- and post-processing models. Fields a task adds besides the typed
    ones (notes, task settings) are kept as given. Reads like a dict too (``pre["mean"]``,
    ``pre.get("kind")``), so code written for schema 1's plain dicts keeps working."""

    model_config = ConfigDict(extra="allow")
    kind: str = ""

    def __getitem__(self, key: str) -> Any:
        if key in self.keys():
            return getattr(self, key)
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.keys() else default

    def keys(self) -> list[str]:
        """``kind`` and the fields the task gave, as the plain dict of schema 1 had them."""
        given = [k for k in type(self).model_fields if k in self.model_fields_set and k != "kind"]
        return ["kind", *given, *(self.model_extra or {})]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_dict(self) -> dict[str, Any]:
        """The fields the task gave (typed defaults are not written, so a reader of the plain
        JSON sees the keys it saw in schema 1), ``kind`` first."""
        data = self.model_dump(mode="json", exclude_unset=True)
        if not self.kind and not data:
            return {}
        return {"kind": self.kind, **{k: v for k, v in data.items() if k != "kind"}}


class ImagePreprocessing(Processing):
    """An image input: ``x = pixels * scale`` (layout ``NCHW``); with ``normalization:
    outside`` the app then applies ``(x - mean) / std`` per channel, with ``inside`` the graph
    does (the app feeds ``x``); ``none``: no mean/std step."""

    kind: Literal["image"] = "image"
    size: list[int] | None = None  # [height, width] the graph takes (or its preferred size)
    channels: Literal["RGB", "BGR", "L", "gray"] = "RGB"
    layout: str = "NCHW"
    scale: float = 1 / 255
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    normalization: Literal["inside", "outside", "none"] = "outside"

    @field_validator("normalization", mode="before")
    @classmethod
    def _schema1_prose(cls, value: Any) -> Any:
        return _where(value)


class TextLineImagePreprocessing(Processing):
    """A line of text as a grey image of fixed ``height``, padded to ``pad_width_to_multiple``."""

    kind: Literal["text_line_image"] = "text_line_image"
    height: int | None = None
    channels: str = "gray"
    max_width: int | None = None
    invert: Any = None
    pad_width_to_multiple: int = 1
    pad_value: float = 0.0


class AudioPreprocessing(Processing):
    """Audio resampled to ``sample_rate``, turned into ``features`` (the task's front-end
    settings, e.g. ``{"kind": "fbank", "num_mel_bins": 80}``)."""

    kind: Literal["audio"] = "audio"
    sample_rate: int = 16000
    features: dict[str, Any] = {}
    normalization: Literal["inside", "outside", "none"] = "none"
    max_frames: int | None = None

    @field_validator("normalization", mode="before")
    @classmethod
    def _schema1_prose(cls, value: Any) -> Any:
        return _where(value)


class ClassPostprocessing(Processing):
    """Class scores to a class: ``argmax`` (over ``axis``) or ``softmax_argmax``; ``labels``:
    the graph already outputs class indices."""

    kind: Literal["argmax", "softmax_argmax", "labels"] = "argmax"
    axis: int | None = None


class CTCDecoding(Processing):
    """CTC decoding of per-frame (log-)posteriors: greedy, or beam search (``beam_width``)."""

    kind: Literal["ctc_greedy", "ctc_beam"] = "ctc_greedy"
    blank: int = 0
    frame_stride: int = 1
    beam_width: int = 1
    lm_order: int = 0


class TransducerDecoding(Processing):
    """Greedy RNN-T decoding over encoder, decoder (``context_size``) and joiner graphs."""

    kind: Literal["transducer_greedy"] = "transducer_greedy"
    blank: int = 0
    context_size: int = 2
    max_symbols_per_frame: int = 3
    subsampling: int = 1


class LandmarksPostprocessing(Processing):
    """Points as (N, ``num_points``, 2) coordinates."""

    kind: Literal["landmarks"] = "landmarks"
    num_points: int = 0


PREPROCESSING_KINDS: dict[str, type[Processing]] = {
    "image": ImagePreprocessing,
    "text_line_image": TextLineImagePreprocessing,
    "audio": AudioPreprocessing,
}
POSTPROCESSING_KINDS: dict[str, type[Processing]] = {
    "argmax": ClassPostprocessing,
    "softmax_argmax": ClassPostprocessing,
    "labels": ClassPostprocessing,
    "ctc_greedy": CTCDecoding,
    "ctc_beam": CTCDecoding,
    "transducer_greedy": TransducerDecoding,
    "landmarks": LandmarksPostprocessing,
}


def parse_processing(value: Any, kinds: dict[str, type[Processing]]) -> Processing:
    """A typed model from a model or a plain dict (schema 1, or a plugin's own kind)."""
    if isinstance(value, Processing):
        return value
    data = dict(value or {})
    model = kinds.get(str(data.get("kind", "")), Processing)
    return model.model_validate(data)


@dataclass
class DeployMetadata:
    """What an app needs besides the graph: labels, typed pre- and post-processing (versioned).

    ``preprocessing`` / ``postprocessing`` take a typed model (:class:`ImagePreprocessing`,
    :class:`AudioPreprocessing`, :class:`CTCDecoding`, ...) or a plain dict, which is parsed by
    its ``kind`` (an unknown kind stays a :class:`Processing` with its fields as given).
    """

    task: str
    labels: list[str] | None = None
    vocabulary: list[str] | None = None
    preprocessing: Processing | dict[str, Any] = field(default_factory=dict)
    postprocessing: Processing | dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = METADATA_SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.preprocessing = parse_processing(self.preprocessing, PREPROCESSING_KINDS)
        self.postprocessing = parse_processing(self.postprocessing, POSTPROCESSING_KINDS)

    @property
    def pre(self) -> Processing:
        assert isinstance(self.preprocessing, Processing)
        return self.preprocessing

    @property
    def post(self) -> Processing:
        assert isinstance(self.postprocessing, Processing)
        return self.postprocessing

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "labels": None if self.labels is None else list(self.labels),
            "vocabulary": None if self.vocabulary is None else list(self.vocabulary),
            "preprocessing": self.pre.to_dict(),
            "postprocessing": self.post.to_dict(),
            "extra": dict(self.extra),
            "schema_version": METADATA_SCHEMA_VERSION,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployMetadata:
        """Read a manifest's ``metadata`` (schema 1's plain dicts with prose, or schema 2)."""
        return cls(
            task=str(data.get("task", "")),
            labels=data.get("labels"),
            vocabulary=data.get("vocabulary"),
            preprocessing=data.get("preprocessing") or {},
            postprocessing=data.get("postprocessing") or {},
            extra=dict(data.get("extra") or {}),
        )


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
