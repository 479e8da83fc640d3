"""``kdtool report [RUN ...]``: a run's report (``RUN/report.html``) or a comparison page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdtool.cli.common import console
from kdtool.errors import RunError


def report(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Run directory (default: runs/latest); two or more runs write a comparison page."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where to write the page (default: RUN/report.html, or RUN_A/compare-<other runs>.html).",
        ),
    ] = None,
    no_measure: Annotated[
        bool, typer.Option("--no-measure", help="Do not count MACs or time the models (faster).")
    ] = False,
    no_latency: Annotated[
        bool, typer.Option("--no-latency", help="Count MACs but do not time the models.")
    ] = False,
    latency_seconds: Annotated[
        float, typer.Option("--latency-seconds", help="Time budget per model for the CPU latency.")
    ] = 0.5,
    latency_budget: Annotated[
        float,
        typer.Option(
            "--latency-budget", help="Seconds for all latency measurements (models left are skipped)."
        ),
    ] = 60.0,
    latency_threads: Annotated[
        int,
        typer.Option("--latency-threads", help="CPU threads while timing (1 is stable on busy machines)."),
    ] = 1,
    no_figures: Annotated[
        bool,
        typer.Option(
            "--no-figures", help="Do not ask the task to draw figures (existing ones are still shown)."
        ),
    ] = False,
) -> None:
    """Write a self-contained HTML report of a run, or compare several runs in one page."""
    from kdtool.report import ReportOptions, write_comparison, write_report

    if latency_seconds <= 0:
        raise RunError(f"--latency-seconds must be > 0, got {latency_seconds}")
    if latency_budget < 0:
        raise RunError(f"--latency-budget must be >= 0, got {latency_budget}")
    if latency_threads < 1:
        raise RunError(f"--latency-threads must be >= 1, got {latency_threads}")
    opts = ReportOptions(
        measure=not no_measure,
        latency=not (no_measure or no_latency),
        latency_seconds=latency_seconds,
        latency_threads=latency_threads,
        latency_budget=latency_budget,
        task_figures=not no_figures,
        echo=lambda msg: console.print(msg, markup=False),
    )
    paths = runs or []
    if len(paths) <= 1:
        path = write_report(paths[0] if paths else None, opts, out)
    else:
        path = write_comparison(paths, opts, out)
    console.print(f"report: {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
