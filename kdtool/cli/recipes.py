"""``kdtool recipes list`` and ``kdtool recipes validate FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from kdtool.cli.common import SetOption, console
from kdtool.engine.options import check_component_options
from kdtool.engine.trainer import build_task, check_recipe_names
from kdtool.plugins import get_registries
from kdtool.recipe import load_recipe

app = typer.Typer(help="List and validate recipes.", no_args_is_help=True)


def shipped_recipes_dir() -> Path:
    """``recipes/`` of the working directory if it has one, else the repository's."""
    local = Path("recipes")
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[2] / "recipes"


@app.command("list")
def list_recipes(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Folder of recipes (default: recipes/).")
    ] = None,
) -> None:
    """The shipped recipes, one line each."""
    folder = directory or shipped_recipes_dir()
    table = Table(title=f"recipes in {folder}")
    for col in ("file", "task", "stages", "description"):
        table.add_column(col, overflow="fold")
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            table.add_row(str(path), "?", "?", "[red]not valid YAML[/red]")
            continue
        task = (data.get("task") or {}).get("name", "?") if isinstance(data.get("task"), dict) else "?"
        stages = ", ".join(s.get("name", "?") for s in data.get("stages", []) if isinstance(s, dict))
        table.add_row(str(path), task, stages, str(data.get("description", "")).strip())
    console.print(table)


@app.command("validate")
def validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
) -> None:
    """Check a recipe (schema, names, the task's own sections) without running it."""
    loaded = load_recipe(recipe, set_ or [])
    registries = get_registries()
    check_recipe_names(loaded.recipe, registries)
    check_component_options(loaded, registries, build_task(loaded, registries))
    r = loaded.recipe
    console.print(
        f"[green]ok[/green]: {recipe} (task {r.task.name}, stages: {', '.join(s.name for s in r.stages)}, "
        f"deploy model: {r.default_deploy_model()})"
    )
