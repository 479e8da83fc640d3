"""The ``tensorrt`` exporter: TensorRT-ready ONNX, a build plan with its trtexec command, and the
engine where this machine can build it.

Flow per graph: the framework's ONNX artifact (``ctx.require_artifact("onnx")``) -> sanitised
(polygraphy constant folding + shape inference, graphsurgeon cleanup) -> typed for the
precision (FP16: an FP16 graph with FP32 I/O; INT8/FP8: explicit Q/DQ, see ``onnx_prep``) ->
``model.trt.onnx`` + ``build_plan.json`` + ``build_engine.sh``. Where ``tensorrt`` imports and a
CUDA GPU with the target's compute capability is present, the engine is built with the
TensorRT Python API, a timing cache saved, and both stamped with TensorRT/CUDA versions, GPU
name and compute capability. Otherwise the export still succeeds and says why no engine was
built (``not_verified``), and ``load()`` raises a clear error.

Choices (open points, all options: ``--opt key=value``):
- ``typing=strong`` (default): precisions come from the ONNX types (TensorRT's advice for
  explicit quantization; TensorRT 11 only has strong typing). ``typing=weak`` uses builder
  flags (FP16; INT8+FP16 so unquantized layers may run in FP16) on TensorRT 10.x.
- Q/DQ through ONNX Runtime's ``quantize_static`` constrained to TensorRT placement (inputs of
  Conv/ConvTranspose/Gemm/MatMul, symmetric, per-channel weights, float biases).
- Optimisation profiles: one per engine, min/opt/max from the export spec; target profiles give
  ``default_axes`` hints (clamped to the model's range), ``--opt axes=...`` overrides exactly.
- Verification (by the export driver, :mod:`kdtool.export.verify`): the engine against PyTorch
  (real samples inside the profile + a second size per dynamic axis); :meth:`inspect` records
  Q/DQ placement and the engine's latency, INT8 engines timed against an FP16 engine of the same
  model (warns when not faster). Without an engine, the driver runs the stand-in
  (:meth:`stand_in`): the TensorRT-ready ONNX through ONNX Runtime.
- The source ONNX comes from :func:`kdtool.export.onnx_utils.export_onnx` (the public helper the
  ``onnx`` exporter uses too), so this exporter works with the ``onnx`` plugin blocked.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import onnx
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kdtool.errors import ExportError
from kdtool.export import onnx_utils
from kdtool.export.exporter import (
    Artifact,
    ArtifactRunner,
    Capabilities,
    ExportContext,
    Exporter,
    ExporterOptions,
    ParityPlan,
    StandIn,
)
from kdtool.export.spec import DynamicAxis, ExportSpec, GraphSpec
from kdtool.export.verify import tolerance_for

from . import engine as eng
from . import onnx_prep, plan

DLA_COMPUTE_CAPABILITIES = ("7.2", "8.7")  # Jetson Xavier, Jetson Orin
PLAN_FILE = "build_plan.json"
SCRIPT_FILE = "build_engine.sh"
CACHE_FILE = "timing.cache"


class AxisRange(BaseModel):
    """An override of one dynamic axis's optimisation-profile sizes (unset fields keep the spec's)."""

    model_config = ConfigDict(extra="forbid")

    min: int | None = Field(default=None, ge=1)
    opt: int | None = Field(default=None, ge=1)
    max: int | None = Field(default=None, ge=1)

    def values(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class TensorRTOptions(ExporterOptions):
    """Options of the ``tensorrt`` exporter (``--opt key=value``; profiles set some)."""

    typing: Literal["strong", "weak"] = "strong"
    # The target GPU's compute capability ("8.7" for Jetson Orin); None: whatever GPU builds.
    compute_capability: str | None = None
    workspace_mib: int = Field(default=1024, ge=1)
    builder_optimization_level: int = Field(default=3, ge=0, le=5)
    dla_core: int | None = Field(default=None, ge=0)
    gpu_fallback: bool = True
    # A timing cache shared across builds (read if present, updated after the build); the
    # artifact always gets its own copy as timing.cache.
    timing_cache: str | None = None
    axes: dict[str, AxisRange] = Field(default_factory=dict)
    default_axes: dict[str, AxisRange] = Field(default_factory=dict)
    opset: int = Field(default=18, ge=13, le=21)
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = Field(default=64, ge=1)
    quantize_op_types: list[str] = Field(default_factory=lambda: list(onnx_prep.WEIGHTED_OPS))
    exclude_nodes: list[str] = Field(default_factory=list)
    exclude_op_types: list[str] = Field(default_factory=list)
    build_engine: Literal["auto", "never"] = "auto"
    device: int = Field(default=0, ge=0, description="CUDA device index used to build and run")
    compare_fp16: bool = True
    trtexec: str = "trtexec"

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _cc(cls, value: Any) -> Any:
        if value is None:
            return None
        text = str(value)
        if not re.fullmatch(r"\d{1,2}\.\d", text):
            raise ValueError(f"compute capability looks like '8.7', got {value!r}")
        return text


class TensorRTExporter(Exporter):
    capabilities = Capabilities(
        name="tensorrt",
        suffix=".engine",
        precisions=("fp32", "fp16", "int8", "fp8"),
        options_model=TensorRTOptions,
        default_profile="trt-local",
        description="TensorRT engines for NVIDIA GPUs and Jetson (TensorRT-ready ONNX + trtexec plan everywhere)",
        needs_gpu_to_build=True,
        needs_gpu_to_run=True,
        # FP32 engines use TF32 tensor cores by default on Ampere and newer: a looser bound.
        tolerances=(("fp32", "fp32-tf32"),),
        requires=(
            ("onnx", "pip install onnx"),
            ("onnxruntime", "pip install onnxruntime"),
            ("polygraphy", "pip install 'kdtool[tensorrt]'"),
            ("onnx_graphsurgeon", "pip install 'kdtool[tensorrt]'"),
        ),
    )

    def __init__(self) -> None:
        self._log: Callable[[str], None] | None = None

    # ------------------------------------------------------------ export

    def export(
        self, spec: ExportSpec, options: ExporterOptions, out_dir: Path, ctx: ExportContext
    ) -> Artifact:
        assert isinstance(options, TensorRTOptions)
        self._log = ctx.log
        precision = options.precision
        check_target(options, ctx.target)
        source_dir = out_dir / "from-onnx"
        source_dir.mkdir(parents=True, exist_ok=True)
        source_onnx: dict[str, Path] = {}
        for graph in spec.graphs:
            source = source_dir / f"{'model' if len(spec.graphs) == 1 else graph.name}.onnx"
            onnx_utils.export_onnx(graph, source, opset=options.opset, static=False, target=ctx.target)
            onnx_utils.cleanup(source)
            source_onnx[graph.name] = source
        axes, axis_notes = plan.resolve_axes(
            spec.graphs,
            {k: v.values() for k, v in options.axes.items()},
            {k: v.values() for k, v in options.default_axes.items()},
        )
        cache_name = options.timing_cache or CACHE_FILE
        plan.check_path(cache_name, "timing cache path")
        env = eng.probe(
            target_cc=options.compute_capability,
            device=options.device,
            precision=precision,
            dla_core=options.dla_core,
            typing=options.typing,
            disabled=options.build_engine == "never",
        )
        strongly_typed = options.typing == "strong"
        details: dict[str, Any] = {
            "typing": options.typing,
            "axes": {k: {"min": v.min, "opt": v.opt, "max": v.max} for k, v in axes.items()},
            "plan": PLAN_FILE,
            "build_script": SCRIPT_FILE,
            "graphs": {},
        }
        notes = list(axis_notes)
        graph_plans: dict[str, Any] = {}
        onnx_files: dict[str, Path] = {}
        build_commands: list[list[str]] = []
        with tempfile.TemporaryDirectory(prefix="kdtool-trt-") as work:
            for graph in spec.graphs:
                name = "model" if len(spec.graphs) == 1 else graph.name
                final = out_dir / f"{name}.trt.onnx"
                info = prepare_onnx(graph, source_onnx[graph.name], final, options, Path(work))
                notes += info.pop("notes", [])
                onnx_utils.embed_metadata(final, spec, graph)
                info["ops"] = onnx_utils.op_histogram(final)
                info["onnx"] = final.name
                info["source_onnx"] = str(source_onnx[graph.name].relative_to(out_dir))
                profiles = plan.input_profiles(graph, axes)
                engine_file = f"{name}.engine"
                build_argv = plan.trtexec_build_argv(
                    onnx_file=final.name,
                    engine_file=engine_file,
                    profiles=profiles,
                    precision=precision,
                    typing=options.typing,
                    workspace_mib=options.workspace_mib,
                    optimization_level=options.builder_optimization_level,
                    timing_cache=cache_name,
                    dla_core=options.dla_core,
                    gpu_fallback=options.gpu_fallback,
                    executable=options.trtexec,
                )
                run_argv = plan.trtexec_run_argv(
                    engine_file=engine_file,
                    profiles=profiles,
                    dla_core=options.dla_core,
                    executable=options.trtexec,
                )
                build_commands.append(build_argv)
                graph_plans[graph.name] = {
                    "onnx": final.name,
                    "engine": engine_file,
                    "inputs": [p.to_dict() for p in profiles],
                    "outputs": [t.name for t in graph.outputs],
                    "optimization_profiles": [
                        {
                            p.name: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)}
                            for p in profiles
                            if p.is_dynamic
                        }
                    ],
                    "trtexec_build": plan.command(build_argv),
                    "trtexec_run": plan.command(run_argv),
                }
                details["graphs"][graph.name] = info
                onnx_files[graph.name] = final
        flags = plan.builder_flags(precision, options.typing, options.dla_core, options.gpu_fallback)
        builder: dict[str, Any] = {
            "strongly_typed": strongly_typed,
            "flags": flags,
            "workspace_mib": options.workspace_mib,
            "builder_optimization_level": options.builder_optimization_level,
            "dla_core": options.dla_core,
            "gpu_fallback": options.gpu_fallback if options.dla_core is not None else None,
            "timing_cache": cache_name,
        }
        if options.typing == "weak":
            notes.append(
                "weak typing uses precision builder flags: deprecated in TensorRT 10.x, removed in TensorRT 11"
            )
        if precision == "fp8":
            notes.append(
                "FP8 (E4M3 Q/DQ) needs compute capability 8.9+ (Ada, Hopper) and TensorRT 10; ranges calibrated as for "
                "INT8 and mapped to FP8 (amax / 448); experimental: not checked on FP8 hardware by kdtool's tests"
            )
        if options.dla_core is not None:
            notes.append(
                f"DLA core {options.dla_core}: layers DLA cannot run fall back to the GPU"
                if options.gpu_fallback
                else f"DLA core {options.dla_core} without GPU fallback: the build fails if a layer cannot run on DLA"
            )
        build_plan = {
            "schema_version": plan.PLAN_SCHEMA_VERSION,
            "target": ctx.target,
            "precision": precision,
            "compute_capability": options.compute_capability or "the GPU that builds",
            "builder": builder,
            "graphs": graph_plans,
            "cwd": "the artifact folder (paths are relative to it)",
            "notes": notes,
        }
        (out_dir / PLAN_FILE).write_text(json.dumps(build_plan, indent=2) + "\n")
        script = out_dir / SCRIPT_FILE
        script.write_text(plan.build_script(build_commands))
        script.chmod(0o755)
        extra = [out_dir / PLAN_FILE, script, *source_onnx.values()]
        not_verified: list[str] = []
        graph_files: dict[str, Path] = {}
        if env.can_build:
            cache_out = out_dir / CACHE_FILE
            shared = Path(options.timing_cache).expanduser() if options.timing_cache else None
            for graph in spec.graphs:
                gp = graph_plans[graph.name]
                engine_path = out_dir / gp["engine"]
                cache_in = cache_out if cache_out.is_file() else shared
                result = eng.build_engine(
                    env.trt,
                    onnx_path=onnx_files[graph.name],
                    engine_path=engine_path,
                    inputs=gp["inputs"],
                    strongly_typed=strongly_typed,
                    flags=flags,
                    workspace_mib=options.workspace_mib,
                    optimization_level=options.builder_optimization_level,
                    dla_core=options.dla_core,
                    timing_cache_in=cache_in,
                    timing_cache_out=[cache_out, *([shared] if shared else [])],
                )
                details["graphs"][graph.name]["engine"] = gp["engine"]
                details["graphs"][graph.name]["build"] = result
                graph_files[graph.name] = engine_path
                extra.append(onnx_files[graph.name])
            extra.append(cache_out)
            details["engine"] = {"built": True, "reason": None, **env.stamps}
            ctx.log(
                f"tensorrt: built {len(graph_files)} engine(s) with TensorRT {env.stamps['tensorrt']} on "
                f"{env.stamps['gpu']} (compute capability {env.stamps['compute_capability']})"
            )
        else:
            graph_files = dict(onnx_files)
            details["engine"] = {"built": False, "reason": env.reason, **env.stamps}
            not_verified.append(
                f"TensorRT engine not built: {env.reason}. Written instead: the TensorRT-ready ONNX, {PLAN_FILE} "
                f"and the equivalent trtexec command ({SCRIPT_FILE}); the ONNX was checked in ONNX Runtime"
            )
            ctx.log(f"tensorrt: engine not built: {env.reason}")
        details["notes"] = notes
        return Artifact(out_dir, graph_files, extra_files=extra, details=details, not_verified=not_verified)

    # ------------------------------------------------------------ verification

    def inspect(self, spec: ExportSpec, artifact: Artifact, options: ExporterOptions) -> dict[str, Any]:
        """Q/DQ placement of quantized graphs; with an engine, its latency at the opt shapes
        (and, for INT8, against an FP16 engine of the same model)."""
        assert isinstance(options, TensorRTOptions)
        details = artifact.details
        checks: dict[str, Any] = {}
        if options.precision in ("int8", "fp8"):
            checks["qdq"] = {
                g.name: onnx_prep.qdq_report(artifact.directory / details["graphs"][g.name]["onnx"])
                for g in spec.graphs
            }
        if not details["engine"]["built"]:
            return checks
        trt, _why = eng.import_tensorrt()
        if trt is None or not torch.cuda.is_available():
            return checks  # the driver says why the engine does not run here
        axes = _axes(details)
        latency: dict[str, Any] = {}
        for graph in spec.graphs:
            runner = eng.EngineGraph(
                trt,
                artifact.directory / details["graphs"][graph.name]["engine"],
                [t.name for t in graph.inputs],
                [t.name for t in graph.outputs],
                options.device,
            )
            opt_inputs = graph.make_inputs(_sizes(axes, "opt"), generator=torch.Generator().manual_seed(0))
            latency[graph.name] = eng.measure_latency(runner, opt_inputs)
        checks["latency_ms_at_opt_shapes"] = latency
        if options.precision == "int8" and options.compare_fp16:
            checks["int8_vs_fp16"] = self._compare_fp16(spec, artifact, options, axes, latency, trt)
        return checks

    def parity_plan(
        self, spec: ExportSpec, artifact: Artifact, options: ExporterOptions, *, precision: str | None = None
    ) -> ParityPlan:
        """Real samples inside the optimisation profile, then the profile's test sizes."""
        assert isinstance(options, TensorRTOptions)
        axes = _axes(artifact.details)
        return ParityPlan(
            tolerance=tolerance_for(precision or self.capabilities.tolerance_key(options.precision)),
            # Quantized graphs on random inputs are outside the calibrated range: shapes only.
            random_tolerance=float("inf") if options.precision in ("int8", "fp8") else None,
            sizes={g.name: _test_sizes(axes) for g in spec.graphs},
            accepts=lambda graph, inputs: _in_profile(graph, inputs, axes),
        )

    def stand_in(self, directory: Path, manifest: dict[str, Any], options: ExporterOptions) -> StandIn | None:
        """The TensorRT-ready ONNX in ONNX Runtime (CPU), basic graph optimisations only: ORT's
        extended CPU fusions mis-execute FP8 Q/DQ graphs (measured on the digits CNN: accuracy
        0.81 with basic, 0.54 with all)."""
        assert isinstance(options, TensorRTOptions)
        details = manifest.get("details", {})
        files = {name: directory / info["onnx"] for name, info in details.get("graphs", {}).items()}
        if set(files) != set(manifest["graphs"]) or not all(p.is_file() for p in files.values()):
            return None
        built = details.get("engine", {}).get("built")
        return StandIn(
            runner=onnx_utils.load_onnx_runner(files, manifest, graph_optimization="basic"),
            description="onnxruntime (TensorRT-ready ONNX"
            + ("" if built else "; no engine built here")
            + ")",
            # weak typing keeps the graph FP32 (the FP16 builder flag acts only in TensorRT)
            precision="fp32"
            if options.typing == "weak" and options.precision == "fp16"
            else options.precision,
        )

    def _compare_fp16(
        self,
        spec: ExportSpec,
        artifact: Artifact,
        options: TensorRTOptions,
        axes: dict[str, DynamicAxis],
        int8_latency: dict[str, Any],
        trt: Any,
    ) -> dict[str, Any]:
        """Build an FP16 engine of the same model and time it against the INT8 one."""
        out: dict[str, Any] = {"graphs": {}}
        fp16_options = options.model_copy(update={"precision": "fp16"})
        with tempfile.TemporaryDirectory(prefix="kdtool-trt-fp16-") as work_dir:
            work = Path(work_dir)
            for graph in spec.graphs:
                src = artifact.directory / artifact.details["graphs"][graph.name]["source_onnx"]
                fp16_onnx = work / f"{graph.name}.fp16.onnx"
                prepare_onnx(graph, src, fp16_onnx, fp16_options, work)
                profiles = plan.input_profiles(graph, axes)
                engine_path = work / f"{graph.name}.fp16.engine"
                eng.build_engine(
                    trt,
                    onnx_path=fp16_onnx,
                    engine_path=engine_path,
                    inputs=[p.to_dict() for p in profiles],
                    strongly_typed=options.typing == "strong",
                    flags=plan.builder_flags("fp16", options.typing, options.dla_core, options.gpu_fallback),
                    workspace_mib=options.workspace_mib,
                    optimization_level=options.builder_optimization_level,
                    dla_core=options.dla_core,
                    timing_cache_in=artifact.directory / CACHE_FILE,
                    timing_cache_out=[],
                )
                runner = eng.EngineGraph(
                    trt,
                    engine_path,
                    [t.name for t in graph.inputs],
                    [t.name for t in graph.outputs],
                    options.device,
                )
                inputs = graph.make_inputs(_sizes(axes, "opt"), generator=torch.Generator().manual_seed(0))
                fp16 = eng.measure_latency(runner, inputs)
                int8 = int8_latency[graph.name]
                faster = int8["p50_ms"] < fp16["p50_ms"]
                out["graphs"][graph.name] = {
                    "int8_p50_ms": int8["p50_ms"],
                    "fp16_p50_ms": fp16["p50_ms"],
                    "int8_faster": faster,
                }
                if not faster:
                    warning = (
                        f"graph {graph.name!r}: the INT8 engine is not faster than an FP16 engine on this GPU "
                        f"({int8['p50_ms']:.3f} ms vs {fp16['p50_ms']:.3f} ms at the opt shapes): layers without Q/DQ run "
                        f"in FP32 in a strongly typed network and Q/DQ reformatting costs time; try --opt typing=weak "
                        f"(TensorRT 10: FP16 for unquantized layers), quantize more op types "
                        f"(--opt quantize_op_types=[...]), or deploy FP16"
                    )
                    out.setdefault("warnings", []).append(warning)
                    if self._log is not None:
                        self._log(f"kdtool: warning: {warning}")
        return out

    # ------------------------------------------------------------ load

    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        details = manifest.get("details", {})
        engine_info = details.get("engine", {})
        options = TensorRTOptions.model_validate(manifest.get("options", {}))
        if not engine_info.get("built"):
            onnx_files = ", ".join(g.get("onnx", "?") for g in details.get("graphs", {}).values())
            raise ExportError(
                f"this TensorRT artifact has no engine: it was not built at export time because "
                f"{engine_info.get('reason') or 'of an unknown reason'}",
                hint=f"build it on the target with {SCRIPT_FILE} (trtexec) or re-export there with "
                f"`kdtool export --target trt-local`; the TensorRT-ready ONNX ({onnx_files}) runs in ONNX Runtime for checking",
            )
        trt, why = eng.import_tensorrt()
        if trt is None:
            raise ExportError(f"cannot run this TensorRT engine here: {why}", hint=eng.INSTALL_HINT)
        index = int(device.split(":")[1]) if device.startswith("cuda:") else options.device
        notes = eng.check_engine_matches(engine_info, trt, index)
        graphs = {}
        input_names = {}
        for name, info in manifest["graphs"].items():
            engine_file = details["graphs"][name]["engine"]
            ins = [i["name"] for i in info["inputs"]]
            outs = [o["name"] for o in info["outputs"]]
            graphs[name] = eng.EngineGraph(trt, directory / engine_file, ins, outs, index)
            input_names[name] = ins
        runner = ArtifactRunner(
            graphs, kind="tensorrt", input_names=input_names, metadata=manifest.get("metadata", {})
        )
        runner.notes = notes  # type: ignore[attr-defined]
        return runner

    def can_run_here(self, options: ExporterOptions) -> tuple[bool, str]:
        trt, why = eng.import_tensorrt()
        if trt is None:
            return False, why
        if not torch.cuda.is_available():
            return False, "needs an NVIDIA GPU (CUDA not available here)"
        return True, ""

    def versions(self) -> dict[str, str]:
        import onnx_graphsurgeon
        import onnxruntime as ort
        import polygraphy

        trt, _ = eng.import_tensorrt()
        return {
            **super().versions(),
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "polygraphy": polygraphy.__version__,
            "onnx_graphsurgeon": onnx_graphsurgeon.__version__,
            "tensorrt": str(trt.__version__) if trt is not None else "not available",
            "cuda_torch": str(torch.version.cuda),
        }


# --------------------------------------------------------------------------- helpers


def check_target(options: TensorRTOptions, target: str) -> None:
    """Refuse combinations the target hardware cannot run, before doing any work."""
    cc = options.compute_capability
    precision = options.precision
    if options.dla_core is not None:
        if cc is not None and cc not in DLA_COMPUTE_CAPABILITIES:
            raise ExportError(
                f"target {target!r} (compute capability {cc}) has no DLA: DLA exists on Jetson Xavier (7.2) and Orin (8.7)",
                hint="drop --opt dla_core, or use --target trt-jetson-orin",
            )
        if precision not in ("fp16", "int8"):
            raise ExportError(
                f"DLA runs FP16 and INT8 only; got --precision {precision}", hint="use --precision fp16"
            )
    if precision == "fp8":
        if cc is not None and tuple(int(x) for x in cc.split(".")) < (8, 9):
            raise ExportError(
                f"target {target!r} (compute capability {cc}) has no FP8 tensor cores: FP8 needs 8.9+ (Ada, Hopper)",
                hint="use --precision int8 or fp16, or --target trt-h100",
            )
        if options.typing == "weak":
            raise ExportError(
                "FP8 needs a strongly typed network (explicit FP8 Q/DQ); drop --opt typing=weak"
            )


def prepare_onnx(
    graph: GraphSpec, src: Path, final: Path, options: TensorRTOptions, work: Path
) -> dict[str, Any]:
    """Sanitise ``src`` and type it for the precision; writes ``final``; returns what was done."""
    precision = options.precision
    sanitized = work / f"{graph.name}.sanitized.onnx"
    info: dict[str, Any] = {"sanitize": onnx_prep.sanitize(src, sanitized, fold=True)}
    if precision == "fp32" or (precision == "fp16" and options.typing == "weak"):
        shutil.copyfile(sanitized, final)
        info["typing"] = "fp32 graph" + (" + FP16 builder flag" if precision == "fp16" else "")
    elif precision == "fp16":
        converted = work / f"{graph.name}.fp16.onnx"
        onnx_utils.convert_fp16(sanitized, converted)
        onnx_prep.sanitize(converted, final, fold=False)
        info["typing"] = "fp16 graph with fp32 inputs and outputs (strongly typed)"
    else:
        quantized = work / f"{graph.name}.qdq.onnx"
        info["quantization"] = onnx_prep.quantize_qdq(
            graph,
            sanitized,
            quantized,
            precision=precision,
            calibration=options.calibration,
            calibration_samples=options.calibration_samples,
            op_types=options.quantize_op_types,
            exclude_nodes=options.exclude_nodes,
            exclude_op_types=options.exclude_op_types,
        )
        onnx_prep.sanitize(quantized, final, fold=False)
        report = onnx_prep.qdq_report(final)
        info["qdq"] = report
        info["notes"] = onnx_prep.check_qdq_for_tensorrt(report, graph.name)
        info["typing"] = f"explicit {precision.upper()} Q/DQ, float elsewhere"
    return info


def _sizes(axes: dict[str, DynamicAxis], which: str) -> dict[str, int]:
    return {k: getattr(v, which) for k, v in axes.items()}


def _test_sizes(axes: dict[str, DynamicAxis]) -> list[dict[str, int]]:
    """opt sizes, then each axis at a second size inside its (profile) range."""
    base = _sizes(axes, "opt")
    out = [base]
    for name, axis in axes.items():
        other = axis.second_size()
        if other != axis.opt:
            out.append({**base, name: other})
    return out


def _in_profile(graph: GraphSpec, inputs: tuple[torch.Tensor, ...], axes: dict[str, DynamicAxis]) -> bool:
    for spec_t, x in zip(graph.inputs, inputs, strict=False):
        for index, axis in spec_t.dynamic_axes().items():
            a = axes.get(axis)
            if a is not None and not (a.min <= x.shape[index] <= a.max):
                return False
    return True


def _axes(details: dict[str, Any]) -> dict[str, DynamicAxis]:
    """The optimisation profile's axes, as the export recorded them."""
    return {k: DynamicAxis(v["min"], v["opt"], v["max"]) for k, v in details["axes"].items()}


__all__ = ["TensorRTExporter", "TensorRTOptions", "AxisRange", "check_target", "prepare_onnx"]
