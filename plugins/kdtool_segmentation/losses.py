"""LAD losses: channel-wise distillation (CWD) and the teacher's symmetric dual-path CWD.

CWD (Shu et al., 2021): for each channel, a softmax over spatial positions at temperature T;
the KL divergence from the target's to the prediction's distribution, times T^2, divided by
N * C. :func:`channel_wise_distillation` is the same computation as ``kdtool.losses``'
registered ``cwd`` (the tests check it), with a switch to let the gradient flow into the
target too, which the dual-path teacher loss needs as a recipe option.

Symmetric CWD between the teacher's two paths (an *open* point; recipe stage option
``stop_gradient``): ``0.5 * (CWD(a -> sg(b)) + CWD(b -> sg(a)))``. By default
(``stop_gradient: true``) each direction stops the gradient at its target, so each path is
pulled towards the other's (constant) prediction and both paths receive gradient from exactly
one direction, as with an ordinary student/teacher pair. With ``stop_gradient: false`` both
directions back-propagate into both paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_wise_distillation(
    prediction: torch.Tensor, target: torch.Tensor, temperature: float = 4.0, *, detach_target: bool = True
) -> torch.Tensor:
    """CWD of ``prediction`` (N, C, H, W) towards ``target`` (same shape)."""
    if prediction.shape != target.shape:
        raise ValueError(f"CWD needs equal shapes, got {tuple(prediction.shape)} and {tuple(target.shape)}")
    n, c = prediction.shape[:2]
    if detach_target:
        target = target.detach()
    log_q = F.log_softmax(prediction.float().reshape(n, c, -1) / temperature, dim=-1)
    log_p = F.log_softmax(target.float().reshape(n, c, -1) / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum()
    return kl * temperature * temperature / (n * c)


def symmetric_cwd(
    path_a: torch.Tensor, path_b: torch.Tensor, temperature: float = 4.0, *, stop_gradient: bool = True
) -> torch.Tensor:
    """``0.5 * (CWD(a -> b) + CWD(b -> a))``; with ``stop_gradient`` each direction's target is
    detached (see the module docstring). Symmetric in its arguments."""
    forward = channel_wise_distillation(path_a, path_b, temperature, detach_target=stop_gradient)
    backward = channel_wise_distillation(path_b, path_a, temperature, detach_target=stop_gradient)
    return 0.5 * (forward + backward)
