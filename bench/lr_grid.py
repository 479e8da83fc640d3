"""Learning-rate grid for a recipe's student and baseline, scored on the tune split (never on
the reported validation split).

For each learning rate of the grid, runs the recipe (seed ``--seed``) with the student and the
baseline stages (``--stages``) at that rate. The stages keep their best checkpoint, chosen on
the tune split (the recipe's ``tune_fraction`` prefix of train, held out of training) at every
evaluation, so the score of a configuration is the primary metric on the tune split of the
checkpoint the stage keeps. The same grid for both sides; each side takes its own best rate.
Teachers train identically in every run (same seed, same settings), so the student always
distils the same teacher.

Prints a table (tune metric per rate and stage; the validation metric alongside, for the
record only) and writes JSON. About one recipe run per rate.

    python bench/lr_grid.py recipes/htr_jand.yaml --lrs 0.002 0.004 0.008 0.016 \
        --out bench/results/htr_lr_grid.json
    python bench/lr_grid.py recipes/segmentation_lad.yaml --lrs 0.001 0.002 0.005 \
        --out bench/results/segmentation_lr_grid.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _distill import distill

from kdtool.io import write_json

REPO = Path(__file__).resolve().parents[1]


def run_once(
    recipe: Path, stages: list[str], lr: float, seed: int, runs_dir: Path, max_steps: int | None = None
) -> Path:
    sets = [f"seed={seed}", *(f"stages.{side}.optimizer.lr={lr}" for side in stages)]
    extra = ["--no-report"] + (["--max-steps", str(max_steps)] if max_steps is not None else [])
    return distill(recipe, runs_dir, sets, extra=extra)


def primary_metric(run_dir: Path) -> tuple[str, bool]:
    metric = json.loads((run_dir / "summary.json").read_text())["primary_metric"]
    return str(metric["name"]), bool(metric["higher_is_better"])


def kept_scores(run_dir: Path, stage: str) -> dict[str, Any]:
    """Tune and validation metric at the step the stage kept (best on tune, as ``keep: best``)."""
    name, higher = primary_metric(run_dir)
    records = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    evals = [
        r for r in records if r.get("stage") == stage and r.get("split") in ("tune", "val") and name in r
    ]
    if not evals:
        raise SystemExit(f"{run_dir}: no tune/val {name} recorded for stage {stage!r}")
    tune = [r for r in evals if r["split"] == "tune"]
    if not tune:
        raise SystemExit(f"{run_dir}: stage {stage!r} has no tune evaluation (tune_fraction 0?)")
    sign = -1.0 if higher else 1.0
    kept = min(tune, key=lambda r: (sign * float(r[name]), r["step"]))
    val = [float(r[name]) for r in evals if r["split"] == "val" and r["step"] == kept["step"]]
    return {
        "metric": name,
        "higher_is_better": higher,
        "step": kept["step"],
        "tune": float(kept[name]),
        "val": val[0] if val else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--lrs", type=float, nargs="+", required=True)
    parser.add_argument("--stages", nargs="+", default=["student", "baseline_student"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", type=Path, default=None, help="default runs/bench_lr_grid/<recipe>")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--max-steps", type=int, default=None, help="quick check: stop every stage after N steps"
    )
    args = parser.parse_args()
    recipe = args.recipe.resolve()
    runs_dir = args.runs_dir or REPO / "runs" / "bench_lr_grid" / recipe.stem

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for lr in args.lrs:
        run_dir = run_once(recipe, args.stages, lr, args.seed, runs_dir / f"lr{lr:g}", args.max_steps)
        for side in args.stages:
            rows.append({"lr": lr, "stage": side, "run": str(run_dir), **kept_scores(run_dir, side)})
    wall = time.perf_counter() - started

    name, higher = rows[0]["metric"], rows[0]["higher_is_better"]
    sign = -1.0 if higher else 1.0
    best = {
        side: min((r for r in rows if r["stage"] == side), key=lambda r: sign * r["tune"])
        for side in args.stages
    }
    print(f"tune {name} ({'higher' if higher else 'lower'} is better; the recipe's tune split, held out of")
    print(f"training); validation {name} in brackets, for the record only; seed {args.seed}")
    print(f"{'lr':>8}  " + "  ".join(f"{side:>24}" for side in args.stages))
    for lr in args.lrs:
        cells = []
        for side in args.stages:
            r = next(r for r in rows if r["lr"] == lr and r["stage"] == side)
            mark = "*" if r is best[side] else " "
            cells.append(f"{r['tune']:>10.4f}{mark} ({r['val']:.4f})".rjust(24))
        print(f"{lr:>8g}  " + "  ".join(cells))
    for side in args.stages:
        print(f"{side}: lr {best[side]['lr']:g} (tune {name} {best[side]['tune']:.4f})")
    print(f"wall {wall:.0f} s")
    write_json(
        args.out,
        {
            "recipe": str(recipe.relative_to(REPO)) if recipe.is_relative_to(REPO) else str(recipe),
            "seed": args.seed,
            "metric": name,
            "higher_is_better": higher,
            "grid": args.lrs,
            "selected_on": "tune split (the recipe's tune_fraction prefix of train), the kept (best-on-tune) step",
            "rows": rows,
            "chosen": {side: best[side]["lr"] for side in args.stages},
            "wall_s": round(wall, 1),
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
