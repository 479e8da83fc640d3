"""kdtool plugin: semantic segmentation with Label Assisted Distillation (LAD).

Registers the ``segmentation_lad`` task and the ``segmentation_deeplabv3_r18`` and
``segmentation_pspnet_r18`` architectures. See :mod:`kdtool_segmentation.task` for the method
and the choices made for its open points.
"""

from __future__ import annotations

from typing import Any

from kdtool import hookimpl

KDTOOL_PLUGIN_API = "2.0"


@hookimpl
def register_tasks(register: Any) -> None:
    from .task import SegmentationLADTask

    register(
        "segmentation_lad",
        SegmentationLADTask,
        description="semantic segmentation, Label Assisted Distillation (LAD)",
    )


@hookimpl
def register_models(register: Any) -> None:
    from .models import deeplabv3_r18, pspnet_r18

    register(
        "segmentation_deeplabv3_r18",
        deeplabv3_r18,
        description="DeepLabV3 (ASPP) on a ResNet-18-style backbone, 4-channel stem, aux head",
    )
    register(
        "segmentation_pspnet_r18",
        pspnet_r18,
        description="PSPNet (pyramid pooling) on a ResNet-18-style backbone, 4-channel stem, aux head",
    )
