"""Render gathered runs as one self-contained HTML page: inline CSS, images as base64
``data:`` URIs, no scripts, no external URLs. Every string that comes from a run (names,
metrics, recipe text, manifest fields, notes) goes through :func:`esc`."""

from __future__ import annotations

import base64
import difflib
import html
import io
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from PIL import Image

from kdtool import __version__
from kdtool.report import plots
from kdtool.report.collect import ExportInfo, FigureImage, ModelRow, RunData

CSS = """
:root { --fg:#1d2330; --muted:#5b6474; --line:#d9dee7; --bg:#ffffff; --soft:#f4f6f9; --good:#146c2e;
        --bad:#a4161a; --accent:#1f5fa8; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); margin: 0; line-height: 1.45; font-size: 15px; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
.sub { color: var(--muted); font-size: 13px; word-break: break-all; }
nav { margin: 14px 0 0; font-size: 13px; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 18px 0 4px; }
.card { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px;
        min-width: 190px; max-width: 300px; flex: 1 1 190px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 22px; font-weight: 600; margin-top: 2px; }
.card .d { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; margin: 6px 0 10px; }
th, td { border: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
.scroll { overflow-x: auto; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         background: var(--soft); border: 1px solid var(--line); }
.badge.ok { color: var(--good); border-color: #9ccfab; background: #eaf6ee; }
.badge.bad { color: var(--bad); border-color: #e3a3a5; background: #fbecec; }
.badge.warn { color: #7a5300; border-color: #e8cf91; background: #fdf6e3; }
.good { color: var(--good); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.muted { color: var(--muted); }
figure { margin: 10px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
img.zoomed { image-rendering: pixelated; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      font-size: 12.5px; overflow-x: auto; line-height: 1.35; }
pre.recipe { max-height: 520px; overflow-y: auto; }
details { margin: 6px 0 10px; }
summary { cursor: pointer; color: var(--accent); }
ul.notes li { margin: 3px 0; }
.diff-add { color: var(--good); } .diff-del { color: var(--bad); } .diff-hunk { color: var(--muted); }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; border-top: 1px solid var(--line); padding-top: 8px; }
@media print { nav { display: none; } h2 { break-after: avoid; } figure { break-inside: avoid; } }
"""


def esc(value: Any) -> str:
    """HTML-escape any value's text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------- formatting


def fmt_num(value: Any, digits: int = 4) -> str:
    if value is None or isinstance(value, bool):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return esc(value)


def fmt_count(value: int | float | None) -> str:
    """1234567 -> '1.23 M' (parameters, MACs)."""
    if value is None:
        return "–"
    v = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{int(v)}"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "–"
    v = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if v < 1024 or unit == "GB":
            return f"{int(v)} B" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{value} B"


def fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g} ms"


def fmt_gain(gain: float | None, baseline: str | None = None) -> str:
    if gain is None:
        return "–"
    cls = "good" if gain > 0 else "bad" if gain < 0 else "muted"
    text = f'<span class="{cls}">{gain:+.4g}</span>'
    if baseline:
        text += f' <span class="muted">vs {esc(baseline)}</span>'
    return text


def badge(status: Any) -> str:
    s = str(status)
    cls = "ok" if s in ("ok", "complete", "passed") else "bad" if ("fail" in s or s in ("error",)) else "warn"
    return f'<span class="badge {cls}">{esc(s)}</span>'


def img_tag(
    data: bytes, mime: str, alt: str, width: int | None = None, height: int | None = None, zoom: int = 1
) -> str:
    """An embedded image; ``zoom`` > 1 shows a small figure (e.g. 64-pixel tiles) enlarged, pixel-sharp."""
    encoded = base64.b64encode(data).decode("ascii")
    size = f' width="{width * zoom}" height="{height * zoom}"' if width and height else ""
    style = ' class="zoomed"' if zoom > 1 else ""
    return f'<img src="data:{esc(mime)};base64,{encoded}" alt="{esc(alt)}"{size}{style}>'


def _zoom(width: int) -> int:
    """Figures narrower than 320 px are shown 2-3x larger."""
    return max(1, min(3, 640 // max(width, 1)))


def png_figure(data: bytes | None, alt: str, caption: str = "") -> str:
    if data is None:
        return ""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{img_tag(data, 'image/png', alt, w, h)}{cap}</figure>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """``headers`` are plain text (escaped here); cells are already-safe HTML."""
    head = "".join(
        f'<th class="num">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="kdtool {esc(__version__)}">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body><main>\n{body}\n"
        f"<footer>Written by kdtool {esc(__version__)} on {esc(time.strftime('%Y-%m-%d %H:%M:%S %z'))}. "
        "This page is self-contained: images are embedded, nothing is loaded from the network.</footer>"
        "</main></body></html>\n"
    )


# --------------------------------------------------------------------------- run report


def _models_table(run: RunData) -> str:
    metric = run.metric
    headers = [
        "model",
        "role",
        "arch",
        "params",
        "MACs (batch 1)",
        metric or "metric",
        "CPU latency p50 (p90)",
        "distillation gain",
        "training",
    ]
    numeric = [3, 4, 5, 6]
    rows = []
    for m in run.models:
        meas = m.measurement
        lat = fmt_ms(meas.latency_ms_p50)
        if meas.latency_ms_p90 is not None:
            lat += f' <span class="muted">({meas.latency_ms_p90:.3g})</span>'
        name = f"<strong>{esc(m.name)}</strong>" if m.name == run.summary.get("deploy_model") else esc(m.name)
        if m.name == run.summary.get("deploy_model"):
            name += ' <span class="badge ok">deploy</span>'
        macs = fmt_count(meas.macs)
        if len(meas.graph_flops) > 1:
            macs += (
                "<br><span class='muted'>"
                + ", ".join(f"{esc(g)} {fmt_count(f // 2)}" for g, f in meas.graph_flops.items())
                + "</span>"
            )
        rows.append(
            [
                name,
                esc(m.role)
                + (f" <span class='muted'>for {esc(m.baseline_for)}</span>" if m.baseline_for else ""),
                esc(m.arch),
                fmt_count(m.params) + (f"<br><span class='muted'>{m.params:,}</span>" if m.params else ""),
                macs,
                f"<strong>{fmt_num(m.primary)}</strong>",
                lat,
                fmt_gain(m.gain, m.gain_baseline),
                _training_cell(m),
            ]
        )
    out = table(headers, rows, numeric)
    out += _all_metrics_table(run)
    notes = [(m.name, n) for m in run.models for n in m.measurement.notes]
    if notes:
        out += "<ul class='notes'>" + "".join(f"<li>{esc(n)}: {esc(t)}</li>" for n, t in notes) + "</ul>"
    threads = next((m.measurement.threads for m in run.models if m.measurement.threads), None)
    arrow = "higher is better" if run.higher_is_better else "lower is better"
    out += (
        f"<p class='muted'>{esc(metric)}: validation split, {arrow}. Distillation gain = the student's {esc(metric)} "
        f"minus its baseline's (same architecture trained without teachers), signed so that positive means "
        f"distillation helped. MACs: multiply-accumulates of matrix products and convolutions for one call of each "
        f"exported graph at batch 1 (element-wise work not counted). CPU latency: PyTorch, batch 1, this machine"
        + (f", {threads} thread(s)" if threads else "")
        + ".</p>"
    )
    return out


def _all_metrics_table(run: RunData) -> str:
    """Every validation metric (rows) of every model (columns): tasks report many (per-class IoU)."""
    names = [run.metric] + sorted({k for m in run.models for k in m.metrics if k != run.metric})
    if len(names) < 2:
        return ""
    rows = [
        [
            f"<strong>{esc(k)}</strong>" if k == run.metric else esc(k),
            *[fmt_num(m.metrics.get(k)) for m in run.models],
        ]
        for k in names
    ]
    body = table(["metric", *[m.name for m in run.models]], rows, numeric=list(range(1, len(run.models) + 1)))
    return f"<details><summary>all validation metrics ({len(names)})</summary>{body}</details>"


def _training_cell(m: ModelRow) -> str:
    parts = []
    if m.steps is not None or m.train_seconds is not None:
        parts.append(
            f"{fmt_num(m.steps)} steps"
            + (f", {m.train_seconds:.1f} s" if m.train_seconds is not None else "")
        )
    if m.kept:
        parts.append(f"<span class='muted'>kept {esc(m.kept)}</span>")
    if m.teachers:
        parts.append(f"<span class='muted'>teachers: {esc(', '.join(m.teachers))}</span>")
    if not m.has_weights:
        parts.append("<span class='bad'>no weights</span>")
    return "<br>".join(parts) or "–"


def _size_ratio(ratio: float) -> str:
    if ratio >= 1.05:
        return f"{ratio:.1f}× smaller"
    return "same size" if ratio > 0.95 else f"{1 / ratio:.1f}× larger"


def _highlights(run: RunData) -> str:
    cards = []
    deploy = run.model(run.summary.get("deploy_model"))
    metric = run.metric
    if deploy is not None:
        cards.append(("deployed model", esc(deploy.name), f"{esc(metric)} {fmt_num(deploy.primary)}"))
        if deploy.gain is not None:
            cards.append(
                ("distillation gain", fmt_gain(deploy.gain), f"{esc(metric)} vs {esc(deploy.gain_baseline)}")
            )
    # the run's models that another model learnt from (a teacher is what the recipe uses as one)
    taught_by = {t for m in run.models for t in m.teachers}
    teachers = [m for m in run.models if m.name in taught_by]
    if deploy is not None and teachers:
        t = max(teachers, key=lambda m: m.params or 0)
        if t.params and deploy.params:
            cards.append(
                (
                    "size vs teacher",
                    _size_ratio(t.params / deploy.params),
                    f"{fmt_count(deploy.params)} vs {fmt_count(t.params)} params ({esc(t.name)})",
                )
            )
        if t.measurement.latency_ms_p50 and deploy.measurement.latency_ms_p50:
            cards.append(
                (
                    "CPU speed-up vs teacher",
                    f"{t.measurement.latency_ms_p50 / deploy.measurement.latency_ms_p50:.1f}×",
                    f"{fmt_ms(deploy.measurement.latency_ms_p50)} vs {fmt_ms(t.measurement.latency_ms_p50)}",
                )
            )
        if t.primary is not None and deploy.primary is not None:
            cards.append((f"teacher {esc(metric)}", fmt_num(t.primary), esc(t.name)))
    cards.append(
        (
            "exported artifacts",
            str(len(run.exports)),
            ", ".join(esc(e.folder) for e in run.exports) or "none yet",
        )
    )
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div><div class="d">{d}</div></div>'
            for k, v, d in cards
        )
        + "</div>"
    )


def _stages(run: RunData) -> list[tuple[str, str, str]]:
    """(stage, role, line style) in recipe order; stages that only appear in metrics.jsonl
    follow. A control (a stage with ``baseline_for``) is dashed."""
    out: list[tuple[str, str, str]] = []
    try:
        recipe = yaml.safe_load(run.recipe_text) or {}
        for s in recipe.get("stages", []):
            style = "--" if s.get("baseline_for") else "-"
            out.append((str(s.get("name")), str(s.get("role", "?")), style))
    except yaml.YAMLError:
        pass
    known = {s[0] for s in out}
    for rec in run.records:
        stage = rec.get("stage")
        if isinstance(stage, str) and stage not in known:
            known.add(stage)
            entry = run.summary.get("models", {}).get(stage, {})
            style = "--" if entry.get("baseline_for") else "-"
            out.append((stage, str(entry.get("role", "?")), style))
    return out


def _curves(run: RunData) -> str:
    parts = []
    stages = _stages(run)
    overview = plots.metric_overview(run.records, stages, run.metric, run.higher_is_better)
    parts.append(png_figure(overview, f"validation {run.metric} of every stage"))
    for stage, role, _style in stages:
        png = plots.stage_curves(
            run.records, stage, run.metric, run.higher_is_better, f"stage {stage} ({role})"
        )
        if png is None:
            parts.append(
                f"<p class='muted'>stage {esc(stage)} ({esc(role)}): nothing logged (skipped or not run yet).</p>"
            )
        else:
            parts.append(png_figure(png, f"curves of stage {stage}"))
    if not run.records:
        parts.append("<p class='muted'>metrics.jsonl is empty or missing: no curves.</p>")
    return "".join(parts)


def _figures(figures: Sequence[FigureImage]) -> str:
    if not figures:
        return "<p class='muted'>The task wrote no figures for this run.</p>"
    parts = []
    group = None
    for fig in figures:
        if fig.group != group:
            group = fig.group
            parts.append(f"<h3>{esc(group)}</h3>")
            if fig.description:
                parts.append(f"<p class='muted'>{esc(fig.description)}</p>")
        parts.append(
            f"<figure>{img_tag(fig.data, fig.mime, fig.title, fig.width, fig.height, zoom=_zoom(fig.width))}"
            f"<figcaption>{esc(fig.title)} <span class='muted'>({esc(fig.source)})</span></figcaption></figure>"
        )
    return "".join(parts)


def _parity(manifest: dict[str, Any]) -> str:
    ver = manifest.get("verification") or {}
    parity = ver.get("parity") or []
    if not parity:
        return "<span class='muted'>not checked</span>"
    finite = [p.get("max_rel_error") for p in parity if isinstance(p.get("max_rel_error"), int | float)]
    worst = max(finite) if finite else None
    passed = ver.get("passed")
    text = badge("passed" if passed else "failed")
    if worst is not None:
        text += f"<br><span class='muted'>{len(parity)} checks, max rel. error {worst:.2e}</span>"
    return text


def _metric_cell(manifest: dict[str, Any]) -> str:
    m = manifest.get("metric")
    if not m:
        return "<span class='muted'>not measured</span>"
    drop = m.get("drop")
    cls = "good" if isinstance(drop, int | float) and drop <= 0 else "bad"
    return f"{esc(m.get('name'))}: {fmt_num(m.get('pytorch'))} → {fmt_num(m.get('artifact'))}" + (
        f"<br><span class='{cls}'>drop {fmt_num(drop)}</span>" if isinstance(drop, int | float) else ""
    )


def _bench_cell(manifest: dict[str, Any]) -> str:
    bench = manifest.get("bench") or {}
    if not bench:
        return "<span class='muted'>not benchmarked (kdtool bench)</span>"
    lines = []
    for machine, row in bench.items():
        host = str(machine).split("|")[0]
        lines.append(
            f"{fmt_ms(row.get('latency_ms_p50'))} p50"
            + (f", {row['throughput']:.0f}/s" if isinstance(row.get("throughput"), int | float) else "")
            + f" <span class='muted'>on {esc(host)}</span>"
        )
    return "<br>".join(lines)


def exports_side_by_side(exports: Sequence[ExportInfo], label: str = "") -> str:
    if not exports:
        return "<p class='muted'>No exported artifacts yet: <code>kdtool export RUN --target onnx</code> adds one.</p>"
    fields: list[tuple[str, Any]] = [
        ("status", lambda m: badge(m.get("status", "?"))),
        (
            "target",
            lambda m: (
                esc(m.get("target", "?"))
                + (
                    f"<br><span class='muted'>{esc(m['target_description'])}</span>"
                    if m.get("target_description")
                    else ""
                )
            ),
        ),
        ("format", lambda m: esc(m.get("format", "?"))),
        ("precision", lambda m: esc(m.get("precision", "?"))),
        (
            "model",
            lambda m: (
                esc(m.get("model", "?"))
                + (f" <span class='muted'>({esc(m.get('role'))})</span>" if m.get("role") else "")
            ),
        ),
        ("size", lambda m: fmt_bytes(m.get("size_bytes"))),
        ("parity vs PyTorch", _parity),
        ("task metric", _metric_cell),
        ("latency (kdtool bench)", _bench_cell),
        (
            "export time",
            lambda m: (
                f"{m['export_seconds']:.1f} s" if isinstance(m.get("export_seconds"), int | float) else "–"
            ),
        ),
        ("not verified", lambda m: "<br>".join(esc(x) for x in m.get("not_verified") or []) or "–"),
        (
            "files",
            lambda m: "<br>".join(
                f"{esc(f.get('path'))} <span class='muted'>{fmt_bytes(f.get('bytes'))}</span>"
                for f in m.get("files") or []
            ),
        ),
    ]
    headers = ["", *[e.folder for e in exports]]
    rows = [[f"<strong>{esc(name)}</strong>", *[fn(e.manifest) for e in exports]] for name, fn in fields]
    out = table(headers, rows)
    for e in exports:
        options = yaml.safe_dump(e.manifest.get("options", {}), sort_keys=True)
        metadata = yaml.safe_dump(e.manifest.get("metadata", {}), sort_keys=False)
        graphs = yaml.safe_dump(e.manifest.get("graphs", {}), sort_keys=False)
        out += (
            f"<details><summary>{esc(label)}{esc(e.folder)}: options, graphs and deploy metadata</summary>"
            f"<h3>options</h3><pre>{esc(options)}</pre><h3>graphs</h3><pre>{esc(graphs)}</pre>"
            f"<h3>metadata</h3><pre>{esc(metadata)}</pre></details>"
        )
    return out


def _environment(run: RunData) -> str:
    s = run.summary
    env = dict(s.get("environment") or {})
    rows = [
        ["kdtool", esc(s.get("kdtool_version", "?"))],
        ["device", esc(s.get("device", "?"))],
        ["precision", esc(s.get("precision", "?"))],
        ["processes (world size)", esc(s.get("world_size", "?"))],
        *[[esc(k), esc(v)] for k, v in env.items()],
        ["recipe hash", esc(s.get("recipe_hash", "?"))],
        ["recipe file", esc(s.get("recipe_file", "?"))],
        ["measured on (report)", esc(run.measured_on)],
    ]
    plugins = s.get("plugins") or {}
    out = "<h3>training</h3>" + table(["", "value"], rows)
    if plugins:
        out += "<h3>plugins</h3>" + table(
            ["plugin", "version", "distribution"],
            [
                [esc(k), esc(v.get("version", "?")), esc(v.get("distribution", "?"))]
                for k, v in plugins.items()
            ],
        )
    return out


def render_run(run: RunData) -> str:
    s = run.summary
    title = f"{s.get('recipe', '?')} — kdtool run report"
    body = [
        f"<h1>{esc(s.get('recipe', '?'))} <span class='muted' style='font-weight:400'>run report</span></h1>",
        f"<div class='sub'>{esc(run.run_dir)}</div>",
        f"<div class='sub'>task <strong>{esc(s.get('task', '?'))}</strong> · created {esc(s.get('created', '?'))} · "
        f"status {badge(s.get('status', '?'))} · primary metric <strong>{esc(run.metric)}</strong> "
        f"({'higher' if run.higher_is_better else 'lower'} is better)</div>",
        "<nav><a href='#models'>models</a><a href='#curves'>curves</a><a href='#figures'>task figures</a>"
        "<a href='#exports'>exports</a><a href='#recipe'>recipe</a><a href='#environment'>environment</a>"
        + ("<a href='#notes'>notes</a>" if run.notes else "")
        + "</nav>",
        _highlights(run),
        "<h2 id='models'>Models</h2>",
        _models_table(run),
        "<h2 id='curves'>Training curves</h2>",
        _curves(run),
        "<h2 id='figures'>Task figures</h2>",
        _figures(run.figures),
        "<h2 id='exports'>Exported artifacts</h2>",
        exports_side_by_side(run.exports),
        "<h2 id='recipe'>Recipe (resolved)</h2>",
        f"<details open><summary>recipe.resolved.yaml</summary><pre class='recipe'>{esc(run.recipe_text)}</pre></details>",
        "<h2 id='environment'>Environment</h2>",
        _environment(run),
    ]
    if run.notes:
        body += [
            "<h2 id='notes'>Notes</h2>",
            "<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in run.notes) + "</ul>",
        ]
    return page(title, "\n".join(body))


# --------------------------------------------------------------------------- comparison


def _recipe_value(run: RunData, key: str) -> Any:
    try:
        return (yaml.safe_load(run.recipe_text) or {}).get(key)
    except yaml.YAMLError:
        return None


def _diff(a: RunData, b: RunData) -> str:
    lines = list(
        difflib.unified_diff(
            a.recipe_text.splitlines(),
            b.recipe_text.splitlines(),
            fromfile=a.label,
            tofile=b.label,
            lineterm="",
            n=2,
        )
    )
    if not lines:
        return f"<p class='muted'>{esc(b.label)}: same resolved recipe as {esc(a.label)}.</p>"
    out = []
    for line in lines:
        cls = (
            "diff-hunk"
            if line.startswith("@@")
            else "diff-add"
            if line.startswith("+")
            else "diff-del"
            if line.startswith("-")
            else ""
        )
        out.append(f"<span class='{cls}'>{esc(line)}</span>" if cls else esc(line))
    return "<pre>" + "\n".join(out) + "</pre>"


def render_comparison(runs: Sequence[RunData]) -> str:
    first = runs[0]
    tasks = {r.summary.get("task") for r in runs}
    metrics = {(r.metric, r.higher_is_better) for r in runs}
    notes = []
    if len(tasks) > 1 or len(metrics) > 1:
        notes.append(
            f"the runs are of different tasks or metrics ({', '.join(sorted(str(t) for t in tasks))}): compare numbers with care"
        )
    headers = [
        "run",
        "task, status, created",
        "seed",
        "deployed model",
        "distillation gain",
        "params",
        "MACs",
        "CPU latency p50",
        "training time",
        "exports",
    ]
    rows = []
    for r in runs:
        d = r.model(r.summary.get("deploy_model"))
        total_train = sum(m.train_seconds or 0.0 for m in r.models)
        rows.append(
            [
                f"<strong>{esc(r.label)}</strong><br><span class='muted' style='word-break:break-all'>{esc(r.run_dir)}</span>",
                f"{esc(r.summary.get('task', '?'))} {badge(r.summary.get('status', '?'))}"
                f"<br><span class='muted'>{esc(r.summary.get('created', '?'))}</span>",
                esc(_recipe_value(r, "seed")),
                f"{esc(d.name if d else '–')}<br>{esc(r.metric)} <strong>{fmt_num(d.primary if d else None)}</strong>",
                fmt_gain(d.gain if d else None, d.gain_baseline if d else None),
                fmt_count(d.params if d else None),
                fmt_count(d.measurement.macs if d else None),
                fmt_ms(d.measurement.latency_ms_p50 if d else None),
                f"{total_train:.1f} s",
                esc(", ".join(e.folder for e in r.exports) or "–"),
            ]
        )
    body = [
        f"<h1>Comparison of {len(runs)} runs</h1>",
        "<div class='sub'>" + " · ".join(esc(r.label) for r in runs) + "</div>",
        "<nav><a href='#runs'>runs</a><a href='#models'>models</a><a href='#curves'>curves</a>"
        "<a href='#exports'>exports</a><a href='#recipes'>recipe differences</a></nav>",
        "<h2 id='runs'>Runs</h2>",
        table(headers, rows, numeric=[2, 5, 6, 7, 8]),
        "<h2 id='models'>Every model</h2>",
    ]
    mrows = []
    for r in runs:
        for m in r.models:
            mrows.append(
                [
                    esc(r.label),
                    esc(m.name),
                    esc(m.role),
                    esc(m.arch),
                    fmt_count(m.params),
                    fmt_count(m.measurement.macs),
                    f"{esc(r.metric)} {fmt_num(m.primary)}",
                    fmt_ms(m.measurement.latency_ms_p50),
                    fmt_gain(m.gain, m.gain_baseline),
                ]
            )
    body.append(
        table(
            [
                "run",
                "model",
                "role",
                "arch",
                "params",
                "MACs",
                "metric",
                "CPU latency p50",
                "distillation gain",
            ],
            mrows,
            numeric=[4, 5, 7],
        )
    )
    body.append("<h2 id='curves'>Validation curves</h2>")
    if len(metrics) == 1:
        png = plots.comparison_curves(
            [(r.label, r.records, _stages(r)) for r in runs], first.metric, first.higher_is_better
        )
        body.append(
            png_figure(png, "validation curves of every run") or "<p class='muted'>No validation records.</p>"
        )
    else:
        for r in runs:
            body.append(
                png_figure(
                    plots.metric_overview(r.records, _stages(r), r.metric, r.higher_is_better),
                    r.label,
                    r.label,
                )
            )
    body.append("<h2 id='exports'>Exported artifacts</h2>")
    for r in runs:
        body.append(f"<h3>{esc(r.label)}</h3>")
        body.append(exports_side_by_side(r.exports, label=f"{r.label}: "))
    body.append("<h2 id='recipes'>Recipe differences</h2>")
    body.append(f"<p class='muted'>Each run's resolved recipe against {esc(first.label)}'s.</p>")
    for r in runs[1:]:
        body.append(_diff(first, r))
    body.append(
        f"<details><summary>{esc(first.label)}: recipe.resolved.yaml</summary><pre>{esc(first.recipe_text)}</pre></details>"
    )
    all_notes = notes + [f"{r.label}: {n}" for r in runs for n in r.notes]
    all_notes += [f"{r.label}: {m.name}: {n}" for r in runs for m in r.models for n in m.measurement.notes]
    if all_notes:
        body += [
            "<h2 id='notes'>Notes</h2>",
            "<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in all_notes) + "</ul>",
        ]
    return page(f"kdtool: comparison of {len(runs)} runs", "\n".join(body))
