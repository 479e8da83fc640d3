"""The build plan: optimisation profiles, builder settings and the equivalent ``trtexec`` command.

The plan is what an engine build needs, written down so it can be reproduced on the target
(a Jetson, a T4 server) even where this machine cannot build: every dynamic input gets an
optimisation profile (min/opt/max shapes from the export spec, overridable per axis), plus
workspace, builder optimisation level, typing (strong: precisions come from the ONNX types;
weak: precision flags), DLA core and the timing-cache path. The ``trtexec`` command line is
built as an argv list from validated pieces and quoted with :func:`shlex.join`, never by
pasting strings into a shell line.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from kdtool.errors import ExportError
from kdtool.export.spec import DynamicAxis, GraphSpec

PLAN_SCHEMA_VERSION = 1

# Tensor names that need no quoting inside a trtexec shape list (``name:1x3x8x8,other:...``).
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f]")

# Builder flags for weakly typed networks (TensorRT 10.x; TensorRT 11 removed them).
WEAK_FLAGS = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}
WEAK_TRTEXEC = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}


@dataclass(frozen=True)
class InputProfile:
    """One network input's optimisation-profile shapes (all three equal for a static input)."""

    name: str
    dtype: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    dynamic_axes: dict[int, str]

    @property
    def is_dynamic(self) -> bool:
        return bool(self.dynamic_axes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "min": list(self.min),
            "opt": list(self.opt),
            "max": list(self.max),
            "dynamic_axes": {str(k): v for k, v in self.dynamic_axes.items()},
        }


def resolve_axes(
    graphs: list[GraphSpec],
    explicit: dict[str, dict[str, int]],
    hints: dict[str, dict[str, int]],
) -> tuple[dict[str, DynamicAxis], list[str]]:
    """Per-axis min/opt/max for the profiles: the spec's, then the profile's ``default_axes``
    hints (clamped into the spec's range; ignored for axes the model does not have), then the
    user's ``axes`` (must name an axis of the model and stay inside its range).

    Returns the resolved axes (by name, across graphs) and notes saying what was clamped."""
    spec_axes: dict[str, DynamicAxis] = {}
    for g in graphs:
        for name, axis in g.dynamic_axes.items():
            if name in spec_axes and spec_axes[name] != axis:
                # Two graphs disagree on an axis of the same name: keep the intersection of ranges.
                prev = spec_axes[name]
                lo, hi = max(prev.min, axis.min), min(prev.max, axis.max)
                spec_axes[name] = DynamicAxis(lo, min(max(prev.opt, lo), hi), hi)
            else:
                spec_axes.setdefault(name, axis)
    notes: list[str] = []
    resolved = dict(spec_axes)
    for name, hint in hints.items():
        if name not in spec_axes:
            continue
        base = spec_axes[name]
        lo = max(base.min, min(int(hint.get("min", base.min)), base.max))
        hi = min(base.max, max(int(hint.get("max", base.max)), base.min))
        hi = max(hi, lo)
        opt = min(max(int(hint.get("opt", base.opt)), lo), hi)
        resolved[name] = DynamicAxis(lo, opt, hi)
        if (lo, opt, hi) != tuple(int(hint.get(k, getattr(base, k))) for k in ("min", "opt", "max")):
            notes.append(
                f"target hint for axis {name!r} {hint} clamped to the model's range "
                f"[{base.min}, {base.max}]: min={lo} opt={opt} max={hi}"
            )
    for name, override in explicit.items():
        if name not in spec_axes:
            raise ExportError(
                f"--opt axes: the model has no dynamic axis {name!r}; its dynamic axes: "
                f"{', '.join(sorted(spec_axes)) or '(none)'}"
            )
        base = resolved[name]
        values = {k: int(override.get(k, getattr(base, k))) for k in ("min", "opt", "max")}
        limit = spec_axes[name]
        if values["min"] < limit.min or values["max"] > limit.max:
            raise ExportError(
                f"--opt axes: axis {name!r} range [{values['min']}, {values['max']}] is outside what the "
                f"model supports [{limit.min}, {limit.max}] (from the task's export spec)",
                hint="use --batch N to widen the batch axis, or stay inside the range",
            )
        try:
            resolved[name] = DynamicAxis(values["min"], values["opt"], values["max"])
        except ValueError as exc:
            raise ExportError(f"--opt axes: axis {name!r}: {exc}") from None
    return resolved, notes


def input_profiles(graph: GraphSpec, axes: dict[str, DynamicAxis]) -> list[InputProfile]:
    """min/opt/max shapes of every input of ``graph`` under the resolved axes."""
    out = []
    for t in graph.inputs:
        sizes = {which: {k: getattr(v, which) for k, v in axes.items()} for which in ("min", "opt", "max")}
        out.append(
            InputProfile(
                name=t.name,
                dtype=t.dtype,
                min=t.concrete_shape(sizes["min"]),
                opt=t.concrete_shape(sizes["opt"]),
                max=t.concrete_shape(sizes["max"]),
                dynamic_axes=t.dynamic_axes(),
            )
        )
    return out


def trtexec_name(name: str) -> str:
    """A tensor name as trtexec's shape lists accept it (quoted when it has odd characters)."""
    if _PLAIN_NAME.match(name):
        return name
    if "'" in name or "," in name or _BAD_PATH_CHARS.search(name):
        raise ExportError(
            f"input name {name!r} cannot be written in a trtexec shape list (it contains a quote, a comma "
            f"or a control character); rename the graph input in the task's export spec"
        )
    return f"'{name}'"


def check_path(value: str, what: str) -> str:
    """Refuse paths with control characters (they would break the plan's shell script)."""
    if not value or _BAD_PATH_CHARS.search(value):
        raise ExportError(f"{what} {value!r} is empty or contains control characters")
    return value


def _shapes_arg(flag: str, profiles: list[InputProfile], which: str) -> str:
    parts = [f"{trtexec_name(p.name)}:{'x'.join(str(d) for d in getattr(p, which))}" for p in profiles]
    return f"--{flag}={','.join(parts)}"


def trtexec_build_argv(
    *,
    onnx_file: str,
    engine_file: str,
    profiles: list[InputProfile],
    precision: str,
    typing: str,
    workspace_mib: int,
    optimization_level: int,
    timing_cache: str,
    dla_core: int | None,
    gpu_fallback: bool,
    executable: str = "trtexec",
) -> list[str]:
    """The trtexec command that builds the same engine as the Python API build (TensorRT 10.x flags)."""
    argv = [
        check_path(executable, "trtexec executable"),
        f"--onnx={check_path(onnx_file, 'ONNX path')}",
        f"--saveEngine={check_path(engine_file, 'engine path')}",
    ]
    argv += ["--stronglyTyped"] if typing == "strong" else WEAK_TRTEXEC[precision]
    dynamic = [p for p in profiles if p.is_dynamic]
    if dynamic:
        argv += [
            _shapes_arg("minShapes", dynamic, "min"),
            _shapes_arg("optShapes", dynamic, "opt"),
            _shapes_arg("maxShapes", dynamic, "max"),
        ]
    argv += [
        f"--memPoolSize=workspace:{int(workspace_mib)}",
        f"--builderOptimizationLevel={int(optimization_level)}",
        f"--timingCacheFile={check_path(timing_cache, 'timing cache path')}",
    ]
    if dla_core is not None:
        argv.append(f"--useDLACore={int(dla_core)}")
        if gpu_fallback:
            argv.append("--allowGPUFallback")
    return argv


def trtexec_run_argv(
    *, engine_file: str, profiles: list[InputProfile], dla_core: int | None, executable: str = "trtexec"
) -> list[str]:
    """trtexec command that loads the engine and measures it at the ``opt`` shapes."""
    argv = [
        check_path(executable, "trtexec executable"),
        f"--loadEngine={check_path(engine_file, 'engine path')}",
    ]
    dynamic = [p for p in profiles if p.is_dynamic]
    if dynamic:
        argv.append(_shapes_arg("shapes", dynamic, "opt"))
    if dla_core is not None:
        argv.append(f"--useDLACore={int(dla_core)}")
    return argv


def command(argv: list[str]) -> dict[str, Any]:
    """An argv list with its shell-quoted form."""
    return {"argv": list(argv), "shell": shlex.join(argv)}


def builder_flags(precision: str, typing: str, dla_core: int | None, gpu_fallback: bool) -> list[str]:
    """``trt.BuilderFlag`` names to set (none for a strongly typed network, where the ONNX types decide)."""
    flags = [] if typing == "strong" else list(WEAK_FLAGS[precision])
    if dla_core is not None and gpu_fallback:
        flags.append("GPU_FALLBACK")
    return flags


def build_script(commands: list[list[str]]) -> str:
    """A POSIX shell script running the build commands from the artifact folder."""
    lines = [
        "#!/bin/sh",
        "# Builds the TensorRT engine(s) of this artifact on the target machine (TensorRT 10.x trtexec).",
        "# Engines are tied to the TensorRT version and the GPU they are built on.",
        "set -e",
        'cd "$(dirname "$0")"',
    ]
    lines += [shlex.join(argv) for argv in commands]
    return "\n".join(lines) + "\n"
