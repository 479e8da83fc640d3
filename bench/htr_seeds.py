"""HTR-JAND seed study: distilled student vs CTC-only baseline over several seeds.

Runs ``kdtool distill`` on a recipe once per seed (each run trains teacher, student and
baseline), then reports mean +- std of each model's validation CER, the paired difference
(baseline CER - student CER; positive = distillation helps) and how many seeds the student
won, plus parameters and CPU latency of each model (batch 1, one line of ``--width`` pixels).
Writes JSON. Not part of the test run: it trains for minutes per seed.

    python bench/htr_seeds.py --seeds 0 1 2 --out bench/results/htr_seeds.json
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

REPO = Path(__file__).resolve().parents[1]


def run_seed(recipe: Path, seed: int, runs_dir: Path, extra: list[str]) -> Path:
    """Train one seed; returns its run directory."""
    cmd = [
        sys.executable,
        "-m",
        "kdtool",
        "distill",
        str(recipe),
        "--no-progress",
        "--set",
        f"seed={seed}",
        "--set",
        f"runs_dir={runs_dir / f'seed{seed}'}",
    ]
    for item in extra:
        cmd += ["--set", item]
    started = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    print(f"seed {seed}: {time.time() - started:.0f}s", flush=True)
    summaries = sorted((runs_dir / f"seed{seed}").glob("*/*/summary.json"), key=lambda p: p.stat().st_mtime)
    return summaries[-1].parent


def latency_ms(run_dir: Path, model_name: str, width: int, repeats: int = 30) -> float:
    """Median CPU latency (ms) of one line (batch 1, height from the model config)."""
    import torch

    from kdtool.engine.trainer import load_run_model
    from kdtool.plugins import get_registries

    model, config = load_run_model(get_registries(), run_dir, model_name)
    model.eval()
    height = int(config.get("options", {}).get("height", 32))
    x = torch.rand(1, 1, height, width)
    times = []
    with torch.no_grad():
        for _ in range(5):
            model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "htr_jand.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench_htr_seeds")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "htr_seeds.json")
    parser.add_argument("--width", type=int, default=128, help="line width for the latency measurement")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="recipe override KEY=VALUE"
    )
    args = parser.parse_args(argv)

    per_seed: list[dict[str, Any]] = []
    for seed in args.seeds:
        run_dir = run_seed(args.recipe, seed, args.runs_dir, args.overrides)
        summary = json.loads((run_dir / "summary.json").read_text())
        models = summary["models"]
        row: dict[str, Any] = {"seed": seed, "run": str(run_dir)}
        for name, info in models.items():
            row[name] = {
                "role": info["role"],
                "params": info["params"],
                "train_seconds": info.get("train_seconds"),
                **info["metrics"],
            }
        per_seed.append(row)

    names = [n for n in per_seed[0] if isinstance(per_seed[0][n], dict)]
    result: dict[str, Any] = {
        "recipe": str(args.recipe),
        "seeds": args.seeds,
        "per_seed": per_seed,
        "models": {},
    }
    for name in names:
        cers = [row[name]["cer"] for row in per_seed]
        result["models"][name] = {
            "role": per_seed[0][name]["role"],
            "params": per_seed[0][name]["params"],
            "cer": mean_std(cers),
            "wer": mean_std([row[name]["wer"] for row in per_seed]),
            "cpu_latency_ms": latency_ms(Path(per_seed[0]["run"]), name, args.width),
        }
    students = [n for n in names if result["models"][n]["role"] == "student"]
    baselines = [n for n in names if result["models"][n]["role"] == "baseline"]
    if students and baselines:
        s, b = students[0], baselines[0]
        diffs = [row[b]["cer"] - row[s]["cer"] for row in per_seed]
        result["paired_difference"] = {
            "definition": f"{b} CER - {s} CER (positive: distillation helps)",
            **mean_std(diffs),
            "per_seed": diffs,
            "student_wins": sum(d > 0 for d in diffs),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for name, m in result["models"].items():
        print(
            f"{name:18s} params {m['params']:>8,d}  CER {100 * m['cer']['mean']:.2f} +- {100 * m['cer']['std']:.2f} %"
            f"  latency {m['cpu_latency_ms']:.2f} ms"
        )
    if "paired_difference" in result:
        d = result["paired_difference"]
        print(
            f"paired (baseline - student) CER: {100 * d['mean']:+.2f} +- {100 * d['std']:.2f} points, "
            f"student wins {d['student_wins']}/{len(args.seeds)}"
        )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
