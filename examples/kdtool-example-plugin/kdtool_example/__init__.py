"""kdtool's example third-party plugin: the ``dist`` KD loss, the ``pt2`` exporter and the
``pt2-cpu`` target profile.

Everything a plugin on PyPI does, in the repository: its own pyproject.toml with the
``kdtool`` entry point, hook implementations here, heavy work in sub-modules imported inside
the hooks (so ``kdtool plugins`` stays fast), and tests that run kdtool's conformance kit.
"""

from __future__ import annotations

from kdtool import hookimpl
from kdtool.export.targets import TargetProfile
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "2.0"

PT2_CPU = TargetProfile(
    name="pt2-cpu",
    exporter="pt2",
    description="PyTorch 2 ExportedProgram (.pt2) for CPU runtimes (torch.export.load, AOTInductor, ExecuTorch)",
    precision="fp32",
)


@hookimpl
def register_losses(register: Register) -> None:
    from kdtool_example.dist import DIST

    register(
        "dist", DIST, description="DIST: inter- and intra-class Pearson relations of the softmax (Huang 2022)"
    )


@hookimpl
def register_exporters(register: Register) -> None:
    from kdtool_example.pt2 import Pt2Exporter

    register("pt2", Pt2Exporter, description=Pt2Exporter.capabilities.description)


@hookimpl
def register_targets(register: Register) -> None:
    register(PT2_CPU.name, PT2_CPU, description=PT2_CPU.description)
