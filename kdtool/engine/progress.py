"""Progress of a training stage: a rich bar on a terminal, plain lines anywhere else.

Piped to a file (CI, ``nohup``, a cluster job) a live bar prints nothing useful, so when
stdout is not a terminal the stage prints one plain line at a steady interval instead:
``teacher: step 120/400 (30%), loss 0.4312, 812 samples/s, top1 0.91, ETA 2m05s``. The
interval is ``logging.plain_every_seconds`` (default 30 s) or ``logging.plain_every_steps``
of the recipe, whichever comes first; the environment variables ``KDTOOL_PROGRESS_SECONDS``
and ``KDTOOL_PROGRESS_STEPS`` override them (e.g. for a quick look at a batch job).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from kdtool.errors import RecipeError


def stdout_is_terminal() -> bool:
    """Whether stdout is an interactive terminal (a live bar can be drawn)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def plain_interval(seconds: float, steps: int | None) -> tuple[float, int | None]:
    """The plain-line interval: the recipe's, overridden by the environment."""
    env_s = os.environ.get("KDTOOL_PROGRESS_SECONDS")
    env_n = os.environ.get("KDTOOL_PROGRESS_STEPS")
    try:
        if env_s:
            seconds = float(env_s)
        if env_n:
            steps = int(env_n)
    except ValueError:
        raise RecipeError(
            f"KDTOOL_PROGRESS_SECONDS={env_s!r} / KDTOOL_PROGRESS_STEPS={env_n!r}: expected numbers",
            hint="e.g. KDTOOL_PROGRESS_SECONDS=10 or KDTOOL_PROGRESS_STEPS=50",
        ) from None
    return seconds, steps


def format_duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StageProgress:
    """Step, loss, samples/s, metric and ETA of a stage (a bar, or plain lines when piped)."""

    def __init__(
        self,
        *,
        enabled: bool,
        description: str,
        total: int,
        completed: int,
        echo: Callable[[str], None] = print,
        plain: bool | None = None,
        every_seconds: float = 30.0,
        every_steps: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.description = description
        self.total = total
        self.completed = completed
        self.plain = (not stdout_is_terminal()) if plain is None else plain
        self.echo = echo
        self.every_seconds, self.every_steps = plain_interval(every_seconds, every_steps)
        self._progress: Any = None
        self._task: Any = None
        self._loss: float | None = None
        self._rate: float | None = None
        self._metric = ""
        self._start = time.perf_counter()
        self._start_step = completed
        self._last_time = self._start
        self._last_step = completed

    def __enter__(self) -> StageProgress:
        if self.enabled and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                # Empty until the first step has a loss: a "loss nan" would read as a failure.
                TextColumn("{task.fields[loss]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[metric]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                self.description, total=self.total, completed=self.completed, loss="", rate="", metric=""
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            return
        self._loss = loss
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=f"loss {loss:.4f}")
        elif self.enabled and self.plain:
            self._maybe_line(step)

    def set_rate(self, rate: float) -> None:
        self._rate = rate
        if self._progress is not None:
            self._progress.update(self._task, rate=f"{rate:.0f} samples/s")

    def set_metric(self, name: str, value: float) -> None:
        self._metric = f"{name} {value:.4g}"
        if self._progress is not None:
            self._progress.update(self._task, metric=self._metric)

    def _maybe_line(self, step: int) -> None:
        now = time.perf_counter()
        due = now - self._last_time >= self.every_seconds
        if self.every_steps:
            due = due or step - self._last_step >= self.every_steps
        if due or step == self.total:
            self.echo(self.line(step, now))
            self._last_time, self._last_step = now, step

    def line(self, step: int, now: float | None = None) -> str:
        """One plain progress line for ``step``."""
        now = time.perf_counter() if now is None else now
        parts = [f"{self.description}: step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)"]
        if self._loss is not None:
            parts.append(f"loss {self._loss:.4f}")
        if self._rate:
            parts.append(f"{self._rate:.0f} samples/s")
        if self._metric:
            parts.append(self._metric)
        done = step - self._start_step
        elapsed = now - self._start
        if done > 0 and step < self.total:
            parts.append(f"ETA {format_duration(elapsed / done * (self.total - step))}")
        elif step >= self.total:
            parts.append(f"took {format_duration(elapsed)}")
        return ", ".join(parts)
