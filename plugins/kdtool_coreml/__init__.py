"""Built-in plugin: the ``coreml`` exporter (``.mlpackage``) and its Apple target profiles.

The plugin registers even without coremltools: ``kdtool targets`` lists the profiles with
the install line (``pip install 'kdtool[coreml]'``) and ``kdtool export --target coreml``
stops with it, through ``Capabilities.requires``.

Choices for the open points (all are ``--opt`` options of the exporter, see
:class:`kdtool_coreml.options.CoreMLOptions`):

- ``coreml-iphone`` (the default of ``--target coreml``): A17 Pro class phones, iOS 17,
  compute units ALL, FP16, *enumerated* shapes (min/opt/max of each dynamic axis), because
  the Neural Engine runs enumerated shapes and falls back to GPU/CPU for ranges
  (``shapes=auto``: a graph with several flexible inputs, e.g. the ASR encoder, gets ranges
  before iOS 18, which allows only one enumerated input).
  ``--opt quantize=w8a8`` gives INT8 weights and activations (pays on A17 Pro / M4 NE).
- ``coreml-iphone-small``: 6-bit per-tensor k-means palettes (about 2.6x smaller than FP16
  with little accuracy loss); ``--opt quantize=palettize4`` goes further, and
  ``palettize_granularity=per_grouped_channel`` (iOS 18) keeps 4-bit accurate.
- ``coreml-mac``: macOS 14, CPU_AND_GPU, FP16, range shapes (the GPU handles any size).
- ``coreml-cpu``: CPU_ONLY, FP32, macOS 13, range shapes: the reference numerics.
- Image inputs stay tensors by default (the exact interface of the export spec, so the
  runner and parity checks use the same tensors); ``image_input=true`` gives a Core ML image
  with the task's scale and bias.
- Weights with at most 512 elements stay in float (``weight_threshold``): compressing them
  costs more in look-up tables and scales than it saves.
"""

from __future__ import annotations

from kdtool import hookimpl
from kdtool.export.targets import TargetProfile
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "2.0"

TARGETS = [
    TargetProfile(
        name="coreml-iphone",
        exporter="coreml",
        description="iPhone (A17 Pro class), iOS 17+, compute units ALL (Neural Engine), FP16, enumerated shapes where possible; "
        "--opt quantize=w8a8 for INT8 weights and activations",
        precision="fp16",
        options={"deployment_target": "iOS17", "compute_units": "ALL", "shapes": "auto", "quantize": "none"},
        machine={"os": "darwin", "device": "iPhone 15 Pro (A17 Pro) or newer"},
    ),
    TargetProfile(
        name="coreml-iphone-small",
        exporter="coreml",
        description="iPhone, iOS 17+, 6-bit palettized weights (k-means, per tensor), FP16 compute, enumerated shapes",
        precision="fp16",
        options={
            "deployment_target": "iOS17",
            "compute_units": "ALL",
            "shapes": "auto",
            "quantize": "palettize6",
            "palettize_granularity": "per_tensor",
            "palettize_mode": "kmeans",
        },
        machine={"os": "darwin", "device": "iPhone (A14 or newer)"},
    ),
    TargetProfile(
        name="coreml-mac",
        exporter="coreml",
        description="Mac (Apple silicon), macOS 14+, CPU_AND_GPU, FP16, range shapes",
        precision="fp16",
        options={"deployment_target": "macOS14", "compute_units": "CPU_AND_GPU", "shapes": "range"},
        machine={"os": "darwin", "device": "Mac with Apple silicon"},
    ),
    TargetProfile(
        name="coreml-cpu",
        exporter="coreml",
        description="Core ML on the CPU only, FP32, macOS 13+, range shapes (reference numerics)",
        precision="fp32",
        options={"deployment_target": "macOS13", "compute_units": "CPU_ONLY", "shapes": "range"},
        machine={"os": "darwin"},
    ),
]


@hookimpl
def register_exporters(register: Register) -> None:
    from .exporter import CoreMLExporter

    register("coreml", CoreMLExporter, description=CoreMLExporter.capabilities.description)


@hookimpl
def register_targets(register: Register) -> None:
    for profile in TARGETS:
        register(profile.name, profile, description=profile.description)
