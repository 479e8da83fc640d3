"""kdtool_tensorrt: the ``tensorrt`` exporter and its NVIDIA GPU / Jetson target profiles.

The exporter registers even where TensorRT is missing (its Python packages on PyPI are
placeholders; the real libraries come from NVIDIA): it then writes the TensorRT-ready ONNX, the
build plan and the trtexec command, and says why no engine was built. Its hard requirements
are polygraphy and onnx-graphsurgeon (the ``tensorrt`` extra), declared in
``Capabilities.requires`` so ``kdtool targets`` prints the install line.

Target profiles carry the target GPU's compute capability (an engine only runs on the GPU type
it was built for: the build is skipped, with the reason, on any other GPU), a default precision
and batch-axis hints (clamped to each model's own range). ``trt-local`` (the exporter's default)
means "the GPU of the machine that builds".
"""

from __future__ import annotations

from kdtool import hookimpl
from kdtool.export.targets import TargetProfile
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "2.0"

TARGETS = [
    TargetProfile(
        name="trt-local",
        exporter="tensorrt",
        description="TensorRT engine for the GPU of the machine that builds (FP16, strongly typed)",
        precision="fp16",
        options={},
        machine={"cuda": True},
    ),
    TargetProfile(
        name="trt-jetson-orin",
        exporter="tensorrt",
        description=(
            "NVIDIA Jetson Orin (compute capability 8.7): FP16, or --precision int8 (explicit Q/DQ); "
            "DLA with --opt dla_core=0 (GPU fallback on); batch tuned for 1 (max 8)"
        ),
        precision="fp16",
        options={
            "compute_capability": "8.7",
            "workspace_mib": 1024,
            "default_axes": {"batch": {"min": 1, "opt": 1, "max": 8}},
        },
        machine={
            "cuda": True,
            "compute_capability": "8.7",
            "device": "Jetson AGX Orin / Orin NX / Orin Nano",
            "dla": True,
        },
    ),
    TargetProfile(
        name="trt-t4",
        exporter="tensorrt",
        description="NVIDIA T4 (compute capability 7.5): INT8 explicit Q/DQ (per-channel, symmetric), batch tuned for 8",
        precision="int8",
        options={
            "compute_capability": "7.5",
            "workspace_mib": 2048,
            "default_axes": {"batch": {"min": 1, "opt": 8, "max": 64}},
        },
        machine={"cuda": True, "compute_capability": "7.5", "device": "Tesla T4"},
    ),
    TargetProfile(
        name="trt-a100",
        exporter="tensorrt",
        description="NVIDIA A100 (compute capability 8.0): FP16 (INT8 with --precision int8), batch tuned for 16",
        precision="fp16",
        options={
            "compute_capability": "8.0",
            "workspace_mib": 4096,
            "default_axes": {"batch": {"min": 1, "opt": 16, "max": 128}},
        },
        machine={"cuda": True, "compute_capability": "8.0", "device": "A100"},
    ),
    TargetProfile(
        name="trt-h100",
        exporter="tensorrt",
        description=(
            "NVIDIA H100 (compute capability 9.0): FP16; FP8 (E4M3 Q/DQ) with --precision fp8 where supported "
            "(compute capability 8.9+, TensorRT 10; experimental, not checked on FP8 hardware); batch tuned for 16"
        ),
        precision="fp16",
        options={
            "compute_capability": "9.0",
            "workspace_mib": 4096,
            "default_axes": {"batch": {"min": 1, "opt": 16, "max": 128}},
        },
        machine={"cuda": True, "compute_capability": "9.0", "device": "H100", "fp8": True},
    ),
]


@hookimpl
def register_exporters(register: Register) -> None:
    from .exporter import TensorRTExporter

    register("tensorrt", TensorRTExporter, description=TensorRTExporter.capabilities.description)


@hookimpl
def register_targets(register: Register) -> None:
    for profile in TARGETS:
        register(profile.name, profile, description=profile.description)
