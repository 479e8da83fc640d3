"""``kdtool plugins``: what is loaded, what each plugin registered, and what is broken."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from kdtool.cli.common import console
from kdtool.hookspecs import PLUGIN_API_VERSION
from kdtool.plugins import DISABLE_ENV, get_plugin_manager

app = typer.Typer(help="List installed plugins.", invoke_without_command=True, no_args_is_help=False)


@app.callback(invoke_without_command=True)
def plugins(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List plugins: name, version, distribution, hooks, registrations, and problems."""
    if ctx.invoked_subcommand is not None:
        return
    manager = get_plugin_manager()
    manager.registries(strict=False)
    infos = list(manager.infos.values())
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "plugin_api_version": PLUGIN_API_VERSION,
                    "plugins": [i.to_dict() for i in infos],
                    "conflicts": manager.conflicts,
                }
            )
        )
        return
    table = Table(title=f"kdtool plugins (plugin API {PLUGIN_API_VERSION})")
    for col in ("plugin", "version", "distribution", "status", "hooks", "registered"):
        table.add_column(col, overflow="fold")
    for info in infos:
        registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.registered.items())
        status = info.status if info.status == "ok" else f"[red]{info.status}[/red]"
        table.add_row(
            info.name,
            info.version,
            info.distribution or ("built in" if info.builtin else ""),
            status,
            ", ".join(info.hooks),
            registered or "-",
        )
    console.print(table)
    for info in infos:
        if info.status != "ok":
            line = f"[red]{info.name}[/red]: {info.status}: {info.error}"
            if info.hint:
                line += f"\n  install/fix: {info.hint}"
            console.print(line)
    for conflict in manager.conflicts:
        console.print(f"[red]conflict[/red]: {conflict} (block one with {DISABLE_ENV}=NAME)")
