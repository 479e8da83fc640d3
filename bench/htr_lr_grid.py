"""HTR-JAND learning-rate grid, scored on the tune split (never on the reported validation split).

For each learning rate of the grid, runs ``recipes/htr_jand.yaml`` (seed ``--seed``) with the
student and the baseline at that rate. The recipe's stages keep their best checkpoint, chosen
on the tune split (the recipe's ``tune_fraction`` prefix of train, held out of training) at every
evaluation, so the score of a configuration is the tune CER of the checkpoint the stage keeps
(its lowest tune CER). The same grid for both sides; each side takes its own best rate.
The teacher trains identically in every run (same seed, same settings), so the student always
distils the same teacher.

Prints a table (tune CER per rate, student and baseline; validation CER alongside, for the
record only) and writes ``bench/results/htr_lr_grid.json``. About 5 minutes a rate at one thread.

    python bench/htr_lr_grid.py [--lrs 0.002 0.004 0.008 0.016] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kdtool.io import write_json

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "htr_jand.yaml"
SIDES = ("student", "baseline_student")


def run_once(lr: float, seed: int, runs_dir: Path) -> Path:
    cmd = [sys.executable, "-m", "kdtool", "distill", str(RECIPE), "--no-progress", "--no-report"]
    sets = [f"runs_dir={runs_dir}", f"seed={seed}"]
    for side in SIDES:
        sets += [f"stages.{side}.optimizer.lr={lr}"]
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, cwd=REPO)
    summaries = sorted(runs_dir.glob("*/*/summary.json"), key=lambda p: p.stat().st_mtime)
    return summaries[-1].parent


def kept_scores(run_dir: Path, stage: str) -> dict[str, float]:
    """Tune and validation CER at the step the stage kept (lowest tune CER, as ``keep: best``)."""
    records = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    evals = [
        r for r in records if r.get("stage") == stage and r.get("split") in ("tune", "val") and "cer" in r
    ]
    if not evals:
        raise SystemExit(f"{run_dir}: no tune/val CER recorded for stage {stage!r}")
    tune = [r for r in evals if r["split"] == "tune"]
    if not tune:
        raise SystemExit(f"{run_dir}: stage {stage!r} has no tune evaluation (tune_fraction 0?)")
    kept = min(tune, key=lambda r: (float(r["cer"]), r["step"]))
    val = [float(r["cer"]) for r in evals if r["split"] == "val" and r["step"] == kept["step"]]
    return {"step": kept["step"], "tune_cer": float(kept["cer"]), "val_cer": val[0] if val else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.002, 0.004, 0.008, 0.016])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench_htr_lr_grid")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "htr_lr_grid.json")
    args = parser.parse_args()

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for lr in args.lrs:
        run_dir = run_once(lr, args.seed, args.runs_dir / f"lr{lr:g}")
        for side in SIDES:
            rows.append({"lr": lr, "stage": side, "run": str(run_dir), **kept_scores(run_dir, side)})
    wall = time.perf_counter() - started

    best = {side: min((r for r in rows if r["stage"] == side), key=lambda r: r["tune_cer"]) for side in SIDES}
    print(
        f"tune CER % (first 10 % of train, held out); validation CER in brackets, not used; seed {args.seed}"
    )
    print(f"{'lr':>8}  " + "  ".join(f"{side:>24}" for side in SIDES))
    for lr in args.lrs:
        cells = []
        for side in SIDES:
            r = next(r for r in rows if r["lr"] == lr and r["stage"] == side)
            mark = "*" if r is best[side] else " "
            cells.append(f"{100 * r['tune_cer']:>10.2f}{mark} ({100 * r['val_cer']:6.2f})".rjust(24))
        print(f"{lr:>8g}  " + "  ".join(cells))
    for side in SIDES:
        print(f"{side}: lr {best[side]['lr']:g} (tune CER {100 * best[side]['tune_cer']:.2f} %)")
    print(f"wall {wall:.0f} s")
    write_json(
        args.out,
        {
            "recipe": str(RECIPE.relative_to(REPO)),
            "seed": args.seed,
            "grid": args.lrs,
            "selected_on": "tune split (recipe tune_fraction prefix of train), CER of the kept (best-on-tune) step",
            "rows": rows,
            "chosen": {side: best[side]["lr"] for side in SIDES},
            "wall_s": round(wall, 1),
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
