"""Built-in plugin: the ``onnx`` exporter and its ONNX Runtime target profiles."""

from __future__ import annotations

from kdtool import hookimpl
from kdtool.export.targets import TargetProfile
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "2.0"

TARGETS = [
    TargetProfile(
        name="onnx-cpu",
        exporter="onnx",
        description="x86-64 CPU, FP32, ORT graph optimisations (all) at load",
        precision="fp32",
        options={"graph_optimization": "all"},
        machine={"cpu_arch": "x86_64"},
    ),
    TargetProfile(
        name="onnx-cpu-int8",
        exporter="onnx",
        description=(
            "x86-64 CPU, static QDQ INT8 (U8S8: u8 activations, per-channel s8 weights, MinMax calibration on "
            "the recipe's data); weight-only INT8 for graphs whose task prefers it (RNN-T, transformers)"
        ),
        precision="int8",
        # U8S8 by measurement (bench/export_latency.py --scale paper): on x86 ORT's integer
        # kernels take u8 activations natively (VNNI / AMX u8 x s8); S8S8 QDQ ran slower than FP32.
        options={"quantization": "auto", "activations": "u8", "per_channel": True, "calibration": "minmax"},
        machine={"cpu_arch": "x86_64"},
    ),
    TargetProfile(
        name="onnx-arm64-int8",
        exporter="onnx",
        description=(
            "ARM64 CPU (phones, Jetson CPU, Apple silicon via ORT), static QDQ INT8 U8S8, per-channel "
            "(weight-only where the task prefers it); not measured on ARM hardware by kdtool"
        ),
        precision="int8",
        options={"quantization": "auto", "activations": "u8", "per_channel": True, "calibration": "minmax"},
        machine={"cpu_arch": "aarch64"},
    ),
    TargetProfile(
        name="onnx-cuda-fp16",
        exporter="onnx",
        description="NVIDIA GPU through ORT's CUDA provider, FP16 weights and ops, FP32 inputs/outputs",
        precision="fp16",
        options={"execution_provider": "cuda"},
        machine={"cuda": True},
    ),
]


@hookimpl
def register_exporters(register: Register) -> None:
    from .exporter import OnnxExporter

    register("onnx", OnnxExporter, description=OnnxExporter.capabilities.description)


@hookimpl
def register_targets(register: Register) -> None:
    for profile in TARGETS:
        register(profile.name, profile, description=profile.description)
