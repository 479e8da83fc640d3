"""``kdtool plugins``: what is loaded, what each plugin registered, and what is broken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from kdtool.cli.common import console
from kdtool.errors import PluginError
from kdtool.hookspecs import PLUGIN_API_VERSION
from kdtool.plugins import DISABLE_ENV, get_plugin_manager

app = typer.Typer(
    help="List installed plugins; create new ones (`new`); print the hook reference (`docs`).",
    invoke_without_command=True,
    no_args_is_help=False,
)


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
            escape(info.name),
            escape(info.version),
            escape(info.distribution or ("built in" if info.builtin else "")),
            status,
            ", ".join(info.hooks),
            escape(registered) or "-",
        )
    console.print(table)
    for info in infos:
        for need in info.missing:
            console.print(
                f"{info.name}: exporter {need['exporter']} needs {need['module']}, which is not installed; "
                f"install: {need['install']}",
                markup=False,
            )
        if info.status != "ok":
            line = f"[red]{escape(info.name)}[/red]: {info.status}: {escape(info.error)}"
            if info.hint:
                line += f"\n  install/fix: {escape(info.hint)}"
            console.print(line)
    for conflict in manager.conflicts:
        console.print(f"[red]conflict[/red]: {escape(conflict)} (block one with {DISABLE_ENV}=NAME)")


@app.command("new")
def new(
    name: Annotated[
        str,
        typer.Argument(help="Plugin name, e.g. dist-loss (distribution kdtool-NAME, module kdtool_NAME)."),
    ],
    kind: Annotated[
        str, typer.Option("--kind", "-k", help="What the plugin provides: task, exporter, loss or target.")
    ],
    directory: Annotated[Path, typer.Option("--dir", help="Folder to create the plugin in.")] = Path("."),
) -> None:
    """Create a new plugin distribution that installs with `pip install -e` and passes the conformance kit."""
    from kdtool.scaffold import scaffold

    result = scaffold(name, kind, directory, manager=get_plugin_manager())
    n = result.names
    console.print(
        f"created {result.root}/: {kind} plugin {n.plugin!r} (distribution {n.distribution}, module {n.module})"
    )
    for path in result.files:
        console.print(f"  {path.relative_to(result.root)}", markup=False)
    console.print(
        "next:\n"
        f"  cd {result.root}\n"
        '  pip install -e ".[test]"   # then `kdtool plugins` lists it\n'
        "  python -m pytest            # runs kdtool's conformance kit on it",
        markup=False,
    )


@app.command("docs")
def docs(
    write: Annotated[
        Path | None,
        typer.Option("--write", help="Rewrite the generated hook reference block in this Markdown file."),
    ] = None,
    check: Annotated[
        Path | None,
        typer.Option("--check", help="Exit 1 if this file's hook reference differs from hookspecs.py."),
    ] = None,
) -> None:
    """Print the hook reference (signatures and contracts) generated from kdtool/hookspecs.py."""
    from kdtool.scaffold import hookdocs

    if check is not None:
        if not hookdocs.is_current(check):
            raise PluginError(
                f"{check}: the hook reference differs from kdtool/hookspecs.py",
                hint=f"run `kdtool plugins docs --write {check}`",
            )
        console.print(f"{check}: hook reference is current")
        return
    if write is not None:
        changed = hookdocs.update(write)
        console.print(f"{write}: {'updated' if changed else 'already current'}")
        return
    console.print(hookdocs.render_reference(), markup=False, end="")
