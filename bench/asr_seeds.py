"""TODM seed study and the "train once vs train K times" cost comparison (older form: the
paired subnet-vs-twin study with equal-compute twins is ``bench/asr_todm.py``).

For each seed: ``kdtool distill recipes/asr_supernet.yaml`` (the supernet with the sandwich
rule, then the smallest subnet's architecture trained alone: the baseline), then the same
K named subnets (largest, middle, smallest) each trained alone with the same data, steps,
optimizer, schedule and augmentation (``--k-runs``), so the supernet's training time is
compared with the sum of the K separate trainings. Reports per model mean +- std of the
validation WER over the seeds, the paired difference (baseline WER - supernet smallest WER,
positive = the supernet helps), and the training seconds. Writes JSON. Not part of the test
run: each seed trains for minutes.

    python bench/asr_seeds.py --seeds 0 1 2 --k-runs --out bench/results/asr_seeds.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def _distill(recipe: Path, runs_dir: Path, sets: list[str]) -> Path:
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
    subprocess.run(cmd, check=True, cwd=REPO)
    summaries = sorted(runs_dir.glob("*/*/summary.json"), key=lambda p: p.stat().st_mtime)
    return summaries[-1].parent


def k_run_recipe(recipe: Path, out: Path, label: str, layers: int, heads: int, ffn: int) -> Path:
    """The recipe's baseline stage, retargeted at one named subnet's architecture."""
    data = yaml.safe_load(recipe.read_text())
    base = data["models"]["supernet"]["options"]
    options = {
        **base,
        "max_layers": layers,
        "max_heads": heads,
        "max_ffn": ffn,
        "layer_choices": [layers],
        "head_choices": [heads],
        "ffn_choices": [ffn],
    }
    stage = next(s for s in data["stages"] if s["role"] == "baseline")
    # a plain run of the architecture (not a twin: bench/asr_todm.py compares subnets with twins)
    stage = {**stage, "options": {k: v for k, v in (stage.get("options") or {}).items() if k != "twin"}}
    data["name"] = f"asr_alone_{label}"
    data["models"] = {label: {"arch": data["models"]["supernet"]["arch"], "options": options}}
    data["stages"] = [
        {**stage, "name": f"alone_{label}", "model": label, "role": "student", "baseline_for": None}
    ]
    data["stages"][0].pop("baseline_for")
    data["deploy_model"] = f"alone_{label}"
    path = out / f"alone_{label}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "asr_supernet.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench_asr")
    parser.add_argument("--k-runs", action="store_true", help="also train largest/middle/smallest alone")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="recipe override (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "asr_seeds.json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        started = time.time()
        run = _distill(args.recipe, args.runs_dir / f"seed{seed}", [f"seed={seed}", *args.sets])
        summary = json.loads((run / "summary.json").read_text())
        models = summary["models"]
        row: dict[str, Any] = {"seed": seed, "run": str(run), "wall_s": round(time.time() - started, 1)}
        for name, entry in models.items():
            row[name] = {
                "wer": entry["metrics"].get("wer"),
                "cer": entry["metrics"].get("cer"),
                "params": entry.get("params"),
                "train_seconds": entry.get("train_seconds"),
            }
        if args.k_runs:
            alone_seconds = 0.0
            for label in ("largest", "middle", "smallest"):
                sub = models[f"supernet-{label}"]["subnet"]
                path = k_run_recipe(
                    args.recipe, args.runs_dir, label, sub["layers"], sub["heads"], sub["ffn"]
                )
                alone = _distill(path, args.runs_dir / f"seed{seed}_alone", [f"seed={seed}", *args.sets])
                entry = json.loads((alone / "summary.json").read_text())["models"][f"alone_{label}"]
                row[f"alone_{label}"] = {
                    "wer": entry["metrics"]["wer"],
                    "train_seconds": entry["train_seconds"],
                }
                alone_seconds += entry["train_seconds"]
            row["k_runs_train_seconds"] = round(alone_seconds, 1)
            row["supernet_train_seconds"] = models["supernet"]["train_seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    def stats(key: str) -> dict[str, float] | None:
        values = [r[key]["wer"] for r in rows if key in r and r[key].get("wer") is not None]
        if not values:
            return None
        return {
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values),
        }

    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, dict) and "wer" in v})
    base = "twin_smallest" if any("twin_smallest" in r for r in rows) else "baseline_smallest"
    paired = [
        r[base]["wer"] - r["supernet-smallest"]["wer"] for r in rows if base in r and "supernet-smallest" in r
    ]
    report = {
        "recipe": str(args.recipe),
        "seeds": args.seeds,
        "wer": {k: stats(k) for k in keys},
        "paired_baseline_minus_supernet_smallest": {
            "mean": statistics.mean(paired) if paired else None,
            "std": statistics.stdev(paired) if len(paired) > 1 else 0.0,
            "supernet_wins": sum(d > 0 for d in paired),
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
