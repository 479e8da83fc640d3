"""``kdtool predict ARTIFACT INPUT...``: run an artifact on real files, as an app would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kdtool.cli.common import console
from kdtool.errors import DataError


def predict(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder (with manifest.json).")],
    inputs: Annotated[list[Path], typer.Argument(help="Input files (images, audio).")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write outputs such as masks.")] = None,
) -> None:
    """Run an exported model on input files with the manifest's pre- and post-processing."""
    from kdtool.runtime import predict_files

    for path in inputs:
        if not path.exists():
            raise DataError(f"input file not found: {path}")
    results = predict_files(artifact, inputs, out)
    for result in results:
        console.print_json(json.dumps(result))


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
