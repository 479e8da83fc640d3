"""Built-in optimizers and learning-rate schedules (registered as plugin ``kdtool``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from kdtool.engine.options import forwards_options


@forwards_options(torch.optim.AdamW)
def adamw(
    params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0, **options: Any
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **options)


@forwards_options(torch.optim.Adam)
def adam(
    params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0, **options: Any
) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **options)


@forwards_options(torch.optim.SGD)
def sgd(
    params: Iterable[Any], lr: float = 1e-2, weight_decay: float = 0.0, momentum: float = 0.9, **options: Any
) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, **options)


def _with_warmup(shape: Callable[[int], float], warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        return shape(step)

    return factor


def constant(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0, steps_per_epoch: int = 0
) -> LRScheduler:
    return LambdaLR(optimizer, _with_warmup(lambda step: 1.0, warmup_steps))


def cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    min_factor: float = 0.0,
    steps_per_epoch: int = 0,
) -> LRScheduler:
    span = max(1, total_steps - warmup_steps)

    def shape(step: int) -> float:
        progress = min(1.0, (step - warmup_steps) / span)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, _with_warmup(shape, warmup_steps))


def poly(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    power: float = 0.9,
    steps_per_epoch: int = 0,
) -> LRScheduler:
    """``(1 - step / total) ** power``, the semantic-segmentation standard."""
    span = max(1, total_steps - warmup_steps)
    return LambdaLR(
        optimizer,
        _with_warmup(lambda step: max(0.0, 1.0 - (step - warmup_steps) / span) ** power, warmup_steps),
    )


def linear(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0, steps_per_epoch: int = 0
) -> LRScheduler:
    return poly(optimizer, total_steps=total_steps, warmup_steps=warmup_steps, power=1.0)


BUILTIN_OPTIMIZERS = {"adamw": adamw, "adam": adam, "sgd": sgd}
BUILTIN_SCHEDULES = {"constant": constant, "cosine": cosine, "poly": poly, "linear": linear}
