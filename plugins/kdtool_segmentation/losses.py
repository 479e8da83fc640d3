"""LAD's symmetric dual-path CWD, built on the registered ``cwd`` loss.

CWD (Shu et al., 2021) is :class:`kdtool.losses.ChannelWiseDistillation`, registered as
``cwd``: for each channel, a softmax over spatial positions at temperature T; the KL divergence
from the target's to the prediction's distribution, times T^2, divided by N * C. The student
stage uses it through the engine's distillation points (``features/out_lowres`` or
``features/out``); the teacher stage compares its own two paths with it here.

Symmetric CWD between the teacher's two paths (an *open* point; recipe stage option
``stop_gradient``): ``0.5 * (CWD(a -> sg(b)) + CWD(b -> sg(a)))``. By default
(``stop_gradient: true``) each direction stops the gradient at its target, so each path is
pulled towards the other's (constant) prediction and both paths receive gradient from exactly
one direction, as with an ordinary student/teacher pair. With ``stop_gradient: false`` both
directions back-propagate into both paths.
"""

from __future__ import annotations

import torch

from kdtool.losses import ChannelWiseDistillation


def symmetric_cwd(
    path_a: torch.Tensor, path_b: torch.Tensor, temperature: float = 4.0, *, stop_gradient: bool = True
) -> torch.Tensor:
    """``0.5 * (CWD(a -> b) + CWD(b -> a))``; with ``stop_gradient`` each direction's target is
    detached (see the module docstring). Symmetric in its arguments."""
    cwd = ChannelWiseDistillation(temperature, detach_teacher=stop_gradient)
    return 0.5 * (cwd(path_a, path_b) + cwd(path_b, path_a))
