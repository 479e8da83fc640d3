"""TODM ablations: the supernet stage with one part of the method changed at a time.

Runs only the supernet stage of ``recipes/asr_supernet.yaml`` (``--only supernet``) once per
variant, same seed, data order and steps, and reports the named subnets' validation WER:

- ``default``: the recipe as shipped;
- ``no_inplace_kd``: KD weight 0 (the subnets learn from the labels only);
- ``kd_only``: the paper's subnet loss (KD only, no hard RNN-T loss, no largest-only warm-up);
- ``no_warmup``: KD and subnets from step 0 (``largest_only_steps: 0``, KD weight 1 throughout);
- ``flat_dropout``: every subnet gets the largest's dropout (0.1) instead of adaptive dropout;
- ``adamw_cosine``: AdamW (lr 2e-3, one untuned point) with a cosine schedule instead of
  ScaledAdam + Eden.

The sandwich rule is not ablated: without it the sampled subnets would not be trained at all.
Writes ``bench/results/asr_ablation.json`` and prints a table. About 5 minutes a variant at
one thread.

    python bench/asr_ablation.py [--seed 0] [--variants default no_inplace_kd ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _distill import distill

from kdtool.io import write_json

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "asr_supernet.yaml"
LABELS = ("largest", "middle", "smallest")
S = "stages.supernet"
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "no_inplace_kd": [f"{S}.options.kd_weight=0.0"],
    "kd_only": [
        f"{S}.options.subnet_rnnt_weight=0.0",
        f"{S}.options.kd_weight=1.0",
        f"{S}.options.largest_only_steps=0",
    ],
    "no_warmup": [f"{S}.options.largest_only_steps=0", f"{S}.options.kd_weight=1.0"],
    "flat_dropout": [f"{S}.options.dropout_min=0.1"],
    "adamw_cosine": [
        f"{S}.optimizer={{name: adamw, lr: 0.002, weight_decay: 0.0001}}",
        f"{S}.schedule={{name: cosine, warmup_steps: 100}}",
        f"{S}.grad_clip=5.0",
    ],
}


def run_variant(name: str, seed: int, runs_dir: Path) -> dict[str, Any]:
    run = distill(
        RECIPE, runs_dir / name, [f"seed={seed}", *VARIANTS[name]], only=["supernet"], extra=["--no-report"]
    )
    models = json.loads((run / "summary.json").read_text())["models"]
    return {
        "variant": name,
        "sets": VARIANTS[name],
        "run": str(run),
        "wer": {label: models[f"supernet-{label}"]["metrics"]["wer"] for label in LABELS},
        "train_seconds": models["supernet"].get("train_seconds"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench_asr_ablation")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "asr_ablation.json")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [run_variant(name, args.seed, args.runs_dir) for name in args.variants]
    print(f"\nsupernet stage ablations, seed {args.seed}: named subnets' validation WER %")
    print(f"{'variant':<16}" + "".join(f"{label:>10}" for label in LABELS) + f"{'train s':>10}")
    for row in rows:
        cells = "".join(f"{100 * row['wer'][label]:>10.2f}" for label in LABELS)
        secs = row["train_seconds"]
        print(f"{row['variant']:<16}{cells}{secs if secs is not None else float('nan'):>10.0f}")
    write_json(
        args.out,
        {
            "recipe": str(RECIPE.relative_to(REPO)),
            "seed": args.seed,
            "note": "one seed; the supernet stage only (--only supernet); one thread on a shared 2-core machine",
            "rows": rows,
            "wall_s": round(time.perf_counter() - started, 1),
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
