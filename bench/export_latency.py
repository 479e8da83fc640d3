"""Export latency table: each shipped recipe's student as PyTorch eager, ORT FP32 and ORT INT8.

For every recipe under recipes/ that runs on embedded data, takes its latest run
(``runs/<recipe>/latest``; ``--train`` runs ``kdtool distill`` first where none exists),
exports ``onnx`` (FP32) and ``onnx-cpu-int8`` if not yet exported, and measures in this one
process: batch-1 latency p50, size on disk and the task metric, with ratios to PyTorch eager
(latency, size) and to FP32 (INT8's metric delta). Prints a table and writes JSON.

    python bench/export_latency.py [--train] [--recipes image_classification ...] [--threads 2]

``--scale paper`` instead benchmarks the students of the paper-scale recipes
(``recipes/*_300w.yaml``, ``*_voc.yaml``, ``*_iam.yaml``, ``*_librispeech.yaml``) at their paper
input sizes, with random weights (latency does not depend on training; nothing is trained or
downloaded), and INT8 calibrated on synthetic inputs of the right shape (random normal at the
graph's opt sizes). Variants: PyTorch eager, ORT FP32, ORT FP16, static QDQ INT8 (S8S8 and U8S8),
weight-only INT8, and the QAD graph (``int8-qad``: the student prepared as a
``quantization_aware: int8`` stage leaves it, exported with its quantizers' scales; latency needs
no fine-tuning). The TODM rows are standalone subnet models (largest and smallest). Every artifact is timed twice, interleaved call by call in this process:
through kdtool (``kdtool.runtime.load``) and through a session built by hand on the same file
(``ORT_ENABLE_ALL``, the same intra-op thread count, plain numpy feeds, no kdtool code); the
ratio kdtool / hand-built is reported per row, with p50/p90 at batch 1 and at a throughput batch.

    cpujob python bench/export_latency.py --scale paper --threads 1 [--repeats 30] [--only landmarks]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.export.bench import bench_predictor, graph_infos_from_spec
from kdtool.export.driver import ExportRequest, export_model
from kdtool.recipe import load_recipe
from kdtool.run import Run
from kdtool.task import Predictor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_students import main_paper  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def embedded_recipes() -> list[Path]:
    out = []
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        section = data.get("data") or {}
        teachers = [t for s in data.get("stages", []) for t in s.get("teachers", []) if isinstance(t, dict)]
        if "root" in section or "train_manifest" in section or any("onnx" in t for t in teachers):
            continue
        out.append(path)
    return out


def measure(run_dir: Path, seconds: float) -> list[dict[str, Any]]:
    from kdtool import runtime

    run = Run.open(run_dir)
    name = run.model_name(None)
    spec = run.export_spec(name)
    infos = graph_infos_from_spec(spec)
    metric = run.task.primary_metric
    rows = []
    torch_pred = Predictor.from_spec(spec)
    p50, _, _, _ = bench_predictor(torch_pred, infos, throughput_batch=8, max_seconds=seconds)
    weights = run.run_dir / run.summary["models"][name]["weights"]
    value = run.task.evaluate(torch_pred, "val")[metric.name]
    rows.append(
        {"variant": "pytorch eager", "latency_ms": p50, "size_bytes": weights.stat().st_size, "metric": value}
    )
    for target, label in (("onnx-cpu", "ORT FP32"), ("onnx-cpu-int8", "ORT INT8")):
        folder = run.run_dir / "exports" / target
        if not (folder / "manifest.json").exists():
            export_model(ExportRequest(run=run.run_dir, target=target), echo=print)
        runner = runtime.load(folder)
        manifest = runner.manifest  # type: ignore[attr-defined]
        p50, _, _, _ = bench_predictor(runner, manifest["graphs"], throughput_batch=8, max_seconds=seconds)
        value = run.task.evaluate(runner, "val")[metric.name]
        rows.append(
            {"variant": label, "latency_ms": p50, "size_bytes": manifest["size_bytes"], "metric": value}
        )
    base = rows[0]
    fp32 = rows[1]
    for row in rows:
        row["latency_vs_eager"] = base["latency_ms"] / row["latency_ms"]
        row["size_vs_eager"] = row["size_bytes"] / base["size_bytes"]
        row["metric_delta_vs_fp32"] = row["metric"] - fp32["metric"]
    for row in rows:
        row.update(
            recipe=run.summary["recipe"],
            model=name,
            metric_name=metric.name,
            params=run.summary["models"][name]["params"],
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", action="store_true", help="run kdtool distill for recipes without a run")
    parser.add_argument("--recipes", nargs="*", help="recipe names (default: every embedded recipe)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/export_latency.json"))
    parser.add_argument("--scale", choices=["embedded", "paper"], default="embedded")
    parser.add_argument("--repeats", type=int, default=30, help="--scale paper: timed calls per row")
    parser.add_argument(
        "--only", nargs="*", help="--scale paper: landmarks, segmentation, htr, asr, asr-smallest"
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        help="--scale paper: a subset of eager fp32 fp16 int8-s8 int8-u8 int8-weights int8-qad",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scale == "paper":
        out = args.out if args.out != Path("bench/results/export_latency.json") else None
        return main_paper(args.threads, args.repeats, args.only, args.variants, out)
    all_rows: list[dict[str, Any]] = []
    for path in embedded_recipes():
        name = path.stem
        if args.recipes and name not in args.recipes:
            continue
        run_dir = args.runs_dir / name / "latest"
        if not run_dir.exists():
            if not args.train:
                print(f"{name}: no run at {run_dir} (use --train)")
                continue
            Engine(load_recipe(path, [f"runs_dir={args.runs_dir}"]), DistillOptions(progress=False)).run()
        all_rows += measure(run_dir.resolve(), args.seconds)
    header = f"{'recipe':<26}{'variant':<15}{'params':>9}{'p50 ms':>9}{'speedup':>9}{'size KB':>10}{'size x':>8}{'metric':>18}{'d vs FP32':>11}"
    print(header)
    for r in all_rows:
        print(
            f"{r['recipe']:<26}{r['variant']:<15}{r['params']:>9,}{r['latency_ms']:>9.3f}{r['latency_vs_eager']:>8.2f}x"
            f"{r['size_bytes'] / 1024:>10.1f}{r['size_vs_eager']:>8.2f}{r['metric_name'] + ' ' + format(r['metric'], '.4f'):>18}"
            f"{r['metric_delta_vs_fp32']:>+11.4f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "rows": all_rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
