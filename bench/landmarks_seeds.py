"""Seed study for the facial-landmarks recipe (NME), a thin caller of `kdtool study`.

    python bench/landmarks_seeds.py --seeds 3

The old ``--teachers-from RUN`` protocol (students retrained on one run's teachers) is gone:
every seed is now a full run, teachers and data included.

Since `kdtool study` exists this script is a thin caller of it (``kdtool.study.bench_study``):
``--seeds N`` is now a count (seeds = recipe seed + 0..N-1, was a list), ``--jobs``,
``--max-steps`` and ``--resume`` work as in ``kdtool study``, and ``--out`` receives the study's
``study.json`` (plus ``study_dir``). What changed in that JSON: the paired difference is
``student - baseline`` on the primary metric for every pair (was ``baseline - student`` for
error metrics), with a 95 % Student-t CI, wins k/N and a verdict.
"""

from __future__ import annotations

from pathlib import Path

from kdtool.study import bench_study

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    bench_study(
        argv,
        description=__doc__.splitlines()[0],
        recipe=REPO / "recipes" / "facial_landmarks.yaml",
        out=REPO / "bench" / "results" / "landmarks_seeds.json",
    )


if __name__ == "__main__":
    main()
