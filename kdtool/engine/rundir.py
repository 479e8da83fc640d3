"""The run directory: the only hand-off between ``distill`` and ``export``.

``runs/<recipe>/<timestamp>/`` holds ``recipe.resolved.yaml``, ``metrics.jsonl``,
``checkpoints/``, ``models/<name>.safetensors`` + ``models/<name>.json`` (enough to rebuild
the model), ``state.json`` (completed stages, for ``--resume``) and ``summary.json`` (the
versioned contract tools read; see :data:`SUMMARY_SCHEMA_VERSION`). ``runs/latest`` and
``runs/<recipe>/latest`` point at the run that finished last: a run is pointed at only when it
ends without an error, so a run that fails (or two runs started together) never takes the
pointer from a good one. A failed run's summary says ``"status": "failed"`` and holds the error.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from kdtool.errors import RunError
from kdtool.io import read_json, write_json, write_text

SUMMARY_SCHEMA_VERSION = 1


def new_run_dir(runs_dir: Path, recipe_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = runs_dir / recipe_name / stamp
    path = base
    n = 1
    while path.exists():
        path = base.with_name(f"{stamp}-{n}")
        n += 1
    path.mkdir(parents=True)
    return path


def _run_order(path: Path) -> tuple[str, int]:
    """Sort key of run folder names ``<stamp>`` and ``<stamp>-<n>`` in creation order."""
    parts = path.name.split("-")
    if len(parts) == 3 and parts[2].isdigit():
        return f"{parts[0]}-{parts[1]}", int(parts[2])
    return path.name, 0


def newest_run(recipe_dir: Path) -> Path | None:
    """The run of a recipe created last (finished or not), for ``--resume``."""
    if not recipe_dir.is_dir():
        return None
    runs = [
        p
        for p in recipe_dir.iterdir()
        if p.is_dir()
        and not p.is_symlink()
        and ((p / "summary.json").exists() or (p / "state.json").exists())
    ]
    return max(runs, key=_run_order) if runs else None


def mark_failed(run_dir: Path, exc: BaseException) -> None:
    """Record in ``summary.json`` that the run stopped on an error (and which)."""
    path = run_dir / "summary.json"
    try:
        summary = read_json(path, what="run summary") if path.exists() else {}
    except Exception:
        summary = {}
    interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
    summary.setdefault("schema_version", SUMMARY_SCHEMA_VERSION)
    summary.setdefault("models", {})
    summary["status"] = "interrupted" if interrupted else "failed"
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    summary["error"] = {
        "type": type(exc).__name__,
        "kind": getattr(exc, "kind", "internal error"),
        "message": message,
        "hint": getattr(exc, "hint", None),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(path, summary)


def failure_note(summary: dict[str, Any]) -> str | None:
    """One line on why a run did not finish (None for runs that did not fail)."""
    status = summary.get("status")
    if status not in ("failed", "interrupted"):
        return None
    error = summary.get("error") or {}
    what = f"{error.get('kind', 'error')}: {error.get('message', 'no message recorded')}"
    return f"the run {status} ({what})"


def point_latest(runs_dir: Path, run_dir: Path) -> None:
    """``runs/latest`` and ``runs/<recipe>/latest`` -> ``run_dir`` (symlinks replaced atomically)."""
    for link in (runs_dir / "latest", run_dir.parent / "latest"):
        # a name per process: parallel runs (kdtool study --jobs) may point the links at once
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(os.path.relpath(run_dir, link.parent), tmp)
        os.replace(tmp, link)


def resolve_run(path: str | Path | None, runs_dir: Path = Path("runs")) -> Path:
    """A run directory from a path, a recipe's runs folder, or ``runs/latest``."""
    candidate = Path(path) if path is not None else runs_dir / "latest"
    if candidate.is_dir() and not (candidate / "summary.json").exists() and (candidate / "latest").exists():
        candidate = candidate / "latest"
    if not candidate.exists():
        unfinished = _newest_unfinished(candidate.parent) if candidate.name == "latest" else None
        if unfinished is not None:
            raise RunError(
                f"no finished run at {candidate}; the newest run, {unfinished[0]}, {unfinished[1]}",
                hint="fix the cause and run `kdtool distill RECIPE` again, or pass a run directory",
            )
        raise RunError(
            f"no run at {candidate}",
            hint="run `kdtool distill RECIPE` first, or pass a run directory",
        )
    resolved = candidate.resolve()
    if not (resolved / "summary.json").exists():
        raise RunError(f"{candidate} is not a kdtool run directory (no summary.json)")
    return resolved


def _newest_unfinished(folder: Path) -> tuple[Path, str] | None:
    """The newest run under ``folder`` (a runs folder or a recipe's) when it did not finish."""
    if not folder.is_dir():
        return None
    runs = [r for r in [newest_run(folder), *(newest_run(d) for d in folder.iterdir() if d.is_dir())] if r]
    if not runs:
        return None
    newest = max(
        runs, key=lambda r: (r / "summary.json").stat().st_mtime if (r / "summary.json").exists() else 0
    )
    try:
        note = failure_note(read_json(newest / "summary.json", what="run summary"))
    except Exception:
        return None
    return (newest, note.removeprefix("the run ")) if note else None


def write_resolved_recipe(run_dir: Path, data: dict[str, Any]) -> None:
    write_text(run_dir / "recipe.resolved.yaml", yaml.safe_dump(data, sort_keys=False))


def read_summary(run_dir: Path) -> dict[str, Any]:
    """``summary.json`` of a run, brought to the current schema (older summaries still load)."""
    path = run_dir / "summary.json"
    summary = read_json(path, what="run summary")
    if not isinstance(summary, dict):
        raise RunError(f"{path} is not a run summary (a JSON object), got {type(summary).__name__}")
    return upgrade_summary(summary, path)


def upgrade_summary(summary: dict[str, Any], path: Path) -> dict[str, Any]:
    """Fill what older summaries lack: a summary written before ``schema_version`` existed
    (none) or before ``status`` was recorded reads as a complete run; newer ones are refused."""
    version = summary.get("schema_version")
    if version is not None and (not isinstance(version, int) or version > SUMMARY_SCHEMA_VERSION):
        raise RunError(
            f"{path} has schema_version {version}; this kdtool reads up to {SUMMARY_SCHEMA_VERSION}",
            hint="upgrade kdtool to read runs written by a newer version",
        )
    summary["schema_version"] = SUMMARY_SCHEMA_VERSION
    models = summary.setdefault("models", {})
    if not isinstance(models, dict):
        raise RunError(f"{path}: 'models' is a {type(models).__name__}, expected an object of models")
    summary.setdefault("status", "complete")
    return summary


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(run_dir / "summary.json", summary)


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "state.json"
    if not path.exists():
        return {"completed": []}
    return read_json(path, what="run state")


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    write_json(run_dir / "state.json", state)


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line (training logs and evaluations), mirrored to
    TensorBoard under ``run_dir/tensorboard`` when the recipe asks (``logging.tensorboard``)."""

    def __init__(self, path: Path, *, tensorboard: bool = False) -> None:
        self.path = path
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from kdtool.errors import RecipeError

                raise RecipeError(
                    "logging.tensorboard is on, but the tensorboard package is not installed",
                    hint="pip install tensorboard, or set logging.tensorboard: false",
                ) from None
            self._writer = SummaryWriter(log_dir=str(path.parent / "tensorboard"))

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._writer is not None:
            prefix = f"{record.get('stage', '')}/{record.get('split', '')}"
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self._writer.add_scalar(f"{prefix}/{key}", value, record.get("step", 0))
            self._writer.flush()

    def truncate_after(self, stage: str, step: int) -> None:
        """Drop records of ``stage`` after ``step`` (a resumed run logs them again)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("stage") == stage and rec.get("step", 0) > step:
                continue
            keep.append(json.dumps(rec))
        write_text(self.path, "".join(k + "\n" for k in keep))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out
