"""``kdtool study RECIPE --seeds N``: paired multi-seed evidence that distillation helped (or not)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdtool.cli.common import SetOption, console


def study(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file, e.g. recipes/facial_landmarks.yaml.")],
    seeds: Annotated[
        int, typer.Option("--seeds", help="Number of seeds (runs); seed k uses recipe seed + k.")
    ] = 5,
    set_: SetOption = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop every stage after N steps (quick check).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the newest study of this recipe (or --dir): run only unfinished seeds."
        ),
    ] = False,
    study_dir: Annotated[
        Path | None, typer.Option("--dir", help="Study directory (default runs/<recipe>/study-<time>/).")
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            help="Seeds run in parallel; each gets cores // jobs threads (more would oversubscribe the CPU).",
        ),
    ] = 1,
) -> None:
    """Run the recipe once per seed, then compare each student with its baseline, paired by seed
    (mean ± std, 95% CI of the difference, wins, verdict); writes study.json, study.md, study.html."""
    from kdtool.study import StudyOptions, console_table, run_study

    opts = StudyOptions(
        seeds=seeds,
        overrides=list(set_ or []),
        max_steps=max_steps,
        resume=resume,
        study_dir=study_dir,
        jobs=jobs,
        echo=lambda msg: console.print(msg, markup=False),
    )
    path = run_study(recipe, opts)
    from kdtool.io import read_json

    result = read_json(path / "study.json", what="study")
    # Piped to a file, rich would cut the table to 80 columns: print it at full width.
    from rich.console import Console

    table_console = console if console.is_terminal else Console(width=1000, highlight=False)
    table_console.print(console_table(result))
    for p in result["pairs"]:
        console.print(f"{p['student']} vs {p['baseline']}: {p['verdict']}", markup=False)
    console.print(f"study: {path / 'study.json'}, report: {path / 'study.html'}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("study")(study)
