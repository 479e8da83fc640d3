"""``kdtool targets``: the hardware target profiles and what this machine can verify."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from kdtool.cli.common import console
from kdtool.plugins import get_registries


def targets(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List target profiles: exporter, precision, hardware, and what is verifiable here."""
    regs = get_registries()
    rows = []
    for entry in regs.targets.entries():
        profile = entry.obj
        usable = regs.exporters.clash(profile.exporter) is None and profile.exporter in regs.exporters
        exporter_cls = regs.exporters.get(profile.exporter) if usable else None
        missing = (
            exporter_cls.capabilities.missing_requirements()
            if exporter_cls
            else [("?", "exporter not installed")]
        )
        ok, why = profile.verifiable_here()
        if missing:
            ok, why = False, f"needs {missing[0][0]}: {missing[0][1]}"
        default_of = [
            name
            for name in regs.exporters.names()
            if regs.exporters.clash(name) is None
            and regs.exporters.get(name).capabilities.default_profile == profile.name
        ]
        rows.append(
            {
                "name": profile.name,
                "exporter": profile.exporter,
                "precision": profile.precision,
                "description": profile.description,
                "default_for": default_of,
                "verifiable_here": ok,
                "why_not": why,
                "plugin": entry.owner,
            }
        )
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="target profiles")
    for col in ("target", "exporter", "precision", "verifiable here", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        name = r["name"] + (f" (default for {', '.join(r['default_for'])})" if r["default_for"] else "")
        table.add_row(
            escape(name),
            escape(r["exporter"]),
            r["precision"],
            "yes" if r["verifiable_here"] else escape(f"no: {r['why_not']}"),
            escape(r["description"]),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("targets")(targets)
