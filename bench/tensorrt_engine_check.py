"""Build and run TensorRT engines end to end on this machine; print (and write) JSON.

    python bench/tensorrt_engine_check.py [--run RUN_DIR] [--out result.json] [--precisions fp32,fp16,int8]

First says whether ``import tensorrt`` works and which GPU is visible; where both are present,
trains a tiny digits run (unless ``--run`` is given), exports ``trt-local`` at each precision
(engine built through the TensorRT Python API), loads each engine with ``kdtool.runtime.load``
and records: the stamps, parity against PyTorch, latency at the opt shapes, the task metric,
INT8-vs-FP16 timing, and the build seconds. Where TensorRT or a GPU is missing it says so and
reports the engine path as not run (exit code 0: the report is the result).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def environment() -> dict[str, Any]:
    from kdtool_tensorrt import engine as eng

    trt, why = eng.import_tensorrt()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "tensorrt_import": "ok" if trt is not None else f"failed: {why}",
        "tensorrt": str(trt.__version__) if trt is not None else None,
        "cuda_driver": eng.cuda_driver_version(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["compute_capability"] = "{}.{}".format(*torch.cuda.get_device_capability(0))
    return env


def tiny_run(root: Path) -> Path:
    """The tests' tiny digits recipe with a small CNN student (trains in seconds)."""
    import yaml

    from kdtool.engine.trainer import DistillOptions, Engine
    from kdtool.recipe import load_recipe

    stage = {"steps": 60, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.01}}
    recipe = {
        "name": "trt-check",
        "task": {"name": "image_classification"},
        "seed": 0,
        "device": "cpu",
        "runs_dir": str(root / "runs"),
        "data": {"source": "digits", "image_size": 8, "augment": False},
        "models": {
            "teacher": {"arch": "cls_mlp", "options": {"hidden": 64}},
            "student": {"arch": "cls_cnn", "options": {"base": 8, "stages": 2}},
        },
        "stages": [
            {"name": "teacher", "model": "teacher", "role": "teacher", **stage},
            {
                "name": "student",
                "model": "student",
                "role": "student",
                "teachers": ["teacher"],
                **stage,
                "losses": [{"name": "ce", "weight": 0.5}, {"name": "kd", "loss": "kl_t", "weight": 0.5}],
            },
        ],
        "logging": {"progress": False},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    return result


def check_precision(run: Path, precision: str, out_root: Path) -> dict[str, Any]:
    from kdtool import runtime
    from kdtool.export.bench import bench_predictor
    from kdtool.export.driver import ExportRequest, export_model

    lines: list[str] = []
    start = time.perf_counter()
    outcome = export_model(
        ExportRequest(
            run=run,
            target="trt-local",
            precision=precision,
            out=out_root / f"trt-{precision}",
            eval_limit=300,
        ),
        echo=lines.append,
    )
    m = outcome.manifest
    row: dict[str, Any] = {
        "precision": precision,
        "export_seconds": round(time.perf_counter() - start, 2),
        "status": m["status"],
        "engine": m["details"]["engine"],
        "build": {g: d.get("build") for g, d in m["details"]["graphs"].items()},
        "parity_passed": m["verification"]["passed"],
        "parity_runtime": m["verification"]["checks"].get("parity_runtime"),
        "max_rel_error": max(
            (p["max_rel_error"] for p in m["verification"]["parity"] if p["tolerance"] != float("inf")),
            default=None,
        ),
        "latency_ms_at_opt_shapes": m["verification"]["checks"].get("latency_ms_at_opt_shapes"),
        "int8_vs_fp16": m["verification"]["checks"].get("int8_vs_fp16"),
        "metric": {k: m["metric"][k] for k in ("name", "pytorch", "artifact", "drop")}
        if m.get("metric")
        else None,
        "not_verified": m["not_verified"],
        "log": lines,
    }
    if m["details"]["engine"]["built"]:
        runner = runtime.load(outcome.directory)
        p50, p90, throughput, batch = bench_predictor(
            runner, m["graphs"], throughput_batch=32, max_seconds=1.0
        )
        row["runtime_load_bench"] = {
            "p50_ms_batch1_incl_copies": p50,
            "p90_ms": p90,
            "samples_per_s": throughput,
            "batch": batch,
        }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing run directory (default: train a tiny one)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--precisions", default="fp32,fp16,int8", help="comma-separated; fp8 is added on 8.9+ GPUs"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    report: dict[str, Any] = {
        "script": "bench/tensorrt_engine_check.py",
        "environment": environment(),
        "results": [],
    }
    env = report["environment"]
    if env["tensorrt"] is None or not env["cuda_available"]:
        why = env["tensorrt_import"] if env["tensorrt"] is None else "no CUDA GPU visible to PyTorch"
        report["engine_path"] = f"not run: {why}"
    else:
        precisions = [p for p in args.precisions.split(",") if p]
        cc = tuple(int(x) for x in env["compute_capability"].split("."))
        if cc >= (8, 9) and "fp8" not in precisions:
            precisions.append("fp8")
        with tempfile.TemporaryDirectory(prefix="kdtool-trt-check-") as tmp:
            run = args.run or tiny_run(Path(tmp))
            report["run"] = str(run)
            for precision in precisions:
                try:
                    report["results"].append(check_precision(run, precision, Path(tmp) / "exports"))
                except Exception as exc:  # record and go on: one failing precision must not hide the others
                    report["results"].append(
                        {
                            "precision": precision,
                            "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()[-3000:],
                        }
                    )
        ok = all(r.get("parity_passed") and r.get("engine", {}).get("built") for r in report["results"])
        report["engine_path"] = (
            "ran: all engines built and matched PyTorch" if ok else "ran: see results for failures"
        )
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
