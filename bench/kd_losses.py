"""KD loss table: the same teacher, student and data, one row per registered logit KD loss.

Trains the teacher of ``recipes/image_classification.yaml`` once, then for every registered
loss that declares it accepts ``logits`` distillation points distils the student with
the recipe's CE and KD weights over several seeds, plus the CE-only baseline on the same seeds. Prints
mean +- std of validation accuracy and the paired difference to the baseline; writes JSON.

    python bench/kd_losses.py [--seeds 0 1 2] [--epochs 6]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from kdtool.distill import loss_accepts
from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.plugins import get_registries
from kdtool.recipe import recipe_from_dict

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "image_classification.yaml"


def logit_losses() -> list[str]:
    """Registered losses that declare they accept ``logits`` points and build from their
    defaults (a loss that needs options, e.g. ``hint``'s channel counts, is left out)."""
    names = []
    registry = get_registries().losses
    for name in registry.names():
        cls = registry.get(name)
        if "logits" not in loss_accepts(cls):
            continue
        try:
            cls()
        except TypeError:
            print(f"skipping {name}: it needs options to build")
            continue
        names.append(name)
    return names


def run(data: dict[str, Any]) -> Path:
    result = Engine(recipe_from_dict(data), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    return result


def accuracy(run_dir: Path, model: str) -> float:
    return json.loads((run_dir / "summary.json").read_text())["models"][model]["metrics"]["accuracy"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's student epochs")
    parser.add_argument("--out", type=Path, default=Path("bench/results/kd_losses.json"))
    args = parser.parse_args()
    base = yaml.safe_load(RECIPE.read_text())
    runs = Path(tempfile.mkdtemp(prefix="kd-losses-"))
    base["runs_dir"] = str(runs)
    base["logging"] = {"progress": False}
    teacher_recipe = copy.deepcopy(base)
    teacher_recipe["stages"] = [s for s in base["stages"] if s["name"] == "teacher"]
    teacher_recipe["deploy_model"] = None
    teacher_run = run(teacher_recipe)
    teacher_acc = accuracy(teacher_run, "teacher")
    student_stage = next(s for s in base["stages"] if s["name"] == "student")
    baseline_stage = next(s for s in base["stages"] if s["name"] == "baseline_student")
    if args.epochs:
        student_stage["epochs"] = baseline_stage["epochs"] = args.epochs
    losses = logit_losses()
    ce_weight = next(t["weight"] for t in student_stage["losses"] if t["name"] == "ce")
    results: dict[str, list[float]] = {"baseline (CE only)": [], **{f"CE + {loss}": [] for loss in losses}}
    for seed in args.seeds:
        # one run per seed: every student and the baseline see the same data order (paired)
        stages = []
        for loss in losses:
            stage = copy.deepcopy(student_stage)
            stage["name"] = f"student_{loss}"
            stage["teachers"] = [{"name": "teacher", "run": str(teacher_run), "model": "teacher"}]
            # the recipe's weights; the recipe's KD options only for the loss it names
            recipe_kd = next(t for t in student_stage["losses"] if t.get("loss"))
            options = recipe_kd.get("options", {}) if recipe_kd["loss"] == loss else {}
            stage["losses"] = [
                {"name": "ce", "weight": ce_weight},
                {"name": "kd", "loss": loss, "weight": recipe_kd["weight"], "options": options},
            ]
            stages.append(stage)
        baseline = copy.deepcopy(baseline_stage)
        baseline["baseline_for"] = stages[0]["name"]
        data = copy.deepcopy(base)
        data.update(seed=seed, stages=[*stages, baseline], deploy_model=None)
        run_dir = run(data)
        results["baseline (CE only)"].append(accuracy(run_dir, baseline["name"]))
        for loss in losses:
            results[f"CE + {loss}"].append(accuracy(run_dir, f"student_{loss}"))
    baseline = results["baseline (CE only)"]
    rows = []
    print(f"teacher accuracy: {teacher_acc:.4f}   seeds: {args.seeds}")
    print(f"{'student loss':<24}{'accuracy mean':>14}{'std':>8}{'paired diff vs baseline':>26}")
    for key, values in results.items():
        diffs = [v - b for v, b in zip(values, baseline, strict=True)]
        row = {
            "loss": key,
            "accuracy": values,
            "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "paired_diff_mean": statistics.mean(diffs),
            "paired_diff_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        }
        rows.append(row)
        diff = (
            "-"
            if key.startswith("baseline")
            else f"{row['paired_diff_mean']:+.4f} +- {row['paired_diff_std']:.4f}"
        )
        print(f"{key:<24}{row['mean']:>14.4f}{row['std']:>8.4f}{diff:>26}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"teacher_accuracy": teacher_acc, "seeds": args.seeds, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
