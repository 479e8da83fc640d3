"""``kdtool export [RUN] --target NAME``: a student becomes a verified, deployable artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdtool.cli.common import console
from kdtool.export.driver import ExportRequest, export_model


def export(
    run: Annotated[Path | None, typer.Argument(help="Run directory (default: runs/latest).")] = None,
    target: Annotated[
        str, typer.Option("--target", "-t", help="Target profile or exporter name (`kdtool targets`).")
    ] = "onnx",
    model: Annotated[
        str | None, typer.Option("--model", help="Model of the run to export (default: its deploy_model).")
    ] = None,
    precision: Annotated[
        str | None, typer.Option("--precision", help="fp32, fp16 or int8 (default: the profile's).")
    ] = None,
    batch: Annotated[
        int | None, typer.Option("--batch", help="Batch size the artifact is tuned for.")
    ] = None,
    opt: Annotated[
        list[str] | None, typer.Option("--opt", help="Exporter option key=value (repeatable).")
    ] = None,
    max_metric_drop: Annotated[
        float | None,
        typer.Option(
            "--max-metric-drop", help="Fail if the artifact's metric is worse than PyTorch's by more."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Output folder (default: RUN/exports/<target>[-<precision>][-b<batch>][-<model>]/)."
        ),
    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip parity and metric checks.")] = False,
    eval_limit: Annotated[
        int | None, typer.Option("--eval-limit", help="Validation samples for the metric check.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing folder that holds a different artifact.")
    ] = False,
) -> None:
    """Export a model of a run for a hardware target, verify it, and write manifest.json."""
    request = ExportRequest(
        run=run,
        target=target,
        model=model,
        precision=precision,
        batch=batch,
        options=opt or [],
        max_metric_drop=max_metric_drop,
        out=out,
        verify=not no_verify,
        eval_limit=eval_limit,
        force=force,
    )
    export_model(request, echo=console.print)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
