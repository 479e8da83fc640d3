"""``kdtool bench RUN|ARTIFACT...``: latency, throughput, size, memory and metric side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdtool.cli.common import console, err_console
from kdtool.cli.evaluate import is_artifact
from kdtool.export.bench import (
    BenchRow,
    bench_predictor,
    graph_infos_from_spec,
    int8_warnings,
    peak_growth_mb,
    record_in_manifest,
    reset_peak,
)
from kdtool.export.driver import RunContext
from kdtool.export.manifest import read_manifest
from kdtool.task import Predictor


def bench_artifact(
    path: Path, *, batch: int, seconds: float, metric_limit: int | None, with_metric: bool
) -> BenchRow:
    from kdtool import runtime

    manifest = read_manifest(path)
    directory = Path(path) if Path(path).is_dir() else Path(path).parent
    row = BenchRow(
        name=f"{manifest['target']}",
        kind=manifest["format"],
        model=manifest["model"],
        precision=manifest["precision"],
        size_bytes=manifest["size_bytes"],
        params=manifest.get("params"),
    )
    for graph, info in (manifest.get("details", {}).get("graphs") or {}).items():
        summary = (info.get("quantization") or {}).get("summary")
        if summary:
            row.notes.append(f"INT8 graph {graph!r}: {_describe_quantization(summary)}")
    baseline = reset_peak()
    try:
        runner = runtime.load(directory)
    except Exception as exc:  # an artifact that cannot run here still reports its size
        row.notes.append(f"cannot run here: {exc}")
        return row
    row.kind = runner.kind
    row.latency_ms_p50, row.latency_ms_p90, row.throughput, row.throughput_batch = bench_predictor(
        runner, manifest["graphs"], throughput_batch=batch, max_seconds=seconds
    )
    row.peak_memory_mb = peak_growth_mb(baseline)
    if with_metric:
        run = RunContext(manifest["source"]["run"])
        metric = run.task.primary_metric.name
        row.metric_name = metric
        row.metric = float(run.task.evaluate(runner, "val", limit=metric_limit)[metric])
    record_in_manifest(directory, row)
    return row


def _describe_quantization(summary: dict[str, object]) -> str:
    """Q/DQ node counts and the op types left in float (why INT8 may not pay)."""
    floats = summary.get("float_ops") or {}
    listed = ", ".join(f"{k} x{v}" for k, v in floats.items()) if isinstance(floats, dict) else ""
    return (
        f"{summary.get('quantize_nodes', 0)} QuantizeLinear / {summary.get('dequantize_nodes', 0)} "
        f"DequantizeLinear nodes; ops left in float: {listed or 'none'}"
    )


def bench_run(
    path: Path | None,
    model: str | None,
    *,
    batch: int,
    seconds: float,
    metric_limit: int | None,
    with_metric: bool,
) -> tuple[BenchRow, Path]:
    run = RunContext(path)
    name = run.model_name(model)
    entry = run.summary["models"][name]
    baseline = reset_peak()
    spec = run.export_spec(name)
    predictor = Predictor.from_spec(spec)
    row = BenchRow(
        name=f"pytorch:{name}",
        kind="pytorch",
        model=name,
        precision="fp32",
        size_bytes=(run.run_dir / entry["weights"]).stat().st_size,
        params=entry.get("params"),
    )
    row.latency_ms_p50, row.latency_ms_p90, row.throughput, row.throughput_batch = bench_predictor(
        predictor, graph_infos_from_spec(spec), throughput_batch=batch, max_seconds=seconds
    )
    row.peak_memory_mb = peak_growth_mb(baseline)
    if with_metric:
        metric = run.task.primary_metric.name
        row.metric_name = metric
        row.metric = float(run.task.evaluate(predictor, "val", limit=metric_limit)[metric])
    return row, run.run_dir


def bench(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Runs and/or artifact folders (default: runs/latest).")
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", help="For a run: also bench its exports for these targets."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="For a run: which model (default: deploy_model).")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Batch size for the throughput measurement.")] = 32,
    seconds: Annotated[float, typer.Option("--seconds", help="Time budget per latency measurement.")] = 2.0,
    metric_limit: Annotated[
        int | None, typer.Option("--metric-limit", help="Validation samples for the metric.")
    ] = None,
    no_metric: Annotated[bool, typer.Option("--no-metric", help="Skip the metric.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the results as JSON here.")] = None,
) -> None:
    """Benchmark PyTorch models and exported artifacts on this machine."""
    rows: list[BenchRow] = []
    for path in paths or [None]:  # type: ignore[list-item]
        if is_artifact(path):
            assert path is not None
            rows.append(
                bench_artifact(
                    path, batch=batch, seconds=seconds, metric_limit=metric_limit, with_metric=not no_metric
                )
            )
            continue
        row, run_dir = bench_run(
            path, model, batch=batch, seconds=seconds, metric_limit=metric_limit, with_metric=not no_metric
        )
        rows.append(row)
        exports = run_dir / "exports"
        folders = (
            [exports / t for t in target]
            if target
            else sorted(p for p in exports.glob("*") if (p / "manifest.json").exists())
        )
        for folder in folders:
            if not (folder / "manifest.json").exists():
                err_console.print(
                    f"kdtool: warning: no export at {folder}; run `kdtool export --target {folder.name}` first"
                )
                continue
            if read_manifest(folder)["model"] != row.model and not target:
                continue
            rows.append(
                bench_artifact(
                    folder, batch=batch, seconds=seconds, metric_limit=metric_limit, with_metric=not no_metric
                )
            )
    warnings = int8_warnings(rows)
    result = {"rows": [r.to_dict() for r in rows], "warnings": warnings}
    if out is not None:
        from kdtool.io import write_json

        write_json(out, result)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table(title="kdtool bench (this machine)")
    for col in (
        "artifact",
        "model",
        "precision",
        "size",
        "p50 ms",
        "p90 ms",
        "samples/s",
        "peak MB",
        "metric",
    ):
        table.add_column(col, justify="right" if col not in ("artifact", "model") else "left")
    for r in rows:
        table.add_row(
            r.name,
            r.model,
            r.precision,
            f"{r.size_bytes / 1024:.1f} KB",
            f"{r.latency_ms_p50:.3f}" if r.latency_ms_p50 is not None else "-",
            f"{r.latency_ms_p90:.3f}" if r.latency_ms_p90 is not None else "-",
            f"{r.throughput:.0f} (b{r.throughput_batch})" if r.throughput else "-",
            f"{r.peak_memory_mb:.1f}" if r.peak_memory_mb is not None else "-",
            f"{r.metric_name} {r.metric:.4g}" if r.metric is not None else "-",
        )
    console.print(table)
    for r in rows:
        for note in r.notes:
            console.print(f"{r.name}: {note}", markup=False)
    for w in warnings:
        err_console.print(f"kdtool: warning: {w}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
