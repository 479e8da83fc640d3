"""TODM's claim as a benchmark: named subnets of one supernet vs their twins trained alone.

For each seed, ``kdtool distill RECIPE`` (default ``recipes/asr_supernet.yaml``): the supernet
stage (sandwich rule) and the K = 3 twin stages (largest, middle, smallest), each twin from the
supernet's slice of the same initial weights, with its in-supernet dropout, the same steps,
schedule, learning rate and data order. Reports, over the seeds, paired by seed:

- per named subnet: WER mean +- std of the subnet and of its twin, the paired relative
  difference (subnet - twin) / twin, and wins k/n (subnet at most 5 % relative worse = "within";
  strictly better = "win");
- the cost ratio: the supernet stage's training wall time / the sum of the K twins' (validation
  time excluded: the supernet's evaluations also score its subnets), at the same steps;
- with ``--equal-compute``: the twins trained again with their steps scaled by the measured
  cost ratio (Eden's constants scaled alike), so the K twins together cost what the supernet
  stage cost, and the same comparison against those.

Writes ``bench/results/asr_todm.json`` and prints a table. The learning curves (validation WER
vs step of the subnets and the twins) are a figure of each run (``RUN/figures/``, shown by
``kdtool report RUN``). Not part of the test run: a seed trains for about 15 minutes at one
thread.

    python bench/asr_todm.py --seeds 0 1 2 --equal-compute
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from _distill import distill

REPO = Path(__file__).resolve().parents[1]
LABELS = ("largest", "middle", "smallest")


def fit_seconds(entry: dict[str, Any]) -> float:
    """Training wall time of a stage without its validation passes."""
    return float(entry["train_seconds"]) - float(entry.get("eval_seconds") or 0.0)


def equal_compute_recipe(recipe: Path, out: Path, factor: float) -> tuple[Path, dict[str, str]]:
    """The recipe with every twin stage's steps (and Eden's step constants) scaled by
    ``factor``, and its twin stages by the named subnet they are the twin of."""
    data = yaml.safe_load(recipe.read_text())
    twins: dict[str, str] = {}
    for stage in data["stages"]:
        twin = (stage.get("options") or {}).get("twin")
        if not twin:
            continue
        twins[str(twin["subnet"])] = stage["name"]
        stage["steps"] = max(1, round(stage["steps"] * factor))
        twin["check"] = False
        schedule = dict(stage.get("schedule") or {})
        if schedule.get("warmup_steps"):
            schedule["warmup_steps"] = max(1, round(schedule["warmup_steps"] * factor))
        options = dict(schedule.get("options") or {})
        for key in ("lr_batches", "lr_epochs"):
            if key in options:
                options[key] = options[key] * factor
        schedule["options"] = options
        stage["schedule"] = schedule
        if stage.get("eval_every_steps"):
            stage["eval_every_steps"] = max(1, round(stage["eval_every_steps"] * factor))
    path = out / f"equal_compute_x{factor:.2f}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, twins


def add_equal_compute(args: argparse.Namespace, row: dict[str, Any], sets: list[str]) -> None:
    """Train the row's twins again with their steps scaled by its cost ratio; add their WERs."""
    path, twins = equal_compute_recipe(args.recipe, args.runs_dir / "recipes", row["cost_ratio"])
    eq = distill(path, args.runs_dir / f"seed{row['seed']}_equal", sets, only=list(twins.values()))
    eq_models = json.loads((eq / "summary.json").read_text())["models"]
    row["twins_equal_compute"] = {}
    for label, name in twins.items():
        if label in LABELS and name in eq_models:
            row["twins_equal_compute"][label] = eq_models[name]["metrics"]["wer"]
            row["seconds"][f"twin_{label}_equal_compute"] = round(fit_seconds(eq_models[name]), 1)
            row.setdefault("equal_compute_steps", eq_models[name]["steps"])


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def compare(rows: list[dict[str, Any]], twin_key: str) -> dict[str, Any]:
    """Per label: subnet and twin WER over seeds, paired relative difference, wins."""
    out: dict[str, Any] = {}
    for label in LABELS:
        pairs = [(r["subnets"][label], r[twin_key][label]) for r in rows if label in r.get(twin_key, {})]
        if not pairs:
            continue
        rel = [(s - t) / t if t > 0 else 0.0 for s, t in pairs]
        out[label] = {
            "subnet_wer": mean_std([s for s, _ in pairs]),
            "twin_wer": mean_std([t for _, t in pairs]),
            "paired_diff": mean_std([s - t for s, t in pairs]),
            "paired_rel_diff": mean_std(rel),
            "within_5pct": sum(d <= 0.05 for d in rel),
            "wins": sum(s < t for s, t in pairs),
            "n": len(pairs),
        }
    return out


def print_table(title: str, table: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(
        f"{'subnet':<9} {'subnet WER %':>16} {'twin WER %':>16} {'paired diff %':>15} {'rel':>8} {'within5%':>9} {'wins':>5}"
    )
    for label, c in table.items():
        s, t, d, r = c["subnet_wer"], c["twin_wer"], c["paired_diff"], c["paired_rel_diff"]
        print(
            f"{label:<9} {100 * s['mean']:>8.2f} ± {100 * s['std']:<5.2f} {100 * t['mean']:>8.2f} ± {100 * t['std']:<5.2f} "
            f"{100 * d['mean']:>+7.2f} ± {100 * d['std']:<5.2f} {100 * r['mean']:>+7.1f}% {c['within_5pct']:>5}/{c['n']} "
            f"{c['wins']:>3}/{c['n']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "asr_supernet.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench_todm")
    parser.add_argument("--equal-compute", action="store_true", help="also train the twins at equal compute")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="recipe override (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "asr_todm.json")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        help="no training: pool the rows of earlier result files (seeds run in parallel) into --out",
    )
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    if args.combine:
        for path in args.combine:
            rows += json.loads(path.read_text())["rows"]
        args.seeds = [r["seed"] for r in rows]
    if args.combine and args.equal_compute:
        # the equal-compute twins of earlier rows that lack them (from the rows' cost ratios)
        for row in rows:
            if "twins_equal_compute" not in row and row.get("cost_ratio"):
                add_equal_compute(args, row, [f"seed={row['seed']}", *args.sets])
    for seed in [] if args.combine else args.seeds:
        started = time.time()
        sets = [f"seed={seed}", *args.sets]
        run = distill(args.recipe, args.runs_dir / f"seed{seed}", sets)
        models = json.loads((run / "summary.json").read_text())["models"]
        row: dict[str, Any] = {"seed": seed, "run": str(run), "subnets": {}, "twins": {}, "seconds": {}}
        twin_fit = 0.0
        for label in LABELS:
            entry = models[f"supernet-{label}"]
            row["subnets"][label] = entry["metrics"]["wer"]
            twin = models.get(entry.get("twin") or "")
            if twin:
                row["twins"][label] = twin["metrics"]["wer"]
                row["seconds"][f"twin_{label}"] = round(fit_seconds(twin), 1)
                twin_fit += fit_seconds(twin)
        row["seconds"]["supernet"] = round(fit_seconds(models["supernet"]), 1)
        row["params"] = {label: models[f"supernet-{label}"]["params"] for label in LABELS}
        row["cost_ratio"] = round(fit_seconds(models["supernet"]) / twin_fit, 3) if twin_fit else None
        if args.equal_compute and row["cost_ratio"]:
            add_equal_compute(args, row, sets)
        row["wall_s"] = round(time.time() - started, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    same_steps = compare(rows, "twins")
    report: dict[str, Any] = {
        "recipe": str(args.recipe.relative_to(REPO) if args.recipe.is_relative_to(REPO) else args.recipe),
        "seeds": args.seeds,
        "threads": 1,
        "note": "training wall times exclude validation; the machine was shared with other jobs",
        "same_steps": same_steps,
        "cost_ratio": mean_std([r["cost_ratio"] for r in rows if r.get("cost_ratio")]) if rows else None,
        "rows": rows,
    }
    if any("twins_equal_compute" in r for r in rows):
        report["equal_compute"] = compare(
            [r for r in rows if "twins_equal_compute" in r], "twins_equal_compute"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(
        f"same steps ({len(rows)} seed(s)): subnet of the supernet vs its twin trained alone", same_steps
    )
    if "equal_compute" in report:
        print_table("equal compute: the twins' steps scaled by the cost ratio", report["equal_compute"])
    if report["cost_ratio"]:
        c = report["cost_ratio"]
        print(
            f"\ncost ratio (supernet stage / sum of the {len(LABELS)} twins, same steps): {c['mean']:.2f} ± {c['std']:.2f}"
        )


if __name__ == "__main__":
    main()
