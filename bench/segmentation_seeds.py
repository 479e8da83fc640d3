"""LAD vs baseline over several seeds: mean +- std of student and baseline mIoU and the paired
difference (student - baseline, same seed = same data, same initial crops).

Not part of the test run (it trains the default recipe once per seed, minutes each):

    python bench/segmentation_seeds.py                       # seeds 0 1 2, writes JSON
    python bench/segmentation_seeds.py --seeds 0 1 2 --out bench_seg.json --set stages.student.steps=500

Each seed is a full ``kdtool distill`` of the recipe with ``seed`` overridden (the seed also
draws the synthetic scenes, the initial weights and the augmentation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def run_seed(recipe: Path, seed: int, runs_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Distil one seed in this process; returns the run's per-model metrics."""
    from kdtool.engine.trainer import DistillOptions, Engine
    from kdtool.recipe import load_recipe

    loaded = load_recipe(recipe, [f"seed={seed}", f"runs_dir={runs_dir}", *overrides])
    start = time.perf_counter()
    run = Engine(loaded, DistillOptions(progress=False, echo=lambda _m: None)).run()
    seconds = time.perf_counter() - start
    summary = json.loads((Path(str(run)) / "summary.json").read_text())
    models = summary["models"]
    return {
        "seed": seed,
        "run": str(run),
        "seconds": seconds,
        "teacher_miou": models["teacher"]["metrics"]["miou"],
        "teacher_miou_label_zeroed": models["teacher"]["metrics"].get("miou_label_zeroed"),
        "student_miou": models["student"]["metrics"]["miou"],
        "baseline_miou": models["baseline_student"]["metrics"]["miou"],
        "student_params": models["student"].get("params"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "segmentation_lad.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench_segmentation_seeds")
    parser.add_argument("--out", type=Path, default=Path("bench_segmentation_seeds.json"))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="recipe override KEY=VALUE"
    )
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        row = run_seed(args.recipe, seed, args.runs_dir, args.overrides)
        rows.append(row)
        print(
            f"seed {seed}: teacher {row['teacher_miou']:.4f} (label zeroed {row['teacher_miou_label_zeroed']:.4f}), "
            f"student {row['student_miou']:.4f}, baseline {row['baseline_miou']:.4f}, "
            f"diff {row['student_miou'] - row['baseline_miou']:+.4f} ({row['seconds']:.0f} s)",
            flush=True,
        )
    diffs = [r["student_miou"] - r["baseline_miou"] for r in rows]
    result = {
        "recipe": str(args.recipe),
        "overrides": args.overrides,
        "seeds": rows,
        "teacher_miou": _stats([r["teacher_miou"] for r in rows]),
        "student_miou": _stats([r["student_miou"] for r in rows]),
        "baseline_miou": _stats([r["baseline_miou"] for r in rows]),
        "paired_difference": _stats(diffs),
        "student_wins": sum(d > 0 for d in diffs),
    }
    args.out.write_text(json.dumps(result, indent=2))
    s, b, d = result["student_miou"], result["baseline_miou"], result["paired_difference"]
    print(
        f"student {s['mean']:.4f} +- {s['std']:.4f} | baseline {b['mean']:.4f} +- {b['std']:.4f} | "
        f"paired diff {d['mean']:+.4f} +- {d['std']:.4f} ({result['student_wins']}/{len(rows)} seeds won) -> {args.out}"
    )


if __name__ == "__main__":
    main()
