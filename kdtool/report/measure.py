"""FLOPs/MACs and CPU latency of a run's models, measured on the export spec's graphs.

Each model is rebuilt from the run (``kdtool.run.Run.load_model``) and described by its task's
``export_spec``, so what is counted is exactly the deployable interface (wrappers,
normalisation inside the graph), called once per graph at batch 1 with the other dynamic
axes at their ``opt`` size.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts matrix
products and convolutions (2 FLOPs per multiply-accumulate) and ignores element-wise work.
CPU LSTM/GRU/RNN kernels are fused and invisible to it, so a forward hook on every
``nn.RNNBase`` adds their gate products analytically when the counter saw none inside the
module. MACs = FLOPs / 2.

Results are cached in ``RUN/report_measurements.json``: FLOPs per weights hash (they never
change), latency per weights hash *and* machine (``kdtool.export.bench.machine_key``), so
writing the report again, or a comparison page, does not measure twice.

Latency is bounded: each model gets ``seconds`` of timed calls, with fewer warm-up and timed
calls when one call is slow (a 224x224 model on a loaded CPU), and the whole report gets a
``budget`` of seconds for latency; models left when it is spent are reported as not measured
(and measured by a later ``kdtool report``, since only successes are cached).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdtool.export.bench import graph_infos_from_spec, inputs_from_graph_info, machine_key, time_calls
from kdtool.export.spec import ExportSpec
from kdtool.io import read_json, sha256_file, write_json
from kdtool.task import Predictor

MEASUREMENTS_FILE = "report_measurements.json"
MEASUREMENTS_SCHEMA_VERSION = 1
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@dataclass
class ModelMeasurement:
    """What the report shows for one model (None: not measured, see ``notes``)."""

    flops: int | None = None
    graph_flops: dict[str, int] = field(default_factory=dict)
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    machine: str | None = None
    threads: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def macs(self) -> int | None:
        return None if self.flops is None else self.flops // 2


def rnn_flops(module: nn.RNNBase, inputs: tuple[Any, ...]) -> int:
    """Matrix-product FLOPs of one call of a PyTorch RNN module (input and recurrent gates,
    every layer and direction, plus the LSTM projection)."""
    x = inputs[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        steps = int(x.batch_sizes.sum())
    else:
        if x.dim() == 2:  # unbatched (T, I)
            steps = int(x.shape[0])
        else:
            steps = int(x.shape[0] * x.shape[1])
    gates = _GATES.get(module.mode, 1)
    hidden = module.hidden_size
    proj = getattr(module, "proj_size", 0) or 0
    out_size = proj or hidden
    directions = 2 if module.bidirectional else 1
    macs = 0
    for layer in range(module.num_layers):
        in_size = module.input_size if layer == 0 else out_size * directions
        per_step = gates * hidden * (in_size + out_size)
        if proj:
            per_step += hidden * proj
        macs += directions * steps * per_step
    return 2 * macs


def module_flops(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one call ``module(*inputs)``: FlopCounterMode, plus fused RNN kernels."""
    counter = FlopCounterMode(display=False)
    rnn_extra = [0]
    before: list[int] = []

    def pre(_m: nn.Module, _args: tuple[Any, ...]) -> None:
        before.append(counter.get_total_flops())

    def post(m: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        if counter.get_total_flops() == before.pop() and isinstance(m, nn.RNNBase):
            rnn_extra[0] += rnn_flops(m, args)

    handles = []
    for sub in module.modules():
        if isinstance(sub, nn.RNNBase):
            handles.append(sub.register_forward_pre_hook(pre))
            handles.append(sub.register_forward_hook(post))
    try:
        with counter, torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return int(counter.get_total_flops()) + rnn_extra[0]


def count_flops(spec: ExportSpec) -> dict[str, int]:
    """FLOPs of one call of each graph of ``spec`` at batch 1 (other axes at ``opt``)."""
    generator = torch.Generator().manual_seed(0)
    out: dict[str, int] = {}
    for graph in spec.graphs:
        sizes = {"batch": 1} if "batch" in graph.dynamic_axes else {}
        graph.module.eval()
        out[graph.name] = module_flops(graph.module, graph.make_inputs(sizes, generator=generator))
    return out


def cpu_latency(spec: ExportSpec, *, seconds: float = 0.5) -> tuple[float, float]:
    """(p50, p90) milliseconds of one call of every graph at batch 1, summed over graphs:
    a first (warm-up) call, then repeated calls within ``seconds`` (see :func:`bounded_times`)."""
    predictor = Predictor.from_spec(spec, "cpu")
    infos = graph_infos_from_spec(spec)
    generator = torch.Generator().manual_seed(0)
    p50 = p90 = 0.0
    for name, info in infos.items():
        run = predictor.graphs[name]
        one = inputs_from_graph_info(info, 1, generator)
        times = bounded_times(partial(run, *one), seconds=seconds)
        p50 += float(np.percentile(times, 50))
        p90 += float(np.percentile(times, 90))
    return p50, p90


def bounded_times(fn: Callable[[], Any], *, seconds: float) -> list[float]:
    """Wall times (ms) of calls of ``fn`` that take about ``seconds`` in all, however slow
    one call is: the first call is the warm-up and sizes the rest (up to 2 more warm-ups
    and at least 10 timed calls when calls are fast; 2 timed calls, no more warm-up, when
    one call takes longer than the budget)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first >= seconds:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return times
    warmup = 2 if first * 12 <= seconds else 0
    min_calls = int(max(3, min(10, seconds / max(first, 1e-6) - warmup)))
    return time_calls(fn, warmup=warmup, min_calls=min_calls, max_seconds=seconds)


def _read_cache(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MEASUREMENTS_FILE
    if not path.exists():
        return {"schema_version": MEASUREMENTS_SCHEMA_VERSION, "models": {}}
    try:
        data = read_json(path, what="report measurements")
    except Exception:  # a damaged cache is measured again, never fatal
        return {"schema_version": MEASUREMENTS_SCHEMA_VERSION, "models": {}}
    if not isinstance(data, dict) or data.get("schema_version") != MEASUREMENTS_SCHEMA_VERSION:
        return {"schema_version": MEASUREMENTS_SCHEMA_VERSION, "models": {}}
    data.setdefault("models", {})
    return data


def measure_models(
    run_dir: Path,
    summary: dict[str, Any],
    spec_for: Callable[[str], ExportSpec],
    *,
    latency: bool = True,
    seconds: float = 0.5,
    threads: int = 1,
    budget: float | None = None,
    echo: Callable[[str], None] = lambda _m: None,
) -> dict[str, ModelMeasurement]:
    """Measure every model of the run that has weights; reuse and update the cache file.

    Latency runs with ``threads`` intra-op threads (default 1: the number that stays stable
    on a busy or shared machine, and what a phone app gives a model on one core)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        return _measure_models(
            run_dir, summary, spec_for, latency=latency, seconds=seconds, budget=budget, echo=echo
        )
    finally:
        torch.set_num_threads(previous)


def _measure_models(
    run_dir: Path,
    summary: dict[str, Any],
    spec_for: Callable[[str], ExportSpec],
    *,
    latency: bool,
    seconds: float,
    budget: float | None,
    echo: Callable[[str], None],
) -> dict[str, ModelMeasurement]:
    cache = _read_cache(run_dir)
    started = time.perf_counter()
    machine = machine_key()  # includes the thread count
    threads = torch.get_num_threads()
    results: dict[str, ModelMeasurement] = {}
    changed = False
    for name, entry in summary.get("models", {}).items():
        weights = entry.get("weights")
        result = ModelMeasurement()
        results[name] = result
        if not weights or not (run_dir / weights).exists():
            result.notes.append("no weights (its stage did not finish)")
            continue
        digest = sha256_file(run_dir / weights)
        cached = cache["models"].get(name, {})
        if cached.get("weights_sha256") != digest:
            cached = {"weights_sha256": digest, "latency": {}}
        need_flops = "graph_flops" not in cached
        need_latency = latency and machine not in cached.get("latency", {})
        if need_latency and budget is not None and time.perf_counter() - started >= budget:
            need_latency = False
            result.notes.append(
                f"latency not measured: the report's time budget ({budget:g} s) was spent; "
                f"`kdtool report {run_dir}` measures it"
            )
        if need_flops or need_latency:
            # Failures are shown in the report but never cached: the next report tries again.
            doing = " and ".join(
                w for w, need in (("counting MACs", need_flops), ("timing on the CPU", need_latency)) if need
            )
            echo(f"report: {name}: {doing}" + (f" (about {seconds:g} s)" if need_latency else ""))
            start = time.perf_counter()
            try:
                spec = spec_for(name)
            except Exception as exc:  # a task that cannot describe a model still gets a report
                result.notes.append(f"not measured: its export spec failed ({type(exc).__name__}: {exc})")
            else:
                if need_flops:
                    try:
                        cached["graph_flops"] = count_flops(spec)
                    except Exception as exc:
                        result.notes.append(f"FLOPs not counted: {type(exc).__name__}: {exc}")
                if need_latency:
                    try:
                        p50, p90 = cpu_latency(spec, seconds=seconds)
                        cached.setdefault("latency", {})[machine] = {
                            "p50_ms": round(p50, 4),
                            "p90_ms": round(p90, 4),
                            "threads": threads,
                            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        }
                    except Exception as exc:
                        result.notes.append(f"latency not measured: {type(exc).__name__}: {exc}")
            echo(f"report: measured {name} in {time.perf_counter() - start:.1f}s")
            cache["models"][name] = cached
            changed = True
        if "graph_flops" in cached:
            result.graph_flops = {k: int(v) for k, v in cached["graph_flops"].items()}
            result.flops = sum(result.graph_flops.values())
        lat = cached.get("latency", {}).get(machine)
        if lat:
            result.latency_ms_p50 = lat["p50_ms"]
            result.latency_ms_p90 = lat["p90_ms"]
            result.machine = machine
            result.threads = lat.get("threads")
    if changed:
        write_json(run_dir / MEASUREMENTS_FILE, cache)
    return results
