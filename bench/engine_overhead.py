"""Engine overhead: kdtool's engine vs a plain hand-written PyTorch loop, in one process.

Same teacher, student, data (scikit-learn digits, 16x16, no augmentation), batch, KD loss
(0.3 CE + 0.7 soft-target KL, T=4) and optimizer. Reports samples/s of both and their ratio
(goal >= 0.95 on CPU), and the speedup of the engine's teacher-output cache over recomputing
the teacher every step. Prints a table and writes JSON (bench/results/engine_overhead.json).

    python bench/engine_overhead.py [--steps 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdtool.data import EpochSampler
from kdtool.engine.trainer import DistillOptions, Engine, seed_everything
from kdtool.losses import SoftTargetKL
from kdtool.recipe import recipe_from_dict

BATCH = 64
TEACHER = {"arch": "cls_resnet", "options": {"base": 32, "blocks": [1, 1, 1]}}
STUDENT = {"arch": "cls_cnn", "options": {"base": 16, "width": 0.5, "stages": 2}}


def recipe(runs: Path, steps: int, *, cache: bool) -> dict:
    return {
        "name": "overhead",
        "task": {"name": "image_classification"},
        "device": "cpu",
        "runs_dir": str(runs),
        "data": {"source": "digits", "image_size": 16, "augment": False},
        "models": {"teacher": TEACHER, "student": STUDENT},
        "stages": [
            {"name": "teacher", "model": "teacher", "role": "teacher", "steps": 20, "batch_size": BATCH},
            {
                "name": "student",
                "model": "student",
                "role": "student",
                "teachers": ["teacher"],
                "steps": steps,
                "batch_size": BATCH,
                "teacher_cache": cache,
                "eval_every_steps": 10_000,
                "losses": [{"name": "ce", "weight": 0.3}, {"name": "kd", "loss": "kl_t", "weight": 0.7}],
                "optimizer": {"name": "adamw", "lr": 0.003},
            },
        ],
        "checkpoint": {"every_steps": 0},
        "logging": {"every_steps": 20, "progress": False},
    }


def engine_rate(steps: int, *, cache: bool) -> tuple[float, Path]:
    """Median samples/s of the engine's logged training windows (evaluation excluded)."""
    runs = Path(tempfile.mkdtemp(prefix="kd-overhead-"))
    loaded = recipe_from_dict(recipe(runs, steps, cache=cache))
    run_dir = Engine(loaded, DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(run_dir, Path)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if r["stage"] == "student" and r["split"] == "train"]
    # skip the first window (warm-up, and the cache filling)
    return statistics.median(rates[1:] if len(rates) > 2 else rates), run_dir


def plain_rate(run_dir: Path, steps: int) -> float:
    """The same student step written by hand: forward, teacher forward, loss, backward, step."""
    from kdtool.engine.build import build_task
    from kdtool.plugins import get_registries
    from kdtool.run import Run

    regs = get_registries()
    loaded = recipe_from_dict(recipe(run_dir.parent, steps, cache=False))
    task = build_task(loaded, regs)
    teacher = Run.open(run_dir).load_model("teacher")
    teacher.eval().requires_grad_(False)
    seed_everything(0)
    student = regs.models.get(STUDENT["arch"])(
        **task.model_options("student", STUDENT["arch"], dict(STUDENT["options"]))
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.003)
    kl = SoftTargetKL(4.0)
    train = task.build_dataset("train")
    loader = DataLoader(
        train,
        batch_size=BATCH,
        sampler=EpochSampler(len(train), seed=7),
        drop_last=True,
        collate_fn=task.collate,
    )
    mean, std = task.data.mean, task.data.std
    done = 0
    window_rates = []
    while done < steps:
        window_start, window_samples = time.perf_counter(), 0
        for batch in loader:
            x = (batch["image"] - mean) / std
            logits = student(x)
            with torch.no_grad():
                t_logits = teacher(x)
            loss = 0.3 * F.cross_entropy(logits, batch["label"]) + 0.7 * kl(logits, t_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            window_samples += len(batch["label"])
            if done % 20 == 0:
                window_rates.append(window_samples / (time.perf_counter() - window_start))
                window_start, window_samples = time.perf_counter(), 0
            if done >= steps:
                break
    return statistics.median(window_rates[1:] if len(window_rates) > 2 else window_rates)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/engine_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    engine, plain, cached = [], [], []
    for _ in range(args.repeats):
        rate, run_dir = engine_rate(args.steps, cache=False)
        engine.append(rate)
        plain.append(plain_rate(run_dir, args.steps))
        cached.append(engine_rate(args.steps, cache=True)[0])
    result = {
        "steps": args.steps,
        "batch": BATCH,
        "threads": torch.get_num_threads(),
        "engine_samples_per_s": max(engine),
        "plain_samples_per_s": max(plain),
        "engine_over_plain": max(engine) / max(plain),
        "engine_cached_samples_per_s": max(cached),
        "teacher_cache_speedup": max(cached) / max(engine),
        "all": {"engine": engine, "plain": plain, "cached": cached},
    }
    print(f"{'loop':<28}{'samples/s':>12}{'ratio':>10}")
    print(f"{'plain PyTorch loop':<28}{result['plain_samples_per_s']:>12.0f}{1.0:>10.3f}")
    print(f"{'kdtool engine':<28}{result['engine_samples_per_s']:>12.0f}{result['engine_over_plain']:>10.3f}")
    print(
        f"{'kdtool engine + teacher cache':<28}{result['engine_cached_samples_per_s']:>12.0f}"
        f"{result['engine_cached_samples_per_s'] / result['plain_samples_per_s']:>10.3f}"
    )
    print(
        f"teacher-output cache speedup over recomputing the teacher: {result['teacher_cache_speedup']:.2f}x"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
