"""A test plugin that implements the non-export hooks and records lifecycle events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdtool import hookimpl

EVENTS: list[tuple[str, Any]] = []


@hookimpl
def on_stage_start(run_dir: Path, stage: str, recipe: dict[str, Any]) -> None:
    EVENTS.append(("start", stage))


@hookimpl
def on_stage_end(run_dir: Path, stage: str, metrics: dict[str, float]) -> None:
    EVENTS.append(("end", stage, metrics))


@hookimpl
def on_checkpoint_saved(run_dir: Path, stage: str, step: int, path: Path) -> None:
    EVENTS.append(("checkpoint", stage, step, path))


@hookimpl
def register_optimizers(register: Any) -> None:
    def plain_sgd(params: Any, lr: float = 0.1, weight_decay: float = 0.0, **_: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)

    def halve(optimizer: torch.optim.Optimizer, *, total_steps: int, **_: Any) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 if step >= total_steps // 2 else 1.0
        )

    register("test_sgd", plain_sgd)
    register("schedule:test_halve", halve)


@hookimpl
def register_postprocessors(register: Any) -> None:
    register("test_upper", lambda texts: [t.upper() for t in texts])


@hookimpl
def register_report_figures(register: Any) -> None:
    register("test_figure", lambda run_dir: [])
