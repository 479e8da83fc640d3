"""Label noising for LAD: how the label map becomes the teacher's 4th input channel.

Teacher stage (METHODS.md section 4): per image, each class id is mapped to its own random
scalar drawn from N(0, 1), pixel noise N(0, 0.03^2) is added, and the map is scaled by 100.
Because the class -> value map is redrawn for every image, the channel tells the teacher
*which pixels belong together* (the partition), never which class they are: the class must
still come from the image.

Student stage: the frozen teacher sees a fixed mapping plus N(0, 0.02^2) noise, x 100. The
paper's mapping ``k -> (k - 11) / 10`` assumes VOC's 21 classes. Generalised from the class
count C it is

    k -> (k - (C + 1) / 2) / ((C - 1) / 2)

which is exactly ``(k - 11) / 10`` for C = 21 and spreads any C over about [-1.1, 0.9], the
same range of values the teacher met during training (N(0, 1) draws).

Void pixels (255), an *open point*: the raw mapping would send them to (255 - 11) / 10 = 24.4,
i.e. 2440 after scaling, far outside anything the teacher was trained on. Our choice
(recipe option ``void``):

- ``"extra_class"`` (default): void is treated as one more region. In the teacher stage it gets
  its own N(0, 1) draw per image, like a class; in the student stage it carries the value the
  generalised mapping gives to k = C (exactly 1.0, the next step after the last class; 1.0 for
  VOC), distinct from every class value. The CE ignores void pixels, so the teacher learns to
  classify them from the image alone, and the channel only says "this is a separate region".
- ``"zero"``: void carries 0 (plus pixel noise) in both stages. Note that 0 is also the value
  of class (C + 1) / 2 under the fixed mapping when C is odd.
"""

from __future__ import annotations

from typing import Literal

import torch

VOID_INDEX = 255
VoidMode = Literal["extra_class", "zero"]


def fixed_class_values(num_classes: int) -> torch.Tensor:
    """The student-stage class -> value table of length ``num_classes + 1`` (last entry: void
    under ``"extra_class"``): ``(k - (C + 1) / 2) / ((C - 1) / 2)`` for k = 0..C."""
    if num_classes < 2:
        raise ValueError(f"label noising needs at least 2 classes, got {num_classes}")
    k = torch.arange(num_classes + 1, dtype=torch.float32)
    return (k - (num_classes + 1) / 2) / ((num_classes - 1) / 2)


def _lookup(labels: torch.Tensor, table: torch.Tensor, num_classes: int, void: VoidMode) -> torch.Tensor:
    """Map a (N, H, W) label tensor through a (N, C + 1) per-image table (last column: void)."""
    n = labels.shape[0]
    idx = labels.long().clone()
    is_void = idx == VOID_INDEX
    bad = (~is_void) & ((idx < 0) | (idx >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"label map has values outside 0..{num_classes - 1} and {VOID_INDEX}")
    idx[is_void] = num_classes
    flat = idx.reshape(n, -1)
    values = torch.gather(table, 1, flat).reshape(labels.shape)
    if void == "zero":
        values = values.masked_fill(is_void, 0.0)
    return values


def teacher_label_channel(
    labels: torch.Tensor,
    num_classes: int,
    *,
    generator: torch.Generator | None = None,
    pixel_std: float = 0.03,
    scale: float = 100.0,
    void: VoidMode = "extra_class",
) -> torch.Tensor:
    """Teacher-stage 4th channel (N, 1, H, W): a fresh class -> N(0, 1) map per image, plus
    N(0, pixel_std^2) pixel noise, times ``scale``. Draws from ``generator`` (the step's)."""
    n = labels.shape[0]
    device = labels.device
    table = torch.randn((n, num_classes + 1), generator=generator, device=device)
    values = _lookup(labels, table, num_classes, void)
    noise = torch.randn(values.shape, generator=generator, device=device) * pixel_std
    return ((values + noise) * scale).unsqueeze(1)


def student_stage_label_channel(
    labels: torch.Tensor,
    num_classes: int,
    *,
    generator: torch.Generator | None = None,
    pixel_std: float = 0.02,
    scale: float = 100.0,
    void: VoidMode = "extra_class",
) -> torch.Tensor:
    """Student-stage 4th channel for the frozen teacher (N, 1, H, W): the fixed mapping
    :func:`fixed_class_values`, plus N(0, pixel_std^2) noise (none when ``pixel_std`` is 0),
    times ``scale``."""
    n = labels.shape[0]
    table = fixed_class_values(num_classes).to(labels.device).expand(n, -1)
    values = _lookup(labels, table, num_classes, void)
    if pixel_std > 0:
        values = values + torch.randn(values.shape, generator=generator, device=labels.device) * pixel_std
    return (values * scale).unsqueeze(1)
