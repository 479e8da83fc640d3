"""Strongest plain baseline for the LAD recipe: CE alone or CE plus the auxiliary-head CE.

Trains the recipe's ``baseline_student`` (same architecture, data, steps, schedule,
augmentation) once per (aux weight, learning rate) and scores each on a *tune* split carved
from the training scenes, never on the validation split the recipe reports. The engine has no
tune split yet, so this script carves it (this process only): the last ``--tune-size`` of the
recipe's synthetic training scenes become the tune set and the model trains on the others.
Every configuration starts from the same initial weights.

Prints a table (tune mIoU per aux weight and learning rate) and the winner; writes JSON under
bench/results/.

    python bench/segmentation_baseline_loss.py [--aux 0 0.02 0.4] [--lrs 0.002]
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

import yaml

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.io import write_json
from kdtool.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "segmentation_lad.yaml"
VAL_OFFSET = 10_000_000  # where the task draws its validation scenes


def carve_tune_split(train_samples: int, tune_size: int) -> None:
    """Validation scenes are drawn from the training index range [n - k, n) (this process only);
    the recipe is set to train on scenes [0, n - k) and to validate on k scenes."""
    from kdtool_segmentation import datasets as ds

    original = ds.SyntheticScenes.generate.__func__  # type: ignore[attr-defined]

    def carved(cls: type, seed: int, count: int, size: int, *, offset: int = 0, **kwargs: Any) -> Any:
        if offset == VAL_OFFSET:
            offset = train_samples - tune_size
        return original(cls, seed, count, size, offset=offset, **kwargs)

    ds.SyntheticScenes.generate = classmethod(carved)  # type: ignore[assignment]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--aux", type=float, nargs="+", default=[0.0, 0.02, 0.4], help="aux CE weights (0: off)"
    )
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.002])
    parser.add_argument("--steps", type=int, default=None, help="override the baseline's steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tune-size", type=int, default=200)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "segmentation_baseline_loss.json"
    )
    args = parser.parse_args()
    base = yaml.safe_load(RECIPE.read_text())
    train_samples = int(base["data"]["synthetic"]["train_samples"])
    carve_tune_split(train_samples, args.tune_size)
    baseline = next(s for s in base["stages"] if s["role"] == "baseline")
    stages = []
    for aux in args.aux:
        for lr in args.lrs:
            stage = copy.deepcopy(baseline)
            stage.update(name=f"aux{aux:g}_lr{lr:g}".replace(".", "p"), keep="last")
            stage.pop("eval_every_steps", None)
            stage["role"] = "baseline"
            stage["options"] = {**stage.get("options", {}), "aux": aux > 0}
            stage["losses"] = [
                {"name": "ce", "weight": 1.0},
                *([{"name": "aux", "weight": aux}] if aux > 0 else []),
            ]
            stage["optimizer"] = {**stage["optimizer"], "lr": lr}
            if args.steps:
                stage["steps"] = args.steps
            stages.append(stage)
    # A baseline stage needs the student it controls: keep the recipe's stages out, point each
    # grid stage at the first one, which is itself trained as a plain baseline.
    data = copy.deepcopy(base)
    data["data"]["synthetic"].update(train_samples=train_samples - args.tune_size, val_samples=args.tune_size)
    anchor = {**copy.deepcopy(stages[0]), "name": "anchor", "role": "teacher"}
    anchor.pop("baseline_for", None)
    for stage in stages:
        stage["baseline_for"] = "anchor"
    data.update(stages=[anchor, *stages], deploy_model=None, seed=args.seed)
    data["runs_dir"] = tempfile.mkdtemp(prefix="seg-baseline-loss-")
    data["logging"] = {**base.get("logging", {}), "progress": False}
    start = time.perf_counter()
    run_dir = Engine(
        recipe_from_dict(data), DistillOptions(progress=False, echo=lambda _m: None, skip=["anchor"])
    ).run()
    assert isinstance(run_dir, Path)
    wall = time.perf_counter() - start
    models = json.loads((run_dir / "summary.json").read_text())["models"]
    rows = [
        {
            "aux_weight": aux,
            "lr": lr,
            "tune_miou": models[f"aux{aux:g}_lr{lr:g}".replace(".", "p")]["metrics"]["miou"],
        }
        for aux in args.aux
        for lr in args.lrs
    ]
    best = max(rows, key=lambda r: r["tune_miou"])
    print(f"tune mIoU, last {args.tune_size} of {train_samples} training scenes; run seed {args.seed}")
    print(f"{'aux weight':<12}" + "".join(f"{'lr ' + format(lr, 'g'):>12}" for lr in args.lrs))
    for aux in args.aux:
        cells = [
            next(r for r in rows if r["aux_weight"] == aux and r["lr"] == lr)["tune_miou"] for lr in args.lrs
        ]
        print(f"{aux:<12g}" + "".join(f"{v:>12.4f}" for v in cells))
    print(f"winner: aux weight {best['aux_weight']:g} at lr {best['lr']:g}; wall {wall:.0f} s")
    result = {
        "recipe": "recipes/segmentation_lad.yaml",
        "seed": args.seed,
        "steps": stages[0]["steps"],
        "tune_split": {"size": args.tune_size, "carved_from": "train (its last scenes)"},
        "aux_weights": args.aux,
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
