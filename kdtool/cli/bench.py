"""``kdtool bench RUN|ARTIFACT...``: latency, throughput, size, memory and metric side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kdtool.cli.common import console, err_console
from kdtool.cli.evaluate import is_artifact
from kdtool.errors import KdtoolError
from kdtool.export.bench import (
    BenchRow,
    bench_predictor,
    graph_infos_from_spec,
    int8_warnings,
    peak_growth_mb,
    record_in_manifest,
    reset_peak,
)
from kdtool.export.manifest import read_manifest
from kdtool.run import Run
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
        row.notes.extend(quantization_notes(graph, info.get("quantization") or {}))
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
        run = Run.of_artifact(directory)
        metric = run.task.primary_metric.name
        row.metric_name = metric
        row.metric = float(run.task.evaluate(runner, "val", limit=metric_limit)[metric])
    record_in_manifest(directory, row)
    return row


def quantization_notes(graph: str, quantization: dict[str, Any]) -> list[str]:
    """Why an INT8 graph may not pay: its mode (weight-only INT8 quantizes activations on every
    call), a static attempt that fell back, Q/DQ node counts and the op types left in float."""
    notes = []
    if quantization.get("mode") == "dynamic":
        why = (
            f"INT8 graph {graph!r} is weight-only (dynamic): activations are quantized on every call "
            "and convolutions run as ConvInteger, which ONNX Runtime's CPU kernels run slower than "
            "float Conv; static QDQ INT8 or a quantization-aware stage is the fast path"
        )
        fallback = quantization.get("fallback_from_static")
        if fallback:
            why += f" (static QDQ was tried and broke a dynamic axis: {fallback})"
        notes.append(why)
    summary = quantization.get("summary")
    if isinstance(summary, dict):
        floats = summary.get("float_ops") or {}
        listed = ", ".join(f"{k} x{v}" for k, v in floats.items()) if isinstance(floats, dict) else ""
        notes.append(
            f"INT8 graph {graph!r}: {summary.get('quantize_nodes', 0)} QuantizeLinear / "
            f"{summary.get('dequantize_nodes', 0)} DequantizeLinear nodes; ops left in float: {listed or 'none'}"
        )
    return notes


def bench_run(
    path: Path | None,
    model: str | None,
    *,
    batch: int,
    seconds: float,
    metric_limit: int | None,
    with_metric: bool,
) -> tuple[BenchRow, Path]:
    run = Run.open(path)
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


CONTENTION_RATIO = 1.5  # p90/p50 above this: the timings spread, the machine was likely busy


def bench_in_subprocess(request: dict[str, Any]) -> BenchRow:
    """Measure one row in a fresh Python process, so its peak memory is its own (in one
    process, later rows reuse memory earlier rows grew and under-report)."""
    proc = subprocess.run(
        [sys.executable, "-m", "kdtool.cli.bench", json.dumps(request)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=False,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise KdtoolError(f"benchmark of {request['path'] or 'runs/latest'} failed in its subprocess: {tail}")
    data = json.loads(lines[-1])
    if "error" in data:
        raise KdtoolError(data["error"], hint=data.get("hint"))
    return BenchRow(**data["row"])


def _worker(argv: list[str]) -> int:
    """``python -m kdtool.cli.bench REQUEST_JSON``: one row, printed as a JSON line."""
    request = json.loads(argv[0])
    path = Path(request["path"]) if request["path"] else None
    common = {
        "batch": request["batch"],
        "seconds": request["seconds"],
        "metric_limit": request["metric_limit"],
        "with_metric": request["with_metric"],
    }
    try:
        if request["kind"] == "artifact":
            assert path is not None
            row = bench_artifact(path, **common)
        else:
            row, _ = bench_run(path, request["model"], **common)
    except KdtoolError as exc:
        print(json.dumps({"error": exc.message, "hint": exc.hint}))
        return 0
    print(json.dumps({"row": row.to_dict()}))
    return 0


def contention_notes(rows: list[BenchRow]) -> list[str]:
    """Rows whose p90/p50 says the timings spread (another process competed for the CPU)."""
    out = []
    for r in rows:
        if r.latency_ms_p50 and r.latency_ms_p90 and r.latency_ms_p90 / r.latency_ms_p50 > CONTENTION_RATIO:
            out.append(
                f"{r.name}: p90/p50 = {r.latency_ms_p90 / r.latency_ms_p50:.1f}: the timings spread, the machine "
                f"was probably busy; rerun on an idle machine before comparing"
            )
    return out


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
    common = {"batch": batch, "seconds": seconds, "metric_limit": metric_limit, "with_metric": not no_metric}
    say = err_console.print if as_json else console.print

    def one(kind: str, where: Path | None) -> BenchRow:
        say(f"bench: measuring {where or 'runs/latest'} in its own process", markup=False)
        request = {"kind": kind, "path": str(where) if where else None, "model": model, **common}
        return bench_in_subprocess(request)

    for path in paths or [None]:  # type: ignore[list-item]
        if is_artifact(path):
            assert path is not None
            rows.append(one("artifact", path))
            continue
        run_dir = Run.open(path).run_dir
        row = one("run", run_dir)
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
            rows.append(one("artifact", folder))
    warnings = int8_warnings(rows) + contention_notes(rows)
    result = {
        "rows": [{**r.to_dict(), "busy": bool(contention_notes([r]))} for r in rows],
        "warnings": warnings,
    }
    if out is not None:
        from kdtool.io import write_json

        write_json(out, result)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table(title="kdtool bench (this machine, each row in its own process)")
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
            (f"{r.latency_ms_p90:.3f}" + (" !" if contention_notes([r]) else ""))
            if r.latency_ms_p90 is not None
            else "-",
            f"{r.throughput:.0f} (b{r.throughput_batch})" if r.throughput else "-",
            f"{r.peak_memory_mb:.1f}" if r.peak_memory_mb is not None else "-",
            f"{r.metric_name} {r.metric:.4g}" if r.metric is not None else "-",
        )
    # Piped to a file, rich would cut the table to 80 columns: print it at full width.
    out_console = console if console.is_terminal else Console(width=1000, highlight=False)
    out_console.print(table)
    for r in rows:
        for note in r.notes:
            console.print(f"{r.name}: {note}", markup=False)
    for w in warnings:
        err_console.print(f"kdtool: warning: {w}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
