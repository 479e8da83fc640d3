"""HTR-JAND seed study (CER), a thin caller of `kdtool study`, plus CPU latency per model.

    python bench/htr_seeds.py --seeds 3 --out bench/results/htr_seeds.json

A thin caller of `kdtool study` (``kdtool.study.bench_study``): ``--seeds N`` is a count (seeds =
recipe seed + 0..N-1, was a list), ``--jobs``, ``--max-steps`` and ``--resume`` work as in
``kdtool study``, and ``--out`` receives the study's ``study.json`` (plus ``study_dir``) with
this script's extra measurements added. What changed in that JSON: the paired difference is
``student - baseline`` on the primary metric (was ``baseline - student``; now negative = the
student's error is lower), with a 95 % Student-t CI, wins k/N and a verdict.

Extra field: ``cpu_latency_ms`` per model (median of 30 calls, batch 1, one line of ``--width``
pixels, measured on seed 0's run; a shared machine makes it noisy).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from kdtool.io import write_json
from kdtool.study import bench_study

REPO = Path(__file__).resolve().parents[1]


def latency_ms(run_dir: Path, model_name: str, width: int, repeats: int = 30) -> float:
    """Median CPU latency (ms) of one line (batch 1, height from the model config)."""
    import torch

    from kdtool.run import Run

    run = Run.open(run_dir)
    model, config = run.load_model(model_name), run.model_config(model_name)
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


def main(argv: list[str] | None = None) -> None:
    study_dir, study, args = bench_study(
        argv,
        description=__doc__.splitlines()[0],
        recipe=REPO / "recipes" / "htr_jand.yaml",
        out=REPO / "bench" / "results" / "htr_seeds.json",
    )
    first = study_dir / study["runs"][str(study["seeds"][0])]
    for name, model in study["models"].items():
        model["cpu_latency_ms"] = latency_ms(first, name, args.width)
        print(f"{name:18s} latency {model['cpu_latency_ms']:.2f} ms")
    write_json(args.out, study)


if __name__ == "__main__":
    main()
