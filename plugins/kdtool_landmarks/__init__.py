"""Built-in plugin: facial landmarks with KD-Loss from two teachers (task ``facial_landmarks``).

Registers the task, the ``landmarks_*`` architectures and the ``landmarks_kd_loss`` loss.
See :mod:`kdtool_landmarks.task` for the method and the choices made for its open points.
"""

from __future__ import annotations

from kdtool import hookimpl
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "2.0"


@hookimpl
def register_tasks(register: Register) -> None:
    from kdtool_landmarks.task import LandmarksTask

    register("facial_landmarks", LandmarksTask, description=LandmarksTask.description)


@hookimpl
def register_models(register: Register) -> None:
    from kdtool_landmarks.models import MODELS

    for name, (cls, description) in MODELS.items():
        register(name, cls, description=description)


@hookimpl
def register_losses(register: Register) -> None:
    from kdtool_landmarks.losses import LandmarksKDLoss

    register(
        "landmarks_kd_loss",
        LandmarksKDLoss,
        description="KD-Loss (Tolerant + Tough teachers): main, assist_tough, assist_tolerant",
    )


@hookimpl
def register_report_figures(register: Register) -> None:
    from pathlib import Path

    def landmark_figures(run_dir: Path) -> list[Path]:
        return sorted((run_dir / "figures").glob("landmarks_*.png"))

    register(
        "landmarks_figures",
        landmark_figures,
        description="CED curve and prediction sheets of a landmarks run",
    )
