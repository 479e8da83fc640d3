"""``kdtool distill RECIPE``: train the recipe's teachers and distil its student."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from kdtool.cli.common import SetOption, console
from kdtool.engine.trainer import DistillOptions, run_recipe
from kdtool.recipe import ReportConfig, load_recipe


def distill(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file, e.g. recipes/image_classification.yaml.")],
    set_: SetOption = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop every stage after N steps (quick check).")
    ] = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", metavar="STAGE", help="Run only this stage (repeatable).")
    ] = None,
    skip: Annotated[
        list[str] | None, typer.Option("--skip", metavar="STAGE", help="Skip this stage (repeatable).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate, build models, print the plan; train nothing.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the latest run of this recipe (or --run).")
    ] = False,
    run: Annotated[
        Path | None, typer.Option("--run", help="With --resume: the run directory to continue.")
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
    no_report: Annotated[
        bool,
        typer.Option("--no-report", help="Do not write RUN/report.html at the end (`kdtool report` does)."),
    ] = False,
) -> None:
    """Train teacher(s) and distil a student as the recipe says; writes runs/<name>/<time>/."""
    loaded = load_recipe(recipe, set_ or [])
    opts = DistillOptions(
        max_steps=max_steps,
        only=only or [],
        skip=skip or [],
        dry_run=dry_run,
        resume=resume or run is not None,
        resume_dir=run,
        progress=not no_progress,
        echo=console.print,
    )
    result = run_recipe(loaded, opts)
    if isinstance(result, dict):
        from rich.table import Table

        table = Table(title=f"{loaded.recipe.name}: models")
        for col in ("model", "arch", "params"):
            table.add_column(col)
        for name, info in result["models"].items():
            table.add_row(name, info["arch"], f"{info['params']:,}")
        console.print(table)
        plan = Table(title="stage plan")
        for col in ("stage", "role", "model", "teachers", "losses", "optimizer", "steps", "batch"):
            plan.add_column(col)
        for s in result["stages"]:
            plan.add_row(
                s["name"] + (" (skipped)" if s["skipped"] else ""),
                s["role"],
                s["model"],
                ", ".join(s["teachers"]) or "-",
                ", ".join(f"{k} x{v:g}" for k, v in s["losses"].items()) or "-",
                s["optimizer"],
                str(s["steps"]),
                str(s["batch_size"]),
            )
        console.print(plan)
        console.print("dry run: nothing was trained")
        return
    from kdtool.engine.rundir import read_summary

    summary = read_summary(result)
    metric = summary["primary_metric"]["name"]
    console.print(f"run: {result}")
    for name, info in summary["models"].items():
        value = info["metrics"].get(metric)
        shown = f"{value:.4g}" if isinstance(value, int | float) else "-"
        console.print(f"  {name:<20} {info['role']:<9} {info['params']:>10,} params  {metric} {shown}")
    report = loaded.recipe.report
    if not no_report and report.enabled and os.environ.get("RANK", "0") == "0":
        _write_report(result, report)


def _write_report(run_dir: Path, config: ReportConfig) -> None:
    """The run's report at the end of a run (bounded as the recipe's ``report`` section
    says); a failure here never fails the training."""
    from kdtool.cli.common import err_console

    console.print("report: writing the run's report (skip with --no-report or report: {enabled: false})")
    try:
        from kdtool.report import ReportOptions, write_report

        opts = ReportOptions(
            measure=config.measure,
            latency=config.measure and config.latency,
            latency_seconds=config.latency_seconds,
            latency_budget=config.budget_seconds,
            task_figures=config.figures,
            echo=lambda msg: console.print(msg, markup=False),
        )
        path = write_report(run_dir, opts)
    except Exception as exc:
        err_console.print(
            f"kdtool: warning: report not written ({type(exc).__name__}: {exc}); "
            f"retry with `kdtool report {run_dir}`",
            markup=False,
        )
        return
    console.print(f"report: {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)
