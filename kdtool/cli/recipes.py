"""``kdtool recipes list``, ``kdtool recipes validate FILE`` and ``kdtool recipes roles [TASK]``."""

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
    task = build_task(loaded, registries)
    check_component_options(loaded, registries, task)
    r = loaded.recipe
    console.print(
        f"[green]ok[/green]: {recipe} (task {r.task.name}, stages: {', '.join(s.name for s in r.stages)}, "
        f"deploy model: {r.default_deploy_model(task.role_specs())})"
    )


@app.command("roles")
def roles(
    task: Annotated[str | None, typer.Argument(help="A task name (default: every registered task).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """The stage roles each task declares, with their loss slots and options (name, type, default)."""
    import json

    registries = get_registries()
    names = [task] if task is not None else registries.tasks.names()
    out: dict[str, dict[str, object]] = {}
    for name in names:
        task_cls = registries.tasks.get(name)
        out[name] = {
            role: {
                "description": spec.description,
                "teachers": spec.teachers,
                "baseline": spec.baseline,
                "deploy_rank": spec.deploy_rank,
                "loss_slots": list(spec.loss_slots),
                "options": [
                    {"name": o, "type": t, "default": d, "description": desc}
                    for o, t, d, desc in spec.describe_options()
                ],
            }
            for role, spec in task_cls.role_specs().items()
        }
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    for name, specs in out.items():
        typer.echo(f"task {name}")
        for role, info in specs.items():
            flags = [f"teachers: {info['teachers']}"]
            if info["baseline"]:
                flags.append("baseline (needs baseline_for)")
            slots = ", ".join(info["loss_slots"]) or "(none)"  # type: ignore[arg-type]
            typer.echo(f"  role {role}: {info['description']}")
            typer.echo(f"    {'; '.join(flags)}; loss slots: {slots}")
            options = info["options"]
            if not options:
                typer.echo("    options: (none)")
            for o in options:  # type: ignore[attr-defined]
                line = f"    {o['name']}: {o['type']} = {o['default']}"
                typer.echo(line + (f"  # {o['description']}" if o["description"] else ""))
        typer.echo("")
