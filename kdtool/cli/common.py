"""Shared CLI pieces (light: importing this module imports neither torch nor plugins)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a recipe value: a.b.c=value (list items by name, e.g. stages.student.epochs=3). "
        "Repeatable.",
    ),
]


def predict_inputs_help() -> str:
    """What ``kdtool predict`` accepts, per installed task (asked of the task registry)."""
    from kdtool.plugins import get_registries

    tasks = get_registries().tasks
    lines = ["Inputs by task (installed plugins):"]
    for entry in tasks.entries():
        accepts = getattr(entry.obj, "predict_inputs", "") or "not said by the task"
        lines.append(f"  {entry.name}: {accepts}")
    return "\n".join(lines) if len(lines) > 1 else "No task plugins are installed."
