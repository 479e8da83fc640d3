"""Latency, throughput, size, peak memory and metric of PyTorch models and artifacts.

Latency is the wall time of one call at batch 1 (p50 and p90 over repeated calls after a
warm-up); throughput is samples per second at a larger batch. Peak memory is the growth of
the process's peak resident set while the model loads and runs (Linux: VmHWM, reset through
/proc/self/clear_refs), so it includes the runtime's own allocations.
"""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdtool.export.manifest import read_manifest
from kdtool.io import write_json
from kdtool.task import Predictor


@dataclass
class BenchRow:
    name: str
    kind: str  # pytorch, onnxruntime, ...
    model: str
    precision: str
    size_bytes: int
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    throughput: float | None = None
    throughput_batch: int | None = None
    peak_memory_mb: float | None = None
    metric_name: str | None = None
    metric: float | None = None
    params: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_key() -> str:
    """Which machine a measurement belongs to (results are kept per machine in manifests)."""
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()}|{platform.machine()}|{cpu}|torch-threads-{torch.get_num_threads()}"


def _rss_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> int | None:
    """Reset the peak RSS counter (Linux) and return the current RSS in kB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _rss_kb("VmRSS")


def peak_growth_mb(baseline_kb: int | None) -> float | None:
    peak = _rss_kb("VmHWM")
    if baseline_kb is None or peak is None:
        return None
    return max(0.0, (peak - baseline_kb) / 1024)


def time_calls(
    fn: Callable[[], Any], *, warmup: int = 5, min_calls: int = 20, max_seconds: float = 2.0
) -> list[float]:
    """Wall times (ms) of repeated calls after a warm-up, within a time budget."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < max_seconds and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() - start > max_seconds * 3:
            break
    return times


def inputs_from_graph_info(
    info: dict[str, Any], batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Random inputs for a graph described in a manifest, at opt sizes and the given batch."""
    sizes = {k: v["opt"] for k, v in info.get("dynamic_axes", {}).items()}
    if "batch" in sizes:
        sizes["batch"] = batch
    tensors = []
    for spec in info["inputs"]:
        shape = tuple(sizes[s] if isinstance(s, str) else s for s in spec["shape"])
        if spec["dtype"].startswith("float"):
            tensors.append(torch.randn(shape, generator=generator))
        else:
            high = int((spec.get("value_range") or [0, 2])[1])
            tensors.append(torch.randint(0, high, shape, generator=generator))
    return tuple(tensors)


def bench_predictor(
    predictor: Predictor,
    graph_infos: dict[str, dict[str, Any]],
    *,
    throughput_batch: int,
    max_seconds: float = 2.0,
) -> tuple[float, float, float | None, int | None]:
    """(p50 ms, p90 ms, samples/s, batch used) summed over the model's graphs. A runner that
    runs the whole pipeline itself (no per-graph callables, e.g. sherpa-onnx) times itself
    through its ``bench(throughput_batch=, max_seconds=)`` method."""
    own = getattr(predictor, "bench", None)
    if callable(own) and not predictor.graphs:
        return own(throughput_batch=throughput_batch, max_seconds=max_seconds)  # type: ignore[no-any-return]
    gen = torch.Generator().manual_seed(0)
    p50 = p90 = 0.0
    throughput: float | None = None
    used_batch: int | None = None
    for name, info in graph_infos.items():
        run = predictor.graphs[name]
        one = inputs_from_graph_info(info, 1, gen)
        times = time_calls(functools.partial(run, *one), max_seconds=max_seconds)
        p50 += float(np.percentile(times, 50))
        p90 += float(np.percentile(times, 90))
    first_name, first = next(iter(graph_infos.items()))
    axes = first.get("dynamic_axes", {})
    if "batch" in axes:
        used_batch = min(throughput_batch, int(axes["batch"]["max"]))
        many = inputs_from_graph_info(first, used_batch, gen)
        run = predictor.graphs[first_name]
        times = time_calls(lambda: run(*many), warmup=2, min_calls=5, max_seconds=max_seconds)
        throughput = used_batch / (float(np.median(times)) / 1000)
    return p50, p90, throughput, used_batch


def graph_infos_from_spec(spec: Any) -> dict[str, dict[str, Any]]:
    return {
        g.name: {
            "inputs": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "dtype": t.dtype,
                    "value_range": list(t.value_range) if t.value_range else None,
                }
                for t in g.inputs
            ],
            "dynamic_axes": {
                k: {"min": v.min, "opt": v.opt, "max": v.max} for k, v in g.dynamic_axes.items()
            },
        }
        for g in spec.graphs
    }


def record_in_manifest(directory: Path, row: BenchRow) -> None:
    manifest_path = directory / "manifest.json"
    manifest = read_manifest(manifest_path)
    manifest.setdefault("bench", {})[machine_key()] = {
        **row.to_dict(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(manifest_path, manifest)


def int8_warnings(rows: list[BenchRow]) -> list[str]:
    """INT8 artifacts that are not faster than a float one (FP32, or FP16 on GPUs) of the same
    model, measured here. A reference of the same runtime is preferred."""
    out = []
    for row in rows:
        if row.precision != "int8" or row.latency_ms_p50 is None:
            continue
        floats = [
            r
            for r in rows
            if r.model == row.model and r.precision in ("fp32", "fp16") and r.latency_ms_p50 is not None
        ]
        if not floats:
            continue
        floats.sort(key=lambda r: (r.kind != row.kind, r.latency_ms_p50 or 0.0))
        ref = floats[0]
        assert ref.latency_ms_p50 is not None
        if row.latency_ms_p50 >= ref.latency_ms_p50:
            out.append(
                f"{row.name}: INT8 is not faster than {ref.name} ({ref.precision.upper()}) on this machine "
                f"({row.latency_ms_p50:.3f} ms vs {ref.latency_ms_p50:.3f} ms at batch 1): quantize/dequantize pairs "
                f"or float fallbacks dominate; check the manifest's op list, or keep {ref.precision.upper()} here"
            )
    return out
