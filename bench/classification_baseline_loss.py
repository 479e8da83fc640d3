"""Strongest plain baseline for the digits recipe: cross-entropy with or without label smoothing.

Trains the recipe's ``baseline_student`` (same architecture, 10% labels, steps, batch, schedule,
augmentation) once per (label smoothing, learning rate) and scores each on a *tune* split
carved from the training images, never on the validation split the recipe reports. The engine
has no tune split yet, so this script carves it: after the task's own train/val split, a fixed
permutation (seed ``--tune-seed``) of the training images holds out ``--tune-fraction`` of them
as the tune set (this process only). The classification task has no label-smoothing option, so
the script runs one engine run per smoothing value with the task's cross-entropy set to it
(this process only). Every configuration starts from the same initial weights.

Prints a table (tune accuracy per smoothing and learning rate) and the winner; writes JSON under
bench/results/.

    python bench/classification_baseline_loss.py [--smoothing 0 0.1] [--lrs 0.001 0.003 0.01]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
import yaml

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.io import write_json
from kdtool.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "image_classification.yaml"


def carve_tune_split(tune_fraction: float, tune_seed: int) -> None:
    """The task's ``val`` becomes a tune set held out of its training images (this process only)."""
    import kdtool_classification.task as task_module

    original = task_module.split_indices

    def carved(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
        train, _val = original(n, val_fraction, seed)
        order = np.random.default_rng(tune_seed).permutation(len(train))
        held = max(1, int(round(len(train) * tune_fraction)))
        tune = sorted(train[i] for i in order[:held])
        rest = sorted(train[i] for i in order[held:])
        return rest, tune

    task_module.split_indices = carved  # type: ignore[assignment]


def set_label_smoothing(value: float) -> None:
    """The classification task's cross-entropy with ``label_smoothing=value`` (this process only)."""
    import kdtool_classification.task as task_module

    patched = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    patched.cross_entropy = functools.partial(F.cross_entropy, label_smoothing=value)
    task_module.F = patched  # type: ignore[assignment]


def grid_recipe(base: dict[str, Any], lrs: list[float], smoothing: float) -> dict[str, Any]:
    baseline = next(s for s in base["stages"] if s["role"] == "baseline")
    stages = []
    for lr in lrs:
        stage = copy.deepcopy(baseline)
        stage.pop("baseline_for", None)
        stage.update(name=f"ls{smoothing:g}_lr{lr:g}".replace(".", "p"), role="teacher", keep="last")
        stage["optimizer"] = {**stage["optimizer"], "lr": lr}
        stage.pop("eval_every_steps", None)
        stages.append(stage)
    data = copy.deepcopy(base)
    data.update(stages=stages, deploy_model=None)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoothing", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.003, 0.01])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tune-fraction", type=float, default=0.2)
    parser.add_argument("--tune-seed", type=int, default=1234)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "classification_baseline_loss.json"
    )
    args = parser.parse_args()
    carve_tune_split(args.tune_fraction, args.tune_seed)
    base = yaml.safe_load(RECIPE.read_text())
    rows = []
    start = time.perf_counter()
    for smoothing in args.smoothing:
        set_label_smoothing(smoothing)
        data = grid_recipe(base, args.lrs, smoothing)
        data.update(seed=args.seed, runs_dir=tempfile.mkdtemp(prefix="cls-baseline-loss-"))
        data["logging"] = {**base.get("logging", {}), "progress": False}
        run_dir = Engine(recipe_from_dict(data), DistillOptions(progress=False, echo=lambda _m: None)).run()
        assert isinstance(run_dir, Path)
        models = json.loads((run_dir / "summary.json").read_text())["models"]
        for stage in data["stages"]:
            rows.append(
                {
                    "label_smoothing": smoothing,
                    "lr": stage["optimizer"]["lr"],
                    "tune_accuracy": models[stage["name"]]["metrics"]["accuracy"],
                }
            )
    wall = time.perf_counter() - start
    best = max(rows, key=lambda r: r["tune_accuracy"])
    print(
        f"tune accuracy, {args.tune_fraction:.0%} of train carved (seed {args.tune_seed}); run seed {args.seed}"
    )
    print(f"{'smoothing':<12}" + "".join(f"{'lr ' + format(lr, 'g'):>12}" for lr in args.lrs))
    for smoothing in args.smoothing:
        cells = [
            next(r for r in rows if r["label_smoothing"] == smoothing and r["lr"] == lr)["tune_accuracy"]
            for lr in args.lrs
        ]
        print(f"{smoothing:<12g}" + "".join(f"{v:>12.4f}" for v in cells))
    print(f"winner: label smoothing {best['label_smoothing']:g} at lr {best['lr']:g}; wall {wall:.0f} s")
    result = {
        "recipe": "recipes/image_classification.yaml",
        "seed": args.seed,
        "tune_split": {"fraction": args.tune_fraction, "seed": args.tune_seed, "carved_from": "train"},
        "label_smoothing": args.smoothing,
        "lrs": args.lrs,
        "rows": rows,
        "winner": best,
        "wall_seconds": round(wall, 1),
    }
    write_json(args.out, result)  # atomic, creates the folder
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
