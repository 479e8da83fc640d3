"""``kdtool predict ARTIFACT INPUT...``: run an artifact on real files, as an app would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kdtool.cli.common import console, err_console
from kdtool.errors import DataError


def predict(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder (with manifest.json).")],
    inputs: Annotated[list[Path], typer.Argument(help="Input files (images, audio).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write outputs such as masks (default: ./predictions)."),
    ] = None,
) -> None:
    """Run an exported model on input files with the manifest's pre- and post-processing."""
    from kdtool.runtime import predict_files

    results = predict_files(artifact, inputs, out)
    failed = [r for r in results if "error" in r]
    for result in results:
        if "error" in result:
            err_console.print(f"kdtool: {result['input']}: {result['error']}", markup=False)
        else:
            console.print_json(json.dumps(result))
    if failed:
        raise DataError(
            f"{len(failed)} of {len(inputs)} inputs could not be read: "
            + ", ".join(str(r["input"]) for r in failed),
            hint="the results of the other inputs are above",
        )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
