"""One training step's loss: the task's terms, checked and weighted into the total that is
back-propagated. Used by the engine and by the conformance kit (:mod:`kdtool.testing`), so a
plugin is checked against exactly what a run does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kdtool.engine.context import StepContext
from kdtool.errors import TrainingError
from kdtool.recipe import StageConfig
from kdtool.task import Task


def weighted_total(stage: StageConfig, terms: Mapping[str, torch.Tensor], step: int) -> torch.Tensor:
    """``sum(weight(name) * term)`` in float32 over the task's loss terms; a clear
    :class:`TrainingError` when there are none or one is NaN/inf."""
    if not terms:
        raise TrainingError(f"stage {stage.name!r}: the task's training_step returned no loss terms")
    total: torch.Tensor | None = None
    for name, value in terms.items():
        if not torch.isfinite(value.detach()).all():
            raise TrainingError(
                f"stage {stage.name!r}, step {step}: loss term {name!r} is {float(value.detach().float().mean())}",
                hint="lower the learning rate or enable grad_clip; the last good checkpoint is kept (resume with --resume)",
            )
        weighted = value.float() * stage.loss_weight(name)
        total = weighted if total is None else total + weighted
    assert total is not None
    return total


def compute_terms(
    task: Task, stage: StageConfig, models: dict[str, nn.Module], batch: Any, ctx: StepContext
) -> dict[str, torch.Tensor]:
    """The task's named loss terms for one (micro-)batch, under the context's autocast, with
    the KD terms of the distillation points still pending added (``ctx.finish_step``)."""
    ctx.backward_calls = 0
    with ctx.autocast():
        return ctx.finish_step(task.training_step(stage, models, batch, ctx))


def training_step(
    task: Task, stage: StageConfig, models: dict[str, nn.Module], batch: Any, ctx: StepContext, step: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Compute the terms and their weighted total and back-propagate it, unless the task
    back-propagated itself (``ctx.backward``, e.g. the sandwich rule). Returns (terms, total)."""
    terms = compute_terms(task, stage, models, batch, ctx)
    total = weighted_total(stage, terms, step)
    if ctx.backward_calls == 0:
        ctx.backward(total)
    return terms, total
