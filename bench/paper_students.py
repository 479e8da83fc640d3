"""Paper-scale students with random weights, exported through kdtool and timed against a
hand-built ONNX Runtime session on the same file (``export_latency.py --scale paper``).

The students come from the paper recipes' model configs. Where a paper recipe's task cannot be
built without its dataset (300W, IAM, LibriSpeech are not on this machine), the task is the
embedded sibling recipe's with the paper's model configs and input sizes; the graphs are the
task's own export graphs either way. Calibration for static INT8 uses synthetic inputs (random
normal at the graph's opt sizes), which is all latency needs.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import yaml
from kdtool_onnx.exporter import OnnxExporter, OnnxOptions

from kdtool import runtime
from kdtool.cli.bench import quantization_notes
from kdtool.engine.trainer import build_model, build_task
from kdtool.export.exporter import ExportContext
from kdtool.export.manifest import MANIFEST_SCHEMA_VERSION, write_manifest
from kdtool.export.spec import ExportSpec, GraphSpec, as_tuple
from kdtool.export.verify import draft_manifest
from kdtool.plugins import get_plugin_manager
from kdtool.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["eager", "fp32", "fp16", "int8-s8", "int8-u8", "int8-weights", "int8-qad"]


def _sibling(paper: str, embedded: str, data: dict[str, Any]) -> dict[str, Any]:
    """The embedded recipe with the paper recipe's models and the paper input sizes."""
    p = yaml.safe_load((REPO / "recipes" / paper).read_text())
    e = yaml.safe_load((REPO / "recipes" / embedded).read_text())
    e["models"] = p["models"]
    e["runs_dir"] = tempfile.mkdtemp(prefix="kdtool-paper-")
    for key, value in data.items():
        cur = e["data"]
        parts = key.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
    return e


def _synthetic_calibration(graph: GraphSpec, n: int = 8) -> Callable[[int], Any]:
    def calibration(count: int) -> Any:
        gen = torch.Generator().manual_seed(1)
        for _ in range(min(count, n)):
            yield graph.make_inputs(graph.sizes("opt"), generator=gen)

    return calibration


@dataclass
class Built:
    """A paper-scale student: its export spec, parameter count, the model itself and how the
    task turns a (modified) model into its export spec (for the QAD variant)."""

    spec: ExportSpec
    params: int
    model: torch.nn.Module
    respec: Callable[[torch.nn.Module], ExportSpec]


def _task_spec(recipe: dict[str, Any], model_name: str) -> Built:
    registries = get_plugin_manager().registries()
    loaded = recipe_from_dict(recipe)
    task = build_task(loaded, registries)
    torch.manual_seed(0)
    built = build_model(task, registries, model_name, loaded.recipe.models[model_name])
    spec = task.export_spec(built.module.eval(), model_name)
    params = sum(p.numel() for p in built.module.parameters())
    return Built(spec, params, built.module, lambda m: task.export_spec(m, model_name))


def _asr_spec(subnet: str = "largest") -> Built:
    """A TODM subnet of the LibriSpeech supernet as the standalone model it deploys as (the
    supernet's slice in a model of the subnet's size) at LibriSpeech sizes: 80 mel bins, 500
    BPE tokens (the paper's vocabulary size), 20 s of audio at most, encoder timed at 10 s."""
    from kdtool_asr.audio import FEATURE_DEFAULTS
    from kdtool_asr.task import make_export_spec

    registries = get_plugin_manager().registries()
    options = yaml.safe_load((REPO / "recipes" / "asr_supernet_librispeech.yaml").read_text())["models"][
        "supernet"
    ]["options"]
    factory = registries.models.get("asr_supernet_rnnt")
    sizes = {"vocab_size": 500, "blank": 0, "num_mel_bins": 80, "max_frames": 2001}
    torch.manual_seed(0)
    supernet = factory(**options, **sizes).eval()
    sub = getattr(supernet, subnet)
    model = factory(**supernet.subnet_options({**options, **sizes}, sub)).eval()
    model.load_state_dict(supernet.extract(sub))

    def respec(m: torch.nn.Module) -> ExportSpec:
        spec = make_export_spec(
            "asr_supernet", m, subnet, [f"t{i}" for i in range(500)], dict(FEATURE_DEFAULTS), None
        )
        spec.graphs[0] = _with_opt(spec.graphs[0], "time", 1000)
        return spec

    return Built(respec(model), sum(p.numel() for p in model.parameters()), model, respec)


def _with_opt(graph: GraphSpec, axis: str, opt: int) -> GraphSpec:
    axes = dict(graph.dynamic_axes)
    a = axes[axis]
    axes[axis] = type(a)(min(a.min, opt), opt, max(a.max, opt))
    return replace(graph, dynamic_axes=axes)


CASES: dict[str, dict[str, Any]] = {
    "landmarks": {
        "recipe": "facial_landmarks_300w",
        "what": "MobileNetV2 student at 224x224",
        "build": lambda: _task_spec(
            _sibling(
                "facial_landmarks_300w.yaml",
                "facial_landmarks.yaml",
                {"image_size": 224, "synthetic.train_size": 16, "synthetic.val_size": 8},
            ),
            "student",
        ),
        "batch": 8,
    },
    "segmentation": {
        "recipe": "segmentation_lad_voc",
        "what": "DeepLabV3-ResNet18 student (OS 8) at 512x512",
        "build": lambda: _task_spec(
            {**yaml.safe_load((REPO / "recipes" / "segmentation_lad_voc.yaml").read_text())}, "student"
        ),
        "batch": 2,
    },
    "htr": {
        "recipe": "htr_jand_iam",
        "what": "HTR-JAND student at IAM line size (64 x 768)",
        "build": lambda: _task_spec(
            _sibling(
                "htr_jand_iam.yaml",
                "htr_jand.yaml",
                {
                    "height": 64,
                    "max_width": 1536,
                    "embedded": {
                        "digit_lines": 8,
                        "font_lines": 8,
                        "val_digit_lines": 4,
                        "val_font_lines": 4,
                    },
                },
            ),
            "student",
        ),
        "batch": 8,
    },
    "asr": {
        "recipe": "asr_supernet_librispeech",
        "what": "TODM largest subnet (L20-H4-F2048), encoder at 1000 frames (10 s)",
        "build": lambda: _asr_spec("largest"),
        "batch": 4,
    },
    "asr-smallest": {
        "recipe": "asr_supernet_librispeech",
        "what": "TODM smallest subnet (L8-H2-F1024), encoder at 1000 frames (10 s)",
        "build": lambda: _asr_spec("smallest"),
        "batch": 4,
    },
}


# --------------------------------------------------------------------------- export


def export_variant(spec: ExportSpec, variant: str, out_dir: Path) -> tuple[Path, dict[str, Any], OnnxOptions]:
    """Export through kdtool's ONNX exporter into ``out_dir`` with a manifest kdtool can load."""
    precision = {"fp32": "fp32", "fp16": "fp16"}.get(variant, "int8")
    extra: dict[str, Any] = {}
    if variant == "int8-s8":
        extra = {"quantization": "static", "activations": "s8"}
    elif variant == "int8-u8":
        extra = {"quantization": "static", "activations": "u8"}
    elif variant == "int8-weights":
        extra = {"quantization": "dynamic"}
    elif variant == "int8-qad":  # the graph carries its quantizers: QDQ with their scales
        extra = {"activations": "u8"}
    options = OnnxOptions(precision=precision, calibration_samples=8, **extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = ExportContext(
        target=f"bench-{variant}", precision=precision, require_artifact=lambda *_: None, log=print
    )
    artifact = OnnxExporter().export(spec, options, out_dir, ctx)
    manifest = {
        **draft_manifest(spec, artifact, options),
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "format": "onnx",
        "target": f"bench-{variant}",
        "model": spec.model_name,
    }
    write_manifest(out_dir / "manifest.json", manifest)
    return out_dir, manifest, options


def _synthetic(spec: ExportSpec) -> ExportSpec:
    return replace(
        spec, graphs=[replace(g, calibration_inputs=_synthetic_calibration(g)) for g in spec.graphs]
    )


def qad_spec(built: Built) -> ExportSpec:
    """The student as a QAD stage would leave it (kdtool.quant: BNs folded, fake quantizers
    placed by tracing the export graph, scales calibrated, here on the synthetic inputs), so that
    export writes the QAD graph (QDQ with the quantizers' scales). Latency does not depend on
    the scales' values, so no fine-tuning is needed to time it."""
    from kdtool.quant import prepare_stage_model

    class SyntheticTask:
        def export_spec(self, module: torch.nn.Module, model_name: str) -> ExportSpec:
            return _synthetic(built.respec(module))

    model = copy.deepcopy(built.model)
    prepare_stage_model(
        model, SyntheticTask(), built.spec.model_name, activations="u8", calibration_samples=8, exclude=[]
    )
    return _synthetic(built.respec(model.eval()))


# --------------------------------------------------------------------------- timing


def hand_session(path: Path, threads: int) -> ort.InferenceSession:
    """What a careful engineer writes: all graph optimisations, a fixed intra-op thread count."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def time_interleaved(fns: list[Callable[[], Any]], repeats: int, warmup: int = 3) -> list[list[float]]:
    """Wall times (ms) of several callables, called in turn (order rotated every round) so that
    load on the shared machine and cache effects hit each about equally."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        # rotate the order each round: the call right after another model's is measurably slower
        for k in range(len(fns)):
            i = (k + r) % len(fns)
            t0 = time.perf_counter()
            fns[i]()
            times[i].append((time.perf_counter() - t0) * 1000)
    return times


def _inputs(graph: GraphSpec, batch: int) -> tuple[torch.Tensor, ...]:
    sizes = graph.sizes("opt")
    if "batch" in sizes:
        sizes["batch"] = min(batch, graph.dynamic_axes["batch"].max)
    return graph.make_inputs(sizes, generator=torch.Generator().manual_seed(0))


def measure_case(
    key: str, threads: int, repeats: int, variants: list[str], work: Path
) -> list[dict[str, Any]]:
    case = CASES[key]
    built: Built = case["build"]()
    spec, params = _synthetic(built.spec), built.params
    # Time the first graph (the model, or the ASR encoder: decoder and joiner are tiny per call).
    graph = spec.graphs[0]
    rows: list[dict[str, Any]] = []
    batches = [1, case["batch"]] if "batch" in graph.dynamic_axes else [1]
    print(f"== {case['recipe']}: {case['what']}, {params:,} parameters, graph {graph.name!r}", flush=True)
    for variant in variants:
        if variant == "eager":
            for batch in batches:
                x = _inputs(graph, batch)
                module = graph.module.eval()

                def eager(x: tuple[torch.Tensor, ...] = x, module: Any = module) -> Any:
                    with torch.no_grad():
                        return module(*x)

                reps = max(5, repeats // (2 if batch > 1 else 1))
                (t,) = time_interleaved([eager], reps)
                p50, p90 = _percentiles(t)
                rows.append(_row(case, key, "eager", params, batch, p50, p90, None, None, None, None, {}))
                print(f"   eager            b{batch:<3} p50 {p50:9.2f} ms", flush=True)
            continue
        start = time.perf_counter()
        try:
            source = qad_spec(built) if variant == "int8-qad" else spec
            folder, manifest, _ = export_variant(source, variant, work / key / variant)
        except Exception as exc:
            print(f"   {variant}: export failed: {exc}", flush=True)
            rows.append(
                {
                    **_row(case, key, variant, params, 1, None, None, None, None, None, None, {}),
                    "error": str(exc)[:300],
                }
            )
            continue
        export_s = time.perf_counter() - start
        info = manifest["details"]["graphs"][graph.name]
        file = folder / manifest["graphs"][graph.name]["file"]
        size = sum(f.stat().st_size for f in folder.glob("*.onnx"))
        try:
            runner = runtime.load(folder, threads=threads)
            hand = hand_session(file, threads)
        except Exception as exc:  # e.g. FP16 ops with no CPU kernel in this ONNX Runtime
            message = str(exc).splitlines()[0][:300]
            print(f"   {variant}: does not load in ONNX Runtime here: {message}", flush=True)
            row = _row(case, key, variant, params, 1, None, None, None, None, size, export_s, {})
            rows.append({**row, "error": f"does not load: {message}"})
            continue
        kd_run = runner.graphs[graph.name]
        for batch in batches:
            x = _inputs(graph, batch)
            # the hand-built session gets its own numpy copies (what an app would hold)
            feed = {
                t.name: np.array(x[i].numpy(), dtype=np.int64 if t.dtype == "int64" else np.float32)
                for i, t in enumerate(graph.inputs)
            }
            # same numbers from both sessions (same file)
            a = as_tuple(kd_run(*x))[0].numpy()
            b = hand.run(None, feed)[0]
            assert np.allclose(a, b, atol=1e-5), f"{key} {variant}: kdtool and hand-built sessions disagree"
            reps = max(5, repeats // (2 if batch > 1 else 1))
            t_kd, t_hand = time_interleaved(
                [lambda x=x: kd_run(*x), lambda feed=feed: hand.run(None, feed)],  # noqa: B023
                reps,
            )
            kp50, kp90 = _percentiles(t_kd)
            hp50, hp90 = _percentiles(t_hand)
            quant = info.get("quantization", {})
            rows.append(
                _row(case, key, variant, params, batch, kp50, kp90, hp50, hp90, size, export_s, quant)
            )
            print(
                f"   {variant:<16} b{batch:<3} kdtool p50 {kp50:9.2f} p90 {kp90:9.2f} | hand p50 {hp50:9.2f} "
                f"p90 {hp90:9.2f} | ratio {kp50 / hp50:5.3f}",
                flush=True,
            )
    fp32 = {r["batch"]: r["p50_ms"] for r in rows if r["variant"] == "fp32" and r["p50_ms"]}
    for r in rows:
        if r["p50_ms"] and r["batch"] in fp32:
            r["speedup_vs_fp32"] = fp32[r["batch"]] / r["p50_ms"]
    return rows


def _row(
    case: dict[str, Any],
    key: str,
    variant: str,
    params: int,
    batch: int,
    p50: float | None,
    p90: float | None,
    hp50: float | None,
    hp90: float | None,
    size: int | None,
    export_s: float | None,
    quant: dict[str, Any],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "case": key,
        "recipe": case["recipe"],
        "what": case["what"],
        "variant": variant,
        "params": params,
        "batch": batch,
        "p50_ms": p50,
        "p90_ms": p90,
        "hand_p50_ms": hp50,
        "hand_p90_ms": hp90,
        "kdtool_vs_hand": (p50 / hp50) if p50 and hp50 else None,
        "size_bytes": size,
        "export_seconds": export_s,
    }
    if quant:
        row["quantization"] = {
            k: quant[k]
            for k in ("mode", "activations", "per_channel", "summary", "fallback_from_static", "scales")
            if k in quant
        }
        if "summary" in quant:
            row["why"] = "; ".join(quantization_notes(case["recipe"], quant))
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'recipe':<26}{'variant':<14}{'batch':>6}{'p50 ms':>10}{'p90 ms':>10}{'hand p50':>10}"
        f"{'kd/hand':>9}{'vs FP32':>9}{'size MB':>9}"
    )
    for r in rows:

        def f(v: Any, fmt: str) -> str:
            width = int(fmt.split(".")[0])
            return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(width)

        print(
            f"{r['recipe']:<26}{r['variant']:<14}{r['batch']:>6}{f(r['p50_ms'], '10.2f')}{f(r['p90_ms'], '10.2f')}"
            f"{f(r['hand_p50_ms'], '10.2f')}{f(r['kdtool_vs_hand'], '9.3f')}{f(r.get('speedup_vs_fp32'), '8.2f')}x"
            f"{f((r['size_bytes'] or 0) / 2**20 if r['size_bytes'] else None, '9.2f')}"
        )
    for r in rows:
        if r.get("why") and r["batch"] == 1:
            print(f"{r['recipe']} {r['variant']}: {r['why']}")


def main_paper(
    threads: int, repeats: int, only: list[str] | None, variants: list[str] | None, out: Path | None
) -> int:
    torch.set_num_threads(threads)
    chosen = variants or VARIANTS
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kdtool-paper-bench-") as tmp:
        for key in CASES:
            if only and key not in only:
                continue
            rows += measure_case(key, threads, repeats, chosen, Path(tmp))
    print_table(rows)
    out = out or REPO / "bench" / "results" / "export_latency_paper.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "threads": threads,
        "repeats": repeats,
        "machine": f"{platform.machine()} {platform.processor()}",
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "weights": "random (no training)",
        "calibration": "8 synthetic inputs (random normal) at the graph's opt sizes",
        "note": "shared 2-core machine; ratios measured interleaved in one process",
        "median_ratio_kdtool_vs_hand": statistics.median(
            [r["kdtool_vs_hand"] for r in rows if r.get("kdtool_vs_hand")] or [float("nan")]
        ),
    }
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
