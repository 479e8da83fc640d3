"""Shared CLI pieces."""

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
        help="Override a recipe value: a.b.c=value (list items by name, e.g. stages.student.epochs=3).",
    ),
]
