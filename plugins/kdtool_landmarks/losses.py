"""KD-Loss (arXiv 2111.07047): the student learns from a Tolerant and a Tough teacher.

Per coordinate, with prediction P, ground truth G and a teacher T (all in the normalised
frame ``u = (W/2 - x) / W``, because the main loss mixes ``3|d|`` and ``d^2`` and so depends
on the coordinate scale):

1. reflect the teacher to P's side: ``T' = G + sign(P - G) |T - G|`` and the band edge
   ``B = G + sign(P - G) * band * |T - G|`` (band 0.15);
2. main loss with the Tolerant teacher: ``slope * |G - P|`` where ``|G - P| <= |G - T_tol|``,
   else ``(G - P)^2 + slope * |G - T_tol| - (G - T_tol)^2`` (continuous at the switch);
3. assistive loss per teacher, ``mean(w * |T' - P|)`` with ``w = alpha`` where P lies beyond
   T' (``|P - G| > |T - G|``), ``w = alpha_minus`` where P lies between T' and B
   (``band |T - G| < |P - G| <= |T - G|``) and 0 elsewhere (P closer to G than B);
   alpha_tough 1.9, alpha_minus_tough -0.45, alpha_tol 1.8, alpha_minus_tol -0.4;
4. total ``2 main + ALoss_tough + ALoss_tol``: the weights live in the recipe
   (``losses: [{name: main, weight: 2.0}, ...]``); this module returns the three terms.

A negative ``alpha_minus`` with ``|T' - P|`` shrinking towards T' means the loss *falls* as P
moves from T' towards G: between T' and B the student is pushed past the teacher.
Teachers and ground truth carry no gradient; the region weights are constants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def main_loss(
    pred: torch.Tensor, gt: torch.Tensor, tolerant: torch.Tensor, slope: float = 3.0
) -> torch.Tensor:
    """The piecewise main loss, averaged over all coordinates."""
    d = (gt - pred).abs()
    dt = (gt - tolerant).abs()
    inside = slope * d
    outside = (gt - pred) ** 2 + slope * dt - (gt - tolerant) ** 2
    return torch.where(d <= dt, inside, outside).mean()


def assistive_weights(
    pred: torch.Tensor,
    gt: torch.Tensor,
    teacher: torch.Tensor,
    alpha: float,
    alpha_minus: float,
    band: float = 0.15,
) -> torch.Tensor:
    """Per-coordinate weight of the assistive loss (constant: no gradient flows through it)."""
    d = (pred - gt).abs()
    dt = (teacher - gt).abs()
    w = torch.zeros_like(d)
    w = torch.where(d > dt, torch.full_like(d, alpha), w)
    w = torch.where((d > band * dt) & (d <= dt), torch.full_like(d, alpha_minus), w)
    return w.detach()


def assistive_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    teacher: torch.Tensor,
    alpha: float,
    alpha_minus: float,
    band: float = 0.15,
) -> torch.Tensor:
    """``mean(w * |T' - P|)`` with T' the teacher reflected to P's side of G."""
    reflected = gt + torch.sign(pred - gt).detach() * (teacher - gt).abs()
    w = assistive_weights(pred, gt, teacher, alpha, alpha_minus, band)
    return (w * (reflected - pred).abs()).mean()


class LandmarksKDLoss(nn.Module):
    """Registered as ``landmarks_kd_loss``: returns ``{"main", "assist_tough", "assist_tolerant"}``.

    A distillation loss over ``landmarks`` points: the student's prediction and the Tolerant
    Teacher's (the entry's ``between``), the ground truth (the student point's ``target``) and
    the Tough Teacher's (the teacher point ``landmarks/tough``, or ``tough``). Inputs are
    (B, N, 2) tensors in the normalised frame; teachers are detached here.
    """

    accepts = ("landmarks",)

    def __init__(
        self,
        slope: float = 3.0,
        band: float = 0.15,
        alpha_tough: float = 1.9,
        alpha_minus_tough: float = -0.45,
        alpha_tolerant: float = 1.8,
        alpha_minus_tolerant: float = -0.4,
    ) -> None:
        super().__init__()
        self.slope = slope
        self.band = band
        self.alpha_tough = alpha_tough
        self.alpha_minus_tough = alpha_minus_tough
        self.alpha_tolerant = alpha_tolerant
        self.alpha_minus_tolerant = alpha_minus_tolerant

    def forward(
        self,
        pred: torch.Tensor,
        tolerant: torch.Tensor,
        target: torch.Tensor | None = None,
        tough: torch.Tensor | None = None,
        teacher_points: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        if tough is None and teacher_points is not None:
            tough = teacher_points.get("landmarks/tough")
        if target is None or tough is None:
            raise ValueError(
                "landmarks_kd_loss needs the ground truth (the student point's target) and a Tough "
                "Teacher (the teacher point 'landmarks/tough')"
            )
        gt = target
        pred = pred.float()
        gt, tolerant, tough = gt.float().detach(), tolerant.float().detach(), tough.float().detach()
        return {
            "main": main_loss(pred, gt, tolerant, self.slope),
            "assist_tough": assistive_loss(
                pred, gt, tough, self.alpha_tough, self.alpha_minus_tough, self.band
            ),
            "assist_tolerant": assistive_loss(
                pred, gt, tolerant, self.alpha_tolerant, self.alpha_minus_tolerant, self.band
            ),
        }

    def extra_repr(self) -> str:
        return (
            f"slope={self.slope}, band={self.band}, tough=({self.alpha_tough}, {self.alpha_minus_tough}), "
            f"tolerant=({self.alpha_tolerant}, {self.alpha_minus_tolerant})"
        )


# ---------------------------------------------------------------- plain regression losses
# The baseline (and the teachers) train with one of these on the normalised frame; which one
# is the strongest plain baseline is chosen by bench/landmarks_baseline_loss.py.


def wing_loss(pred: torch.Tensor, target: torch.Tensor, width: float, curvature: float) -> torch.Tensor:
    """Wing loss (Feng et al., CVPR 2018), averaged over all coordinates.

    ``width * ln(1 + |d| / curvature)`` for ``|d| < width`` (a log curve that stays steep for
    small errors), else ``|d| - C`` with ``C = width - width * ln(1 + width / curvature)`` so
    the two pieces meet. ``width`` and ``curvature`` are in the loss frame's units.
    """
    if width <= 0 or curvature <= 0:
        raise ValueError(f"wing loss needs width > 0 and curvature > 0, got {width} and {curvature}")
    d = (pred - target).abs()
    c = width - width * math.log1p(width / curvature)
    return torch.where(d < width, width * torch.log1p(d / curvature), d - c).mean()


def plain_loss(
    name: str,
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth_l1_beta: float = 0.01,
    wing_width: float = 0.15,
    wing_curvature: float = 0.03,
) -> torch.Tensor:
    """The plain regression loss ``name`` (``l2``, ``l1``, ``smooth_l1``, ``wing``), mean over coordinates."""
    if name == "l2":
        return F.mse_loss(pred, target)
    if name == "l1":
        return F.l1_loss(pred, target)
    if name == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=smooth_l1_beta)
    if name == "wing":
        return wing_loss(pred, target, wing_width, wing_curvature)
    raise ValueError(f"unknown plain landmark loss {name!r}; choose l2, l1, smooth_l1 or wing")
