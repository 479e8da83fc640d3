"""Per-stage hashes, so ``--resume`` after a recipe edit keeps the stages the edit did not touch.

A stage's hash covers what decides its trained weights: its own section, the config of the
model it trains, the task and data sections, the seed, the training precision, its position
(the data stream is seeded by it) and, through their hashes, the stages it learns from.
Settings that do not change the weights (run folder, logging, checkpoint cadence, export
defaults, description) are left out, so editing them reuses every finished stage.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdtool.engine.rundir import MetricsLog, read_summary, write_state, write_summary
from kdtool.errors import RunError
from kdtool.recipe import Recipe


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def stage_hashes(recipe: Recipe) -> dict[str, str]:
    """``{stage name: hash}`` of every stage of ``recipe`` (upstream stages folded in)."""
    common = {
        "task": recipe.task.model_dump(mode="json"),
        "data": recipe.data,
        "seed": recipe.seed,
        "precision": recipe.precision,
    }
    out: dict[str, str] = {}
    for index, stage in enumerate(recipe.stages):
        upstream = {t.name: out.get(t.stage, "") for t in stage.teachers if t.stage is not None}
        out[stage.name] = _digest(
            {
                **common,
                "index": index,
                "stage": stage.model_dump(mode="json"),
                "model": recipe.models[stage.model].model_dump(mode="json"),
                "upstream": upstream,
            }
        )
    return out


def plan_resume(recipe: Recipe, state: dict[str, Any], run_dir: Path, echo: Callable[[str], None]) -> None:
    """The recipe changed since ``run_dir`` started: keep completed stages whose hash is
    unchanged, forget the rest (their weights, checkpoints and log records), and say which."""
    old = state.get("stage_hashes")
    if not isinstance(old, dict):
        raise RunError(
            f"run {run_dir} was started from a different recipe (hash {state.get('recipe_hash')}, "
            f"now {recipe.hash()}) by a kdtool that did not record per-stage hashes",
            hint="resume with the same recipe and --set overrides, or start a new run",
        )
    new = stage_hashes(recipe)
    completed = list(state.get("completed", []))
    reuse = [s.name for s in recipe.stages if s.name in completed and old.get(s.name) == new[s.name]]
    rerun = [s.name for s in recipe.stages if s.name not in reuse]
    changed = [n for n in rerun if n in old and old[n] != new[n]]
    for name in changed:
        _forget_stage(run_dir, name)
    for name in completed:
        if name not in reuse and name not in changed:
            _forget_stage(run_dir, name)  # a stage the recipe no longer has
    state["completed"] = reuse
    write_state(run_dir, state)
    echo(
        "recipe changed since this run started: "
        + (f"reusing {', '.join(reuse)} (unchanged)" if reuse else "no finished stage can be reused")
        + (f"; rerunning {', '.join(rerun)}" if rerun else "")
        + (f" ({', '.join(changed)} changed, or a stage they learn from did)" if changed else "")
    )


def _forget_stage(run_dir: Path, name: str) -> None:
    """Remove what a stage left in the run, so it trains from scratch."""
    shutil.rmtree(run_dir / "checkpoints" / name, ignore_errors=True)
    for suffix in (".safetensors", ".json"):
        (run_dir / "models" / f"{name}{suffix}").unlink(missing_ok=True)
    (run_dir / "models" / f".{name}.best.safetensors").unlink(missing_ok=True)
    if (run_dir / "summary.json").exists():
        summary = read_summary(run_dir)
        if name in summary.get("models", {}):
            del summary["models"][name]
            write_summary(run_dir, summary)
    MetricsLog(run_dir / "metrics.jsonl").truncate_after(name, -1)
