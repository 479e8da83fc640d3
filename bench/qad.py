"""QAD vs PTQ: task metric of FP32, PTQ static INT8, PTQ weight-only INT8 and QAD INT8, with latency.

For each recipe and seed: runs the recipe (its baseline stages skipped) with one extra stage
appended, ``student_qad``: the recipe's own QAD stage (a stage with ``quantization_aware``) when
it has one, else the deploy student's stage settings (teachers, losses, task options), ``init``
from the trained student, ``quantization_aware: int8``, ``--qad-steps`` steps (default 200) at a
tenth of the student's learning rate (no weight decay). Then exports, in this process:

- FP32: ``onnx`` on the student;
- PTQ static INT8: ``onnx-cpu-int8 --opt quantization=static`` on the student (calibrated on the
  recipe's data; static even where the task prefers weight-only INT8, e.g. the ASR encoder);
- PTQ weight-only INT8: ``onnx --precision int8 --opt quantization=dynamic`` on the student;
- QAD INT8: ``onnx --precision int8`` on ``student_qad`` (QDQ with the learned scales);
- with ``--control``, FP32 fine-tuned: a second extra stage, ``student_fp32ft``, the QAD stage's
  exact settings without fake quantization, exported FP32 (``onnx``); it tells what the extra
  fine-tuning steps alone give, so QAD is judged against it as well as against FP32;

and reads each artifact's metric (the driver evaluates it on the validation split) and its
batch-1 ONNX Runtime latency (p50). Prints a table and writes JSON.

    cpujob python bench/qad.py --recipes image_classification --seeds 0 1 2 [--qad-steps 200]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from kdtool import runtime
from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.export.bench import bench_predictor
from kdtool.export.driver import ExportRequest, export_model
from kdtool.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fp32": ("onnx", None, [], "student"),
    # static forced: a task may prefer weight-only INT8 for a graph (ASR), and this row is the
    # static post-training result whatever the task prefers (a fall-back is in its mode)
    "ptq_static": ("onnx-cpu-int8", None, ["quantization=static"], "student"),
    "ptq_weights": ("onnx", "int8", ["quantization=dynamic"], "student"),
    "qad": ("onnx", "int8", [], "student_qad"),
    # --control: the same fine-tune as the QAD stage (steps, learning rate, losses) in FP32, so
    # that what QAD gains over FP32 is not just the extra steps.
    "fp32_finetuned": ("onnx", None, [], "student_fp32ft"),
}


def qad_recipe(
    path: Path,
    seed: int,
    runs_dir: Path,
    steps: int | None,
    overrides: dict[str, Any],
    control: bool = False,
) -> tuple[dict[str, Any], str]:
    data = yaml.safe_load(path.read_text())
    data["seed"] = seed
    data["runs_dir"] = str(runs_dir)
    data.setdefault("logging", {})["progress"] = False
    for key, value in overrides.items():
        cur = data
        parts = key.split(".")
        for part in parts[:-1]:
            cur = cur[int(part)] if isinstance(cur, list) else cur[part]
        cur[parts[-1]] = value
    own = [s for s in data["stages"] if s.get("quantization_aware")]
    if own:  # the recipe's own QAD stage, as written (its init is the FP32 student)
        stage = copy.deepcopy(own[-1])
        if not stage.get("init"):
            raise SystemExit(
                f"{path}: stage {stage['name']!r} is quantization_aware but has no `init` "
                "(the FP32 stage it fine-tunes), so there is no FP32 student to compare with"
            )
        deploy = stage["init"]
        stage["name"] = "student_qad"
        if steps is not None:
            stage["steps"] = steps
    else:
        deploy = (
            data.get("deploy_model") or [s for s in data["stages"] if s.get("role") == "student"][-1]["name"]
        )
        student = next(s for s in data["stages"] if s["name"] == deploy)
        stage = copy.deepcopy(student)
        stage.pop("epochs", None)
        steps = 200 if steps is None else steps
        stage.update(
            name="student_qad",
            init=deploy,
            quantization_aware="int8",
            steps=steps,
            keep="last",
            eval_every_steps=max(1, steps // 4),
        )
        opt = dict(stage.get("optimizer") or {})
        opt["lr"] = float(opt.get("lr", 1e-3)) / 10
        opt["weight_decay"] = 0.0
        stage["optimizer"] = opt
        stage["schedule"] = {"name": "cosine"}
    data["stages"] = [
        s
        for s in data["stages"]
        if s.get("role") != "baseline"
        and not s.get("quantization_aware")
        and s["name"] not in ("student_qad", "student_fp32ft")
    ]
    data["stages"].append(stage)
    if control:
        twin = copy.deepcopy(stage)
        twin.pop("quantization_aware")
        twin["name"] = "student_fp32ft"
        data["stages"].append(twin)
    data["deploy_model"] = "student_qad"
    data["name"] = f"{data['name']}_qadbench"
    return data, deploy


def measure(recipe: dict[str, Any], student: str, seconds: float, run: Path | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    if run is None:
        run_dir = Engine(recipe_from_dict(recipe), DistillOptions(progress=False, echo=lambda _m: None)).run()
    else:  # a finished run of this recipe (its stages are not rerun)
        run_dir = run
    assert isinstance(run_dir, Path)
    out: dict[str, Any] = {"train_seconds": time.perf_counter() - start, "run": str(run_dir)}
    stages = {s["name"] for s in recipe["stages"]}
    for name, (target, precision, options, model) in VARIANTS.items():
        model = student if model == "student" else model
        if model != student and model not in stages:
            continue
        try:
            outcome = export_model(
                ExportRequest(
                    run=run_dir,
                    target=target,
                    precision=precision,
                    options=list(options),
                    model=model,
                    out=run_dir / "exports" / name,
                ),
                echo=lambda _m: None,
            )
        except Exception as exc:  # a failed export is a result, not a crash of the study
            out[name] = {"error": str(exc).splitlines()[0][:300]}
            continue
        m = outcome.manifest
        runner = runtime.load(outcome.directory, threads=torch.get_num_threads())
        p50, _, _, _ = bench_predictor(runner, m["graphs"], throughput_batch=1, max_seconds=seconds)
        q = {g: i.get("quantization", {}) for g, i in m["details"]["graphs"].items()}
        out[name] = {
            "metric": m["metric"]["artifact"],
            "pytorch_metric": m["metric"]["pytorch"],
            "metric_name": m["metric"]["name"],
            "higher_is_better": m["metric"]["higher_is_better"],
            "latency_ms": p50,
            "size_bytes": m["size_bytes"],
            "quantization_mode": {g: v.get("mode") for g, v in q.items()},
        }
    return out


def relative_gap(value: float, fp32: float, higher_is_better: bool) -> float:
    """How much worse than FP32, relative (positive = worse)."""
    gap = (fp32 - value) if higher_is_better else (value - fp32)
    return gap / max(abs(fp32), 1e-12)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", nargs="+", default=["image_classification"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--qad-steps",
        type=int,
        default=None,
        help="steps of the QAD stage (default: the recipe's own QAD stage's, else 200)",
    )
    parser.add_argument(
        "--set", nargs="*", default=[], help="recipe overrides KEY=VALUE (e.g. stages.1.steps=300)"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also fine-tune the student in FP32 with the QAD stage's settings (row fp32_finetuned)",
    )
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument(
        "--run", type=Path, help="measure this finished run (one recipe, one seed) without training"
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/qad_bench"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "qad.json")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    results: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "qad_steps": args.qad_steps,
        "control": args.control,
        "note": "shared 2-core machine; latency p50 at batch 1 through kdtool.runtime",
        "recipes": {},
    }
    for name in args.recipes:
        path = REPO / "recipes" / f"{name}.yaml"
        per_seed = {}
        for seed in args.seeds:
            recipe, student = qad_recipe(
                path, seed, args.runs_dir, args.qad_steps, overrides, control=args.control
            )
            per_seed[seed] = measure(recipe, student, args.seconds, args.run)
            print(
                f"{name} seed {seed}: {json.dumps({k: v.get('metric') for k, v in per_seed[seed].items() if isinstance(v, dict)})}",
                flush=True,
            )
        results["recipes"][name] = {"seeds": per_seed, "summary": summarise(per_seed)}
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        rows = [s[variant] for s in per_seed.values() if "metric" in s.get(variant, {})]
        if not rows and not any(variant in s for s in per_seed.values()):
            continue  # not measured (fp32_finetuned without --control)
        if not rows:
            summary[variant] = {"error": next((s[variant].get("error") for s in per_seed.values()), None)}
            continue
        gaps = [
            relative_gap(r["metric"], s["fp32"]["metric"], r["higher_is_better"])
            for r, s in zip(rows, per_seed.values(), strict=False)
            if "metric" in s.get("fp32", {})
        ]
        controls = [
            relative_gap(s[variant]["metric"], s["fp32_finetuned"]["metric"], s[variant]["higher_is_better"])
            for s in per_seed.values()
            if "metric" in s.get(variant, {}) and "metric" in s.get("fp32_finetuned", {})
        ]
        summary[variant] = {
            "metric_name": rows[0]["metric_name"],
            "rel_gap_vs_fp32_finetuned_mean": statistics.mean(controls) if controls else None,
            "metric_mean": statistics.mean(r["metric"] for r in rows),
            "metric_sd": statistics.stdev([r["metric"] for r in rows]) if len(rows) > 1 else 0.0,
            "rel_gap_vs_fp32_mean": statistics.mean(gaps) if gaps else None,
            "rel_gap_vs_fp32_worst": max(gaps) if gaps else None,
            "latency_ms_mean": statistics.mean(r["latency_ms"] for r in rows),
            "n": len(rows),
        }
    return summary


def print_table(results: dict[str, Any]) -> None:
    print(
        f"\n{'recipe':<24}{'variant':<15}{'n':>3}{'metric (mean +- sd)':>28}{'gap vs FP32':>13}{'worst':>9}"
        f"{'vs FP32 ft':>12}{'p50 ms':>9}"
    )
    for name, block in results["recipes"].items():
        for variant, s in block["summary"].items():
            if "error" in s:
                print(f"{name:<24}{variant:<15}  failed: {s['error']}")
                continue
            metric = f"{s['metric_name']} {s['metric_mean']:.4f} +- {s['metric_sd']:.4f}"
            gap = s["rel_gap_vs_fp32_mean"]
            worst = s["rel_gap_vs_fp32_worst"]
            ctl = s.get("rel_gap_vs_fp32_finetuned_mean")
            ctl_text = f"{ctl * 100:>+11.2f}%" if ctl is not None else f"{'-':>12}"
            print(
                f"{name:<24}{variant:<15}{s['n']:>3}{metric:>28}{gap * 100:>+12.2f}%{worst * 100:>+8.2f}%"
                f"{ctl_text}{s['latency_ms_mean']:>9.3f}"
            )


if __name__ == "__main__":
    sys.exit(main())
