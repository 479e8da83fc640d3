"""Fake quantization for quantization-aware distillation (QAD), matching the ONNX INT8 scheme.

A stage with ``quantization_aware: int8`` fine-tunes a trained student with INT8 simulated in
the forward pass; the exporter then writes the same quantization as ONNX QuantizeLinear /
DequantizeLinear pairs with the *learned* scales instead of calibrating.

The scheme is the exporter's static QDQ INT8:

- weights of ``Conv1d/2d`` and ``Linear``: per output channel, symmetric, int8 in [-127, 127],
  scale = max |w| / 127 of the current weights (what ONNX Runtime's quantizer computes), with
  the straight-through estimator for the rounding;
- biases: int32 on the grid scale_in x scale_w (what the QDQ quantizer writes);
- activations: per tensor, asymmetric, u8 (x86 default) or s8, on the input of every quantized
  layer and on the output of its conv / (folded BN) / activation chain, so that ONNX Runtime can
  fuse each DQ -> Conv -> Q into an integer kernel. Scales are learned with LSQ+ (learnable
  scale; ``torch._fake_quantize_learnable_per_tensor_affine``), initialised from min/max
  calibration on the task's own calibration inputs; zero points stay at their calibrated value.
- layers the task keeps in float for export (``QuantizationHints.exclude_nodes``, e.g. a
  landmark regression head) and the stage's ``exclude`` names stay float here too.

Why our own modules and not ``torch.ao.quantization``'s QAT flow: that flow swaps modules by
type with its own fusion patterns, and its ONNX export path goes through quantized (QOperator)
kernels; here the fake-quant points are found by tracing the real forward once (which tensor
feeds which layer), batch norms are folded into their convs before fine-tuning (frozen
statistics, as late-stage QAT does), and export writes plain QDQ that ONNX Runtime fuses.

The decisions (which BN folds into which conv, where each fake quantizer sits) are stored as a
plan in the stage's model config, so a run's model is rebuilt identically for export and eval.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from kdtool.errors import RecipeError
from kdtool.export.spec import take

WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Sigmoid)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)

# While set, fake quantizers emit quantized_decomposed ops (ONNX QuantizeLinear/DequantizeLinear).
_EXPORT_QDQ = False


def act_range(activations: str) -> tuple[int, int, torch.dtype]:
    return (0, 255, torch.uint8) if activations == "u8" else (-128, 127, torch.int8)


class ActQuant(nn.Module):
    """Per-tensor asymmetric fake quantizer with a learnable scale (LSQ+)."""

    # buffers (registered in __init__; declared here for type checkers)
    zero_point: torch.Tensor
    observed: torch.Tensor

    def __init__(self, activations: str = "u8") -> None:
        super().__init__()
        self.activations = activations
        self.qmin, self.qmax, self.qdtype = act_range(activations)
        self.scale = nn.Parameter(torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([float(self.qmin)]))
        self.register_buffer("observed", torch.tensor([float("inf"), float("-inf")]))
        self.observing = False
        self.frozen: tuple[float, int] | None = None  # python numbers while exporting
        # After ReLU / ReLU6 (set by QuantAfter): the range starts at 0 and, for ReLU6, ends at 6
        # at most, so that ONNX Runtime folds the Relu/Clip into the quantization and fuses the
        # conv before it into an integer kernel (a wider learned range would keep it float).
        self.nonnegative = False
        self.max_scale: float | None = None

    def set_range(self, lo: float, hi: float) -> None:
        """Scale and zero point from a real range (which always includes 0), as ORT's quantizer."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if self.nonnegative:
            lo = 0.0
        scale = (hi - lo) / (self.qmax - self.qmin) if hi > lo else 1.0
        if self.max_scale is not None:
            scale = min(scale, self.max_scale)
        zp = round(self.qmin - lo / scale)
        with torch.no_grad():
            self.scale.fill_(scale)
            self.zero_point.fill_(float(min(max(zp, self.qmin), self.qmax)))

    def qparams(self) -> tuple[float, int]:
        scale = self.scale.detach().abs().clamp(min=1e-8, max=self.max_scale)
        return float(scale), int(self.zero_point.item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            with torch.no_grad():
                self.observed[0] = torch.minimum(self.observed[0], x.detach().min().float())
                self.observed[1] = torch.maximum(self.observed[1], x.detach().max().float())
            return x
        if _EXPORT_QDQ:
            scale, zp = self.frozen or self.qparams()
            q = torch.ops.quantized_decomposed.quantize_per_tensor(
                x, scale, zp, self.qmin, self.qmax, self.qdtype
            )
            return torch.ops.quantized_decomposed.dequantize_per_tensor(
                q, scale, zp, self.qmin, self.qmax, self.qdtype
            )
        if not self.training:
            scale, zp = self.qparams()
            return torch.fake_quantize_per_tensor_affine(x, scale, zp, self.qmin, self.qmax)
        learned_scale = self.scale.abs().clamp(min=1e-8, max=self.max_scale)
        # LSQ gradient scaling (1/sqrt(numel * qmax)) keeps the scale's step size comparable to weights'.
        grad_factor = 1.0 / float((x.numel() * self.qmax) ** 0.5) if self.qmax > 0 else 1.0
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, learned_scale, self.zero_point, self.qmin, self.qmax, grad_factor
        )


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric scales: max |w| / 127 (ONNX Runtime's per-channel rule)."""
    absmax = weight.detach().abs().flatten(1).amax(dim=1)
    return torch.where(absmax > 0, absmax / WEIGHT_QMAX, torch.ones_like(absmax))


def _fake_weight(weight: torch.Tensor) -> torch.Tensor:
    scales = weight_scales(weight)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    q = torch.clamp(torch.round(weight / scales.view(shape)), WEIGHT_QMIN, WEIGHT_QMAX) * scales.view(shape)
    return weight + (q - weight).detach()


def _fake_bias(bias: torch.Tensor, in_scale: float, w_scales: torch.Tensor) -> torch.Tensor:
    step = (in_scale * w_scales).clamp_min(1e-12)
    q = torch.clamp(torch.round(bias / step), INT32_MIN, INT32_MAX) * step
    return bias + (q - bias).detach()


class QuantLayer(nn.Module):
    """A Conv1d/Conv2d/Linear with fake-quantized input, weight and bias, and an optional
    fake-quantized output. Parameter names (``weight``, ``bias``) are the layer's own."""

    layer: nn.Conv1d | nn.Conv2d | nn.Linear
    _shared_in: ActQuant | None  # set with object.__setattr__ (not registered as a submodule)

    def __init__(
        self, layer: nn.Module, activations: str, quant_output: bool, shared_input: ActQuant | None = None
    ) -> None:
        super().__init__()
        self.kind = type(layer).__name__
        # only the layer types in _LAYERS are wrapped (see trace_plan / apply_plan)
        self.layer = cast("nn.Conv1d | nn.Conv2d | nn.Linear", layer)
        # None: the input arrives quantized by ``shared_input`` (another module's output quantizer,
        # held without registering it twice)
        self.act_in = ActQuant(activations) if shared_input is None else None
        object.__setattr__(self, "_shared_in", shared_input)
        self.act_out = ActQuant(activations) if quant_output else None
        self.frozen: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None

    @property
    def input_quant(self) -> ActQuant:
        q = self.act_in if self.act_in is not None else self._shared_in
        assert q is not None
        return q

    def freeze(self) -> None:
        """Integer weights (int8), their scales, and the int32 bias, as constants for export."""
        in_scale, _ = self.input_quant.qparams()
        weight = self.layer.weight.detach()
        w_scales = weight_scales(weight)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        q = torch.clamp(torch.round(weight / w_scales.view(shape)), WEIGHT_QMIN, WEIGHT_QMAX).to(torch.int8)
        step = in_scale * w_scales
        bias = self.layer.bias
        bq = None
        if bias is not None:
            bq = torch.clamp(torch.round(bias.detach() / step), INT32_MIN, INT32_MAX).to(torch.int32)
        self.frozen = (q, w_scales, bq, step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_in is not None:
            x = self.act_in(x)
        layer = self.layer
        if self.input_quant.observing:
            y = layer(x)
        else:
            weight = layer.weight
            if _EXPORT_QDQ and self.frozen is not None:
                q, w_scales, bq, step = self.frozen
                zeros = torch.zeros_like(w_scales, dtype=torch.int64)
                w = torch.ops.quantized_decomposed.dequantize_per_channel(
                    q, w_scales, zeros, 0, WEIGHT_QMIN, WEIGHT_QMAX, torch.int8
                )
                bias = None
                if bq is not None:
                    bias = torch.ops.quantized_decomposed.dequantize_per_channel(
                        bq, step, zeros, 0, INT32_MIN, INT32_MAX, torch.int32
                    )
            else:
                w = _fake_weight(weight)
                bias = layer.bias
                if bias is not None:
                    bias = _fake_bias(bias, self.input_quant.qparams()[0], weight_scales(weight))
            y = _apply(layer, x, w, bias)
        if self.act_out is not None:
            y = self.act_out(y)
        return y


def _apply(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, b)
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d))
    return layer._conv_forward(x, w, b)


class QuantAfter(nn.Module):
    """An activation module followed by a fake quantizer (the output of a conv chain)."""

    def __init__(self, module: nn.Module, activations: str) -> None:
        super().__init__()
        self.module = module
        self.act_out = ActQuant(activations)
        bounded = (
            isinstance(module, (nn.ReLU6, nn.Hardtanh)) and float(getattr(module, "min_val", 0.0)) == 0.0
        )
        if isinstance(module, nn.ReLU) or bounded:
            self.act_out.nonnegative = True
        if bounded:
            top = 6.0 if isinstance(module, nn.ReLU6) else float(cast(nn.Hardtanh, module).max_val)
            self.act_out.max_scale = top / (self.act_out.qmax - self.act_out.qmin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_out(self.module(x))


# --------------------------------------------------------------------------- plan


def _matches(name: str, patterns: Iterable[str]) -> bool:
    for p in patterns:
        p = p.strip("/").replace("/", ".")
        if p and (name == p or name.startswith(p + ".") or p in name):
            return True
    return False


def trace_plan(
    model: nn.Module,
    run: Any,
    *,
    activations: str,
    exclude: list[str],
) -> dict[str, Any]:
    """Run ``run()`` (a forward through the export graph) once with hooks and decide where
    fake quantizers go: which BN follows which layer directly (folded), which activation
    module ends a layer's chain (its output quantized there), which layers quantize their
    own output (no activation after them) and which keep float."""
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[str, nn.Module, Any, Any]] = []

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        calls.append((names[module], module, inputs[0] if inputs else None, output))

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (*_LAYERS, *_BNS, *_ACTIVATIONS))
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    producer: dict[int, tuple[str, nn.Module]] = {}
    called_twice = {n for n, *_ in calls if sum(1 for c in calls if c[0] == n) > 1}
    folds: dict[str, str] = {}
    layers: dict[str, dict[str, Any]] = {}
    chain_end: dict[str, str] = {}  # layer name -> name of the module whose output ends its chain
    for name, module, x, y in calls:
        if not isinstance(x, torch.Tensor):
            continue
        src = producer.get(id(x))
        if isinstance(module, _LAYERS):
            if name in called_twice or _matches(name, exclude):
                continue
            layers.setdefault(name, {"kind": type(module).__name__, "input_from": src[0] if src else None})
            chain_end[name] = name
        elif (
            isinstance(module, _BNS)
            and src is not None
            and src[0] in layers
            and chain_end.get(src[0]) == src[0]
        ):
            if name not in called_twice and isinstance(src[1], (nn.Conv1d, nn.Conv2d)):
                folds[name] = src[0]
                chain_end[src[0]] = name
        elif isinstance(module, _ACTIVATIONS) and src is not None and name not in called_twice:
            owner = next((k for k, v in chain_end.items() if v == src[0]), None)
            if owner is not None:
                chain_end[owner] = name
        if isinstance(y, torch.Tensor):
            producer[id(y)] = (name, module)
    activations_after: list[str] = []
    for layer, end in chain_end.items():
        if end == layer or end in folds:
            # no activation module after it: a conv quantizes its own output; a Linear's
            # output stays float (typically a head feeding a loss or the graph output)
            layers[layer]["quant_output"] = layers[layer]["kind"] != "Linear"
        else:
            layers[layer]["quant_output"] = False
            activations_after.append(end)
    # A layer whose input is exactly another quantized output reuses that quantizer (one Q/DQ
    # pair per tensor, as ONNX Runtime's quantizer writes it) instead of requantizing.
    owner_of_bn = {bn: conv for bn, conv in folds.items()}
    quantized_by = {n: n for n, info in layers.items() if info.get("quant_output")}
    quantized_by.update({a: a for a in activations_after})
    for info in layers.values():
        src_name = info.pop("input_from", None)
        src_name = owner_of_bn.get(src_name, src_name)
        if src_name in quantized_by:
            info["shared_input"] = src_name
    return {
        "precision": "int8",
        "activations": activations,
        "weights": "per-channel symmetric int8 [-127, 127], scale max|w|/127",
        "folded_batchnorms": folds,
        "layers": layers,
        "quantized_activations": sorted(set(activations_after)),
        "excluded": sorted(exclude),
    }


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def fold_batchnorms(model: nn.Module, folds: dict[str, str]) -> None:
    """Fold each listed BN into the conv before it (eval statistics) and replace it by Identity."""
    for bn_name, conv_name in folds.items():
        bn = model.get_submodule(bn_name)
        conv = model.get_submodule(conv_name)
        assert isinstance(bn, _BNS) and isinstance(conv, (nn.Conv1d, nn.Conv2d))
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval())
        _set(model, conv_name, fused)
        _set(model, bn_name, nn.Identity())


def apply_plan(model: nn.Module, plan: dict[str, Any], *, fold: bool = True) -> nn.Module:
    """Turn a float model into its fake-quantized form following ``plan`` (in place).

    With ``fold=False`` the BNs are replaced by Identity and their convs given a bias without
    folding (the weights about to be loaded are already folded)."""
    acts = plan["activations"]
    if fold:
        fold_batchnorms(model, plan["folded_batchnorms"])
    else:
        for bn_name, conv_name in plan["folded_batchnorms"].items():
            conv = model.get_submodule(conv_name)
            if conv.bias is None:
                conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
            _set(model, bn_name, nn.Identity())
    for name, info in plan["layers"].items():
        if not info.get("shared_input"):
            _set(model, name, QuantLayer(model.get_submodule(name), acts, bool(info.get("quant_output"))))
    for name in plan["quantized_activations"]:
        _set(model, name, QuantAfter(model.get_submodule(name), acts))
    # then the layers that reuse an output quantizer placed above (in forward order)
    for name, info in plan["layers"].items():
        source = info.get("shared_input")
        if source:
            producer = model.get_submodule(source)
            shared = producer.act_out if isinstance(producer, (QuantLayer, QuantAfter)) else None
            if shared is None:  # the producer has no output quantizer after all: quantize here
                _set(model, name, QuantLayer(model.get_submodule(name), acts, bool(info.get("quant_output"))))
                continue
            _set(
                model,
                name,
                QuantLayer(model.get_submodule(name), acts, bool(info.get("quant_output")), shared),
            )
    model.kdtool_quantization_aware = plan  # type: ignore[assignment]
    return model


def quantizers(model: nn.Module) -> Iterator[ActQuant]:
    for m in model.modules():
        if isinstance(m, ActQuant):
            yield m


def find_plan(model: nn.Module) -> dict[str, Any] | None:
    """The plan of the fake-quantized model inside ``model`` (an export wrapper holds it)."""
    for m in model.modules():
        plan = getattr(m, "kdtool_quantization_aware", None)
        if isinstance(plan, dict):
            return plan
    return None


def is_quantization_aware(model: nn.Module) -> bool:
    return any(True for _ in quantizers(model))


def calibrate(model: nn.Module, run_batches: Iterable[Any]) -> int:
    """Min/max ranges of every activation quantizer over the calibration forwards."""
    qs = list(quantizers(model))
    for q in qs:
        q.observing = True
        q.observed.copy_(torch.tensor([float("inf"), float("-inf")]))
    count = 0
    try:
        with torch.no_grad():
            for run in run_batches:
                run()
                count += 1
    finally:
        for q in qs:
            q.observing = False
    for q in qs:
        lo, hi = float(q.observed[0]), float(q.observed[1])
        if lo <= hi:
            q.set_range(lo, hi)
    return count


@contextlib.contextmanager
def export_qdq(model: nn.Module) -> Iterator[None]:
    """Within: ``model``'s fake quantizers emit quantize/dequantize ops with their current
    (learned) parameters frozen to constants (exported as ONNX QuantizeLinear/DequantizeLinear)."""
    global _EXPORT_QDQ
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops)

    previous = _EXPORT_QDQ
    for m in model.modules():
        if isinstance(m, ActQuant):
            m.frozen = m.qparams()
        elif isinstance(m, QuantLayer):
            m.freeze()
    _EXPORT_QDQ = True
    try:
        yield
    finally:
        _EXPORT_QDQ = previous
        for m in model.modules():
            if isinstance(m, (ActQuant, QuantLayer)):
                m.frozen = None


def export_counterpart(graph_module: nn.Module, model: nn.Module) -> nn.Module | None:
    """The module inside an export graph that stands for ``model`` when the task exports a
    modified copy of it (e.g. segmentation's stem sliced to RGB): ``model`` itself when the graph
    runs it, else a module of the same class with the same module names, or None."""
    names = {n for n, _ in model.named_modules()}
    for m in graph_module.modules():
        if m is model:
            return m
    for m in graph_module.modules():
        if type(m) is type(model) and {n for n, _ in m.named_modules()} == names:
            return m
    return None


def _copy_quantizer_state(source: nn.Module, target: nn.Module) -> None:
    """Scales and zero points of ``source``'s quantizers into ``target``'s same-named ones."""
    mine = dict(target.named_modules())
    for name, q in source.named_modules():
        if isinstance(q, ActQuant):
            dst = mine.get(name)
            if not isinstance(dst, ActQuant):
                raise RecipeError(
                    f"quantization-aware stage: the export copy has quantizer {name!r}, the model not"
                )
            with torch.no_grad():
                dst.scale.copy_(q.scale)
                dst.zero_point.copy_(q.zero_point)


def prepare_stage_model(
    model: nn.Module,
    task: Any,
    model_name: str,
    *,
    activations: str,
    calibration_samples: int,
    exclude: list[str],
) -> dict[str, Any]:
    """Trace, fold and calibrate ``model`` for a quantization-aware stage; returns the plan.

    The forward used is the task's export graph (``task.export_spec``), fed with its
    calibration inputs, so the fake quantizers sit where the exported graph's Q/DQ will. When
    the export graph runs a modified copy of the model (its :func:`export_counterpart`), the
    plan is traced on the copy (same module names), applied to the model, and the quantizers
    calibrated through a copy rebuilt from the fake-quantized model, so that their ranges are
    those the exported graph sees."""
    was_training = model.training
    model.eval()
    hook = getattr(task, "before_quantization_aware", None)
    if hook is not None:
        hook(model, model_name)
    spec = task.export_spec(model, model_name)
    graphs = [g for g in spec.graphs if g.calibration_inputs is not None]
    if not graphs:
        raise RecipeError(
            f"quantization-aware stage for model {model_name!r}: the task's export graphs have no calibration inputs"
        )
    hints = [n for g in spec.graphs for n in g.quantization.exclude_nodes]
    samples = [
        (i, x)
        for i, g in enumerate(graphs)
        for x in take(g.calibration_inputs(calibration_samples), calibration_samples)
    ]  # type: ignore[misc]
    if not samples:
        raise RecipeError(f"quantization-aware stage for model {model_name!r}: calibration inputs are empty")
    counterparts = [export_counterpart(g.module, model) for g in graphs]
    traced = next((c for c in counterparts if c is not None), None)
    if traced is None:
        raise RecipeError(
            f"quantization-aware stage: model {model_name!r} is not what the task's export graph runs, "
            "nor a copy of it with the same layers, so the fake quantizers cannot be placed where the "
            "export puts Q/DQ",
            hint="use post-training INT8 (kdtool export --target onnx-cpu-int8) for this model",
        )

    def run_all() -> None:  # one forward of each export graph (encoder, decoder, joiner, ...)
        first: dict[int, Any] = {}
        for i, x in samples:
            first.setdefault(i, x)
        for i, x in first.items():
            graphs[i].module(*x)

    plan = trace_plan(traced, run_all, activations=activations, exclude=[*hints, *exclude])
    if not plan["layers"]:
        raise RecipeError(
            f"quantization-aware stage: model {model_name!r} has no Conv/Linear layer to quantize",
            hint="use post-training INT8 (kdtool export --target onnx-cpu-int8) for this model",
        )
    apply_plan(model, plan)
    if traced is model:
        plan["calibration_samples"] = calibrate(
            model, [(lambda i=i, x=x: graphs[i].module(*x)) for i, x in samples]
        )
    else:  # calibrate through the export copy of the fake-quantized model, then take its ranges
        rebuilt = [g for g in task.export_spec(model, model_name).graphs if g.calibration_inputs is not None]
        copy = next(c for c in (export_counterpart(g.module, model) for g in rebuilt) if c is not None)
        plan["calibration_samples"] = calibrate(
            copy, [(lambda i=i, x=x: rebuilt[i].module(*x)) for i, x in samples]
        )
        _copy_quantizer_state(copy, model)
    model.train(was_training)
    return plan
