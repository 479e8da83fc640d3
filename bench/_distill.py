"""Shared by the bench scripts: run ``kdtool distill`` in a subprocess and return its run folder."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def distill(
    recipe: Path,
    runs_dir: Path,
    sets: Sequence[str] = (),
    *,
    only: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> Path:
    """``kdtool distill RECIPE --set runs_dir=RUNS_DIR --set ...`` (plus ``--only`` stages and
    ``extra`` flags); the newest run under ``runs_dir``."""
    cmd = [
        sys.executable,
        "-m",
        "kdtool",
        "distill",
        str(recipe),
        "--no-progress",
        "--set",
        f"runs_dir={runs_dir}",
    ]
    for item in sets:
        cmd += ["--set", item]
    for stage in only:
        cmd += ["--only", stage]
    cmd += list(extra)
    subprocess.run(cmd, check=True, cwd=REPO)
    summaries = sorted(runs_dir.glob("*/*/summary.json"), key=lambda p: p.stat().st_mtime)
    if not summaries:
        raise SystemExit(f"kdtool distill {recipe} wrote no run under {runs_dir}")
    return summaries[-1].parent
