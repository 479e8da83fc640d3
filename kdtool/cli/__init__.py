"""The ``kdtool`` command line: one module per command, composed here and imported on use.

User errors (:class:`kdtool.errors.KdtoolError`) print one clear message on stderr and exit
with their kind's code; ``--debug`` shows the traceback. Usage errors (unknown command,
missing argument, bad option value) are typer's: its usage message, exit code 2. Anything
else is an internal error: one line, exit code 70.

Adding a built-in command is one line in ``COMMANDS`` below (its module is imported only
when the command runs or shows its own ``--help``), e.g.::

    LazyCommand("study", "kdtool.cli.study:register", "Run a recipe over seeds and compare."),
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from kdtool import __version__
from kdtool.cli.common import err_console
from kdtool.cli.lazy import KdtoolGroup, LazyCommand
from kdtool.errors import KdtoolError

COMMANDS: tuple[LazyCommand, ...] = (
    LazyCommand(
        "distill",
        "kdtool.cli.distill:register",
        "Train teacher(s) and distil a student as the recipe says; writes runs/<name>/<time>/.",
    ),
    LazyCommand(
        "export",
        "kdtool.cli.export:register",
        "Export a model of a run for a hardware target, verify it, and write manifest.json.",
    ),
    LazyCommand("eval", "kdtool.cli.evaluate:register", "Evaluate a model on its task's validation data."),
    LazyCommand(
        "bench",
        "kdtool.cli.bench:register",
        "Benchmark PyTorch models and exported artifacts on this machine.",
    ),
    LazyCommand(
        "targets",
        "kdtool.cli.targets:register",
        "List target profiles: exporter, precision, hardware, and what is verifiable here.",
    ),
    LazyCommand(
        "predict",
        "kdtool.cli.predict:register",
        "Run an exported model on input files with the manifest's pre- and post-processing.",
        help_extra="kdtool.cli.common:predict_inputs_help",
    ),
    LazyCommand(
        "report",
        "kdtool.cli.report:register",
        "Write a self-contained HTML report of a run, or compare several runs in one page.",
    ),
    LazyCommand(
        "plugins",
        "kdtool.cli.plugins:app",
        "List installed plugins; create new ones (`new`); print the hook reference (`docs`).",
    ),
    LazyCommand("recipes", "kdtool.cli.recipes:app", "List and validate recipes."),
    LazyCommand(
        "study",
        "kdtool.cli.study:register",
        "Run the recipe once per seed, then compare each student with its baseline, paired by seed "
        "(mean ± std, 95% CI of the difference, wins, verdict); writes study.json, study.md, study.html.",
    ),
)


class _Group(KdtoolGroup):
    lazy_commands = COMMANDS


app = typer.Typer(
    name="kdtool",
    cls=_Group,
    help="Distil big models into small on-device models, and export them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"kdtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    trust: Annotated[
        bool,
        typer.Option(
            "--trust",
            help="Allow loading files that can run code (a .pt2 whose archive needs pickle). "
            "Only for files from a source you trust; same as KDTOOL_TRUST_CODE=1.",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    if trust:
        os.environ["KDTOOL_TRUST_CODE"] = "1"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (``kdtool`` exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("KDTOOL_DEBUG") == "1"
    try:
        # standalone mode: typer prints usage errors itself (its usage message, exit 2) and
        # turns Ctrl-C into exit 130; kdtool's own errors come out of it as exceptions.
        app(args=args, prog_name="kdtool", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KdtoolError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]kdtool: {exc.kind}:[/] {escape(str(exc))}", markup=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kdtool: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        err_console.print(f"[bold red]kdtool: internal error:[/] {type(exc).__name__}: {escape(str(exc))}")
        err_console.print("run again with --debug for the traceback, and please report it")
        return 70
    return 0
