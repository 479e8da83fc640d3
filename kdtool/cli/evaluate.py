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


def fp32_reference(manifest: dict[str, Any]) -> str | None:
    """The run model an artifact is compared with: for a reduced-precision artifact, the FP32
    model it came from (a quantization-aware stage's ``init`` stage, else the model itself in
    PyTorch); None for an FP32 artifact."""
    if manifest.get("precision") in (None, "fp32"):
        return None
    for info in (manifest.get("details", {}).get("graphs") or {}).values():
        init = (info.get("quantization") or {}).get("qad_init_stage")
        if init:
            return str(init)
    return str(manifest["model"])


def evaluate_target(
    path: Path | None, model: str | None = None, limit: int | None = None, *, reference: bool = False
) -> dict[str, Any]:
    """Metrics of an artifact (through its runtime) or of a run's model (through PyTorch).
    ``reference``: for a reduced-precision artifact, also the FP32 model it came from."""
    from kdtool import runtime

    if is_artifact(path):
        assert path is not None
        manifest = read_manifest(path)
        run = Run.of_artifact(path)
        runner = runtime.load(path)
        metrics = run.task.evaluate(runner, "val", limit=limit)
        result: dict[str, Any] = {
            "kind": runner.kind,
            "model": manifest["model"],
            "target": manifest["target"],
            "precision": manifest.get("precision"),
            "metrics": metrics,
        }
        ref = fp32_reference(manifest) if reference else None
        if ref is not None:
            spec = run.export_spec(ref)
            result["reference"] = {
                "kind": "pytorch",
                "model": ref,
                "precision": "fp32",
                "metrics": run.task.evaluate(Predictor.from_spec(spec), "val", limit=limit),
            }
        return result
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
    reference: Annotated[
        bool,
        typer.Option(
            "--reference/--no-reference",
            help="For an FP16/INT8 artifact, also evaluate the FP32 model it came from (a QAD "
            "stage's init stage) in PyTorch and show both.",
        ),
    ] = True,
) -> None:
    """Evaluate a model on its task's validation data."""
    result = evaluate_target(path, model, limit, reference=reference)
    if as_json:
        console.print_json(json.dumps(result))
        return
    where = f"{result['kind']}" + (f" ({result['target']})" if result["target"] else "")
    ref = result.get("reference")
    if ref is None:
        console.print(f"{result['model']} ({where})", markup=False)
        for key, value in result["metrics"].items():
            console.print(f"  {key:<16} {_fmt(value)}")
        return
    precision = str(result.get("precision") or "").upper()
    console.print(
        f"{result['model']} ({where}, {precision}) next to FP32 {ref['model']} (PyTorch)", markup=False
    )
    console.print(f"  {'metric':<16} {precision:>12} {'FP32':>12} {'change':>12}", markup=False)
    for key, value in result["metrics"].items():
        base = ref["metrics"].get(key)
        change = (
            f"{value - base:+.4g}"
            if isinstance(value, (int, float)) and isinstance(base, (int, float))
            else ""
        )
        console.print(f"  {key:<16} {_fmt(value):>12} {_fmt(base):>12} {change:>12}", markup=False)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
