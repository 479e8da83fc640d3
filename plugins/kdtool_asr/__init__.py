"""kdtool_asr: TODM ("Train Once, Deploy Many", arXiv 2309.01947) for RNN-T speech recognition.

Task ``asr_supernet`` (see :mod:`kdtool_asr.task` for the method and its open-point choices),
architecture ``asr_supernet_rnnt`` (:mod:`kdtool_asr.models`), optimizer ``scaled_adam`` and
schedule ``schedule:eden`` (:mod:`kdtool_asr.optim`), the ``kdtool subnets`` command (:mod:`kdtool_asr.subnets`), and
the exporter ``sherpa`` with targets ``sherpa-onnx`` and ``sherpa-onnx-int8``: a directory
sherpa-onnx's offline transducer loads as it is, run by kdtool through sherpa-onnx
(:mod:`kdtool_asr.sherpa`, optional extra ``sherpa``).

Licenses: the embedded default data is synthesised with eSpeak NG, GPL-3.0-or-later, used
through the optional PyPI package ``espeakng-loader`` (extra ``speech``) via ctypes; nothing of
it is vendored. Without it, use ``data.source: librispeech`` or ``manifest``.
"""

from __future__ import annotations

from typing import Any

from kdtool import hookimpl
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "2.0"


@hookimpl
def register_tasks(register: Register) -> None:
    from .task import AsrSupernetTask

    register("asr_supernet", AsrSupernetTask, description=AsrSupernetTask.description)


@hookimpl
def register_models(register: Register) -> None:
    from .models import ARCHITECTURES

    for name, (factory, description) in ARCHITECTURES.items():
        register(name, factory, description=description)


@hookimpl
def register_optimizers(register: Register) -> None:
    from .optim import eden, scaled_adam

    register(
        "scaled_adam",
        scaled_adam,
        description="ScaledAdam (icefall): RMS-scaled Adam with learnt scales and median clipping",
    )
    register(
        "schedule:eden",
        eden,
        description="Eden schedule (icefall): decays with batches and epochs, linear warm-up",
    )


@hookimpl
def register_exporters(register: Register) -> None:
    from .sherpa import SherpaExporter

    register("sherpa", SherpaExporter, description=SherpaExporter.capabilities.description)


@hookimpl
def register_targets(register: Register) -> None:
    from .sherpa import TARGETS

    for profile in TARGETS:
        register(profile.name, profile, description=profile.description)


@hookimpl
def register_commands(app: Any) -> None:
    # lazy: `kdtool --help` lists the command without importing kdtool_asr.subnets (torch)
    from kdtool.cli.lazy import add_lazy_command

    add_lazy_command(
        app,
        "subnets",
        "kdtool_asr.subnets:register_subnets_command",
        help="List a supernet run's subnets (params, WER, latency here), plot the Pareto fronts, "
        "and with a budget add the most accurate subnet within it to the run as a model.",
    )
