"""Built-in loss modules, registered by name (``register_losses``). Plugins add their own.

All are ``nn.Module``s: a loss with parameters (the FitNets hint projection) is optimised and
checkpointed with its stage and dropped at export. Distillation losses take
``(student, teacher)`` with the teacher's values treated as constants, and declare the
distillation point kinds they ``accepts`` (:mod:`kdtool.distill`): the engine pairs a recipe's
``between: {student: <point>, teacher: <point>}`` only with a loss that accepts both kinds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class CrossEntropy(nn.Module):
    """Cross-entropy on class logits (..., C) or dense logits (N, C, ...), with ignore index."""

    def __init__(self, label_smoothing: float = 0.0, ignore_index: int = -100) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), target, label_smoothing=self.label_smoothing, ignore_index=self.ignore_index
        )


class MSE(nn.Module):
    """Mean squared error (regression targets)."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction.float(), target.float())


class SoftTargetKL(nn.Module):
    """Hinton's soft-target loss: KL(teacher_T || student_T) over the last dim, times T^2.

    Multiplying by T^2 keeps the gradient scale comparable to the hard-label loss as T grows.
    Averaged over every leading position (batch, and time or pixels if present), or over the
    positions where ``mask`` is true.
    """

    accepts = ("logits", "sequence_posteriors", "lattice")

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = self.temperature
        log_q = F.log_softmax(student_logits.float() / t, dim=-1)
        log_p = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
        per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
        return _masked_mean(per_position, mask) * t * t


class MSELogits(nn.Module):
    """Mean squared error between student and teacher logits (Ba & Caruana); with ``mask``
    (e.g. padded frames of a sequence) averaged over the valid positions only."""

    accepts = ("logits", "sequence_posteriors", "landmarks")

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mask is None:
            return F.mse_loss(student_logits.float(), teacher_logits.detach().float())
        squared = (student_logits.float() - teacher_logits.detach().float()).pow(2)
        per_position = squared.reshape(*mask.shape, -1).mean(-1)
        return _masked_mean(per_position, mask)


class AlphaDivergence(nn.Module):
    """AlphaNet's adaptive alpha-divergence: per sample max(D_{a-}(p||q), D_{a+}(p||q)).

    D_a(p||q) = sum_i q_i (r_i^a - 1) / (a (a - 1)) with r = p / q, p the detached teacher and
    q the student distribution. a -> 1 is KL(p||q) and a -> 0 is KL(q||p); both are their own
    branches. As in AlphaNet, only the unbounded importance weights are clipped at ``clip``:
    r^a in the general branch (for a = -1 that is q/p, unbounded where the teacher puts no
    mass) and r in the a = 0 branch (upper bound only). The a = 1 branch, KL(p||q), is not
    clipped: clipping it would cap the loss and shrink the gradient on a confidently wrong
    student by orders of magnitude. The branch with the larger (clipped) value is taken per
    position, and that value is returned.

    Because a clamp would zero the gradient where it binds, the gradient comes from the
    surrogate -sum_i w_i log q_i with the weight w = q * rho detached, where
    rho = r^a / a + 1 / (a (a - 1)) (rho = r for a = 1, log r - 1 for a = 0) is exactly
    -(f(r) - r f'(r)). w is formed in log space (w = p for a = 1), so a student probability
    that underflows does not lose the gradient.
    """

    accepts = ("logits", "sequence_posteriors", "lattice")

    def __init__(self, alpha_minus: float = -1.0, alpha_plus: float = 1.0, clip: float | None = 5.0) -> None:
        super().__init__()
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}")
        self.alpha_minus = alpha_minus
        self.alpha_plus = alpha_plus
        self.clip = clip

    def _branch(
        self, log_p: torch.Tensor, log_q: torch.Tensor, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(divergence, surrogate weight q * rho) per position, both without gradient."""
        p, q = log_p.exp(), log_q.exp()
        log_r = log_p - log_q
        log_cap = math.inf if self.clip is None else math.log(self.clip)
        if abs(alpha - 1.0) < 1e-6:  # KL(p || q) = sum p log r, never clipped
            value = torch.where(p > 0, p * log_r, torch.zeros_like(p)).sum(-1)
            weight = p  # q * rho with rho = r
        elif abs(alpha) < 1e-6:  # KL(q || p) = sum q (-log r), r clipped from above
            log_r = log_r.clamp(max=log_cap)
            value = (q * -log_r).sum(-1)
            weight = q * (log_r - 1.0)
        else:
            ratio_a = (alpha * log_r).clamp(max=log_cap).exp()  # r^a clipped at the cap
            norm = 1.0 / (alpha * (alpha - 1.0))
            value = (q * (ratio_a - 1.0)).sum(-1) * norm
            weight = q * (ratio_a / alpha + norm)
        return value, weight

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        log_q = F.log_softmax(student_logits.float(), dim=-1)
        with torch.no_grad():
            log_p = F.log_softmax(teacher_logits.detach().float(), dim=-1)
            d_minus, w_minus = self._branch(log_p, log_q, self.alpha_minus)
            d_plus, w_plus = self._branch(log_p, log_q, self.alpha_plus)
            take_minus = d_minus > d_plus
            weight = torch.where(take_minus.unsqueeze(-1), w_minus, w_plus)
            value = torch.where(take_minus, d_minus, d_plus)
        surrogate = -(weight * log_q).sum(-1)
        per_position = surrogate + (value - surrogate).detach()
        return _masked_mean(per_position, mask)


class FeatureHint(nn.Module):
    """FitNets hint: a learned projection of student features onto the teacher's, then MSE.

    Works on (N, C) vectors and (N, C, ...) feature maps (a 1x1 convolution, written as a
    linear map over the channel axis). The projection is trained with the stage and dropped
    at export.
    """

    accepts = ("features", "logits")

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.projection = nn.Linear(student_channels, teacher_channels)

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        projected = self.projection(student_features.float().movedim(1, -1)).movedim(-1, 1)
        return F.mse_loss(projected, teacher_features.detach().float())


class ChannelWiseDistillation(nn.Module):
    """CWD (Shu et al.): per channel, a softmax over spatial positions at temperature T; the
    KL from the teacher's to the student's channel distribution, times T^2, divided by N*C.
    ``detach_teacher=False`` lets the gradient reach the target too (a model distilling into
    itself, e.g. segmentation's symmetric dual-path CWD)."""

    accepts = ("features",)

    def __init__(self, temperature: float = 4.0, detach_teacher: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature
        self.detach_teacher = detach_teacher

    def forward(self, student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
        if student_maps.shape != teacher_maps.shape:
            raise ValueError(
                f"CWD needs equal shapes, got {tuple(student_maps.shape)} and {tuple(teacher_maps.shape)}"
            )
        n, c = student_maps.shape[:2]
        t = self.temperature
        if self.detach_teacher:
            teacher_maps = teacher_maps.detach()
        s = student_maps.float().reshape(n, c, -1) / t
        p_log = F.log_softmax(teacher_maps.float().reshape(n, c, -1) / t, dim=-1)
        q_log = F.log_softmax(s, dim=-1)
        kl = (p_log.exp() * (p_log - q_log)).sum()
        return kl * t * t / (n * c)


class CTCPosteriorKD(nn.Module):
    """KD on per-frame CTC posteriors (same frame rate for student and teacher).

    Frame-wise KL(teacher_T || student_T) over the vocabulary, times T^2, averaged over the
    valid (unpadded) frames. Frames where the teacher's blank probability exceeds
    ``blank_threshold`` are weighted by ``blank_weight``: most CTC frames are blank, and
    without this the student mostly learns to copy blanks.
    Inputs: logits (N, T, V) and ``lengths`` (N,) valid frames per sample.
    """

    accepts = ("sequence_posteriors",)

    def __init__(
        self,
        temperature: float = 2.0,
        blank: int = 0,
        blank_threshold: float = 0.9,
        blank_weight: float = 0.1,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.blank = blank
        self.blank_threshold = blank_threshold
        self.blank_weight = blank_weight

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = self.temperature
        n, frames, _ = student_logits.shape
        log_q = F.log_softmax(student_logits.float() / t, dim=-1)
        teacher = teacher_logits.detach().float()
        log_p = F.log_softmax(teacher / t, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (N, T)
        weight = torch.ones_like(kl)
        blank_prob = F.softmax(teacher, dim=-1)[..., self.blank]
        weight = torch.where(blank_prob > self.blank_threshold, weight * self.blank_weight, weight)
        if lengths is not None:
            valid = torch.arange(frames, device=kl.device).unsqueeze(0) < lengths.to(kl.device).unsqueeze(1)
            weight = weight * valid
        return (kl * weight).sum() / weight.sum().clamp_min(1e-8) * t * t


BUILTIN_LOSSES: dict[str, tuple[type[nn.Module], str]] = {
    "ce": (CrossEntropy, "cross-entropy on labels"),
    "mse": (MSE, "mean squared error on targets"),
    "kl_t": (SoftTargetKL, "soft-target KL with temperature, x T^2 (Hinton)"),
    "mse_logits": (MSELogits, "MSE between student and teacher logits"),
    "alpha_div": (
        AlphaDivergence,
        "adaptive alpha-divergence (AlphaNet: max of a=-1, a=+1; unbounded ratios clipped)",
    ),
    "hint": (FeatureHint, "feature hint through a learned projection (FitNets)"),
    "cwd": (ChannelWiseDistillation, "channel-wise distillation of dense maps (CWD)"),
    "ctc_kd": (CTCPosteriorKD, "KD on per-frame CTC posteriors, blank frames down-weighted"),
}
