"""The ``tensorrt`` exporter on CPU: TensorRT-ready Q/DQ ONNX, build plan, trtexec command, and
the clear messages where TensorRT or a GPU is missing (the engine path itself is in tests/gpu/)."""

from __future__ import annotations

import json
import shlex
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from kdtool_tensorrt import engine as eng
from kdtool_tensorrt import plan
from kdtool_tensorrt.exporter import TensorRTExporter, TensorRTOptions, check_target
from onnx import numpy_helper

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.errors import ExportError
from kdtool.export.driver import ExportRequest, export_model, resolve_target
from kdtool.export.spec import DynamicAxis, GraphSpec, TensorSpec
from kdtool.plugins import get_registries
from kdtool.recipe import load_recipe
from kdtool.run import Run
from tests.helpers import tiny_recipe, write_recipe

KNOWN_TRTEXEC_FLAGS = {
    "--onnx",
    "--saveEngine",
    "--loadEngine",
    "--stronglyTyped",
    "--fp16",
    "--int8",
    "--minShapes",
    "--optShapes",
    "--maxShapes",
    "--shapes",
    "--memPoolSize",
    "--builderOptimizationLevel",
    "--timingCacheFile",
    "--useDLACore",
    "--allowGPUFallback",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny digits run with a CNN student (Conv + Gemm to quantize); short, no baseline stage."""
    tmp = tmp_path_factory.mktemp("trt")
    recipe = tiny_recipe(tmp / "runs")
    recipe["models"]["student"] = {"arch": "cls_cnn", "options": {"base": 8, "stages": 2}}
    recipe["stages"] = recipe["stages"][:2]
    recipe["stages"][0]["steps"] = 10
    recipe["stages"][1]["steps"] = 40
    recipe["export"] = {"target": "tensorrt", "options": {"calibration_samples": 32}}
    path = write_recipe(tmp / "r.yaml", recipe)
    result = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    return result


def export(run_dir: Path, target: str, **kw: Any) -> Any:
    lines: list[str] = []
    outcome = export_model(ExportRequest(run=run_dir, target=target, **kw), echo=lines.append)
    outcome.lines = lines
    return outcome


@pytest.fixture(scope="module")
def int8(run_dir: Path) -> Any:
    return export(run_dir, "trt-t4", eval_limit=50)


@pytest.fixture(scope="module")
def orin_dla(run_dir: Path) -> Any:
    return export(run_dir, "trt-jetson-orin", options=["dla_core=0"], eval_limit=50)


def _consts(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


# ---------------------------------------------------------------- Q/DQ ONNX


def test_int8_qdq_onnx_runs_in_onnxruntime_and_matches_pytorch(run_dir: Path, int8: Any) -> None:
    m = int8.manifest
    assert m["format"] == "tensorrt" and m["target"] == "trt-t4" and m["precision"] == "int8"
    assert m["status"] == "ok"
    onnx_file = int8.directory / "model.trt.onnx"
    assert m["graphs"]["model"]["file"] == "model.trt.onnx"  # no engine here: the graph file is the ONNX
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    spec = Run.open(run_dir).export_spec("student")
    graph = spec.graphs[0]
    samples = list(graph.calibration_inputs(16))  # real digits, as the quantizer saw them
    x = torch.cat([s[0] for s in samples])
    with torch.no_grad():
        ref = graph.module(x)
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert 0 < rel < 0.25  # quantized (not bit-exact), within INT8 tolerance
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.8
    # the framework's verification used the same ONNX in ONNX Runtime on real samples
    sample_parity = [p for p in m["verification"]["parity"] if p["sizes"].get("sample") == 1]
    assert sample_parity and all(p["passed"] and p["max_rel_error"] < 0.25 for p in sample_parity)
    assert m["verification"]["checks"]["parity_runtime"].startswith("onnxruntime")


def test_int8_qdq_is_symmetric_per_channel_with_float_biases(int8: Any) -> None:
    model = onnx.load(str(int8.directory / "model.trt.onnx"))
    consts = _consts(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert q and dq
    # symmetric: every zero point is an INT8 zero
    for n in q + dq:
        zp = consts[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
    # per-channel weights: each Conv/Gemm weight comes from a DQ of INT8 data with one scale per output channel
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) >= 3
    for n in weighted:
        w_dq = producers[n.input[1]]
        assert w_dq.op_type == "DequantizeLinear"
        w = consts[w_dq.input[0]]
        scale = consts[w_dq.input[1]]
        assert w.dtype == np.int8 and scale.ndim == 1 and scale.shape[0] == w.shape[0] > 1
        assert producers[n.input[0]].op_type == "DequantizeLinear"  # activation input quantized too
        # bias left in float: an FP32 initializer, not a DequantizeLinear output
        assert n.input[2] in consts and consts[n.input[2]].dtype == np.float32
        assert n.input[2] not in producers
    # no Q/DQ on the outputs of weighted ops (TensorRT fuses Conv+ReLU)
    for n in q:
        src = producers.get(n.input[0])
        assert src is None or src.op_type not in ("Conv", "Gemm")
    report = int8.manifest["verification"]["checks"]["qdq"]["model"]
    assert (
        report["zero_points_all_zero"]
        and report["per_tensor_weights"] == 0
        and not report["quantized_biases"]
    )
    q_info = int8.manifest["details"]["graphs"]["model"]["quantization"]
    assert q_info["calibration_samples"] == 32  # the recipe's export options reached the exporter
    # only opsets the graph uses are imported (ORT's quantizer adds several)
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}


# ---------------------------------------------------------------- plan and command


def test_plan_profiles_cover_every_dynamic_axis(int8: Any, orin_dla: Any) -> None:
    for outcome, (lo, opt, hi) in ((int8, (1, 8, 64)), (orin_dla, (1, 1, 8))):
        build_plan = json.loads((outcome.directory / "build_plan.json").read_text())
        g = build_plan["graphs"]["model"]
        manifest_graph = outcome.manifest["graphs"]["model"]
        for tensor in manifest_graph["inputs"]:
            dyn = [i for i, s in enumerate(tensor["shape"]) if isinstance(s, str)]
            assert dyn, "the classifier's image has a dynamic batch axis"
            prof = g["optimization_profiles"][0][tensor["name"]]
            for i in dyn:
                assert (prof["min"][i], prof["opt"][i], prof["max"][i]) == (lo, opt, hi)
            static = [i for i, s in enumerate(tensor["shape"]) if not isinstance(s, str)]
            for i in static:
                assert prof["min"][i] == prof["opt"][i] == prof["max"][i] == tensor["shape"][i]
        assert outcome.manifest["details"]["axes"]["batch"] == {"min": lo, "opt": opt, "max": hi}
        assert build_plan["builder"]["strongly_typed"] is True and build_plan["builder"]["flags"] in (
            [],
            ["GPU_FALLBACK"],
        )


def _check_command(cmd: dict[str, Any], directory: Path) -> dict[str, str]:
    argv = cmd["argv"]
    assert shlex.split(cmd["shell"]) == argv  # the shell string is exactly the argv, quoted
    assert argv[0] == "trtexec"
    flags: dict[str, str] = {}
    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        assert key in KNOWN_TRTEXEC_FLAGS, arg
        flags[key] = value
    if "--onnx" in flags:
        assert (directory / flags["--onnx"]).is_file()
    return flags


def test_trtexec_command_is_well_formed(int8: Any, orin_dla: Any) -> None:
    g = json.loads((int8.directory / "build_plan.json").read_text())["graphs"]["model"]
    flags = _check_command(g["trtexec_build"], int8.directory)
    assert flags["--saveEngine"] == "model.engine" and "--stronglyTyped" in flags
    assert (
        "--int8" not in flags and "--fp16" not in flags
    )  # strong typing: precisions come from the Q/DQ graph
    assert flags["--minShapes"] == "image:1x1x8x8" and flags["--optShapes"] == "image:8x1x8x8"
    assert flags["--maxShapes"] == "image:64x1x8x8"
    assert flags["--memPoolSize"] == "workspace:2048" and flags["--builderOptimizationLevel"] == "3"
    assert flags["--timingCacheFile"] == "timing.cache" and "--useDLACore" not in flags
    run_flags = _check_command(g["trtexec_run"], int8.directory)
    assert run_flags == {"--loadEngine": "model.engine", "--shapes": "image:8x1x8x8"}
    script = (int8.directory / "build_engine.sh").read_text()
    assert g["trtexec_build"]["shell"] in script.splitlines()
    # DLA on Orin: core and GPU fallback, in the command and the builder settings
    o = json.loads((orin_dla.directory / "build_plan.json").read_text())
    oflags = _check_command(o["graphs"]["model"]["trtexec_build"], orin_dla.directory)
    assert oflags["--useDLACore"] == "0" and "--allowGPUFallback" in oflags
    assert o["builder"]["dla_core"] == 0 and o["builder"]["flags"] == ["GPU_FALLBACK"]
    files = {f["path"] for f in int8.manifest["files"]}
    assert {"model.trt.onnx", "build_plan.json", "build_engine.sh"} <= files


def test_command_builder_quotes_and_refuses_bad_input() -> None:
    p = plan.InputProfile("input:0", "float32", (1, 3), (4, 3), (8, 3), {0: "batch"})
    common = dict(
        onnx_file="model dir/m.onnx",
        engine_file="m.engine",
        precision="int8",
        workspace_mib=512,
        optimization_level=5,
        timing_cache="/tmp/cache with space/t.cache",
        dla_core=None,
        gpu_fallback=True,
    )
    argv = plan.trtexec_build_argv(profiles=[p], typing="weak", **common)
    assert "--minShapes='input:0':1x3" in argv and "--int8" in argv and "--fp16" in argv
    assert shlex.split(shlex.join(argv)) == argv and "'model dir/m.onnx'" not in argv
    assert plan.builder_flags("int8", "weak", None, True) == ["INT8", "FP16"]
    assert plan.builder_flags("int8", "strong", 0, True) == ["GPU_FALLBACK"]
    with pytest.raises(ExportError, match="cannot be written in a trtexec shape list"):
        plan.trtexec_build_argv(
            profiles=[plan.InputProfile("a,b", "float32", (1,), (1,), (2,), {0: "n"})],
            typing="strong",
            **common,
        )
    with pytest.raises(ExportError, match="control characters"):
        plan.trtexec_build_argv(profiles=[p], typing="strong", **{**common, "timing_cache": "x\n rm -rf /"})


def test_axis_overrides_and_hints() -> None:
    g = GraphSpec(
        "g",
        torch.nn.Identity(),
        [TensorSpec("x", ("batch", "time", 4))],
        [TensorSpec("y", ("batch", "time", 4))],
        dynamic_axes={"batch": DynamicAxis(1, 1, 16), "time": DynamicAxis(10, 50, 100)},
    )
    axes, notes = plan.resolve_axes(
        [g], {"time": {"opt": 80}}, {"batch": {"min": 1, "opt": 8, "max": 64}, "frames": {"max": 3}}
    )
    assert axes["batch"] == DynamicAxis(1, 8, 16) and notes  # hint clamped to the model's max, and said so
    assert axes["time"] == DynamicAxis(10, 80, 100)
    profiles = plan.input_profiles(g, axes)
    assert (profiles[0].min, profiles[0].opt, profiles[0].max) == ((1, 10, 4), (8, 80, 4), (16, 100, 4))
    with pytest.raises(ExportError, match="no dynamic axis 'frames'.*batch, time"):
        plan.resolve_axes([g], {"frames": {"max": 3}}, {})
    with pytest.raises(ExportError, match="outside what the model supports"):
        plan.resolve_axes([g], {"batch": {"max": 32}}, {})
    with pytest.raises(ExportError, match="min <= opt <= max"):
        plan.resolve_axes([g], {"time": {"opt": 5}}, {})


def test_cli_axes_override_reaches_plan(run_dir: Path) -> None:
    out = run_dir / "exports" / "trt-axes"
    m = export(
        run_dir,
        "trt-local",
        options=["axes={batch: {opt: 4, max: 16}}", "build_engine=never"],
        out=out,
        verify=False,
    ).manifest
    g = json.loads((out / "build_plan.json").read_text())["graphs"]["model"]
    assert g["inputs"][0]["opt"] == [4, 1, 8, 8] and g["inputs"][0]["max"] == [16, 1, 8, 8]
    assert m["precision"] == "fp16" and m["details"]["graphs"]["model"]["typing"].startswith("fp16 graph")
    # FP16 strongly typed: the graph carries FP16 weights, FP32 inputs and outputs
    model = onnx.load(str(out / "model.trt.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert "engine build disabled" in m["not_verified"][0]


def test_target_checks_refuse_impossible_combinations() -> None:
    with pytest.raises(ExportError, match="has no DLA"):
        check_target(TensorRTOptions(precision="fp16", compute_capability="7.5", dla_core=0), "trt-t4")
    with pytest.raises(ExportError, match="DLA runs FP16 and INT8 only"):
        check_target(
            TensorRTOptions(precision="fp32", compute_capability="8.7", dla_core=0), "trt-jetson-orin"
        )
    with pytest.raises(ExportError, match="no FP8 tensor cores"):
        check_target(TensorRTOptions(precision="fp8", compute_capability="8.0"), "trt-a100")
    check_target(TensorRTOptions(precision="fp8", compute_capability="9.0"), "trt-h100")
    with pytest.raises(ValueError, match="compute capability looks like"):
        TensorRTOptions(compute_capability="sm87")


def test_targets_registered() -> None:
    regs = get_registries()
    names = set(regs.targets.names())
    assert {"trt-local", "trt-jetson-orin", "trt-t4", "trt-a100", "trt-h100"} <= names
    assert regs.exporters.get("tensorrt").capabilities.default_profile == "trt-local"
    ccs = {
        n: regs.targets.get(n).options.get("compute_capability")
        for n in ("trt-jetson-orin", "trt-t4", "trt-a100", "trt-h100")
    }
    assert ccs == {"trt-jetson-orin": "8.7", "trt-t4": "7.5", "trt-a100": "8.0", "trt-h100": "9.0"}
    for name in names:
        profile = regs.targets.get(name)
        if profile.exporter == "tensorrt":
            TensorRTOptions.model_validate({**profile.options, "precision": profile.precision})
    assert "fp8" in regs.targets.get("trt-h100").description.lower()


# ---------------------------------------------------------------- missing TensorRT / GPU


def test_missing_tensorrt_is_said_plainly(int8: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    trt, why = eng.import_tensorrt()
    assert trt is None and "`tensorrt` Python package does not import here" in why
    env = eng.probe(
        target_cc="7.5", device=0, precision="int8", dla_core=None, typing="strong", disabled=False
    )
    assert not env.can_build and "pypi.nvidia.com" in env.reason and "build_engine.sh" in env.reason
    m = int8.manifest
    assert m["details"]["engine"]["built"] is False
    assert any(
        n.startswith("TensorRT engine not built: ") and "build_plan.json" in n for n in m["not_verified"]
    )
    assert any("engine not built" in line for line in int8.lines)
    ok, reason = TensorRTExporter().can_run_here(TensorRTOptions())
    assert not ok and "does not import" in reason
    with pytest.raises(ExportError, match="has no engine: it was not built at export time because") as err:
        TensorRTExporter().load(int8.directory, m)
    assert "build_engine.sh" in str(err.value) and "ONNX Runtime" in str(err.value)
    from kdtool import runtime

    with pytest.raises(ExportError, match="has no engine"):
        runtime.load(int8.directory)


def test_no_gpu_path_with_tensorrt_present(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.7.0"  # type: ignore[attr-defined]
    fake.Builder = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = eng.probe(
        target_cc=None, device=0, precision="fp16", dla_core=None, typing="strong", disabled=False
    )
    assert not env.can_build
    assert env.reason.startswith("TensorRT 10.7.0 imports, but no CUDA GPU is visible to PyTorch here")
    ok, reason = TensorRTExporter().can_run_here(TensorRTOptions())
    assert not ok and "needs an NVIDIA GPU" in reason
    # an engine stamped for another TensorRT is refused before deserialising
    with pytest.raises(ExportError, match="built with TensorRT 10.3.0; this machine has TensorRT 10.7.0"):
        eng.check_engine_matches({"tensorrt": "10.3.0", "compute_capability": "8.7"}, fake, 0)
    with pytest.raises(ExportError, match="needs an NVIDIA GPU"):
        eng.check_engine_matches({"tensorrt": "10.7.0", "compute_capability": "8.7"}, fake, 0)
    # a placeholder package (imports, but no bindings) is reported as such
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    trt, why = eng.import_tensorrt()
    assert trt is None and "placeholder" in why


def test_gpu_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.7.0"  # type: ignore[attr-defined]
    fake.Builder = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100")
    env = eng.probe(
        target_cc="8.7", device=0, precision="fp16", dla_core=None, typing="strong", disabled=False
    )
    assert (
        not env.can_build
        and "compute capability 9.0) is not the target's (compute capability 8.7)" in env.reason
    )
    assert env.stamps["gpu"] == "NVIDIA H100" and env.stamps["tensorrt"] == "10.7.0"
    assert eng.probe(
        target_cc=None, device=0, precision="fp16", dla_core=None, typing="strong", disabled=False
    ).can_build
    fake.__version__ = "11.0.0"  # type: ignore[attr-defined]
    env = eng.probe(target_cc=None, device=0, precision="fp16", dla_core=None, typing="weak", disabled=False)
    assert not env.can_build and "strongly typed networks only" in env.reason
    fake.__version__ = "10.7.0"  # type: ignore[attr-defined]
    with pytest.raises(ExportError, match="built for compute capability 8.7 .*this GPU .*is 9.0"):
        eng.check_engine_matches({"tensorrt": "10.7.0", "compute_capability": "8.7", "gpu": "Orin"}, fake, 0)
    notes = eng.check_engine_matches(
        {"tensorrt": "10.7.0", "compute_capability": "9.0", "gpu": "H200"}, fake, 0
    )
    assert notes and "same compute capability" in notes[0]


def test_missing_polygraphy_gives_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "polygraphy" else real(name, *a)
    )
    with pytest.raises(ExportError, match="needs 'polygraphy'") as err:
        resolve_target("trt-jetson-orin", get_registries())
    assert "kdtool[tensorrt]" in str(err.value)


# ---------------------------------------------------------------- engine build, against a recording fake


class _Recorder:
    """Just enough of the TensorRT Python API to record what build_engine asks for."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []


def _fake_trt(rec: _Recorder) -> Any:
    trt = types.SimpleNamespace(__version__="10.7.0")

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO = "IE", "E", "W", "I"

        def __init__(self) -> None:
            pass

    class Network:
        pass

    class Parser:
        num_errors = 0

        def __init__(self, network: Any, logger: Any) -> None:
            rec.calls.append(("parser",))

        def parse_from_file(self, path: str) -> bool:
            rec.calls.append(("parse", Path(path).name))
            return True

    class Profile:
        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            rec.calls.append(("set_shape", name, lo, opt, hi))

    class Cache:
        def serialize(self) -> bytes:
            return b"CACHE"

    class Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            rec.calls.append(("pool", pool, size))

        def __setattr__(self, key: str, value: Any) -> None:
            rec.calls.append(("config", key, value))

        def set_flag(self, flag: str) -> None:
            rec.calls.append(("flag", flag))

        def add_optimization_profile(self, profile: Any) -> None:
            rec.calls.append(("add_profile",))

        def create_timing_cache(self, blob: bytes) -> Cache:
            rec.calls.append(("create_cache", blob))
            return Cache()

        def set_timing_cache(self, cache: Any, ignore: bool) -> None:
            rec.calls.append(("set_cache", ignore))

        def get_timing_cache(self) -> Cache:
            return Cache()

    class Builder:
        def __init__(self, logger: Any) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            rec.calls.append(("network_flags", flags))
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Any, config: Any) -> bytes:
            rec.calls.append(("build",))
            return b"ENGINE"

    trt.ILogger = ILogger
    trt.Builder = Builder
    trt.OnnxParser = Parser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(GPU_FALLBACK="GPU_FALLBACK", FP16="FP16", INT8="INT8")
    trt.DeviceType = types.SimpleNamespace(DLA="DLA")
    return trt


def test_build_engine_configures_the_builder_as_planned(tmp_path: Path) -> None:
    rec = _Recorder()
    trt = _fake_trt(rec)
    onnx_path = tmp_path / "m.trt.onnx"
    onnx_path.write_bytes(b"")
    (tmp_path / "old.cache").write_bytes(b"OLD")
    result = eng.build_engine(
        trt,
        onnx_path=onnx_path,
        engine_path=tmp_path / "m.engine",
        inputs=[
            {
                "name": "image",
                "min": [1, 1, 8, 8],
                "opt": [8, 1, 8, 8],
                "max": [64, 1, 8, 8],
                "dynamic_axes": {"0": "batch"},
            },
            {"name": "static", "min": [1], "opt": [1], "max": [1], "dynamic_axes": {}},
        ],
        strongly_typed=True,
        flags=["GPU_FALLBACK"],
        workspace_mib=2048,
        optimization_level=4,
        dla_core=0,
        timing_cache_in=tmp_path / "old.cache",
        timing_cache_out=[tmp_path / "timing.cache", tmp_path / "shared" / "t.cache"],
    )
    calls = rec.calls
    assert ("network_flags", 1) in calls  # 1 << STRONGLY_TYPED
    assert ("parse", "m.trt.onnx") in calls
    assert ("pool", "WORKSPACE", 2048 << 20) in calls
    assert ("config", "builder_optimization_level", 4) in calls
    assert ("config", "default_device_type", "DLA") in calls and ("config", "DLA_core", 0) in calls
    assert ("flag", "GPU_FALLBACK") in calls
    assert [c for c in calls if c[0] == "set_shape"] == [
        ("set_shape", "image", (1, 1, 8, 8), (8, 1, 8, 8), (64, 1, 8, 8))
    ]
    assert ("create_cache", b"OLD") in calls and ("set_cache", False) in calls
    assert calls.index(("add_profile",)) < calls.index(("build",))
    assert (tmp_path / "m.engine").read_bytes() == b"ENGINE"
    assert (
        (tmp_path / "timing.cache").read_bytes() == b"CACHE" == (tmp_path / "shared" / "t.cache").read_bytes()
    )
    assert result["timing_cache_reused"] and result["engine_bytes"] == 6


def test_export_with_an_engine_records_files_and_stamps(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export's engine branch, with the TensorRT API replaced by the recording fake."""
    import kdtool_tensorrt.exporter as exporter_module

    rec = _Recorder()
    stamps = {
        "tensorrt": "10.7.0",
        "cuda_runtime": "12.6",
        "cuda_driver": "12.6",
        "gpu": "NVIDIA T4",
        "compute_capability": "7.5",
        "device_index": 0,
    }
    monkeypatch.setattr(
        exporter_module.eng, "probe", lambda **kw: eng.BuildEnvironment(True, "", _fake_trt(rec), stamps)
    )
    out = run_dir / "exports" / "fake-engine"
    m = export(run_dir, "trt-t4", precision="fp16", out=out, verify=False).manifest
    assert m["graphs"]["model"]["file"] == "model.engine" and (out / "model.engine").read_bytes() == b"ENGINE"
    assert {"model.engine", "model.trt.onnx", "timing.cache", "build_plan.json", "build_engine.sh"} <= {
        f["path"] for f in m["files"]
    }
    assert m["details"]["engine"] == {"built": True, "reason": None, **stamps}
    assert m["details"]["graphs"]["model"]["build"]["engine_bytes"] == 6
    assert ("set_shape", "image", (1, 1, 8, 8), (8, 1, 8, 8), (64, 1, 8, 8)) in rec.calls
    assert not any("engine not built" in n for n in m["not_verified"])
    # the real `tensorrt` is missing here, so loading says that (not a deserialisation error)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(
        ExportError, match="cannot run this TensorRT engine here: the `tensorrt` Python package"
    ):
        TensorRTExporter().load(out, m)


def test_fp8_qdq_keeps_the_calibrated_ranges(run_dir: Path, int8: Any, tmp_path: Path) -> None:
    """FP8 (E4M3) Q/DQ from the INT8 one: ranges mapped amax -> 448, FP8 zero points, opset 19."""
    from kdtool_tensorrt.onnx_prep import int8_to_fp8, qdq_report

    src = int8.directory / "model.trt.onnx"
    dst = tmp_path / "fp8.onnx"
    int8_to_fp8(src, dst)
    q8, f8 = onnx.load(str(src)), onnx.load(str(dst))
    c8, cf = _consts(q8), _consts(f8)
    assert next(o.version for o in f8.opset_import if o.domain in ("", "ai.onnx")) >= 19
    report = qdq_report(dst)
    assert report["quantized_types"] == ["FLOAT8E4M3FN"] and report["zero_points_all_zero"]
    assert report["per_channel_weights"] >= 3 and not report["quantized_biases"]
    for n8, nf in zip(q8.graph.node, f8.graph.node, strict=True):
        if n8.op_type == "QuantizeLinear":  # activation: same amax (127 * int8 scale == 448 * fp8 scale)
            assert np.allclose(c8[n8.input[1]] * 127, cf[nf.input[1]] * 448, rtol=1e-6)
        if (
            n8.op_type == "DequantizeLinear" and n8.input[0] in c8
        ):  # weights: dequantized values within E4M3 rounding
            shape = [-1] + [1] * (c8[n8.input[0]].ndim - 1)
            w8 = c8[n8.input[0]].astype(np.float32) * c8[n8.input[1]].reshape(shape)
            wf = cf[nf.input[0]].astype(np.float32) * cf[nf.input[1]].reshape(shape)
            assert np.abs(wf - w8).max() <= 0.07 * np.abs(w8).max()
    # on real (calibration-range) samples the FP8 graph stays within the FP8 tolerance of PyTorch
    graph = Run.open(run_dir).export_spec("student").graphs[0]
    x = torch.cat([s[0] for s in graph.calibration_inputs(8)])
    with torch.no_grad():
        ref = graph.module(x).numpy()
    # ORT's extended CPU fusions mis-execute FP8 Q/DQ (measured: accuracy 0.81 -> 0.54); basic level is exact
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    assert 0 < np.abs(got - ref).max() < 0.35 * np.abs(ref).max()
