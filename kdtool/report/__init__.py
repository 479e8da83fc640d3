"""Run reports: one self-contained HTML page per run (``RUN/report.html``), and comparison pages.

``kdtool report [RUN]`` (default ``runs/latest``) and the end of ``kdtool distill`` write
``RUN/report.html``; ``kdtool report RUN_A RUN_B ...`` writes a comparison page (default
``RUN_A/compare-<other runs>.html``, or ``--out PATH``).

The page needs nothing but a browser: CSS is inline, every image is a base64 ``data:`` URI,
there is no script and no external URL, and every string taken from a run is HTML-escaped.
It shows the resolved recipe; the environment; per-stage loss, metric and learning-rate
curves (matplotlib, Agg); a table of every model (teachers, distilled student, baseline
student, subnets) with parameters, MACs, metrics, CPU latency and the distillation gain; the
task's figures; and every exported artifact's manifest (status, size, precision, parity,
metric, latency) side by side.

Figure conventions (for task plugins):

* ``Task.write_figures(predictor, model_name, out_dir)`` is called by the report for every
  model of the run that has weights, with ``out_dir = RUN/figures/`` (once per weights file:
  ``RUN/figures/.report_written.json`` remembers what was drawn). Write PNG (or JPEG) files
  there, named after the model, e.g. ``figures/segmentation_overlays_student.png``.
* A plugin may also register ``fn(run_dir) -> list[Path]`` with the ``register_report_figures``
  hook; those images are shown first, under the registered name and description. Relative
  paths are taken relative to the run directory. Return ``[]`` for runs of other tasks.
* Every other ``*.png``/``*.jpg`` under ``RUN/figures/`` (any depth) is shown too, grouped by
  sub-folder and captioned with its file name (underscores read as spaces). Each file appears
  once. Images wider than 1600 px are scaled down before embedding.

Measurements (FLOPs/MACs, CPU latency) are cached in ``RUN/report_measurements.json``; see
:mod:`kdtool.report.measure`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from kdtool.errors import RunError
from kdtool.io import write_text
from kdtool.report.collect import ReportOptions, RunData, collect_run, distillation_gain
from kdtool.report.html import render_comparison, render_run

REPORT_FILE = "report.html"

__all__ = [
    "REPORT_FILE",
    "ReportOptions",
    "RunData",
    "collect_run",
    "comparison_path",
    "distillation_gain",
    "write_comparison",
    "write_report",
]


def write_report(
    run: Path | str | None = None, opts: ReportOptions | None = None, out: Path | None = None
) -> Path:
    """Write the report of one run (default ``RUN/report.html``) and return its path."""
    data = collect_run(run, opts)
    path = out or data.run_dir / REPORT_FILE
    if path.is_dir():
        path = path / REPORT_FILE
    write_text(path, render_run(data))
    return path


def comparison_path(runs: Sequence[RunData]) -> Path:
    """Default place of a comparison page: in the first run, named after the others."""
    parts = [f"{r.summary.get('recipe', 'run')}-{r.run_dir.name}" for r in runs[1:]]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "_vs_".join(parts))
    if len(name) > 120:
        name = name[:100] + "-" + hashlib.sha256(name.encode()).hexdigest()[:10]
    return runs[0].run_dir / f"compare-{name}.html"


def write_comparison(
    runs: Sequence[Path | str], opts: ReportOptions | None = None, out: Path | None = None
) -> Path:
    """Write one page comparing two or more runs and return its path."""
    if len(runs) < 2:
        raise RunError(
            "a comparison needs two or more runs", hint="`kdtool report RUN` writes one run's report"
        )
    # A comparison shows no task figures: do not draw them.
    opts = replace(opts or ReportOptions(), task_figures=False)
    data = [collect_run(r, opts) for r in runs]
    resolved = [d.run_dir for d in data]
    if len(set(resolved)) != len(resolved):
        raise RunError(f"the same run is given twice: {', '.join(str(p) for p in resolved)}")
    path = out or comparison_path(data)
    if path.is_dir():
        path = path / comparison_path(data).name
    write_text(path, render_comparison(data))
    return path
