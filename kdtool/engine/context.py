"""``StepContext``: what a task's ``training_step`` may use, hiding AMP, accumulation and DDP."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from kdtool.distill import DistillPlan, Point
from kdtool.errors import RecipeError


class TeacherCache:
    """Teacher outputs per sample index, kept on the CPU, filled during the first epoch."""

    def __init__(self) -> None:
        self._store: dict[int, dict[str, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, indices: list[int]) -> dict[str, torch.Tensor] | None:
        if not indices or any(i not in self._store for i in indices):
            return None
        rows = [self._store[i] for i in indices]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def put(self, indices: list[int], outputs: dict[str, torch.Tensor]) -> None:
        cpu = {k: v.detach().to("cpu") for k, v in outputs.items()}
        for pos, idx in enumerate(indices):
            self._store[idx] = {k: v[pos].clone() for k, v in cpu.items()}

    def __len__(self) -> int:
        return len(self._store)


class StepContext:
    """Passed to ``Task.training_step``.

    - ``autocast()``: mixed precision per the recipe (no-op in fp32).
    - ``loss(term)``: the loss module the recipe built for a term (``losses[].loss``).
    - ``teacher_outputs(batch)``: the frozen teachers' outputs, cached when allowed.
    - ``backward(loss)``: for steps that back-propagate several times (the sandwich rule);
      scales for accumulation and fp16 and counts; the engine then skips its own backward.
    - ``expose(point, tensor, side=..., lengths=..., mask=..., target=...)``: a distillation point
      of this step (student side by default); ``wants(point)`` says whether any recipe loss uses
      it, so a task can skip computing unused features; ``distill()`` evaluates every recipe KD
      entry whose two points are exposed (named terms) and consumes the student points; the
      engine evaluates what is still pending when the step returns (``finish_step``).
    - ``generator``: a torch generator on ``device`` seeded from (seed, global step), so noise
      drawn in a step is the same after a resume.
    """

    def __init__(
        self,
        *,
        device: torch.device,
        precision: str,
        losses: nn.ModuleDict,
        scaler: torch.amp.GradScaler | None,
        grad_accum: int,
        teacher_fn: Callable[[dict[str, Any]], dict[str, torch.Tensor]] | None,
        teacher_cache: TeacherCache | None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.device = device
        self.precision = precision
        self.losses = losses
        self.scaler = scaler
        self.grad_accum = grad_accum
        self._teacher_fn = teacher_fn
        self.teacher_cache = teacher_cache
        self.rank = rank
        self.world_size = world_size
        self.step = 0
        self.epoch = 0
        self.total_steps = 0
        self.seed = 0
        self.backward_calls = 0
        self.generator = torch.Generator(device=device)
        self.distill_plan = DistillPlan([])

    def begin_step(self, *, seed: int, step: int, epoch: int) -> None:
        self.seed = seed
        self.step = step
        self.epoch = epoch
        self.backward_calls = 0
        self.distill_plan.begin_step()
        self.generator.manual_seed((seed * 7919 + step * 104729 + self.rank) & 0x7FFFFFFFFFFFFFFF)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def loss(self, term: str) -> nn.Module:
        if term not in self.losses:
            raise RecipeError(
                f"the task needs a loss module for term {term!r}, but the stage's losses do not "
                f"build one; add {{name: {term}, loss: <registered loss>}} (built: {list(self.losses)})"
            )
        return self.losses[term]

    def use_stage(self, stage: Any, task: Any, losses: Any = None) -> DistillPlan:
        """Pair the stage's KD entries for ``task`` (the engine does this when a stage starts;
        code that calls ``training_step`` directly calls it too). ``losses``: the loss registry
        (default: the loaded plugins')."""
        from kdtool.distill import plan_stage

        if losses is None:
            from kdtool.plugins import get_registries

            losses = get_registries().losses
        self.distill_plan = plan_stage(stage, task, losses, self.losses)
        return self.distill_plan

    def wants(self, point: str, side: str | None = None) -> bool:
        """True when a recipe loss of this stage uses ``point`` (on ``side``, or either)."""
        return self.distill_plan.wants(point, side)

    def expose(
        self,
        point: str,
        value: torch.Tensor,
        *,
        side: str = "student",
        lengths: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> None:
        """Offer a distillation point (a reference such as ``logits`` or ``features/layer3``)."""
        self.distill_plan.expose(Point(point, value, lengths=lengths, mask=mask, target=target), side)

    def distill(self) -> dict[str, torch.Tensor]:
        """The KD terms of the exposed pairs, unweighted (the engine weights returned terms)."""
        return self.distill_plan.distill()

    def finish_step(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Called by the engine after ``training_step``: adds the pairs still pending."""
        return self.distill_plan.finish_step(terms)

    def teacher_outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._teacher_fn is None:
            raise RecipeError("this stage has no teachers, but the task asked for teacher outputs")
        if self.teacher_cache is not None:
            indices = [int(i) for i in batch["index"]]
            cached = self.teacher_cache.get(indices)
            if cached is not None:
                self.teacher_cache.hits += 1
                return {k: v.to(self.device, non_blocking=True) for k, v in cached.items()}
            self.teacher_cache.misses += 1
            with torch.no_grad():
                out = self._teacher_fn(batch)
            self.teacher_cache.put(indices, out)
            return out
        with torch.no_grad():
            return self._teacher_fn(batch)

    def backward(self, loss: torch.Tensor) -> None:
        scaled = loss / self.grad_accum
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward()
        self.backward_calls += 1

    def to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        if isinstance(batch, list | tuple):
            return type(batch)(self.to_device(v) for v in batch)
        return batch

    @contextlib.contextmanager
    def eval_mode(self, module: nn.Module) -> Iterator[nn.Module]:
        was = module.training
        module.eval()
        try:
            yield module
        finally:
            module.train(was)
