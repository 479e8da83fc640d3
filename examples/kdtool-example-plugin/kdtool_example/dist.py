"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

Instead of matching the teacher's probabilities exactly (KL), DIST matches their relations:
per sample, the student's class probabilities should be linearly correlated with the
teacher's (inter-class relation); per class, the student's probabilities across the batch
should be correlated with the teacher's (intra-class relation). Pearson correlation is
invariant to shift and scale, which is what makes DIST robust to a much stronger teacher.

    loss = tau^2 * (beta * (1 - mean_i rho(p_s[i, :], p_t[i, :]))
                    + gamma * (1 - mean_c rho(p_s[:, c], p_t[:, c])))

with p = softmax(logits / tau) and rho the Pearson correlation. Logits with extra leading
axes (N, T, C) are flattened to (N*T, C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdtool import TensorSpec


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DIST(nn.Module):
    """The DIST loss on student and teacher logits; the teacher's are constants."""

    # Distillation point kinds it compares: any task exposing (batch, classes) logits.
    accepts = ("logits",)

    input_specs = (
        TensorSpec("student_logits", ("batch", "classes")),
        TensorSpec("teacher_logits", ("batch", "classes")),
    )

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.beta = beta
        self.gamma = gamma
        self.tau = tau

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        classes = student_logits.shape[-1]
        s = F.softmax(student_logits.float().reshape(-1, classes) / self.tau, dim=1)
        t = F.softmax(teacher_logits.detach().float().reshape(-1, classes) / self.tau, dim=1)
        inter = 1 - pearson_rows(s, t).mean()
        intra = 1 - pearson_rows(s.t(), t.t()).mean()
        return self.tau**2 * (self.beta * inter + self.gamma * intra)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, tau={self.tau}"
