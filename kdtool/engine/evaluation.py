"""Evaluation during training: one RNG-isolating evaluation and the per-stage evaluator.

Evaluation may draw random numbers (label noise, random crops, sampling); it must never move
training's random streams, or evaluating more often would change what is trained.
:func:`isolated_rng` is the only place the engine (and :mod:`kdtool.testing`) isolates them.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdtool.engine.checkpoint import TrainerState
from kdtool.engine.rundir import MetricsLog
from kdtool.errors import TrainingError
from kdtool.io import save_weights
from kdtool.recipe import StageConfig
from kdtool.task import Split, Task


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run the body with the global random streams saved and restored afterwards: torch CPU,
    every CUDA device (when CUDA is initialised), numpy's legacy global and Python's ``random``."""
    torch_state = torch.get_rng_state()
    cuda_states = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)


def evaluate_isolated(
    task: Task,
    model: nn.Module,
    stage_name: str,
    device: torch.device | str,
    split: Split,
    limit: int | None = None,
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``split`` (``limit`` samples), in eval mode, with
    training's random streams left intact. The model is left in eval mode."""
    model.eval()
    with isolated_rng():
        predictor = task.predictor(model, stage_name, device)
        if limit is None:
            return task.evaluate(predictor, split)
        return task.evaluate(predictor, split, limit=limit)


@dataclass
class StageEvaluator:
    """Periodic validation (and tune-split selection) of one stage, and keep-best bookkeeping.

    ``tune_size`` > 0 with ``keep: best`` selects on the tune split (the first ``tune_size``
    training samples); the validation split is then only reported."""

    task: Task
    stage: StageConfig
    model: nn.Module
    device: torch.device
    state: TrainerState
    metrics_log: MetricsLog
    best_path: Path
    tune_size: Callable[[], int]
    is_main: bool = True
    last: dict[str, float] | None = None
    at_step: int = -1
    seconds: float = 0.0

    def __call__(self, step: int) -> dict[str, float]:
        self.at_step = step
        if not self.is_main:
            self.last = {}
            return {}
        started = time.perf_counter()
        task, stage, state, metric = self.task, self.stage, self.state, self.task.primary_metric
        result = evaluate_isolated(task, self.model, stage.name, self.device, "val")
        self.model.train()
        if metric.name not in result:
            raise TrainingError(
                f"task {task.name!r} evaluate() did not return its primary metric {metric.name!r}"
            )
        selection = result
        if stage.keep == "best" and self.tune_size():
            selection = self.evaluate_tune()
            self.metrics_log.append(
                {"stage": stage.name, "step": step, "epoch": state.epoch, "split": "tune", **selection}
            )
        value = float(selection[metric.name])
        improved = state.best_metric is None or (
            value > state.best_metric if metric.higher_is_better else value < state.best_metric
        )
        if improved and stage.keep == "best":
            state.best_metric, state.best_step = value, step
            save_weights(self.model, self.best_path)
        self.metrics_log.append(
            {"stage": stage.name, "step": step, "epoch": state.epoch, "split": "val", **result}
        )
        self.seconds += time.perf_counter() - started
        self.last = result
        return result

    def evaluate_tune(self) -> dict[str, float]:
        """The task's metrics on the tune split; the model is left in train mode."""
        result = evaluate_isolated(
            self.task, self.model, self.stage.name, self.device, "train", limit=self.tune_size()
        )
        self.model.train()
        return result

    def final(self) -> dict[str, float]:
        """The last validation metrics, evaluating now if the last step was not evaluated."""
        if self.at_step != self.state.step or self.last is None:
            return self(self.state.step)
        return self.last
