"""HTR-JAND recogniser: gated-convolution encoder with SE blocks, combined attention, CTC head.

``HTRJand(image (N, 1, H, W)) -> log-probabilities (N, W / 4, num_classes)``, blank = 0.

- :class:`FullGatedConv2d`: one convolution with ``2F`` filters, output = first ``F`` channels
  times the sigmoid of the last ``F`` (the gate).
- :class:`SqueezeExcitation`: channel re-weighting from globally pooled features.
- :class:`CombinedAttention`: a multi-head self-attention branch and a "Proxima" branch run
  side by side on the same input and are fused by a linear projection of their
  concatenation. Proxima's formula is an *open* point of the paper; we read it as
  locality-biased attention: each head subtracts a learned, non-negative penalty times the
  frame distance ``|i - j|`` from its logits (``softplus(slope_h) * |i - j|``), so it
  focuses on neighbouring frames while the MHSA branch sees the whole line.
- Frame rate: the width is always pooled by 4 (:data:`~kdtool_htr.datasets.FRAME_STRIDE`),
  so teacher and student produce the same number of frames, which per-frame KD needs.
- Padding: a line's output does not depend on what else is in its batch. Lines are ink-high on
  a zero background and zero padded on the right, so a column is padding when it and every
  column after it are all zero; :func:`valid_frames` reads each line's frame count from the
  image itself (the last column with any non-zero pixel, rounded up to the frame stride).
  The same rule therefore holds in training, evaluation and the exported graph, which keeps
  its single ``image`` input. Padded columns are zeroed after each encoder block (as a
  convolution's own zero padding would see them), the SE gate averages over valid columns
  only, and both attention branches mask padded frames as keys. Trailing blank columns of a
  line are treated like padding (they carry no ink). Left alone: batch norm in training mode
  still computes its batch statistics over padded columns (evaluation uses running statistics).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdtool.engine.options import forwards_options

from .datasets import FRAME_STRIDE

_MASKED_LOGIT = -1.0e4  # exp(-1e4) is exactly 0 in fp32 and fp16, and -1e4 is finite in fp16


def valid_frames(image: torch.Tensor) -> torch.Tensor:
    """(N,) valid output frames of zero-padded lines (N, 1, H, W): the last column with any
    non-zero pixel, rounded up to the frame stride, at least one frame."""
    width = image.shape[-1]
    inked = image.detach().abs().amax(dim=(1, 2)) > 0  # (N, W)
    position = torch.arange(1, width + 1, device=image.device)
    last = (position[None, :] * inked.long()).amax(dim=1)  # 0 for a blank line
    frames = torch.div(last + FRAME_STRIDE - 1, FRAME_STRIDE, rounding_mode="floor")
    # maximum, not clamp_min: coremltools cannot convert clamp_min
    return torch.maximum(frames, torch.ones_like(frames))


def column_mask(frames: torch.Tensor, width: int, per_frame: int) -> torch.Tensor:
    """(N, width) bool: the first ``frames * per_frame`` columns of each line are valid."""
    return torch.arange(width, device=frames.device)[None, :] < (frames * per_frame)[:, None]


class FullGatedConv2d(nn.Module):
    """``conv`` with ``2 * out_channels`` filters; returns ``a * sigmoid(g)`` for the halves."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear, gate = self.conv(x).chunk(2, dim=1)
        return linear * torch.sigmoid(gate)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018): scale channels by a gate computed from their
    spatial means."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (N, W) bool: average over the valid columns only (padding does not move the gate)."""
        if mask is None:
            s = x.mean(dim=(2, 3))
        else:
            m = mask[:, None, None, :].to(x.dtype)
            count = m.sum(dim=(2, 3)) * x.shape[2]
            s = (x * m).sum(dim=(2, 3)) / torch.maximum(count, torch.ones_like(count))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class GatedSEBlock(nn.Module):
    """Gated convolution, batch norm, SE, then max-pooling by ``pool`` (height, width)."""

    def __init__(
        self, in_channels: int, out_channels: int, pool: tuple[int, int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.gated = FullGatedConv2d(in_channels, out_channels)
        self.norm = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcitation(out_channels)
        self.pool = nn.MaxPool2d(pool) if pool != (1, 1) else nn.Identity()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (N, W) bool marks the valid columns of ``x``; padded ones leave as zeros."""
        y = self.norm(self.gated(x))
        if mask is not None:
            y = y * mask[:, None, None, :].to(y.dtype)
        return self.dropout(self.pool(self.se(y, mask)))


class SelfAttention(nn.Module):
    """Multi-head self-attention over frames; with ``locality=True`` it is Proxima attention:
    logits minus ``softplus(slope_h) * |i - j|`` with one learned slope per head."""

    def __init__(self, dim: int, heads: int, *, locality: bool, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.dropout = nn.Dropout(dropout)
        self.locality = locality
        if locality:
            # Initial slopes 1, 1/2, 1/4, ... (ALiBi-like), stored before softplus.
            init = torch.tensor([2.0**-h for h in range(heads)])
            self.slope = nn.Parameter(torch.log(torch.expm1(init)))

    def distance_penalty(self, frames: int, device: torch.device) -> torch.Tensor:
        """(heads, T, T) penalty subtracted from the logits (zeros without locality)."""
        pos = torch.arange(frames, device=device, dtype=torch.float32)
        dist = (pos[None, :] - pos[:, None]).abs()
        return F.softplus(self.slope)[:, None, None] * dist[None]

    def attention(
        self, x: torch.Tensor, key_valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Output (N, T, D) and attention weights (N, heads, T, T); ``key_valid`` (N, T) bool
        masks padded frames as keys (they get zero weight)."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if self.locality:
            logits = logits - self.distance_penalty(t, x.device)[None].to(logits.dtype)
        if key_valid is not None:
            logits = logits.masked_fill(~key_valid[:, None, None, :], _MASKED_LOGIT)
        weights = logits.softmax(dim=-1)
        out = (self.dropout(weights) @ v).transpose(1, 2).reshape(n, t, d)
        return out, weights

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.attention(x, key_valid)[0]


class CombinedAttention(nn.Module):
    """MHSA and Proxima attention in parallel, fused by a projection of their concatenation."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mhsa = SelfAttention(dim, heads, locality=False, dropout=dropout)
        self.proxima = SelfAttention(dim, heads, locality=True, dropout=dropout)
        self.fuse = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.fuse(torch.cat([self.mhsa(x, key_valid), self.proxima(x, key_valid)], dim=-1))


class AttentionBlock(nn.Module):
    """Pre-norm residual block: combined attention, then a feed-forward layer."""

    def __init__(self, dim: int, heads: int, ffn_mult: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CombinedAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), key_valid))
        return x + self.dropout(self.ffn(self.norm2(x)))


def default_pools(height: int, stages: int) -> list[tuple[int, int]]:
    """Width pooled by 2 in the first two stages (stride 4); height halved per stage while
    it stays >= 2."""
    pools = []
    h = height
    for i in range(stages):
        ph = 2 if h >= 4 else 1
        h //= ph
        pools.append((ph, 2 if i < 2 else 1))
    return pools


class HTRJand(nn.Module):
    """Gated-conv + SE encoder, combined attention, CTC head. Returns log-probabilities."""

    def __init__(
        self,
        num_classes: int,
        height: int = 32,
        channels: tuple[int, ...] | list[int] = (16, 32, 48, 64),
        pools: list[tuple[int, int]] | list[list[int]] | None = None,
        d_model: int = 96,
        heads: int = 4,
        layers: int = 1,
        ffn_mult: int = 2,
        dropout: float = 0.1,
        conv_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = list(channels)
        pool_list = [tuple(p) for p in pools] if pools is not None else default_pools(height, len(channels))
        if len(pool_list) != len(channels):
            raise ValueError(f"pools has {len(pool_list)} entries but channels has {len(channels)}")
        if math.prod(p[1] for p in pool_list) != FRAME_STRIDE:
            raise ValueError(
                f"the width pools must multiply to the frame stride {FRAME_STRIDE}, got {pool_list}"
            )
        out_h = height
        self.width_pools = [int(p[1]) for p in pool_list]
        blocks = []
        in_ch = 1
        for ch, pool in zip(channels, pool_list, strict=True):
            blocks.append(GatedSEBlock(in_ch, ch, (int(pool[0]), int(pool[1])), conv_dropout))
            in_ch = ch
            out_h //= int(pool[0])
        if out_h < 1:
            raise ValueError(f"the height pools reduce height {height} below 1")
        self.encoder = nn.Sequential(*blocks)
        self.project = nn.Linear(in_ch * out_h, d_model)
        self.blocks = nn.Sequential(
            *[AttentionBlock(d_model, heads, ffn_mult, dropout) for _ in range(layers)]
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        self.num_classes = num_classes
        self.height = height

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, W / 4, classes); frames past a line's ink are padding (module
        docstring) and do not affect its valid frames."""
        frames = valid_frames(image)
        f = image
        stride = 1  # width pooling so far
        for block, pool in zip(self.encoder, self.width_pools, strict=True):
            f = block(f, column_mask(frames, f.shape[-1], FRAME_STRIDE // stride))
            stride *= pool
        n, c, h, w = f.shape  # (N, C, H', W / 4)
        seq = f.permute(0, 3, 1, 2).reshape(n, w, c * h)
        seq = self.project(seq)
        key_valid = column_mask(frames, w, 1)
        for block in self.blocks:
            seq = block(seq, key_valid)
        return F.log_softmax(self.head(self.norm(seq)), dim=-1)


@forwards_options(HTRJand, skip=())
def build_htr_jand(**options: Any) -> HTRJand:
    """Registered factory ``htr_jand`` (recipe ``models.<name>.options`` are its arguments)."""
    return HTRJand(**options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
