"""Gather what a report shows from a run directory: summary, recipe, metrics, models,
measurements, exports and figures. Rendering lives in :mod:`kdtool.report.html`."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdtool.engine.rundir import MetricsLog, failure_note, read_summary, resolve_run
from kdtool.export.bench import machine_key
from kdtool.export.manifest import read_manifest
from kdtool.io import sha256_file, write_json
from kdtool.report.measure import ModelMeasurement, measure_models

FIGURES_DIR = "figures"
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
# Figures wider than this are scaled down before embedding (keeps the page light).
MAX_FIGURE_WIDTH = 1600
_WRITTEN_MARKER = ".report_written.json"


@dataclass
class ReportOptions:
    """What to compute while gathering a run."""

    measure: bool = True  # FLOPs/MACs (cached per weights)
    latency: bool = True  # CPU latency at batch 1 (cached per weights and machine)
    latency_seconds: float = 0.5
    latency_threads: int = 1
    # Seconds for all latency measurements of a report (None: no limit); see measure.py.
    latency_budget: float | None = 60.0
    task_figures: bool = True  # ask the task to write its figures (Task.write_figures)
    echo: Callable[[str], None] = lambda _m: None


@dataclass
class ModelRow:
    name: str
    role: str
    arch: str
    params: int | None
    metrics: dict[str, float]
    primary: float | None
    train_seconds: float | None
    steps: int | None
    kept: str | None
    teachers: list[str]
    baseline_for: str | None
    has_weights: bool
    measurement: ModelMeasurement = field(default_factory=ModelMeasurement)
    # Distillation gain: this model's metric minus its baseline's, signed so > 0 is better.
    gain: float | None = None
    gain_baseline: str | None = None


@dataclass
class FigureImage:
    title: str
    group: str  # hook name, or the figures/ subfolder
    description: str
    mime: str
    data: bytes
    width: int
    height: int
    source: str  # path relative to the run


@dataclass
class ExportInfo:
    folder: str
    manifest: dict[str, Any]


@dataclass
class RunData:
    run_dir: Path
    summary: dict[str, Any]
    recipe_text: str
    records: list[dict[str, Any]]
    models: list[ModelRow]
    exports: list[ExportInfo]
    figures: list[FigureImage]
    notes: list[str]
    measured_on: str

    @property
    def metric(self) -> str:
        return str(self.summary.get("primary_metric", {}).get("name", ""))

    @property
    def higher_is_better(self) -> bool:
        return bool(self.summary.get("primary_metric", {}).get("higher_is_better", True))

    @property
    def label(self) -> str:
        return f"{self.summary.get('recipe', '?')}/{self.run_dir.name}"

    def model(self, name: str | None) -> ModelRow | None:
        return next((m for m in self.models if m.name == name), None)


def distillation_gain(student: float | None, baseline: float | None, higher_is_better: bool) -> float | None:
    """Student metric vs its baseline, signed so that a positive gain means distillation helped."""
    if student is None or baseline is None:
        return None
    return student - baseline if higher_is_better else baseline - student


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def model_rows(summary: dict[str, Any], run_dir: Path) -> list[ModelRow]:
    metric = summary.get("primary_metric", {}).get("name", "")
    higher = bool(summary.get("primary_metric", {}).get("higher_is_better", True))
    rows: list[ModelRow] = []
    for name, entry in summary.get("models", {}).items():
        metrics = {k: v for k, v in (entry.get("metrics") or {}).items() if _float(v) is not None}
        weights = entry.get("weights")
        rows.append(
            ModelRow(
                name=name,
                role=str(entry.get("role", "?")),
                arch=str(entry.get("arch", "?")),
                params=entry.get("params") if isinstance(entry.get("params"), int) else None,
                metrics=metrics,
                primary=_float(metrics.get(metric)),
                train_seconds=_float(entry.get("train_seconds")),
                steps=entry.get("steps") if isinstance(entry.get("steps"), int) else None,
                kept=entry.get("kept"),
                teachers=list(entry.get("teachers") or []),
                baseline_for=entry.get("baseline_for"),
                has_weights=bool(weights) and (run_dir / str(weights)).exists(),
            )
        )
    by_name = {r.name: r for r in rows}
    models = summary.get("models", {})
    # A model may name the model it is to be compared with (``compare_with``: e.g. a supernet's
    # subnet and its twin trained alone, like with like); otherwise a control's ``baseline_for``.
    chosen = {n: e["compare_with"] for n, e in models.items() if e.get("compare_with") in by_name}
    for row in rows:
        if row.baseline_for and row.baseline_for in by_name and row.baseline_for not in chosen:
            student = by_name[row.baseline_for]
            student.gain = distillation_gain(student.primary, row.primary, higher)
            student.gain_baseline = row.name
    for name, other in chosen.items():
        by_name[name].gain = distillation_gain(by_name[name].primary, by_name[other].primary, higher)
        by_name[name].gain_baseline = other
    return rows


def _load_image(
    path: Path, run_dir: Path, group: str, description: str, notes: list[str]
) -> FigureImage | None:
    from PIL import Image, UnidentifiedImageError

    mime = IMAGE_SUFFIXES.get(path.suffix.lower())
    rel = _rel(path, run_dir)
    if mime is None:
        notes.append(f"figure {rel}: not a PNG or JPEG file, left out")
        return None
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
            if width > MAX_FIGURE_WIDTH:
                scale = MAX_FIGURE_WIDTH / width
                small = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB").resize(
                    (MAX_FIGURE_WIDTH, max(1, round(height * scale)))
                )
                buf = io.BytesIO()
                small.save(buf, format="PNG", optimize=True)
                data, mime = buf.getvalue(), "image/png"
                width, height = small.size
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        notes.append(f"figure {rel}: cannot be decoded ({exc}), left out")
        return None
    title = path.stem.replace("_", " ")
    return FigureImage(title, group, description, mime, data, width, height, rel)


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def write_task_figures(run_dir: Path, summary: dict[str, Any], opts: ReportOptions, notes: list[str]) -> None:
    """Ask the run's task to write figures (``Task.write_figures``) for each model with weights
    into ``RUN/figures/``; a marker file remembers which weights were drawn, so a second report
    does not draw them again."""
    from kdtool.run import Run
    from kdtool.task import Task

    try:
        ctx = Run.open(run_dir)
        task_cls = ctx.registries.tasks.get(ctx.loaded.recipe.task.name)
    except Exception as exc:
        notes.append(f"task figures not drawn: the run's task cannot be loaded ({type(exc).__name__}: {exc})")
        return
    if getattr(task_cls, "write_figures", None) is Task.write_figures:
        return  # the task draws no figures
    out_dir = run_dir / FIGURES_DIR
    marker = out_dir / _WRITTEN_MARKER
    try:
        written = json.loads(marker.read_text()) if marker.exists() else {}
    except (OSError, ValueError):
        written = {}
    changed = False
    for name, entry in summary.get("models", {}).items():
        weights = entry.get("weights")
        if not weights or not (run_dir / weights).exists():
            continue
        digest = sha256_file(run_dir / weights)
        if written.get(name) == digest:
            continue
        opts.echo(f"report: drawing the task's figures of {name}")
        try:
            task = ctx.task
            predictor = task.predictor(ctx.load_model(name), name, "cpu")
            out_dir.mkdir(parents=True, exist_ok=True)
            task.write_figures(predictor, name, out_dir)
        except Exception as exc:  # a figure must never cost the whole report
            notes.append(f"task figures of {name}: {type(exc).__name__}: {exc}")
            continue
        written[name] = digest
        changed = True
    if changed:
        write_json(marker, written)


def collect_figures(run_dir: Path, notes: list[str]) -> list[FigureImage]:
    """Hook figures first (``register_report_figures``), then every image under ``RUN/figures/``
    that no hook returned; each file once."""
    from kdtool.plugins import get_plugin_manager

    figures: list[FigureImage] = []
    seen: set[Path] = set()
    try:
        entries = get_plugin_manager().registries(strict=False).report_figures.entries()
    except Exception as exc:
        entries = []
        notes.append(f"report figure hooks not loaded: {exc}")
    for entry in entries:
        try:
            paths = list(entry.obj(run_dir) or [])
        except Exception as exc:
            notes.append(f"figure hook {entry.name!r} ({entry.owner}) failed: {type(exc).__name__}: {exc}")
            continue
        for p in paths:
            path = Path(p)
            path = path if path.is_absolute() else run_dir / path
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            if not path.is_file():
                notes.append(f"figure hook {entry.name!r} returned {p}, which does not exist")
                continue
            fig = _load_image(path, run_dir, entry.name, entry.description, notes)
            if fig is not None:
                figures.append(fig)
    fig_dir = run_dir / FIGURES_DIR
    if fig_dir.is_dir():
        for path in sorted(fig_dir.rglob("*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES or path.resolve() in seen:
                continue
            seen.add(path.resolve())
            sub = path.parent.relative_to(fig_dir)
            group = "figures/" if str(sub) == "." else f"figures/{sub}/"
            fig = _load_image(path, run_dir, group, "", notes)
            if fig is not None:
                figures.append(fig)
    return figures


def collect_exports(run_dir: Path, notes: list[str]) -> list[ExportInfo]:
    out: list[ExportInfo] = []
    exports = run_dir / "exports"
    if not exports.is_dir():
        return out
    for folder in sorted(p for p in exports.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "manifest.json").exists():
            continue
        try:
            out.append(ExportInfo(folder.name, read_manifest(folder)))
        except Exception as exc:
            notes.append(f"export {folder.name}: manifest unreadable ({exc})")
    return out


def collect_run(run: Path | str | None, opts: ReportOptions | None = None) -> RunData:
    """Everything the report shows about one run (measuring and drawing as ``opts`` say)."""
    opts = opts or ReportOptions()
    run_dir = resolve_run(run)
    summary = read_summary(run_dir)
    notes: list[str] = []
    failed = failure_note(summary)
    if failed:
        notes.append(failed)
        opts.echo(f"report: {run_dir}: {failed}")
    recipe_path = run_dir / "recipe.resolved.yaml"
    recipe_text = recipe_path.read_text(encoding="utf-8") if recipe_path.exists() else ""
    if not recipe_text:
        notes.append("the run has no recipe.resolved.yaml")
    records = MetricsLog(run_dir / "metrics.jsonl").read()
    rows = model_rows(summary, run_dir)
    if opts.measure and any(r.has_weights for r in rows):
        measurements = _measure(run_dir, summary, opts, notes)
        for row in rows:
            if row.name in measurements:
                row.measurement = measurements[row.name]
    if opts.task_figures:
        write_task_figures(run_dir, summary, opts, notes)
    figures = collect_figures(run_dir, notes)
    exports = collect_exports(run_dir, notes)
    return RunData(run_dir, summary, recipe_text, records, rows, exports, figures, notes, machine_key())


def _measure(
    run_dir: Path, summary: dict[str, Any], opts: ReportOptions, notes: list[str]
) -> dict[str, ModelMeasurement]:
    from kdtool.run import Run

    ctx: list[Run] = []

    def spec_for(name: str) -> Any:
        if not ctx:
            ctx.append(Run.open(run_dir))
        return ctx[0].export_spec(name)

    try:
        return measure_models(
            run_dir,
            summary,
            spec_for,
            latency=opts.latency,
            seconds=opts.latency_seconds,
            threads=opts.latency_threads,
            budget=opts.latency_budget,
            echo=opts.echo,
        )
    except Exception as exc:
        notes.append(f"models not measured: {type(exc).__name__}: {exc}")
        return {}
