"""RNN-T losses: the transducer loss and in-place lattice distillation.

In-place KD (TODM / AlphaNet) distils the largest subnet's joiner outputs into the other
subnets. The full distribution over the (T, U+1) lattice costs B T (U+1) V, so by default
each lattice node's distribution is collapsed to three classes (Panchapagesan et al., 2021,
"Efficient knowledge distillation for RNN-Transducer models"): blank, the correct next
label y_{u+1}, and the rest. Nodes with u = U (no next label) and padded frames are masked
out (*open point*; the blank-only row carries no label/rest split to distil).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torchaudio.functional as AF


def rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
) -> torch.Tensor:
    """Transducer negative log-likelihood per target token (sum over the batch / tokens)."""
    per_utt = AF.rnnt_loss(
        logits.float(),
        targets.int(),
        logit_lengths.int(),
        target_lengths.int(),
        blank=blank,
        reduction="none",
    )
    return per_utt.sum() / target_lengths.sum().clamp_min(1)


def lattice_mask(
    logit_lengths: torch.Tensor, target_lengths: torch.Tensor, frames: int, labels: int
) -> torch.Tensor:
    """(B, T, U+1) true at nodes (t, u) with t < T_b and u < U_b (a next label exists)."""
    t_ok = torch.arange(frames, device=logit_lengths.device)[None, :] < logit_lengths[:, None]
    u_ok = torch.arange(labels, device=logit_lengths.device)[None, :] < target_lengths[:, None]
    return t_ok[:, :, None] & u_ok[:, None, :]


def collapsed_log_probs(logits: torch.Tensor, targets: torch.Tensor, blank: int) -> torch.Tensor:
    """Lattice logits (B, T, U+1, V) and targets (B, U) -> (B, T, U+1, 3) log-probabilities of
    (blank, correct next label, everything else). At u = U the label is the blank (masked)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    batch, frames, labels, vocab = logp.shape
    next_label = torch.cat([targets, torch.full_like(targets[:, :1], blank)], 1)  # (B, U+1)
    index = next_label[:, None, :, None].expand(batch, frames, labels, 1)
    log_label = logp.gather(-1, index).squeeze(-1)
    log_blank = logp[..., blank]
    taken = (
        F.one_hot(next_label, vocab).bool()[:, None, :, :]
        | F.one_hot(torch.tensor(blank, device=logits.device), vocab).bool()
    )
    log_rest = logp.masked_fill(taken, float("-inf")).logsumexp(-1)
    return torch.stack([log_blank, log_label, log_rest], -1)


def lattice_point(
    logits: torch.Tensor, targets: torch.Tensor, blank: int, distribution: Literal["collapsed", "full"] = "collapsed"
) -> torch.Tensor:
    """The ``lattice`` distillation point of joiner logits (B, T, U+1, V): the collapsed
    (B, T, U+1, 3) log-probabilities by default, else the logits over the full vocabulary."""
    if distribution == "collapsed":
        return collapsed_log_probs(logits, targets, blank)
    return logits.float()


def lattice_kd(
    kd: torch.nn.Module,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
    distribution: Literal["collapsed", "full"] = "collapsed",
) -> torch.Tensor:
    """``kd(student, teacher, mask)`` (e.g. the alpha-divergence) over the lattice nodes."""
    mask = lattice_mask(logit_lengths, target_lengths, student_logits.shape[1], student_logits.shape[2])
    s = lattice_point(student_logits, targets, blank, distribution)
    t = lattice_point(teacher_logits.detach(), targets, blank, distribution)
    return kd(s, t, mask)
