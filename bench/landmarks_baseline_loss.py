"""Strongest plain baseline for the landmarks recipe: L2, L1, smooth-L1 or Wing, each on one LR grid.

Trains the recipe's student architecture without teachers (the baseline's setting: ground
truth, same steps, batch, schedule and augmentation) once per (loss, learning rate) and scores
each on a *tune* split carved from the training set, never on the validation split that the
recipe reports. The engine has no tune split of its own yet, so this script carves it: a fixed
permutation (seed ``--tune-seed``) of the synthetic training faces holds out ``--tune-size`` of
them as the tune set and the model trains on the rest. Every configuration starts from the same
initial weights (the engine seeds them by run seed and model name) and sees the same batches.

Prints a table (tune NME per loss and learning rate) and the winner (lowest tune NME), and
writes JSON under bench/results/.

    python bench/landmarks_baseline_loss.py [--lrs 0.001 0.002 0.004] [--steps 700] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.io import write_json
from kdtool.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "facial_landmarks.yaml"
LOSSES = ("l2", "l1", "smooth_l1", "wing")


def carve_tune_split(tune_size: int, tune_seed: int) -> None:
    """Make the landmarks task train on train minus a held-out tune set and evaluate on it.

    Patches ``LandmarksTask._records`` in this process only: ``val`` becomes the tune set.
    """
    from kdtool_landmarks.task import LandmarksTask

    original = LandmarksTask._records

    def carved(self: LandmarksTask, split: str) -> list[Any]:
        train = original(self, "train")
        if tune_size >= len(train):
            raise SystemExit(f"--tune-size {tune_size} leaves no training faces (train has {len(train)})")
        held = set(np.random.default_rng(tune_seed).permutation(len(train))[:tune_size].tolist())
        if split == "train":
            return [r for i, r in enumerate(train) if i not in held]
        return [train[i] for i in sorted(held)]

    LandmarksTask._records = carved  # type: ignore[method-assign]


def grid_recipe(
    base: dict[str, Any], losses: list[str], lrs: list[float], steps: int | None, student: bool = False
) -> dict[str, Any]:
    """One recipe whose stages are the baseline, once per (loss, lr), with no teachers; with
    ``student`` also the recipe's teachers and its KD-Loss student once per lr (same grid)."""
    baseline = next(s for s in base["stages"] if s["role"] == "baseline")
    stages = []
    if student:
        stages += [copy.deepcopy(s) for s in base["stages"] if s["role"] == "teacher"]
        kd = next(s for s in base["stages"] if s["role"] == "student")
        for lr in lrs:
            stage = copy.deepcopy(kd)
            stage.update(name=f"kd_loss_lr{lr:g}".replace(".", "p"), keep="last")
            stage["optimizer"] = {**stage["optimizer"], "lr": lr}
            if steps:
                stage["steps"] = steps
            stages.append(stage)
    for loss in losses:
        for lr in lrs:
            stage = copy.deepcopy(baseline)
            stage.pop("baseline_for", None)
            stage.update(name=f"{loss}_lr{lr:g}".replace(".", "p"), role="teacher", keep="last")
            stage["options"] = {**stage.get("options", {}), "target": "hard", "loss": loss}
            stage["losses"] = [{"name": loss}]
            stage["optimizer"] = {**stage["optimizer"], "lr": lr}
            if steps:
                stage["steps"] = steps
            stages.append(stage)
    data = copy.deepcopy(base)
    data.update(stages=stages, deploy_model=None)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--losses", nargs="*", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.002, 0.004])
    parser.add_argument("--steps", type=int, default=None, help="override the baseline's steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student", action="store_true", help="also the KD-Loss student on the same lr grid")
    parser.add_argument("--tune-size", type=int, default=400)
    parser.add_argument("--tune-seed", type=int, default=1234)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "landmarks_baseline_loss.json"
    )
    args = parser.parse_args()

    carve_tune_split(args.tune_size, args.tune_seed)
    base = yaml.safe_load(args.recipe.read_text())
    data = grid_recipe(base, args.losses, args.lrs, args.steps, args.student)
    data.update(seed=args.seed, runs_dir=tempfile.mkdtemp(prefix="lm-baseline-loss-"))
    data["logging"] = {**base.get("logging", {}), "progress": False}
    start = time.perf_counter()
    run_dir = Engine(recipe_from_dict(data), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(run_dir, Path)
    wall = time.perf_counter() - start
    models = json.loads((run_dir / "summary.json").read_text())["models"]

    rows, teachers = [], {}
    for stage in data["stages"]:
        metrics = models[stage["name"]]["metrics"]
        if stage["name"] in {s["name"] for s in base["stages"] if s["role"] == "teacher"}:
            teachers[stage["name"]] = metrics["nme"]
            continue
        rows.append(
            {
                "loss": stage["options"].get("loss", "kd_loss") if stage["role"] == "teacher" else "kd_loss",
                "lr": stage["optimizer"]["lr"],
                "tune_nme": metrics["nme"],
                "tune_failure_rate_pct": metrics.get("fr@0.1"),
            }
        )
    plain = [r for r in rows if r["loss"] != "kd_loss"]
    best = min(plain, key=lambda r: r["tune_nme"]) if plain else min(rows, key=lambda r: r["tune_nme"])
    print(
        f"tune NME (%), {args.tune_size} faces carved from train (seed {args.tune_seed}); run seed {args.seed}"
    )
    print(f"{'loss':<12}" + "".join(f"{'lr ' + format(lr, 'g'):>12}" for lr in args.lrs))
    for loss in [*args.losses, *(["kd_loss"] if args.student else [])]:
        cells = [next(r for r in rows if r["loss"] == loss and r["lr"] == lr)["tune_nme"] for lr in args.lrs]
        print(f"{loss:<12}" + "".join(f"{v:>12.3f}" for v in cells))
    print(
        f"winner: {best['loss']} at lr {best['lr']:g} (tune NME {best['tune_nme']:.3f} %); wall {wall:.0f} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "recipe": str(args.recipe.relative_to(REPO))
        if args.recipe.is_relative_to(REPO)
        else str(args.recipe),
        "seed": args.seed,
        "steps": data["stages"][0]["steps"],
        "tune_split": {"size": args.tune_size, "seed": args.tune_seed, "carved_from": "train"},
        "losses": args.losses,
        "lrs": args.lrs,
        "rows": rows,
        "teachers_tune_nme": teachers,
        "winner": best,
        "wall_seconds": round(wall, 1),
    }
    write_json(args.out, result)  # atomic, creates the folder
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
