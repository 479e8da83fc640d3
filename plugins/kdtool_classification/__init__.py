"""Built-in plugin: generic image classification distillation (task ``image_classification``)."""

from __future__ import annotations

from kdtool import hookimpl
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "2.0"


@hookimpl
def register_tasks(register: Register) -> None:
    from .task import ClassificationTask

    register("image_classification", ClassificationTask, description=ClassificationTask.description)


@hookimpl
def register_models(register: Register) -> None:
    from .models import ARCHITECTURES

    for name, (cls, description) in ARCHITECTURES.items():
        register(name, cls, description=description)
