"""Paired multi-seed studies: did distillation help on this recipe, beyond seed noise?

``kdtool study RECIPE --seeds N`` runs the recipe once per seed, each a full run in its own
directory ``runs/<recipe>/study-<time>/seed-<k>/`` (recipe seed = the recipe's ``seed`` + k, so
``seed-0`` is the plain ``kdtool distill`` run), then writes ``study.json`` and a report
(``study.md``, ``study.html``) with, for every model, the mean +- std of each metric over seeds
and, for every student (and every supernet subnet) against its ``baseline_for`` model, the
paired difference on the primary metric with a 95 % Student-t confidence interval, the wins
k/N and a verdict in plain words.

Each seed runs in its own ``python -m kdtool distill`` process (a fresh process per seed keeps
seeds independent and lets a killed study resume: a finished seed has a complete
``summary.json``; a half-finished one is resumed from its checkpoints).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdtool import __version__
from kdtool.errors import RecipeError, RunError
from kdtool.io import read_json, write_json, write_text

STUDY_SCHEMA_VERSION = 1
CONFIG_FILE = "study.config.json"

HELPED = "distillation helped"
NO_DIFFERENCE = "no detectable difference"
HURT = "distillation hurt"
TOO_FEW = "too few seeds for a confidence interval"


@dataclass
class StudyOptions:
    """What ``kdtool study`` was asked to do (the CLI's flags)."""

    seeds: int
    overrides: list[str] = field(default_factory=list)
    max_steps: int | None = None
    resume: bool = False
    study_dir: Path | None = None
    jobs: int = 1
    echo: Callable[[str], None] = print


# --------------------------------------------------------------------------- statistics


def t_quantile(level: float, dof: int) -> float:
    """The two-sided ``level`` quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t  # scipy comes with scikit-learn, a dependency

    return float(t.ppf(0.5 + level / 2.0, dof))


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (n-1; 0 for one value), n and the values themselves."""
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
        "values": vals,
    }


def paired_difference(
    student: Sequence[float], baseline: Sequence[float], *, higher_is_better: bool, level: float = 0.95
) -> dict[str, Any]:
    """Per-seed ``student - baseline``, its mean, std and ``level`` CI (Student t over the paired
    differences, n-1 degrees of freedom), wins (seeds where the student is strictly better in the
    metric's direction) and the verdict in words."""
    diffs = [float(s) - float(b) for s, b in zip(student, baseline, strict=True)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else float("nan")
    sd = statistics.stdev(diffs) if n > 1 else float("nan")
    sign = 1.0 if higher_is_better else -1.0
    wins = sum(1 for d in diffs if sign * d > 0)
    out: dict[str, Any] = {
        "differences": diffs,
        "n": n,
        "mean": mean,
        "std": sd if n > 1 else None,
        "confidence": level,
        "t_quantile": None,
        "ci": None,
        "wins": wins,
        "verdict": TOO_FEW,
    }
    if n < 2:
        return out
    q = t_quantile(level, n - 1)
    half = q * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    out.update(t_quantile=q, ci=[lo, hi], verdict=verdict(lo, hi, higher_is_better))
    return out


def verdict(lo: float, hi: float, higher_is_better: bool) -> str:
    """The plain-words reading of a CI of ``student - baseline``."""
    if lo <= 0.0 <= hi:
        return NO_DIFFERENCE
    good = lo > 0.0 if higher_is_better else hi < 0.0
    return HELPED if good else HURT


# --------------------------------------------------------------------------- aggregation


def _pairs(models: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(student-like model, its baseline) pairs from one run's summary models.

    A control names its student with ``baseline_for``; when that model has parts (models
    named ``<student>-...`` with another role, e.g. a supernet's subnets), the control is
    compared with the parts of its own size (or the ``smallest`` part when none matches)."""
    pairs = []
    for name, info in models.items():
        target = info.get("baseline_for")
        if not target or target not in models:
            continue
        # the target's parts: models named "<target>-..." with another role (a task's sub-models,
        # e.g. a supernet's subnets); a control is compared with the part of its own size
        parts = [
            n
            for n, m in models.items()
            if n.startswith(f"{target}-") and m.get("role") != models[target].get("role")
        ]
        if parts:
            subnets = [n for n in parts if models[n].get("params") == info.get("params")]
            if not subnets and f"{target}-smallest" in models:
                subnets = [f"{target}-smallest"]
            pairs += [(s, name) for s in subnets]
        else:
            pairs.append((target, name))
    return pairs


def aggregate(summaries: dict[int, dict[str, Any]], *, level: float = 0.95) -> dict[str, Any]:
    """Study statistics from complete runs' ``summary.json`` (keyed by seed)."""
    if not summaries:
        raise RunError("no seed of the study has finished; nothing to aggregate")
    seeds = sorted(summaries)
    first = summaries[seeds[0]]
    metric = first["primary_metric"]["name"]
    higher = bool(first["primary_metric"]["higher_is_better"])
    names = [n for n in first.get("models", {}) if all(n in summaries[s].get("models", {}) for s in seeds)]
    models: dict[str, Any] = {}
    for name in names:
        entries = [summaries[s]["models"][name] for s in seeds]
        metric_names = [
            k
            for k, v in entries[0].get("metrics", {}).items()
            if isinstance(v, int | float)
            and all(isinstance(e.get("metrics", {}).get(k), int | float) for e in entries)
        ]
        models[name] = {
            "role": entries[0].get("role"),
            "baseline_for": entries[0].get("baseline_for"),
            "arch": entries[0].get("arch"),
            "params": entries[0].get("params"),
            "metrics": {k: mean_std([e["metrics"][k] for e in entries]) for k in metric_names},
            "train_seconds": (
                mean_std([e["train_seconds"] for e in entries])
                if all(isinstance(e.get("train_seconds"), int | float) for e in entries)
                else None
            ),
            "kept": [e.get("kept") for e in entries],
        }
    pairs = []
    for student, baseline in _pairs({n: first["models"][n] for n in names}):
        s_vals = models[student]["metrics"].get(metric, {}).get("values")
        b_vals = models[baseline]["metrics"].get(metric, {}).get("values")
        if not s_vals or not b_vals:
            continue
        pair = paired_difference(s_vals, b_vals, higher_is_better=higher, level=level)
        pairs.append({"student": student, "baseline": baseline, "metric": metric, **pair})
    return {
        "primary_metric": {"name": metric, "higher_is_better": higher},
        "seeds": seeds,
        "models": models,
        "pairs": pairs,
    }


# --------------------------------------------------------------------------- running


def threads_per_job(jobs: int) -> int:
    """CPU threads each parallel seed gets: the cores this process may use, divided by ``jobs``.

    Never more: torch's intra-op threads spin while they wait, so two 2-thread torch jobs on 2
    cores (oversubscribed) run about ten times slower than one. ``OMP_NUM_THREADS``, where set
    (e.g. by a job slot), is taken as the cores available."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        cores = int(env)
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def _seed_complete(seed_dir: Path) -> bool:
    path = seed_dir / "summary.json"
    if not path.exists():
        return False
    try:
        return read_json(path, what="run summary").get("status") == "complete"
    except Exception:
        return False


def _latest_study(base: Path) -> Path:
    found = sorted(p for p in base.glob("study-*") if (p / CONFIG_FILE).exists())
    if not found:
        raise RunError(f"nothing to resume: no study under {base}", hint="start it without --resume")
    return found[-1]


def _new_study_dir(base: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = base / f"study-{stamp}"
    n = 1
    while path.exists():
        path = base / f"study-{stamp}-{n}"
        n += 1
    path.mkdir(parents=True)
    return path


def _open_study(recipe_path: Path, opts: StudyOptions, recipe: Any) -> Path:
    """The study directory: a new one, or (``--resume``) the given or newest one, checked to be
    the same study (recipe content, overrides, max steps)."""
    name, runs_dir = recipe.name, Path(recipe.runs_dir)
    config = {
        "recipe_file": str(recipe_path),
        "recipe_hash": recipe.hash(),
        "overrides": list(opts.overrides),
        "max_steps": opts.max_steps,
        "base_seed": recipe.seed,
    }
    if opts.resume:
        path = opts.study_dir or _latest_study(runs_dir / name)
        if not (path / CONFIG_FILE).exists():
            raise RunError(f"{path} is not a kdtool study directory (no {CONFIG_FILE})")
        old = read_json(path / CONFIG_FILE, what="study config")
        for key in ("recipe_hash", "overrides", "max_steps", "base_seed"):
            if key in old and old[key] != config[key]:
                raise RunError(
                    f"study {path} was started with {key} = {old.get(key)!r}, now {config[key]!r}",
                    hint="resume with the same recipe, --set and --max-steps, or start a new study",
                )
        return path
    if opts.study_dir is not None:
        path = opts.study_dir
        if path.exists() and any(path.iterdir()):
            raise RunError(f"study directory {path} is not empty", hint="use --resume to continue it")
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = _new_study_dir(runs_dir / name)
    write_json(path / CONFIG_FILE, config)
    return path


def _seed_command(recipe_path: Path, opts: StudyOptions, seed: int, seed_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "kdtool", "distill", str(recipe_path)]
    for text in opts.overrides:
        cmd += ["--set", text]
    cmd += ["--set", f"seed={seed}", "--run", str(seed_dir), "--no-progress", "--no-report"]
    if opts.max_steps is not None:
        cmd += ["--max-steps", str(opts.max_steps)]
    return cmd


def _run_seed(cmd: list[str], seed_dir: Path, threads: int) -> tuple[int, float]:
    """Run one seed's ``kdtool distill`` (output to ``seed_dir/distill.log``); (exit code, seconds)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    start = time.perf_counter()
    with open(seed_dir / "distill.log", "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    return proc.returncode, time.perf_counter() - start


def run_study(recipe_path: Path, opts: StudyOptions) -> Path:
    """Run (or resume) a study; returns its directory, with ``study.json`` and the report."""
    from kdtool.recipe import load_recipe

    if opts.seeds < 1:
        raise RecipeError(f"--seeds {opts.seeds}: a study needs at least one seed")
    if opts.jobs < 1:
        raise RecipeError(f"--jobs {opts.jobs}: needs at least one job")
    loaded = load_recipe(recipe_path, opts.overrides)  # fail on a bad recipe before any run
    recipe = loaded.recipe
    study_dir = _open_study(recipe_path, opts, recipe)
    seeds = [recipe.seed + k for k in range(opts.seeds)]
    dirs = {s: study_dir / f"seed-{k}" for k, s in enumerate(seeds)}
    todo = [s for s in seeds if not _seed_complete(dirs[s])]
    threads = threads_per_job(min(opts.jobs, max(1, len(todo))))
    echo = opts.echo
    if opts.jobs > 1 and threads_per_job(1) < min(opts.jobs, len(todo)):
        echo(
            f"warning: {opts.jobs} jobs on {threads_per_job(1)} core(s) oversubscribe the CPU; "
            "--jobs 1 is likely faster"
        )
    echo(
        f"study {study_dir}: {len(seeds)} seeds ({len(seeds) - len(todo)} already done), "
        f"{min(opts.jobs, max(1, len(todo)))} at a time, {threads} thread(s) each"
    )
    wall: dict[int, float] = {}
    failed: dict[int, int] = {}
    lock = threading.Lock()
    if (study_dir / "wall_seconds.json").exists():
        wall.update({int(k): v for k, v in read_json(study_dir / "wall_seconds.json").items()})

    def one(seed: int) -> None:
        seed_dir = dirs[seed]
        seed_dir.mkdir(parents=True, exist_ok=True)
        with lock:
            echo(
                f"seed {seed}: {'resuming' if (seed_dir / 'state.json').exists() else 'running'} -> {seed_dir}"
            )
        code, seconds = _run_seed(_seed_command(recipe_path, opts, seed, seed_dir), seed_dir, threads)
        with lock:
            if code != 0 or not _seed_complete(seed_dir):
                failed[seed] = code
                echo(
                    f"seed {seed}: FAILED (exit {code}) after {seconds:.0f}s; see {seed_dir / 'distill.log'}"
                )
                return
            wall[seed] = wall.get(seed, 0.0) + seconds
            write_json(study_dir / "wall_seconds.json", {str(k): v for k, v in sorted(wall.items())})
            echo(f"seed {seed}: done in {seconds:.0f}s: {_seed_line(seed_dir)}")

    if opts.jobs == 1:
        for s in todo:
            one(s)
    else:
        with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
            list(pool.map(one, todo))

    done = {
        s: read_json(dirs[s] / "summary.json", what="run summary") for s in seeds if _seed_complete(dirs[s])
    }
    if done:
        write_study(
            study_dir, recipe_path, recipe.name, opts, done, dirs, wall, complete=len(done) == len(seeds)
        )
    if failed:
        raise RunError(
            f"{len(failed)} of {len(seeds)} seeds failed: {sorted(failed)}",
            hint=f"see their distill.log; `kdtool study {recipe_path} --seeds {opts.seeds} --resume` continues",
        )
    return study_dir


def _seed_line(seed_dir: Path) -> str:
    summary = read_json(seed_dir / "summary.json", what="run summary")
    metric = summary["primary_metric"]["name"]
    parts = []
    for name, info in summary.get("models", {}).items():
        value = info.get("metrics", {}).get(metric)
        if isinstance(value, int | float):
            parts.append(f"{name} {value:.4g}")
    return f"{metric}: " + ", ".join(parts)


def write_study(
    study_dir: Path,
    recipe_path: Path,
    name: str,
    opts: StudyOptions,
    summaries: dict[int, dict[str, Any]],
    dirs: dict[int, Path],
    wall: dict[int, float],
    *,
    complete: bool,
) -> dict[str, Any]:
    """Aggregate, then write ``study.json``, ``study.md`` and ``study.html`` (all atomically)."""
    stats = aggregate(summaries)
    first = summaries[min(summaries)]
    study = {
        "schema_version": STUDY_SCHEMA_VERSION,
        "kdtool_version": __version__,
        "recipe": name,
        "recipe_file": str(recipe_path),
        "task": first.get("task"),
        "overrides": list(opts.overrides),
        "max_steps": opts.max_steps,
        "seeds_requested": len(dirs),
        "complete": complete,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": {str(s): str(dirs[s].relative_to(study_dir)) for s in sorted(summaries)},
        "wall_seconds": {str(s): round(wall[s], 3) for s in sorted(summaries) if s in wall},
        "environment": first.get("environment", {}),
        **stats,
    }
    write_json(study_dir / "study.json", study)
    write_text(study_dir / "study.md", render_markdown(study))
    write_text(study_dir / "study.html", render_html(study))
    return study


# --------------------------------------------------------------------------- rendering


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def fmt_pm(stat: dict[str, Any] | None) -> str:
    """``mean ± std`` of a :func:`mean_std` dict."""
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{_fmt(stat['mean'])} ± {_fmt(stat['std'], 2)}"


def pair_cells(pair: dict[str, Any]) -> list[str]:
    """Cells of one pair's row: difference ± std, 95 % CI, wins, verdict."""
    ci = pair.get("ci")
    ci_text = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "–"
    std = pair.get("std")
    return [
        f"{pair['mean']:+.4f}" + (f" ± {std:.4f}" if std is not None else ""),
        ci_text,
        f"{pair['wins']}/{pair['n']}",
        pair["verdict"],
    ]


def markdown_tables(study: dict[str, Any]) -> str:
    """The study's two tables (models, pairs) in markdown; also used for README's evidence."""
    metric = study["primary_metric"]["name"]
    direction = "higher" if study["primary_metric"]["higher_is_better"] else "lower"
    lines = [
        f"| model | role | params | {metric} ({direction} is better) | train s |",
        "|---|---|---:|---:|---:|",
    ]
    for name, m in study["models"].items():
        lines.append(
            f"| {name} | {m.get('role') or '-'} | {m.get('params') or 0:,} | "
            f"{fmt_pm(m['metrics'].get(metric))} | {fmt_pm(m.get('train_seconds'))} |"
        )
    lines += [
        "",
        f"| student | baseline | {metric} difference (student - baseline) ± std | 95% CI | wins | verdict |",
        "|---|---|---:|---|---:|---|",
    ]
    for p in study["pairs"]:
        lines.append("| " + " | ".join([p["student"], p["baseline"], *pair_cells(p)]) + " |")
    if not study["pairs"]:
        lines.append("| - | - | - | - | - | no stage names a baseline_for |")
    return "\n".join(lines) + "\n"


def render_markdown(study: dict[str, Any]) -> str:
    n = len(study["seeds"])
    head = [
        f"# Study: {study['recipe']} ({n} seed{'s' if n != 1 else ''})",
        "",
        f"Recipe `{study['recipe_file']}`"
        + (f", overrides {', '.join(f'`{o}`' for o in study['overrides'])}" if study["overrides"] else "")
        + (f", `--max-steps {study['max_steps']}`" if study["max_steps"] else "")
        + f"; seeds {study['seeds']}"
        + ("" if study["complete"] else f" (incomplete: {n} of {study['seeds_requested']} finished)")
        + ".",
        "",
        "Each seed is a full run. Differences are paired by seed; the 95% confidence interval is "
        "Student's t over the paired differences (n - 1 degrees of freedom). Wins count seeds where "
        "the student is strictly better.",
        "",
    ]
    verdicts = [f"- **{p['student']}** vs {p['baseline']}: {p['verdict']}." for p in study["pairs"]]
    body = markdown_tables(study)
    metrics = _all_metrics_markdown(study)
    wall = study.get("wall_seconds", {})
    wall_line = ", ".join(f"seed {k}: {v:.0f}s" for k, v in wall.items())
    return "\n".join(head + verdicts + ["", body, "## All metrics (mean ± std)", "", metrics, ""]) + (
        f"\nWall time per seed: {wall_line}.\n" if wall_line else ""
    )


def _all_metrics_markdown(study: dict[str, Any]) -> str:
    keys: list[str] = []
    for m in study["models"].values():
        keys += [k for k in m["metrics"] if k not in keys]
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, m in study["models"].items():
        lines.append(f"| {name} | " + " | ".join(fmt_pm(m["metrics"].get(k)) for k in keys) + " |")
    return "\n".join(lines)


def render_html(study: dict[str, Any]) -> str:
    """A self-contained HTML page with the run report's look."""
    from kdtool.report.html import esc, page, table

    metric = study["primary_metric"]["name"]
    n = len(study["seeds"])
    verdicts = "".join(
        f"<li><b>{esc(p['student'])}</b> vs {esc(p['baseline'])}: "
        f'<span class="{_verdict_class(p["verdict"])}">{esc(p["verdict"])}</span></li>'
        for p in study["pairs"]
    )
    models = table(
        ["model", "role", "params", f"{metric} mean ± std", "train s mean ± std", "kept"],
        [
            [
                esc(name),
                esc(m.get("role") or "-"),
                f"{m.get('params') or 0:,}",
                esc(fmt_pm(m["metrics"].get(metric))),
                esc(fmt_pm(m.get("train_seconds"))),
                esc(", ".join(str(k) for k in m.get("kept", []))),
            ]
            for name, m in study["models"].items()
        ],
        numeric=(2, 3, 4),
    )
    pairs = table(
        ["student", "baseline", "difference ± std", "95% CI", "wins", "verdict", "per seed"],
        [
            [
                esc(p["student"]),
                esc(p["baseline"]),
                *[esc(c) for c in pair_cells(p)],
                esc(", ".join(f"{d:+.4f}" for d in p["differences"])),
            ]
            for p in study["pairs"]
        ],
        numeric=(2, 4),
    )
    keys: list[str] = []
    for m in study["models"].values():
        keys += [k for k in m["metrics"] if k not in keys]
    all_metrics = table(
        ["model", *keys],
        [
            [esc(name), *[esc(fmt_pm(m["metrics"].get(k))) for k in keys]]
            for name, m in study["models"].items()
        ],
        numeric=tuple(range(1, len(keys) + 1)),
    )
    runs = "".join(
        f'<li>seed {esc(s)}: <a href="{esc(d)}/summary.json">{esc(d)}</a>'
        + (f" ({study['wall_seconds'][s]:.0f} s)" if s in study.get("wall_seconds", {}) else "")
        + "</li>"
        for s, d in study["runs"].items()
    )
    body = (
        f"<h1>Study: {esc(study['recipe'])} ({n} seeds)</h1>"
        f"<p>Recipe <code>{esc(study['recipe_file'])}</code>; overrides {esc(study['overrides'] or 'none')}; "
        f"max steps {esc(study['max_steps'] or 'recipe')}. Differences are paired by seed; the 95% CI is "
        "Student's t over the paired differences.</p>"
        f"<h2>Verdict</h2><ul>{verdicts or '<li>no stage names a baseline_for</li>'}</ul>"
        f"<h2>Paired differences ({esc(metric)})</h2>{pairs}"
        f"<h2>Models</h2>{models}<h2>All metrics</h2>{all_metrics}<h2>Runs</h2><ul>{runs}</ul>"
        "<p>Each run's own report: <code>kdtool report STUDY_DIR/seed-K</code>.</p>"
    )
    return page(f"kdtool study: {study['recipe']}", body)


def _verdict_class(text: str) -> str:
    return {HELPED: "good", HURT: "bad"}.get(text, "muted")


def console_table(study: dict[str, Any]) -> Any:
    """The final pairs table for the console (rich)."""
    from rich.table import Table

    metric = study["primary_metric"]["name"]
    table = Table(title=f"{study['recipe']}: {len(study['seeds'])} seeds, {metric}")
    for col in ("model", "role", f"{metric} mean ± std", "vs baseline", "95% CI", "wins", "verdict"):
        table.add_column(col)
    by_student = {p["student"]: p for p in study["pairs"]}
    for name, m in study["models"].items():
        p = by_student.get(name)
        cells = pair_cells(p) if p else ["", "", "", ""]
        table.add_row(name, m.get("role") or "-", fmt_pm(m["metrics"].get(metric)), *cells)
    return table


# --------------------------------------------------------------------------- bench scripts


def bench_study(
    argv: list[str] | None, *, description: str, recipe: Path, out: Path, seeds: int = 3
) -> tuple[Path, dict[str, Any], Any]:
    """The shared body of ``bench/*_seeds.py``: parse the usual flags, run (or resume) the study
    and copy its ``study.json`` (plus ``study_dir``) to ``--out``. Returns (study dir, study,
    parsed args); scripts add their extra measurements to the study and write ``--out`` again."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--recipe", type=Path, default=recipe)
    parser.add_argument("--seeds", type=int, default=seeds, help="number of seeds (recipe seed + 0..N-1)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="as kdtool distill --set"
    )
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="continue the newest study (or --dir)")
    parser.add_argument("--dir", type=Path, default=None, help="study directory")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--width", type=int, default=128, help="(htr) line width for the latency measurement")
    parser.add_argument("--k-runs", action="store_true", help="(asr) also train the named subnets alone")
    args = parser.parse_args(argv)
    opts = StudyOptions(
        seeds=args.seeds,
        overrides=args.overrides,
        max_steps=args.max_steps,
        resume=args.resume,
        study_dir=args.dir,
        jobs=args.jobs,
        echo=lambda msg: print(msg, flush=True),
    )
    study_dir = run_study(args.recipe, opts)
    study = {"study_dir": str(study_dir), **read_json(study_dir / "study.json", what="study")}
    write_json(args.out, study)
    print(markdown_tables(study))
    print(f"wrote {args.out}")
    return study_dir, study, args
