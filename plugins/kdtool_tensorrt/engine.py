"""The engine path: TensorRT Python API build, version/GPU stamps, and a runner on torch CUDA buffers.

Nothing here imports ``tensorrt`` at module import time: the plugin registers and exports ONNX +
plan + command on machines without TensorRT, and says why no engine was built. Engines and
timing caches are tied to the TensorRT version, the GPU (compute capability) and the builder
flags, so every engine is stamped with them and :class:`EngineGraph` refuses a mismatched one
with a clear message instead of TensorRT's deserialisation error.
"""

from __future__ import annotations

import ctypes
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdtool.errors import ExportError

INSTALL_HINT = (
    "install TensorRT's Python bindings from NVIDIA (`pip install tensorrt` resolves the real wheels from "
    "pypi.nvidia.com; on Jetson use JetPack's python3-libnvinfer) on a machine with an NVIDIA GPU, or run "
    "the trtexec command in build_plan.json / build_engine.sh on the target"
)


def import_tensorrt() -> tuple[Any | None, str]:
    """``(module, "")`` when ``import tensorrt`` works, else ``(None, why)``.

    Any exception counts: the PyPI placeholders raise at import, and a bindings wheel without
    NVIDIA's libraries fails with an OSError about ``libnvinfer`` / ``libnvonnxparser``."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, OSError, RuntimeError from placeholders
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        return None, f"the `tensorrt` Python package does not import here ({type(exc).__name__}: {text})"
    if not hasattr(trt, "Builder"):
        return (
            None,
            "the `tensorrt` package here is a placeholder without the TensorRT bindings (no tensorrt.Builder)",
        )
    return trt, ""


def cuda_driver_version() -> str | None:
    """The CUDA driver version (e.g. "12.4") from libcuda, or None."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0:
            return f"{version.value // 1000}.{(version.value % 1000) // 10}"
    return None


@dataclass
class BuildEnvironment:
    """Whether this machine can build an engine for the target, and its stamps."""

    can_build: bool
    reason: str = ""
    trt: Any = None
    stamps: dict[str, Any] = field(default_factory=dict)


def gpu_stamps(trt: Any, device: int) -> dict[str, Any]:
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "tensorrt": str(trt.__version__),
        "cuda_runtime": torch.version.cuda,
        "cuda_driver": cuda_driver_version(),
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
        "device_index": device,
    }


def probe(
    *, target_cc: str | None, device: int, precision: str, dla_core: int | None, typing: str, disabled: bool
) -> BuildEnvironment:
    """Can an engine for this target be built here? The reason is written for the user."""
    if disabled:
        return BuildEnvironment(False, "engine build disabled (--opt build_engine=never)")
    trt, why = import_tensorrt()
    if trt is None:
        return BuildEnvironment(False, f"{why}; {INSTALL_HINT}")
    if not torch.cuda.is_available():
        return BuildEnvironment(
            False,
            f"TensorRT {trt.__version__} imports, but no CUDA GPU is visible to PyTorch here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); engines are built on the GPU "
            f"they run on: run build_engine.sh on the target",
            trt,
        )
    if device >= torch.cuda.device_count():
        return BuildEnvironment(
            False, f"CUDA device {device} does not exist (this machine has {torch.cuda.device_count()})", trt
        )
    stamps = gpu_stamps(trt, device)
    here = stamps["compute_capability"]
    if target_cc and here != target_cc:
        return BuildEnvironment(
            False,
            f"this GPU ({stamps['gpu']}, compute capability {here}) is not the target's (compute capability "
            f"{target_cc}); an engine only runs on the GPU type it was built for: run build_engine.sh on the target",
            trt,
            stamps,
        )
    if precision == "fp8" and tuple(int(x) for x in here.split(".")) < (8, 9):
        return BuildEnvironment(
            False, f"FP8 needs compute capability 8.9 or newer; this GPU is {here}", trt, stamps
        )
    major = int(str(trt.__version__).split(".")[0])
    if typing == "weak" and major >= 11:
        return BuildEnvironment(
            False,
            f"TensorRT {trt.__version__} builds strongly typed networks only; use --opt typing=strong",
            trt,
            stamps,
        )
    if dla_core is not None:
        try:
            cores = trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores
        except Exception:
            cores = 0
        if dla_core >= cores:
            return BuildEnvironment(
                False, f"DLA core {dla_core} requested but this device has {cores} DLA core(s)", trt, stamps
            )
    return BuildEnvironment(True, "", trt, stamps)


def _make_logger(trt: Any) -> tuple[Any, list[str]]:
    """A TensorRT logger that keeps warnings and errors for our error messages."""
    messages: list[str] = []

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity in (
                trt.ILogger.Severity.INTERNAL_ERROR,
                trt.ILogger.Severity.ERROR,
                trt.ILogger.Severity.WARNING,
            ):
                messages.append(f"{severity.name}: {msg}")

    return _Logger(), messages


def build_engine(
    trt: Any,
    *,
    onnx_path: Path,
    engine_path: Path,
    inputs: list[dict[str, Any]],
    strongly_typed: bool,
    flags: list[str],
    workspace_mib: int,
    optimization_level: int,
    dla_core: int | None,
    timing_cache_in: Path | None,
    timing_cache_out: list[Path],
) -> dict[str, Any]:
    """Parse the ONNX, configure the builder as the plan says, build and save the serialized engine
    and the timing cache. Returns what happened (seconds, sizes, warnings)."""
    logger, messages = _make_logger(trt)
    builder = trt.Builder(logger)
    creation = 0
    strong_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and strong_flag is not None:
        creation |= 1 << int(strong_flag)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and int(str(trt.__version__).split(".")[0]) < 10:
        creation |= 1 << int(explicit)  # TensorRT 8.x needs it; 10.x ignores it
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    if (
        dla_core is not None
        and hasattr(trt, "OnnxParserFlag")
        and hasattr(trt.OnnxParserFlag, "ADJUST_FOR_DLA")
    ):
        parser.set_flag(trt.OnnxParserFlag.ADJUST_FOR_DLA)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: " + "; ".join(errors[:5]),
            hint="the op may need a TensorRT plugin or a newer TensorRT; the TensorRT-ready ONNX is in the artifact",
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    config.builder_optimization_level = int(optimization_level)
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
    dynamic = [i for i in inputs if i["dynamic_axes"]]
    if dynamic:
        profile = builder.create_optimization_profile()
        for i in dynamic:
            profile.set_shape(i["name"], tuple(i["min"]), tuple(i["opt"]), tuple(i["max"]))
        config.add_optimization_profile(profile)
    cache_bytes = (
        timing_cache_in.read_bytes() if timing_cache_in is not None and timing_cache_in.is_file() else b""
    )
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        errors = [m for m in messages if not m.startswith("WARNING")]
        raise ExportError(
            f"TensorRT {trt.__version__} failed to build an engine from {onnx_path.name}: "
            + ("; ".join(errors[-5:]) or "no error message (see TensorRT's log)"),
        )
    engine_path.write_bytes(bytes(memoryview(serialized)))
    cache_blob = bytes(memoryview(config.get_timing_cache().serialize()))
    for path in timing_cache_out:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cache_blob)
    return {
        "build_seconds": round(seconds, 3),
        "engine_bytes": engine_path.stat().st_size,
        "timing_cache_bytes": len(cache_blob),
        "timing_cache_reused": bool(cache_bytes),
        "warnings": [m for m in messages if m.startswith("WARNING")][:20],
    }


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT8": torch.int8,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
        "UINT8": torch.uint8,
    }
    name = getattr(dtype, "name", str(dtype).split(".")[-1])
    if name not in table:
        raise ExportError(f"engine tensor type {name} has no torch equivalent")
    return table[name]


def check_engine_matches(stamps: dict[str, Any], trt: Any, device: int) -> list[str]:
    """Raise when the engine cannot run here (TensorRT version, compute capability); return notes
    for differences that only matter for speed (same compute capability, other GPU model)."""
    built = stamps.get("tensorrt")
    if built and str(built) != str(trt.__version__):
        raise ExportError(
            f"this engine was built with TensorRT {built}; this machine has TensorRT {trt.__version__}: engines "
            f"do not move across TensorRT versions",
            hint="rebuild it here: `kdtool export --target trt-local` or run build_engine.sh in the artifact folder",
        )
    if not torch.cuda.is_available():
        raise ExportError("a TensorRT engine needs an NVIDIA GPU; CUDA is not available here")
    major, minor = torch.cuda.get_device_capability(device)
    here = f"{major}.{minor}"
    if stamps.get("compute_capability") and stamps["compute_capability"] != here:
        raise ExportError(
            f"this engine was built for compute capability {stamps['compute_capability']} "
            f"({stamps.get('gpu', 'unknown GPU')}); this GPU ({torch.cuda.get_device_name(device)}) is {here}",
            hint="rebuild it on this GPU: `kdtool export --target trt-local`, or run build_engine.sh here",
        )
    notes = []
    name = torch.cuda.get_device_name(device)
    if stamps.get("gpu") and stamps["gpu"] != name:
        notes.append(f"engine built on {stamps['gpu']}, running on {name} (same compute capability {here})")
    return notes


class EngineGraph:
    """One deserialised engine with an execution context; called with torch tensors.

    Inputs are moved to the GPU (as the engine's input types), outputs are allocated as torch
    CUDA tensors, their addresses given to the context, ``execute_async_v3`` runs on PyTorch's
    current stream. ``__call__`` returns CPU tensors (the Predictor contract); ``run_device``
    keeps everything on the GPU (latency measurement)."""

    def __init__(
        self, trt: Any, engine_path: Path, input_names: list[str], output_names: list[str], device: int
    ) -> None:
        self.trt = trt
        self.device = torch.device("cuda", device)
        logger, self._messages = _make_logger(trt)
        self._runtime = trt.Runtime(logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise ExportError(
                f"TensorRT {trt.__version__} cannot deserialize {engine_path.name}: "
                + "; ".join(self._messages[-3:]),
                hint="engines are tied to the TensorRT version and GPU they were built with; rebuild on this machine",
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ExportError(
                f"TensorRT could not create an execution context for {engine_path.name} (GPU memory?)"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        engine_inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        engine_outputs = [n for n in names if n not in engine_inputs]
        if sorted(engine_inputs) != sorted(input_names) or sorted(engine_outputs) != sorted(output_names):
            raise ExportError(
                f"engine {engine_path.name} has inputs {engine_inputs} and outputs {engine_outputs}; the manifest "
                f"says {input_names} and {output_names}"
            )
        self.input_names = input_names
        self.output_names = output_names
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def run_device(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise TypeError(
                f"engine takes {len(self.input_names)} inputs ({self.input_names}), got {len(inputs)}"
            )
        keep = []
        for name, x in zip(self.input_names, inputs, strict=True):
            x = x.to(self.device, self.dtypes[name]).contiguous()
            keep.append(x)
            if not self.context.set_input_shape(name, tuple(x.shape)):
                try:
                    allowed = [tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0)]
                except Exception:
                    allowed = []
                raise ExportError(
                    f"input {name!r} shape {tuple(x.shape)} is outside the engine's optimisation profile "
                    f"{allowed} (min, opt, max)"
                )
            self.context.set_tensor_address(name, x.data_ptr())
        outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ExportError(
                    f"output {name!r} has a data-dependent shape {shape}; not supported by this runner"
                )
            out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            outputs.append(out)
            self.context.set_tensor_address(name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execute_async_v3 failed: " + "; ".join(self._messages[-3:]))
        stream.synchronize()
        del keep
        return tuple(outputs)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = self.run_device(*inputs)
        return tuple(o.float().cpu() if o.is_floating_point() else o.cpu() for o in outs)


def measure_latency(
    graph: EngineGraph, inputs: tuple[torch.Tensor, ...], *, warmup: int = 10, runs: int = 50
) -> dict[str, float]:
    """p50/p90 wall time (ms) of one engine execution with inputs already on the GPU."""
    on_device = tuple(x.to(graph.device) for x in inputs)
    for _ in range(warmup):
        graph.run_device(*on_device)
    times = []
    for _ in range(runs):
        torch.cuda.synchronize(graph.device)
        t0 = time.perf_counter()
        graph.run_device(*on_device)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": times[len(times) // 2], "p90_ms": times[int(len(times) * 0.9) - 1], "runs": runs}
