"""``kdtool eval RUN|ARTIFACT``: the task's metrics for a PyTorch model or an exported artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from kdtool.cli.common import console
from kdtool.export.manifest import read_manifest
from kdtool.run import Run
from kdtool.task import Predictor


def is_artifact(path: Path | None) -> bool:
    if path is None:
        return False
    return (
        (path / "manifest.json").exists()
        or (path.is_file() and (path.parent / "manifest.json").exists())
        or path.name == "manifest.json"
    )


def evaluate_target(path: Path | None, model: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Metrics of an artifact (through its runtime) or of a run's model (through PyTorch)."""
    from kdtool import runtime

    if is_artifact(path):
        assert path is not None
        manifest = read_manifest(path)
        run = Run.of_artifact(path)
        runner = runtime.load(path)
        metrics = run.task.evaluate(runner, "val", limit=limit)
        return {
            "kind": runner.kind,
            "model": manifest["model"],
            "target": manifest["target"],
            "metrics": metrics,
        }
    run = Run.open(path)
    name = run.model_name(model)
    spec = run.export_spec(name)
    metrics = run.task.evaluate(Predictor.from_spec(spec), "val", limit=limit)
    return {"kind": "pytorch", "model": name, "target": None, "metrics": metrics}


def evaluate(
    path: Annotated[
        Path | None, typer.Argument(help="Run directory or artifact folder (default: runs/latest).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="For a run: which model (default: deploy_model).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Evaluate on the first N validation samples.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Evaluate a model on its task's validation data."""
    result = evaluate_target(path, model, limit)
    if as_json:
        console.print_json(json.dumps(result))
        return
    where = f"{result['kind']}" + (f" ({result['target']})" if result["target"] else "")
    console.print(f"{result['model']} ({where})", markup=False)
    for key, value in result["metrics"].items():
        console.print(f"  {key:<16} {value:.6g}" if isinstance(value, float) else f"  {key:<16} {value}")


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
