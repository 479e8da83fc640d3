"""The plugin conformance kit: run it in a plugin's own tests to check it keeps kdtool's contracts.

``check_plugin(name)`` (the plugin loads, declares its plugin API, registers something),
``check_loss(loss)``, ``check_task(task, recipe)``, ``check_exporter(exporter)`` and
``check_target(profile)``. Each returns a :class:`ConformanceReport` listing what it checked,
and raises :class:`ConformanceError` (an ``AssertionError``, so pytest shows it as a failed
test) whose message says, in plain words, which plugin broke which rule and how to fix it.
A check that cannot run on this machine (an exporter that needs a GPU or a missing optional
package) raises :class:`ConformanceSkip`, which pytest reports as a skipped test.

The kit is strict on purpose: everything the engine, the export driver, ``kdtool evaluate``
and ``kdtool predict`` rely on is checked here, on CPU, in seconds.
"""

from __future__ import annotations

import inspect
import json
import math
import tempfile
import traceback
import types
import unittest
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel
from torch import nn

from kdtool.export.spec import DeployMetadata, DynamicAxis, ExportSpec, GraphSpec, TensorSpec, as_tuple
from kdtool.hookspecs import PLUGIN_API_VERSION

__all__ = [
    "ConformanceError",
    "ConformanceReport",
    "ConformanceSkip",
    "check_exporter",
    "check_loss",
    "check_plugin",
    "check_target",
    "check_task",
    "find_recipes",
    "make_reference_run",
    "reference_spec",
]

T = TypeVar("T")

# Axis sizes used for a loss's declared ``input_specs`` when an axis is named, not numbered.
DEFAULT_AXIS_SIZES = {
    "batch": 4,
    "classes": 10,
    "channels": 6,
    "height": 5,
    "width": 5,
    "time": 12,
    "points": 7,
}
OTHER_AXIS_SIZE = 5


class ConformanceError(AssertionError):
    """A plugin broke a contract. ``kind``/``name`` say which object, ``step`` which rule."""

    def __init__(self, kind: str, name: str, step: str, problem: str, fix: str = "") -> None:
        self.kind = kind
        self.name = name
        self.step = step
        self.problem = problem
        self.fix = fix
        text = f"{kind} {name!r} fails the kdtool conformance check [{step}]: {problem}"
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)


class ConformanceSkip(unittest.SkipTest):
    """The check cannot run on this machine (pytest reports a skip, with this reason)."""


@dataclass
class ConformanceReport:
    """What a check verified (``passed``) and what it could not verify here and why (``notes``)."""

    kind: str
    name: str
    passed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.kind} {self.name!r}: {len(self.passed)} checks passed"]
        lines += [f"  ok   {p}" for p in self.passed]
        lines += [f"  note {n}" for n in self.notes]
        return "\n".join(lines)


class _Checker:
    """Shared plumbing: failing with a readable message, and running plugin code under a step."""

    def __init__(self, kind: str, name: str) -> None:
        self.report = ConformanceReport(kind, name)
        self.kind = kind
        self.name = name

    def fail(self, step: str, problem: str, fix: str = "") -> ConformanceError:
        return ConformanceError(self.kind, self.name, step, problem, fix)

    def ok(self, what: str) -> None:
        self.report.passed.append(what)

    def note(self, what: str) -> None:
        self.report.notes.append(what)

    def call(self, step: str, what: str, fn: Callable[..., T], *args: Any, fix: str = "", **kwargs: Any) -> T:
        """Run plugin code; any exception becomes a ConformanceError naming ``what`` and where."""
        try:
            return fn(*args, **kwargs)
        except (ConformanceError, ConformanceSkip):
            raise
        except Exception as exc:
            raise self.fail(step, f"{what} raised {type(exc).__name__}: {exc}{_where(exc)}", fix) from exc

    def require(self, condition: bool, step: str, problem: str, fix: str = "") -> None:
        if not condition:
            raise self.fail(step, problem, fix)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _type_name(value: Any) -> str:
    return type(value).__name__


# =========================================================================== plugins


def check_plugin(name: str, *, manager: Any = None) -> ConformanceReport:
    """The installed plugin ``name`` (its entry-point name) loads, declares a compatible
    ``KDTOOL_PLUGIN_API`` and registers at least one object, with no name conflicts."""
    from kdtool.plugins import get_plugin_manager

    c = _Checker("plugin", name)
    manager = manager or get_plugin_manager()
    manager.registries(strict=False)
    info = manager.infos.get(name)
    if info is None:
        known = ", ".join(sorted(manager.infos)) or "(none)"
        raise c.fail(
            "installed",
            f"no plugin of that name is installed (installed: {known})",
            'declare it in pyproject.toml under [project.entry-points.kdtool] as NAME = "your_module", '
            "then `pip install -e .`",
        )
    c.require(
        info.status == "ok",
        "loads",
        f"kdtool reports it as {info.status}: {info.error}",
        info.hint or "run `kdtool plugins` to see the error; fix the import or registration",
    )
    c.ok("loads without error")
    c.require(
        bool(info.api_version),
        "plugin API",
        "the plugin module does not declare KDTOOL_PLUGIN_API",
        f'add `KDTOOL_PLUGIN_API = "{PLUGIN_API_VERSION}"` to the module the entry point names',
    )
    c.ok(f"declares plugin API {info.api_version} (kdtool has {PLUGIN_API_VERSION})")
    c.require(
        bool(info.hooks),
        "hooks",
        "the module implements no kdtool hook",
        "decorate hook functions with `@kdtool.hookimpl` and name them like the hooks in kdtool/hookspecs.py",
    )
    ours = [conflict for conflict in manager.conflicts if f"'{name}'" in conflict]
    c.require(not ours, "unique names", "; ".join(ours), "rename the object your plugin registers")
    registers = [h for h in info.hooks if h.startswith("register_") and h != "register_commands"]
    if registers:
        c.require(
            bool(info.registered),
            "registrations",
            f"implements {', '.join(registers)} but registered nothing",
            "call register(name, obj) inside the hook",
        )
    c.ok("registered " + ("; ".join(f"{k}: {', '.join(v)}" for k, v in info.registered.items()) or "nothing"))
    return c.report


# =========================================================================== losses


def check_loss(
    loss: type[nn.Module] | str,
    *,
    options: Mapping[str, Any] | None = None,
    inputs: Sequence[torch.Tensor] | Callable[[torch.Generator], Sequence[torch.Tensor]] | None = None,
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
) -> ConformanceReport:
    """A loss builds from its defaults (or ``options``), takes random inputs of its declared
    shape and returns a finite scalar with a gradient that reaches the student's inputs but
    never the teacher's.

    Input shapes come from ``inputs`` (tensors or ``fn(generator)``), else the class attribute
    ``input_specs`` (a tuple of :class:`kdtool.TensorSpec`; named axes take ``sizes`` or
    :data:`DEFAULT_AXIS_SIZES`), else the class method ``example_inputs(generator)``, else, when
    every required ``forward`` argument is named ``*logits``, (batch, classes) float logits.
    Float inputs whose name starts with ``teacher`` are the teacher's: the loss must not
    back-propagate into them (the teacher is frozen). Every other float input is the student's.
    """
    cls, name = _resolve_registered(loss, "losses", "loss")
    c = _Checker("loss", name)
    c.require(
        inspect.isclass(cls) and issubclass(cls, nn.Module),
        "class",
        f"registered object is {cls!r}, not a torch.nn.Module subclass",
        "register the loss class (a subclass of torch.nn.Module), not an instance or a function",
    )
    c.ok("is an nn.Module subclass")
    module = c.call(
        "defaults",
        f"{cls.__name__}(**{dict(options or {})})",
        cls,
        **dict(options or {}),
        fix="give every constructor argument a default (recipes may omit them), or pass options= to check_loss",
    )
    c.ok("builds with " + (f"options {dict(options)}" if options else "its defaults"))
    generator = torch.Generator().manual_seed(seed)
    names, tensors = _loss_inputs(c, cls, module, inputs, sizes, generator)
    c.ok(
        "inputs: "
        + ", ".join(
            f"{n} {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
            for n, t in zip(names, tensors, strict=True)
        )
    )
    teacher = [i for i, n in enumerate(names) if n.startswith("teacher") and tensors[i].is_floating_point()]
    student = [i for i, n in enumerate(names) if i not in teacher and tensors[i].is_floating_point()]
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]
    module.train()
    raw = c.call("forward", f"{cls.__name__}.forward(...)", module, *leaves)
    if isinstance(raw, Mapping) and raw:
        # A multi-term loss may return named scalars; the task spreads them into its terms.
        terms = dict(raw)
    else:
        c.require(
            isinstance(raw, torch.Tensor),
            "return type",
            f"forward returned {_type_name(raw)}, not a torch.Tensor (or a dict of named scalar tensors)",
            "return the loss as a 0-dim tensor; the engine weights, sums and back-propagates it",
        )
        terms = {"loss": raw}
    for key, value in terms.items():
        label = "forward" if key == "loss" and len(terms) == 1 else f"term {key!r}"
        c.require(
            isinstance(value, torch.Tensor),
            "return type",
            f"{label} is {_type_name(value)}, not a torch.Tensor",
            "return tensors, not Python numbers",
        )
        c.require(
            value.dim() == 0,
            "scalar",
            f"{label} returned a tensor of shape {tuple(value.shape)}, not a scalar",
            "reduce it (mean or sum) to a 0-dim tensor",
        )
        c.require(value.is_floating_point(), "scalar", f"{label} has dtype {value.dtype}, not a float", "")
        c.require(
            bool(torch.isfinite(value.detach())),
            "finite",
            f"{label} is {float(value.detach())} on random inputs",
            "guard logs and divisions (clamp_min, log_softmax) so random inputs give a finite value",
        )
        c.require(
            value.requires_grad and value.grad_fn is not None,
            "gradient",
            f"{label}: the returned loss has no gradient (requires_grad is False), so training would not learn from it",
            "compute it with torch operations on the inputs; do not call .item(), .detach(), float() or "
            "torch.tensor(...) on the value you return",
        )
    c.ok(
        "returns a finite scalar with a gradient: "
        + ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items())
    )
    out = sum(terms.values())
    assert isinstance(out, torch.Tensor)
    out.backward()
    grads = {names[i]: leaves[i].grad for i in student}
    params = [p for p in module.parameters() if p.requires_grad]
    reached = [n for n, g in grads.items() if g is not None and bool(g.abs().sum() > 0)]
    param_reached = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)
    c.require(
        bool(reached) or (not student and param_reached),
        "gradient",
        "back-propagating the loss gives no (or an all-zero) gradient to the student's inputs "
        f"({', '.join(names[i] for i in student) or 'none declared'})",
        "the loss must depend differentiably on the student's predictions",
    )
    for n, g in grads.items():
        if g is not None:
            c.require(bool(torch.isfinite(g).all()), "gradient", f"the gradient for {n!r} is not finite", "")
    c.ok(f"gradient reaches the student's inputs ({', '.join(reached) or 'its parameters'})")
    for i in teacher:
        g = leaves[i].grad
        c.require(
            g is None or not bool(g.abs().sum() > 0),
            "frozen teacher",
            f"the loss back-propagates into the teacher's input {names[i]!r}",
            f"use {names[i]}.detach() inside forward: the teacher is frozen and its outputs are constants",
        )
    if teacher:
        c.ok("no gradient flows into the teacher's inputs")
    return c.report


def _loss_inputs(
    c: _Checker,
    cls: type[nn.Module],
    module: nn.Module,
    inputs: Sequence[torch.Tensor] | Callable[[torch.Generator], Sequence[torch.Tensor]] | None,
    sizes: Mapping[str, int] | None,
    generator: torch.Generator,
) -> tuple[list[str], list[torch.Tensor]]:
    positional = [
        p
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    params = [p.name for p in positional]
    required = [p.name for p in positional if p.default is inspect.Parameter.empty]
    specs = getattr(cls, "input_specs", None)
    if inputs is not None:
        tensors = list(inputs(generator) if callable(inputs) else inputs)
    elif specs:
        c.require(
            all(isinstance(s, TensorSpec) for s in specs),
            "input_specs",
            "input_specs must be a tuple of kdtool.TensorSpec",
            'e.g. input_specs = (TensorSpec("student_logits", ("batch", "classes")), ...)',
        )
        resolved = {**DEFAULT_AXIS_SIZES, **dict(sizes or {})}
        for s in specs:
            for axis in s.dynamic_axes().values():
                resolved.setdefault(axis, OTHER_AXIS_SIZE)
        axes = {a: DynamicAxis(1, v, v) for a, v in resolved.items()}
        graph = GraphSpec("loss", module, list(specs), [], dynamic_axes=axes)
        tensors = list(graph.make_inputs(resolved, generator=generator))
        params = [s.name for s in specs]
    elif hasattr(cls, "example_inputs"):
        tensors = list(
            c.call(
                "example_inputs", f"{cls.__name__}.example_inputs(generator)", cls.example_inputs, generator
            )
        )
    elif required and all(p.endswith("logits") for p in required):
        # Logits by convention: (batch, classes) floats.
        shape = (
            int((sizes or {}).get("batch", DEFAULT_AXIS_SIZES["batch"])),
            int((sizes or {}).get("classes", DEFAULT_AXIS_SIZES["classes"])),
        )
        tensors = [torch.randn(shape, generator=generator) for _ in required]
    else:
        raise c.fail(
            "input_specs",
            f"the loss does not declare the shapes of its inputs ({', '.join(params)})",
            "add a class attribute input_specs = (TensorSpec(name, shape, dtype), ...) naming each forward "
            "argument, or pass inputs= to check_loss",
        )
    c.require(
        all(isinstance(t, torch.Tensor) for t in tensors),
        "inputs",
        "example inputs must be torch tensors",
        "",
    )
    names = [params[i] if i < len(params) else f"input{i}" for i in range(len(tensors))]
    return names, tensors


# =========================================================================== targets


def check_target(profile: Any, *, registries: Any = None) -> ConformanceReport:
    """A target profile names an installed exporter, a precision it supports, options its
    options model accepts, and only machine keys kdtool knows; its name is not an exporter's."""
    from kdtool.export.targets import TargetProfile
    from kdtool.plugins import get_registries

    if isinstance(profile, str):
        profile, _ = _resolve_registered(profile, "targets", "target profile", registries=registries)
    name = getattr(profile, "name", repr(profile))
    c = _Checker("target profile", name)
    c.require(
        isinstance(profile, TargetProfile),
        "type",
        f"registered object is {_type_name(profile)}, not a kdtool.export.targets.TargetProfile",
        "register a TargetProfile(name=..., exporter=..., description=...) instance",
    )
    regs = registries or get_registries()
    c.require(
        bool(profile.description.strip()),
        "description",
        "description is empty",
        "say what hardware it is for",
    )
    c.require(
        profile.exporter in regs.exporters,
        "exporter",
        f"names exporter {profile.exporter!r}, which is not installed (exporters: {', '.join(regs.exporters.names())})",
        "depend on the plugin that provides the exporter, or fix the name",
    )
    c.require(
        profile.name not in regs.exporters,
        "name",
        f"the name {profile.name!r} is an exporter's name; exporters and profiles share `--target`",
        f"rename it, e.g. {profile.name}-cpu",
    )
    caps = regs.exporters.get(profile.exporter).capabilities
    c.require(
        profile.precision in caps.precisions,
        "precision",
        f"precision {profile.precision!r} is not one exporter {caps.name!r} supports ({', '.join(caps.precisions)})",
        "",
    )
    c.call(
        "options",
        f"exporter {caps.name!r} options model on {profile.options}",
        caps.options_model.model_validate,
        {**profile.options, "precision": profile.precision},
        fix=f"use only options of {caps.name}: {', '.join(caps.options_model.model_fields)}",
    )
    # Keys kdtool reads (other keys, e.g. "device", are descriptions for people).
    known: dict[str, type] = {"cpu_arch": str, "cuda": bool, "compute_capability": str, "os": str}
    wrong = [
        f"{k}={v!r} (expected {known[k].__name__})"
        for k, v in profile.machine.items()
        if k in known and not isinstance(v, known[k])
    ]
    c.require(
        not wrong,
        "machine",
        f"machine has values of the wrong type: {', '.join(wrong)}",
        'e.g. machine={"cpu_arch": "aarch64", "compute_capability": "8.7"}',
    )
    try:
        json.dumps(profile.machine)
    except TypeError as exc:
        raise c.fail(
            "machine", f"machine is not JSON-serializable ({exc}); the manifest stores it", ""
        ) from None
    here = c.call("machine", "verifiable_here()", profile.verifiable_here)
    c.ok(f"exporter {caps.name!r}, precision {profile.precision}, options valid; verifiable here: {here[0]}")
    return c.report


# =========================================================================== exporters


class _ReferenceNet(nn.Module):
    """A small convolutional classifier: conv, batch norm, ReLU, pooling, linear head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


def reference_spec(seed: int = 0) -> ExportSpec:
    """A self-contained export spec (no run, no data): one graph with a dynamic batch axis."""
    torch.manual_seed(seed)
    module = _ReferenceNet().eval()

    def calibration(n: int) -> Iterator[tuple[torch.Tensor, ...]]:
        g = torch.Generator().manual_seed(seed + 1)
        for _ in range(n):
            yield (torch.rand(1, 1, 8, 8, generator=g),)

    return ExportSpec(
        task="kdtool_conformance",
        model_name="reference",
        graphs=[
            GraphSpec(
                name="model",
                module=module,
                inputs=[TensorSpec("image", ("batch", 1, 8, 8), description="pixels in [0, 1]")],
                outputs=[TensorSpec("logits", ("batch", 3), role="output")],
                dynamic_axes={"batch": DynamicAxis(1, 2, 8)},
                calibration_inputs=calibration,
            )
        ],
        metadata=DeployMetadata(
            task="kdtool_conformance", labels=["a", "b", "c"], postprocessing={"kind": "argmax"}
        ),
    )


_REFERENCE_RUNS: dict[Path, Path] = {}


def make_reference_run(directory: Path) -> Path:
    """A finished one-stage ``image_classification`` run on the bundled digits (a few seconds):
    what ``check_exporter`` exports through the real export driver."""
    from kdtool.engine.trainer import DistillOptions, Engine
    from kdtool.recipe import recipe_from_dict

    directory = Path(directory)
    if directory in _REFERENCE_RUNS and (_REFERENCE_RUNS[directory] / "summary.json").exists():
        return _REFERENCE_RUNS[directory]
    recipe = {
        "name": "conformance",
        "task": {"name": "image_classification"},
        "seed": 0,
        "device": "cpu",
        "runs_dir": str(directory / "runs"),
        "data": {"source": "digits", "image_size": 8, "augment": False},
        "models": {"model": {"arch": "cls_cnn", "options": {"base": 4, "stages": 1}}},
        "stages": [
            {"name": "model", "model": "model", "role": "teacher", "steps": 4, "batch_size": 16,
             "optimizer": {"name": "adamw", "lr": 0.01}},
        ],
        "checkpoint": {"every_steps": 0, "keep_last": 1},
        "logging": {"every_steps": 2, "progress": False},
    }  # fmt: skip
    run = Engine(recipe_from_dict(recipe), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(run, Path)
    _REFERENCE_RUNS[directory] = run
    return run


def _tolerance(caps: Any, precision: str) -> float | None:
    """The parity tolerance of ``kdtool.export.verify.TOLERANCES`` for random inputs (None for
    INT8: random inputs are outside its calibrated range, so only shapes are checked)."""
    from kdtool.export.verify import tolerance_for

    return None if precision == "int8" else tolerance_for(caps.tolerance_key(precision))


def check_exporter(
    exporter: Any,
    *,
    options: Mapping[str, Any] | None = None,
    precision: str | None = None,
    workdir: Path | None = None,
    through_driver: bool = True,
    manager: Any = None,
) -> ConformanceReport:
    """An exporter declares valid capabilities, exports a small reference model to files that
    exist, verifies them (parity that passes, or says what it could not check), and, through
    the real export driver on a tiny digits run, writes a valid ``manifest.json`` and loads back
    as a runner whose outputs match PyTorch at every ``test_sizes`` shape.

    ``exporter``: the class, an instance, or a registered name. ``options``: exporter options
    (``--opt``) for both exports. Needs no GPU: an exporter that cannot build here is skipped.
    """
    from kdtool.export.exporter import Artifact, Capabilities, Exporter, ExporterOptions
    from kdtool.export.verify import draft_manifest, verify_artifact

    cls, name = _resolve_exporter(exporter, manager)
    c = _Checker("exporter", name)
    c.require(
        inspect.isclass(cls) and issubclass(cls, Exporter),
        "class",
        f"registered object is {cls!r}, not a subclass of kdtool.Exporter",
        "subclass kdtool.Exporter and register the class",
    )
    caps: Any = getattr(cls, "capabilities", None)
    c.require(
        isinstance(caps, Capabilities),
        "capabilities",
        f"capabilities is {_type_name(caps)}, not kdtool.export.exporter.Capabilities",
        "set the class attribute capabilities = Capabilities(name=..., suffix=..., precisions=..., ...)",
    )
    c.name = c.report.name = caps.name
    c.require(
        bool(caps.precisions), "capabilities", "capabilities.precisions is empty", 'e.g. precisions=("fp32",)'
    )
    c.require(
        inspect.isclass(caps.options_model) and issubclass(caps.options_model, ExporterOptions),
        "capabilities",
        "capabilities.options_model must be a subclass of kdtool.export.exporter.ExporterOptions",
        "",
    )
    c.require(
        caps.suffix.startswith("."), "capabilities", f"suffix {caps.suffix!r} should start with '.'", ""
    )
    c.call(
        "options defaults",
        f"{caps.options_model.__name__}()",
        caps.options_model,
        fix="give every exporter option a default: a bare `kdtool export --target NAME` uses them",
    )
    missing = caps.missing_requirements()
    if missing:
        raise ConformanceSkip(f"exporter {caps.name!r} needs {missing[0][0]!r} here: {missing[0][1]}")
    if caps.needs_gpu_to_build and not torch.cuda.is_available():
        raise ConformanceSkip(f"exporter {caps.name!r} needs an NVIDIA GPU to build (CUDA is not available)")
    if caps.tasks and "kdtool_conformance" not in caps.tasks:
        raise ConformanceSkip(
            f"exporter {caps.name!r} exports only task(s) {', '.join(caps.tasks)}, not the kit's reference "
            "classifier: its plugin's own tests export and load a model of those tasks"
        )
    c.ok(f"capabilities: {caps.suffix}, precisions {', '.join(caps.precisions)}")
    precision = precision or ("fp32" if "fp32" in caps.precisions else caps.precisions[0])
    c.require(precision in caps.precisions, "precision", f"precision {precision!r} is not declared", "")
    opts = c.call(
        "options",
        f"{caps.options_model.__name__} on {dict(options or {})}",
        caps.options_model.model_validate,
        {**dict(options or {}), "precision": precision},
    )
    instance = cls() if inspect.isclass(exporter) or isinstance(exporter, str) else exporter
    versions = c.call("versions", "versions()", instance.versions)
    c.require(
        isinstance(versions, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items()),
        "versions",
        f"versions() returned {versions!r}, not a dict of str to str",
        "",
    )
    runnable = c.call("can_run_here", "can_run_here(options)", instance.can_run_here, opts)
    c.require(
        isinstance(runnable, tuple) and len(runnable) == 2 and isinstance(runnable[0], bool),
        "can_run_here",
        f"can_run_here returned {runnable!r}, not (bool, reason)",
        "",
    )
    manager = manager or _manager_with(cls, caps.name)
    registries = manager.registries()

    with tempfile.TemporaryDirectory(prefix="kdtool-conformance-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        # ---- 1. the reference spec, called directly: precise messages per contract point.
        spec = reference_spec()
        out_dir = work / f"{caps.name}-direct"
        out_dir.mkdir(parents=True, exist_ok=True)
        ctx = _export_context(registries, spec, precision, out_dir)
        artifact = c.call(
            "export", "export(spec, options, out_dir, ctx)", instance.export, spec, opts, out_dir, ctx
        )
        c.require(
            isinstance(artifact, Artifact),
            "export",
            f"export() returned {_type_name(artifact)}, not a kdtool.export.exporter.Artifact",
            "return Artifact(directory=out_dir, graph_files={graph_name: path, ...})",
        )
        c.require(
            set(artifact.graph_files) == set(spec.graph_names),
            "artifact",
            f"artifact.graph_files has keys {sorted(artifact.graph_files)}, the spec's graphs are {spec.graph_names}",
            "map every graph name of the spec to the file written for it",
        )
        for path in artifact.files():
            path = Path(path)
            c.require(path.exists(), "artifact", f"artifact file {path} does not exist", "")
            c.require(
                out_dir.resolve() in path.resolve().parents,
                "artifact",
                f"artifact file {path} is outside the export folder {out_dir}",
                "write every file under out_dir: the driver moves that folder into place",
            )
            size = (
                path.stat().st_size
                if path.is_file()
                else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            )
            c.require(size > 0, "artifact", f"artifact file {path} is empty", "")
        c.ok("export writes the graph files under the export folder")
        if getattr(type(instance), "verify", None) is not None:
            c.note(
                "verify() is no longer called (plugin API 2.0): the export driver verifies every artifact "
                "through load(); move structural checks to inspect() and tolerances to Capabilities(tolerances=...)"
            )
        result = c.call(
            "verify",
            "the driver's verification (inspect, load or stand_in, parity)",
            verify_artifact,
            instance,
            spec,
            artifact,
            opts,
            draft_manifest(spec, artifact, opts),
            fix="load() returns ArtifactRunner({graph_name: callable}) over CPU tensors, or raises ExportError "
            "saying why the artifact cannot run here",
        )
        failed = [p for p in result.parity if not p.passed]
        c.require(
            not failed,
            "verify",
            "parity failed on the reference model: " + "; ".join(p.message for p in failed),
            "",
        )
        c.ok(f"verify: {len(result.parity)} parity checks passed, {len(result.not_verified)} not verified")
        if through_driver:
            _check_through_driver(c, instance, caps, options, precision, work, registries, manager)
        else:
            c.note("not checked through the export driver (through_driver=False)")
    return c.report


def _export_context(registries: Any, spec: ExportSpec, precision: str, out_dir: Path) -> Any:
    from kdtool.export.driver import resolve_options, resolve_target
    from kdtool.export.exporter import Artifact, ExportContext

    def require_artifact(target: str, extra: dict[str, Any]) -> Artifact:
        profile, dep = resolve_target(target, registries)
        dep_options = resolve_options(dep, profile, {}, extra)
        dep_dir = out_dir / f"from-{profile.name}"
        dep_dir.mkdir(parents=True, exist_ok=True)
        ctx = ExportContext(
            target=profile.name, precision="fp32", require_artifact=require_artifact, log=lambda _m: None
        )
        return dep.export(spec, dep_options, dep_dir, ctx)

    return ExportContext(
        target="conformance", precision=precision, require_artifact=require_artifact, log=lambda _m: None
    )


def _check_through_driver(
    c: _Checker,
    instance: Any,
    caps: Any,
    options: Mapping[str, Any] | None,
    precision: str,
    work: Path,
    registries: Any,
    manager: Any,
) -> None:
    from kdtool.errors import ExportError
    from kdtool.export.driver import ExportRequest, export_model
    from kdtool.export.exporter import ArtifactRunner
    from kdtool.export.verify import check_parity
    from kdtool.run import Run
    from kdtool.task import Predictor

    run = make_reference_run(work / "reference")
    request = ExportRequest(
        run=run,
        target=caps.name,
        precision=precision,
        options=[f"{k}={json.dumps(v)}" for k, v in dict(options or {}).items()],
        out=work / f"{caps.name}-driver",
        eval_limit=32,
    )
    try:
        outcome = export_model(request, manager=manager, echo=lambda _m: None)
    except ExportError as exc:
        raise c.fail(
            "driver", f"`kdtool export --target {caps.name}` failed on a tiny digits run: {exc}"
        ) from exc
    except Exception as exc:
        raise c.fail(
            "driver",
            f"`kdtool export --target {caps.name}` raised {type(exc).__name__}: {exc}{_where(exc)}",
            "raise kdtool.errors.ExportError with a clear message for user-fixable problems",
        ) from exc
    problems = validate_manifest(outcome.directory)
    c.require(not problems, "manifest", "manifest.json is invalid: " + "; ".join(problems), "")
    c.ok("through the export driver: manifest.json valid, files and hashes match")
    runnable, why = instance.can_run_here(
        caps.options_model.model_validate({**dict(options or {}), "precision": precision})
    )
    if not runnable:
        c.note(f"artifact not loaded: it cannot run on this machine ({why})")
        return
    manifest = json.loads((outcome.directory / "manifest.json").read_text())
    runner = c.call("load", "load(directory, manifest)", instance.load, outcome.directory, manifest)
    c.require(
        isinstance(runner, ArtifactRunner | Predictor),
        "load",
        f"load() returned {_type_name(runner)}, not a kdtool.export.exporter.ArtifactRunner",
        "return ArtifactRunner({graph_name: callable}, kind=...): callables take and return CPU tensors",
    )
    c.require(
        set(runner.graphs) == set(manifest["graphs"]),
        "load",
        f"the runner has graphs {sorted(runner.graphs)}, the manifest {sorted(manifest['graphs'])}",
        "",
    )
    spec = Run.open(run, manager=manager).export_spec(manifest["model"])
    tolerance = _tolerance(caps, precision)
    for g in spec.graphs:
        for sizes in g.test_sizes():
            inputs = g.make_inputs(sizes, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                ref = as_tuple(g.module(*inputs))
            got = c.call("run", f"runner.graphs[{g.name!r}] at {sizes}", runner.graphs[g.name], *inputs)
            c.require(
                isinstance(got, tuple) and all(isinstance(t, torch.Tensor) for t in got),
                "run",
                f"the runner returned {_type_name(got)}, not a tuple of torch tensors",
                "wrap outputs as tuple(torch.from_numpy(o) for o in outputs)",
            )
            c.require(
                len(got) == len(g.outputs),
                "run",
                f"the runner returned {len(got)} outputs for graph {g.name!r}, the spec declares {len(g.outputs)}",
                "",
            )
            if tolerance is None:
                continue
            results = check_parity(
                ref, got, tolerance, graph=g.name, sizes=sizes, names=[t.name for t in g.outputs]
            )
            bad = [r for r in results if not r.passed]
            c.require(
                not bad,
                "parity",
                "the loaded artifact differs from PyTorch: "
                + "; ".join(f"{r.output} at {sizes}: rel err {r.max_rel_error:.3g}" for r in bad),
                "",
            )
    c.ok(
        "the loaded artifact runs at every test size" + ("" if tolerance is None else " and matches PyTorch")
    )


def validate_manifest(directory: Path) -> list[str]:
    """Problems with an artifact folder's ``manifest.json`` (empty when it is valid)."""
    from kdtool.export.manifest import MANIFEST_SCHEMA_VERSION
    from kdtool.io import sha256_file

    path = Path(directory) / "manifest.json"
    if not path.is_file():
        return [f"{path} does not exist"]
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{path} is not JSON: {exc}"]
    problems = []
    required: dict[str, type | tuple[type, ...]] = {
        "schema_version": int, "status": str, "format": str, "target": str, "precision": str, "options": dict,
        "task": str, "model": str, "graphs": dict, "metadata": dict, "files": list, "size_bytes": int,
        "versions": dict, "verification": dict, "not_verified": list,
    }  # fmt: skip
    for key, kind in required.items():
        if key not in m:
            problems.append(f"missing {key!r}")
        elif not isinstance(m[key], kind):
            problems.append(f"{key!r} is {_type_name(m[key])}")
    if problems:
        return problems
    if m["schema_version"] != MANIFEST_SCHEMA_VERSION:
        problems.append(f"schema_version {m['schema_version']} != {MANIFEST_SCHEMA_VERSION}")
    if m["status"] not in ("ok", "parity_failed", "metric_failed"):
        problems.append(f"status {m['status']!r}")
    elif m["status"] != "ok":
        problems.append(f"status is {m['status']!r}")
    for name, graph in m["graphs"].items():
        file = Path(directory) / str(graph.get("file", ""))
        if not graph.get("file") or not file.exists():
            problems.append(f"graph {name!r}: file {graph.get('file')!r} does not exist")
        for key in ("inputs", "outputs"):
            if not graph.get(key):
                problems.append(f"graph {name!r} lists no {key}")
    total = 0
    for entry in m["files"]:
        file = Path(directory) / entry["path"]
        if not file.exists():
            problems.append(f"listed file {entry['path']!r} does not exist")
            continue
        total += int(entry["bytes"])
        if entry.get("sha256") and file.is_file() and sha256_file(file) != entry["sha256"]:
            problems.append(f"sha256 of {entry['path']!r} does not match the file")
    if total != m["size_bytes"]:
        problems.append(f"size_bytes {m['size_bytes']} != sum of file sizes {total}")
    return problems


# =========================================================================== tasks


def find_recipes(task_name: str, directory: Path | str = "recipes") -> list[Path]:
    """Recipe files in ``directory`` whose ``task.name`` is ``task_name`` (sorted by name)."""
    import yaml

    found = []
    for path in sorted(Path(directory).glob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if (
            isinstance(data, dict)
            and isinstance(data.get("task"), dict)
            and data["task"].get("name") == task_name
        ):
            found.append(path)
    return found


def check_task(
    task: Any,
    recipe: Path | str | Mapping[str, Any],
    *,
    overrides: Sequence[str] = (),
    batch_size: int = 4,
    eval_limit: int = 8,
    workdir: Path | None = None,
    registries: Any = None,
) -> ConformanceReport:
    """A task, on its recipe (shrunk with ``overrides``, ``--set`` style): options validate,
    datasets give dicts with their position as ``"index"``, models build from the recipe and
    rebuild from their saved config, one batch of ``batch_size`` flows through
    ``training_step`` for every stage with finite, differentiable losses that reach the
    model's parameters, ``evaluate`` returns the primary metric, and every graph of the
    export spec runs its example inputs at every ``test_sizes`` shape with the declared
    outputs. Teachers of later stages are the (one-step) models of earlier stages.
    """
    from kdtool.distill import plan_stage
    from kdtool.engine.context import StepContext
    from kdtool.engine.trainer import build_losses, build_model
    from kdtool.plugins import get_registries
    from kdtool.recipe import LoadedRecipe, ModelConfig, load_recipe, recipe_from_dict, validate_section
    from kdtool.task import Predictor, PrimaryMetric, Task

    regs = registries or get_registries()
    cls, name = _resolve_registered(task, "tasks", "task", registries=regs)
    c = _Checker("task", name)
    c.require(
        inspect.isclass(cls) and issubclass(cls, Task),
        "class",
        f"registered object is {cls!r}, not a subclass of kdtool.Task",
        "subclass kdtool.Task and register the class",
    )
    c.require(
        bool(cls.name), "class", "the class attribute `name` is empty", "set name = the registered task name"
    )
    c.require(
        isinstance(getattr(cls, "primary_metric", None), PrimaryMetric),
        "class",
        "primary_metric is not a kdtool.PrimaryMetric",
        'set primary_metric = PrimaryMetric("accuracy", higher_is_better=True)',
    )
    for attr in ("Options", "DataOptions"):
        model = getattr(cls, attr)
        c.require(
            inspect.isclass(model) and issubclass(model, BaseModel),
            "class",
            f"{attr} is not a pydantic model",
            "subclass kdtool.TaskOptions",
        )
    c.ok(f"class attributes (primary metric {cls.primary_metric.name!r})")

    # ---- recipe
    if isinstance(recipe, Mapping):
        loaded = c.call("recipe", "the recipe", recipe_from_dict, dict(recipe))
        if overrides:
            raise c.fail(
                "recipe", "overrides need a recipe file", "write the recipe to a file or apply them yourself"
            )
    else:
        loaded = c.call("recipe", f"loading recipe {recipe}", load_recipe, recipe, list(overrides))
    assert isinstance(loaded, LoadedRecipe)
    r = loaded.recipe
    c.require(
        r.task.name == name,
        "recipe",
        f"the recipe names task {r.task.name!r}, not {name!r}",
        "pass a recipe written for this task",
    )
    c.require(
        cls.name == name,
        "class",
        f"class attribute name is {cls.name!r} but the task is registered as {name!r}",
        "use the same name: export manifests store spec.task and `kdtool predict` looks it up",
    )
    options = c.call(
        "options",
        "validating task.options with Options",
        validate_section,
        loaded,
        cls.Options,
        ("task", "options"),
        r.task.options,
    )
    data = c.call(
        "options",
        "validating the data section with DataOptions",
        validate_section,
        loaded,
        cls.DataOptions,
        ("data",),
        r.data,
    )

    with tempfile.TemporaryDirectory(prefix="kdtool-conformance-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        run_dir = work / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        instance = c.call(
            "init",
            f"{cls.__name__}(options, data, seed=..., cache_dir=...)",
            cls,
            options,
            data,
            seed=r.seed,
            cache_dir=work / "cache",
        )
        c.call("prepare", "prepare(run_dir)", instance.prepare, run_dir)
        c.ok("options validate; task builds and prepares")

        # ---- data
        datasets = {}
        for split in ("train", "val"):
            ds = c.call("dataset", f"build_dataset({split!r})", instance.build_dataset, split)
            n = c.call(
                "dataset", f"len(build_dataset({split!r}))", len, ds, fix="datasets must have a length"
            )
            c.require(n > 0, "dataset", f"the {split} split is empty", "")
            for i in sorted({0, min(1, n - 1), n - 1}):
                item = c.call("dataset", f"{split} dataset[{i}]", ds.__getitem__, i)
                c.require(
                    isinstance(item, dict),
                    "dataset",
                    f"{split} items are {_type_name(item)}, not dicts",
                    "return a dict per sample",
                )
                c.require(
                    "index" in item and int(item["index"]) == i,
                    "dataset",
                    f'{split} item {i} has index {item.get("index")!r}; items need "index": their position in the split',
                    "the engine caches teacher outputs and resumes by this index",
                )
            datasets[split] = ds
        c.ok(f'datasets: {len(datasets["train"])} train, {len(datasets["val"])} val items with "index"')  # type: ignore[arg-type]

        trained: dict[str, nn.Module] = {}
        stage_models: dict[str, tuple[str, nn.Module]] = {}
        for stage_index, stage in enumerate(r.stages):
            where = f"stage {stage.name!r}"
            cfg = r.models[stage.model]
            built = c.call(
                "model",
                f"{where}: building model {stage.model!r} ({cfg.arch})",
                build_model,
                instance,
                regs,
                stage.model,
                cfg,
            )
            model = built.module
            c.require(
                isinstance(model, nn.Module),
                "model",
                f"architecture {cfg.arch!r} built a {_type_name(model)}, not an nn.Module",
                "",
            )
            try:
                json.dumps(built.config)
            except TypeError as exc:
                raise c.fail(
                    "model",
                    f"{where}: model_options returned options that are not JSON ({exc}); config.json could not store them",
                    "return plain numbers, strings, lists and dicts from model_options",
                ) from None
            rebuilt = c.call(
                "model",
                f"rebuilding {cfg.arch!r} from its saved config",
                regs.models.get(cfg.arch),
                **built.config["options"],
            )
            c.require(
                {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
                == {k: tuple(v.shape) for k, v in model.state_dict().items()},
                "model",
                f"{where}: rebuilding {cfg.arch!r} from config.json options gives other weight shapes",
                "model_options must return every option the data decides (classes, points, vocabulary size)",
            )
            teachers: dict[str, nn.Module] = {}
            for ref in stage.teachers:
                if ref.stage is not None:
                    teacher = trained[ref.stage]
                elif ref.arch is not None:
                    teacher = build_model(
                        instance, regs, ref.name, ModelConfig(arch=ref.arch, options=ref.options)
                    ).module
                    c.note(f"{where}: teacher {ref.name!r} from a checkpoint is checked with random weights")
                else:
                    raise ConformanceSkip(
                        f"{where}: teacher {ref.name!r} comes from another run; use a self-contained recipe"
                    )
                teacher.eval().requires_grad_(False)
                teachers[ref.name] = teacher
            losses = c.call("losses", f"{where}: building its losses", build_losses, stage, regs)
            distill_plan = c.call(
                "losses", f"{where}: pairing its distillation points", plan_stage, stage, instance, regs.losses, losses
            )
            train = datasets["train"]
            if hasattr(train, "set_epoch"):
                c.call("dataset", "set_epoch(0)", train.set_epoch, 0)
            chosen = c.call("train_indices", f"{where}: train_indices", instance.train_indices, stage)
            pool = list(chosen) if chosen is not None else list(range(len(train)))  # type: ignore[arg-type]
            size = max(1, min(batch_size, stage.batch_size, len(pool)))
            items = [c.call("dataset", f"train dataset[{i}]", train.__getitem__, i) for i in pool[:size]]
            batch = c.call("collate", f"collate({size} items)", instance.collate, items)
            c.require(
                isinstance(batch, dict) and "index" in batch,
                "collate",
                'collate must return a dict with "index"',
                "",
            )

            def teacher_fn(
                b: dict[str, Any], _stage: Any = stage, _teachers: dict[str, nn.Module] = teachers
            ) -> dict[str, torch.Tensor]:
                return instance.teacher_outputs(_stage, _teachers, b)

            ctx = StepContext(
                device=torch.device("cpu"), precision="fp32", losses=losses, scaler=None, grad_accum=1,
                teacher_fn=teacher_fn if teachers else None, teacher_cache=None,
            )  # fmt: skip
            ctx.total_steps = 1
            ctx.distill_plan = distill_plan
            ctx.begin_step(seed=r.seed + stage_index, step=0, epoch=0)
            model.train()
            terms = c.call(
                "training_step",
                f"{where}: training_step",
                lambda *a, _ctx=ctx: _ctx.finish_step(instance.training_step(*a)),
                stage,
                {stage.model: model, **teachers},
                batch,
                ctx,
            )
            # A step that back-propagated itself (ctx.backward: e.g. the sandwich rule) may return
            # detached terms for logging; otherwise the engine back-propagates their weighted sum.
            _check_terms(c, where, stage, terms, differentiable=ctx.backward_calls == 0)
            if ctx.backward_calls == 0:
                total = sum(v.float() * stage.loss_weight(k) for k, v in terms.items())
                c.call(
                    "training_step",
                    f"{where}: back-propagating the weighted sum of the losses",
                    total.backward,
                )  # type: ignore[union-attr]
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            with_grad = [n for n, p in params if p.grad is not None and bool(p.grad.abs().sum() > 0)]
            c.require(
                bool(with_grad),
                "gradient",
                f"{where}: after backward, no parameter of model {stage.model!r} has a non-zero gradient",
                "compute the losses from models[stage.model](...) outputs without detaching them",
            )
            bad = [n for n, p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
            c.require(not bad, "gradient", f"{where}: non-finite gradients in {bad[:3]}", "")
            for tname, teacher in teachers.items():
                c.require(
                    all(p.grad is None for p in teacher.parameters()),
                    "frozen teacher",
                    f"{where}: teacher {tname!r} received gradients",
                    "",
                )
            c.ok(
                f"{where}: training_step gives finite losses {sorted(terms)} with gradients to {len(with_grad)}/{len(params)} tensors"
            )
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-1e-3)
                        p.grad = None
            model.eval()
            trained[stage.name] = model
            stage_models[stage.name] = (stage.model, model)

            # ---- evaluate
            predictor = c.call(
                "predictor", f"{where}: predictor(model, ...)", instance.predictor, model, stage.name, "cpu"
            )
            c.require(
                isinstance(predictor, Predictor),
                "predictor",
                f"predictor() returned {_type_name(predictor)}",
                "",
            )
            with torch.random.fork_rng(devices=[]):
                metrics = c.call(
                    "evaluate",
                    f"{where}: evaluate(predictor, 'val', limit={eval_limit})",
                    instance.evaluate,
                    predictor,
                    "val",
                    limit=eval_limit,
                )
            _check_metrics(c, where, cls.primary_metric.name, metrics)
            c.ok(
                f"{where}: evaluate returns {cls.primary_metric.name} = {float(metrics[cls.primary_metric.name]):.4g}"
            )

            # ---- export spec
            spec = c.call(
                "export_spec",
                f"{where}: export_spec(model, {stage.name!r})",
                instance.export_spec,
                model,
                stage.name,
            )
            _check_spec(c, where, name, spec)
    return c.report


def _check_terms(c: _Checker, where: str, stage: Any, terms: Any, *, differentiable: bool) -> None:
    c.require(
        isinstance(terms, Mapping) and len(terms) > 0,
        "training_step",
        f"{where}: training_step returned {_type_name(terms)}{' (empty)' if isinstance(terms, Mapping) else ''}, "
        "not a non-empty dict of named losses",
        'return {"ce": ..., "kd": ...}: unweighted scalar losses; the engine weights and sums them',
    )
    for key, value in terms.items():
        c.require(isinstance(key, str), "training_step", f"{where}: loss name {key!r} is not a string", "")
        c.require(
            isinstance(value, torch.Tensor),
            "training_step",
            f"{where}: loss {key!r} is {_type_name(value)}, not a torch.Tensor",
            "return tensors, not Python floats",
        )
        c.require(
            value.numel() == 1,
            "training_step",
            f"{where}: loss {key!r} has shape {tuple(value.shape)}, not a scalar",
            "reduce each loss to a scalar",
        )
        c.require(
            bool(torch.isfinite(value.detach()).all()),
            "finite",
            f"{where}: loss {key!r} is {float(value.detach().float().mean())} on the first batch",
            "",
        )
        c.require(
            value.requires_grad or not differentiable,
            "gradient",
            f"{where}: loss {key!r} has no gradient (requires_grad is False)",
            "compute it from the trained model's outputs; do not detach it or build it with torch.tensor()",
        )


def _check_metrics(c: _Checker, where: str, primary: str, metrics: Any) -> None:
    c.require(
        isinstance(metrics, Mapping),
        "evaluate",
        f"{where}: evaluate returned {_type_name(metrics)}, not a dict of metric name to number",
        "",
    )
    c.require(
        primary in metrics,
        "evaluate",
        f"{where}: evaluate returned {sorted(metrics)}, without the primary metric {primary!r}",
        "always include the primary metric: the engine keeps the best model by it",
    )
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise c.fail("evaluate", f"{where}: metric {key!r} is {value!r}, not a number", "") from None
        if key == primary:
            c.require(math.isfinite(number), "evaluate", f"{where}: primary metric {key!r} is {number}", "")


def _check_spec(c: _Checker, where: str, task_name: str, spec: Any) -> None:
    c.require(
        isinstance(spec, ExportSpec),
        "export_spec",
        f"{where}: export_spec returned {_type_name(spec)}, not a kdtool.ExportSpec",
        "",
    )
    c.require(
        spec.task == task_name,
        "export_spec",
        f"{where}: spec.task is {spec.task!r}, not the task's registered name {task_name!r}",
        "`kdtool predict` finds the task of an artifact by this name",
    )
    c.require(
        isinstance(spec.metadata, DeployMetadata),
        "export_spec",
        f"{where}: spec.metadata is {_type_name(spec.metadata)}, not DeployMetadata",
        "",
    )
    try:
        json.dumps(spec.metadata.to_dict())
    except TypeError as exc:
        raise c.fail("export_spec", f"{where}: metadata is not JSON-serializable ({exc})", "") from None
    for g in spec.graphs:
        # Output axes that no input has (CTC frames of a text line) follow from the inputs.
        input_axes = {a for t in g.inputs for a in t.dynamic_axes().values()}
        c.require(
            isinstance(g.module, nn.Module),
            "export_spec",
            f"{where}: graph {g.name!r} module is not an nn.Module",
            "",
        )
        g.module.eval()
        for sizes in g.test_sizes():
            inputs = c.call(
                "export_spec", f"{where}: graph {g.name!r} make_inputs({sizes})", g.make_inputs, sizes
            )
            with torch.no_grad():
                raw = c.call(
                    "export inputs",
                    f"{where}: graph {g.name!r} on its example inputs "
                    + ", ".join(f"{t.name} {tuple(x.shape)}" for t, x in zip(g.inputs, inputs, strict=True)),
                    g.module,
                    *inputs,
                    fix="the graph module must take exactly the declared inputs (names, shapes, dtypes) at every "
                    "size between each dynamic axis's min and max",
                )
            try:
                outputs = as_tuple(raw)
            except TypeError as exc:
                raise c.fail("export outputs", f"{where}: graph {g.name!r}: {exc}", "") from None
            c.require(
                len(outputs) == len(g.outputs),
                "export outputs",
                f"{where}: graph {g.name!r} returned {len(outputs)} outputs at {sizes}, the spec declares "
                f"{len(g.outputs)} ({', '.join(t.name for t in g.outputs)})",
                "",
            )
            for t, value in zip(g.outputs, outputs, strict=True):
                c.require(
                    isinstance(value, torch.Tensor),
                    "export outputs",
                    f"{where}: output {t.name!r} is {_type_name(value)}",
                    "",
                )
                c.require(
                    value.dim() == len(t.shape),
                    "export outputs",
                    f"{where}: output {t.name!r} has shape {tuple(value.shape)} at {sizes}, declared {t.shape}",
                    "",
                )
                for axis, (declared, got) in enumerate(zip(t.shape, value.shape, strict=True)):
                    derived = isinstance(declared, str) and declared not in input_axes
                    expected = (
                        None if derived else declared if isinstance(declared, int) else sizes.get(declared)
                    )
                    c.require(
                        expected is None or expected == got,
                        "export outputs",
                        f"{where}: output {t.name!r} axis {axis} is {got} at {sizes}, declared {declared} (= {expected})",
                        "",
                    )
                c.require(
                    value.is_floating_point() == t.torch_dtype.is_floating_point,
                    "export outputs",
                    f"{where}: output {t.name!r} has dtype {value.dtype}, declared {t.dtype}",
                    "",
                )
        if g.calibration_inputs is not None:
            batches = c.call(
                "calibration",
                f"{where}: graph {g.name!r} calibration_inputs(2)",
                lambda g=g: list(g.calibration_inputs(2)),
            )  # type: ignore[misc]
            for b in batches:
                c.require(
                    isinstance(b, tuple) and len(b) == len(g.inputs),
                    "calibration",
                    f"{where}: calibration_inputs yields {_type_name(b)} of length {len(b) if isinstance(b, tuple) else '?'}, "
                    f"not a tuple of {len(g.inputs)} tensors",
                    "",
                )
                with torch.no_grad():
                    c.call("calibration", f"{where}: graph {g.name!r} on a calibration input", g.module, *b)
    c.ok(f"{where}: export spec graphs {spec.graph_names} run at every test size with the declared outputs")


# =========================================================================== lookup helpers


def _resolve_registered(obj: Any, attr: str, kind: str, *, registries: Any = None) -> tuple[Any, str]:
    """``obj`` or the object registered under the name ``obj``; and its name for messages."""
    if isinstance(obj, str):
        from kdtool.plugins import get_registries

        regs = registries or get_registries()
        registry = getattr(regs, attr)
        if obj not in registry:
            raise ConformanceError(
                kind, obj, "registered", f"no {kind} of that name is registered ({', '.join(registry.names())})",
                "register it in your plugin's hook and reinstall the plugin (`pip install -e .`)",
            )  # fmt: skip
        return registry.get(obj), obj
    name = getattr(obj, "name", None) or getattr(obj, "__name__", None) or _type_name(obj)
    return obj, str(name)


def _resolve_exporter(exporter: Any, manager: Any) -> tuple[Any, str]:
    if isinstance(exporter, str):
        regs = manager.registries() if manager is not None else None
        return _resolve_registered(exporter, "exporters", "exporter", registries=regs)
    cls = exporter if inspect.isclass(exporter) else type(exporter)
    caps: Any = getattr(cls, "capabilities", None)
    return cls, getattr(caps, "name", None) or cls.__name__


def _manager_with(cls: type, name: str) -> Any:
    """The plugin manager, plus ``cls`` registered as exporter ``name`` if it is not already."""
    from kdtool.plugins import PluginManager, get_plugin_manager

    manager = get_plugin_manager()
    regs = manager.registries(strict=False)
    if name in regs.exporters:
        if regs.exporters.get(name) is cls:
            return manager
        raise ConformanceError(
            "exporter", name, "unique names",
            f"the name {name!r} is already registered by plugin {regs.exporters.owner(name)!r} for another class",
            "give capabilities.name a unique name",
        )  # fmt: skip
    fresh = PluginManager(warn=lambda _m: None)
    shim = types.ModuleType("kdtool_conformance_shim")

    def register_exporters(register: Any) -> None:
        register(name, cls)

    from kdtool.hookspecs import hookimpl

    shim.register_exporters = hookimpl(register_exporters)  # type: ignore[attr-defined]
    fresh.register_module(shim, "conformance")
    return fresh
