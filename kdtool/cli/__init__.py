"""The ``kdtool`` command line: one module per command, composed here.

User errors (:class:`kdtool.errors.KdtoolError`) print one clear message on stderr and exit
with their kind's code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from kdtool import __version__
from kdtool.cli.common import console, err_console
from kdtool.errors import KdtoolError

app = typer.Typer(
    name="kdtool",
    help="Distil big models into small on-device models, and export them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"kdtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    _STATE["debug"] = debug or os.environ.get("KDTOOL_DEBUG") == "1"


def _register_commands() -> None:
    from kdtool.cli import distill, plugins, recipes

    distill.register(app)
    app.add_typer(plugins.app, name="plugins")
    app.add_typer(recipes.app, name="recipes")
    for name in ("export", "evaluate", "bench", "targets", "predict", "report", "study"):
        try:
            module = __import__(f"kdtool.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError:
            continue
        module.register(app)
    try:
        from kdtool.plugins import get_plugin_manager

        get_plugin_manager().add_commands(app)
    except KdtoolError:
        pass


_register_commands()


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("KDTOOL_DEBUG") == "1"
    try:
        result = app(args=argv, standalone_mode=False)
    except KdtoolError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]kdtool: {exc.kind}:[/] {escape(str(exc))}", markup=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("kdtool: interrupted")
        return 130
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if debug:
            raise
        err_console.print(f"[bold red]kdtool: internal error:[/] {type(exc).__name__}: {escape(str(exc))}")
        err_console.print("run again with --debug for the traceback, and please report it")
        return 70
    # with standalone_mode=False, click returns a command's typer.Exit code instead of raising
    return result if isinstance(result, int) else 0
