"""Training parts of the TODM task: loss-weight schedules, fair twins, one gradient sync per step.

- :class:`Ramp`: a loss weight that is constant or ramps linearly between two steps (the
  sandwich's subnet loss mixes in-place KD and the hard RNN-T loss with a schedule each).
- :class:`TwinOf`: a stage that trains one architecture alone as the *twin* of a supernet
  subnet. The twin starts from the supernet's slice of the same initial weights, trains with
  the dropout that subnet gets inside the supernet, and must share the supernet stage's steps,
  batch size, optimizer (learning rate), schedule (the engine gives every stage the same data
  order), so that "subnet vs twin" compares like with like.
- :func:`sync_once`: under DDP the sandwich runs several forward/backward passes per optimizer
  step; all of them run under ``no_sync`` and the accumulated gradients are averaged across
  processes once, in one flat all-reduce, after the last pass. (Letting DDP reduce during the
  last backward instead would need ``find_unused_parameters``: the smallest subnet, run last,
  does not touch the deeper blocks.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class Ramp(BaseModel):
    """``start`` until ``from_step``, linear to ``end`` at ``to_step``, ``end`` after it."""

    model_config = ConfigDict(extra="forbid")
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    from_step: int = Field(default=0, ge=0)
    to_step: int = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> Ramp:
        if self.to_step < self.from_step:
            raise ValueError(f"to_step ({self.to_step}) must not come before from_step ({self.from_step})")
        return self

    def at(self, step: int) -> float:
        if step <= self.from_step:
            return self.start
        if step >= self.to_step:
            return self.end
        frac = (step - self.from_step) / (self.to_step - self.from_step)
        return self.start + (self.end - self.start) * frac


WeightSchedule = float | Ramp


def weight_at(weight: WeightSchedule, step: int) -> float:
    """The value of a constant weight or a :class:`Ramp` at optimizer step ``step`` (0-based)."""
    return weight.at(step) if isinstance(weight, Ramp) else float(weight)


class TwinOf(BaseModel):
    """``stages[].options.twin``: this stage is the twin of ``subnet`` of stage ``stage``."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    subnet: str | dict[str, int] = Field(
        description="a named subnet (largest, middle, smallest) or its sizes"
    )
    check: bool = Field(
        default=True, description="require the supernet stage's steps, batch, optimizer, schedule"
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def sync_once(model: nn.Module) -> Iterator[None]:
    """Run several backward passes without DDP's per-backward reduction, then average the
    gradients across processes once (if this is the step's last micro-batch; inside the
    engine's own ``no_sync`` for earlier micro-batches nothing is reduced). No-op without DDP."""
    if not isinstance(model, DistributedDataParallel):
        yield
        return
    final = bool(model.require_backward_grad_sync)
    with model.no_sync():
        yield
    if final:
        all_reduce_flat([p for p in model.module.parameters() if p.requires_grad])


def all_reduce_flat(params: list[nn.Parameter]) -> None:
    """Average the gradients of ``params`` across processes in one collective (a missing
    gradient counts as zero, so every process contributes the same layout)."""
    world = dist.get_world_size()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        value = flat[offset : offset + n].view_as(g).to(p.dtype)
        if p.grad is None:
            p.grad = value.clone()
        else:
            p.grad.copy_(value)
        offset += n


def stage_mismatch(twin: Any, supernet: Any) -> list[str]:
    """The training settings in which a twin stage differs from its supernet stage."""
    fields = ("steps", "epochs", "batch_size", "grad_accum", "optimizer", "schedule")
    return [f for f in fields if getattr(twin, f) != getattr(supernet, f)]
