"""Seed study for the facial-landmarks recipe: is the KD-Loss student better than its baseline?

Runs the recipe once per seed (the seed also draws the synthetic faces, so each run sees a
different data set), then reports for every model the NME mean +- std over seeds and the
paired difference ``baseline NME - student NME`` per seed (positive: distillation helped),
with its mean +- std. Writes everything to a JSON file. Not part of the test run: three full
runs take a while (about 3 x the recipe's time).

    python bench/landmarks_seeds.py --seeds 0 1 2 --out bench/landmarks_seeds.json
    python bench/landmarks_seeds.py --set stages.student.steps=300 --set stages.baseline_student.steps=300

``--teachers-from RUN_DIR`` is the cheaper protocol: the teachers (and the synthetic data,
whose seed is pinned to that run's seed) are taken from a finished run, and only the student
and its baseline are retrained per seed, so the spread measured is the students' training
noise (initialisation, batch order, augmentation) with data and teachers fixed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "values": [round(v, 4) for v in values],
    }


def teacher_overrides(recipe: Path, run: Path) -> tuple[list[str], list[str]]:
    """Overrides pointing every student's teachers at ``run`` (and pinning the data seed to
    that run's), and the names of the stages to train."""
    resolved = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    data_seed = resolved.get("data", {}).get("synthetic", {}).get("seed")
    overrides = [f"data.synthetic.seed={resolved['seed'] if data_seed is None else data_seed}"]
    only = []
    for stage in load_recipe(recipe).recipe.stages:
        if stage.role == "teacher":
            continue
        only.append(stage.name)
        if stage.teachers:
            refs = ", ".join(
                f"{{name: {t.name}, run: '{run}', model: {t.stage or t.model}}}" for t in stage.teachers
            )
            overrides.append(f"stages.{stage.name}.teachers=[{refs}]")
    return overrides, only


def run_seed(
    recipe: Path, seed: int, runs_dir: Path, overrides: list[str], only: list[str]
) -> dict[str, Any]:
    loaded = load_recipe(
        recipe, [f"seed={seed}", f"runs_dir={runs_dir}", "logging.progress=false", *overrides]
    )
    start = time.perf_counter()
    run_dir = Engine(loaded, DistillOptions(progress=False, only=only)).run()
    assert isinstance(run_dir, Path)
    summary = json.loads((run_dir / "summary.json").read_text())
    extras = summary.get("landmarks", {}).get("models", {})
    return {
        "seed": seed,
        "run_dir": str(run_dir),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "models": {
            name: {
                "role": entry["role"],
                "baseline_for": entry.get("baseline_for"),
                "metrics": entry["metrics"],
                "params": entry["params"],
                "train_seconds": entry.get("train_seconds"),
                "cpu_latency_ms": extras.get(name, {}).get("cpu_latency_ms"),
            }
            for name, entry in summary["models"].items()
        },
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(runs[0]["models"])
    out: dict[str, Any] = {"models": {}, "pairs": {}}
    for name in names:
        metrics = runs[0]["models"][name]["metrics"]
        out["models"][name] = {
            key: mean_std([r["models"][name]["metrics"][key] for r in runs])
            for key in metrics
            if isinstance(metrics[key], int | float)
        }
        out["models"][name]["params"] = runs[0]["models"][name]["params"]
        latencies = [
            r["models"][name]["cpu_latency_ms"]
            for r in runs
            if r["models"][name]["cpu_latency_ms"] is not None
        ]
        if latencies:
            out["models"][name]["cpu_latency_ms"] = mean_std(latencies)
    for name in names:
        student = runs[0]["models"][name].get("baseline_for")
        if student:
            diffs = [
                r["models"][name]["metrics"]["nme"] - r["models"][student]["metrics"]["nme"] for r in runs
            ]
            out["pairs"][f"{name} - {student}"] = {
                "nme_difference": mean_std(diffs),
                "student_better_in": f"{sum(d > 0 for d in diffs)}/{len(diffs)} seeds",
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "facial_landmarks.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench_landmarks")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "landmarks_seeds.json")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="recipe override, as kdtool distill --set",
    )
    parser.add_argument(
        "--teachers-from", type=Path, default=None, help="reuse this run's teachers and data seed"
    )
    args = parser.parse_args()
    overrides, only = list(args.overrides), []
    if args.teachers_from is not None:
        extra, only = teacher_overrides(args.recipe, args.teachers_from.resolve())
        overrides = extra + overrides
    runs = []
    for seed in args.seeds:
        print(f"== seed {seed}", flush=True)
        runs.append(run_seed(args.recipe, seed, args.runs_dir, overrides, only))
        partial = {"recipe": str(args.recipe), "overrides": overrides, "seeds": args.seeds, "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(partial, indent=2))
    result = {
        "recipe": str(args.recipe),
        "overrides": overrides,
        "teachers_from": str(args.teachers_from) if args.teachers_from else None,
        "seeds": args.seeds,
        "runs": runs,
        "summary": aggregate(runs),
    }
    args.out.write_text(json.dumps(result, indent=2))
    for name, stats in result["summary"]["models"].items():
        print(
            f"{name:>18}: NME {stats['nme']['mean']:.3f} +- {stats['nme']['std']:.3f} %, {stats['params']:,} params"
        )
    for pair, stats in result["summary"]["pairs"].items():
        d = stats["nme_difference"]
        print(
            f"{pair}: NME difference {d['mean']:+.3f} +- {d['std']:.3f} (student better in {stats['student_better_in']})"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
