"""TODM seed study (WER), a thin caller of `kdtool study`, and the "train once vs K times" cost
(the paired subnet-vs-twin study with equal-compute twins is ``bench/asr_todm.py``).

The study runs ``recipes/asr_supernet.yaml`` once per seed (the supernet with the sandwich rule,
then the smallest subnet's architecture trained alone: the baseline, paired with the supernet's
smallest subnet). With ``--k-runs`` the K named subnets (largest, middle, smallest) are then each
trained alone per seed with the same data, steps, optimizer, schedule and augmentation, so the
supernet's training time can be compared with the sum of the K separate trainings.

    python bench/asr_seeds.py --seeds 3 --k-runs --out bench/results/asr_seeds.json

A thin caller of `kdtool study` (``kdtool.study.bench_study``): ``--seeds N`` is a count (seeds =
recipe seed + 0..N-1, was a list), ``--jobs``, ``--max-steps`` and ``--resume`` work as in
``kdtool study``, and ``--out`` receives the study's ``study.json`` (plus ``study_dir``) with
this script's extra measurements added. What changed in that JSON: the paired difference is
``student - baseline`` on the primary metric (was ``baseline - student``; now negative = the
student's error is lower), with a 95 % Student-t CI, wins k/N and a verdict.

Extra fields with ``--k-runs``: ``k_runs``: per seed, each alone-trained subnet's WER and train
seconds, their summed train seconds and the supernet's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kdtool.io import write_json
from kdtool.study import bench_study

REPO = Path(__file__).resolve().parents[1]


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
    data["stages"] = [{**stage, "name": f"alone_{label}", "model": label, "role": "student"}]
    data["stages"][0].pop("baseline_for", None)
    data["deploy_model"] = f"alone_{label}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"alone_{label}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> None:
    study_dir, study, args = bench_study(
        argv,
        description=__doc__.splitlines()[0],
        recipe=REPO / "recipes" / "asr_supernet.yaml",
        out=REPO / "bench" / "results" / "asr_seeds.json",
    )
    if not args.k_runs:
        return
    rows: list[dict[str, Any]] = []
    for seed, rel in study["runs"].items():
        run = study_dir / rel
        models = json.loads((run / "summary.json").read_text())["models"]
        row: dict[str, Any] = {
            "seed": int(seed),
            "supernet_train_seconds": models["supernet"]["train_seconds"],
        }
        total = 0.0
        for label in ("largest", "middle", "smallest"):
            sub = models[f"supernet-{label}"]["subnet"]
            path = k_run_recipe(args.recipe, run / "k_runs", label, sub["layers"], sub["heads"], sub["ffn"])
            alone_dir = run / "k_runs" / f"alone_{label}"
            alone_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "kdtool", "distill", str(path), "--no-progress", "--no-report"]
            for item in [f"seed={seed}", *args.overrides]:
                cmd += ["--set", item]
            subprocess.run([*cmd, "--run", str(alone_dir)], check=True)
            entry = json.loads((alone_dir / "summary.json").read_text())["models"][f"alone_{label}"]
            row[f"alone_{label}"] = {"wer": entry["metrics"]["wer"], "train_seconds": entry["train_seconds"]}
            total += entry["train_seconds"]
        row["k_runs_train_seconds"] = round(total, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    study["k_runs"] = rows
    write_json(args.out, study)


if __name__ == "__main__":
    main()
